"""Self-healing and invalid blobs on 7 real peer processes.

Peers heal what they miss (a wiped disk, a store they were down for, a flipped byte the
scrubber finds) from recovery symbols, downloading about one sliver pair per blob. A writer
that encodes inconsistently is caught by a healing peer or a reader; the proof becomes an
invalid-blob certificate in the log, peers delete the slivers, and every reader gets
"invalid". A proof built from a consistent blob is refused and changes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.host import running_host
from tests.conftest import blob_bytes
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client, InvalidBlobError
from walrusfs.core import messages as m
from walrusfs.core.committee import Committee, parse_committee
from walrusfs.core.log import BLOB_INVALID
from walrusfs.core.metadata import BlobId
from walrusfs.core.recovery import InconsistencyProof, recovery_symbols
from walrusfs.core.redstuff import Axis, encode_blob
from walrusfs.devnet import peer_dir
from walrusfs.testing import encode_inconsistent

WAIT = 120.0
N = 7


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    # Fast scrubbing so a flipped byte is found within seconds; peers restarted by the
    # tests inherit it.
    saved = {k: os.environ.get(k) for k in ("WALRUSFS_SCRUB_RATE", "WALRUSFS_SCRUB_PAUSE")}
    os.environ.update(WALRUSFS_SCRUB_RATE="40", WALRUSFS_SCRUB_PAUSE="1")
    devnet = None
    try:
        devnet = Devnet(tmp_path_factory.mktemp("healnet"), N)
        yield devnet
    finally:
        if devnet is not None:
            devnet.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def committee_of(net: Devnet) -> Committee:
    return parse_committee(net.committee.read_text())


def owner_of(committee: Committee, blob_id: BlobId, pair: int) -> int:
    return committee.shard_owner(blob_id.shard_for_pair(pair, committee.n_shards))


async def store_all(client: Client, blobs: list[bytes]) -> list[BlobId]:
    ids = []
    for data in blobs:
        result = await client.store(data, grace=1.0)
        ids.append(result.blob_id)
    return ids


async def healing_of(client: Client, peer: int, detail: bool = False) -> dict[str, Any]:
    status = (await client.health(detail))[peer]
    assert status["reachable"], status
    return status


async def wait_healed(client: Client, peer: int, blobs: list[BlobId]) -> dict[str, Any]:
    """Wait until ``peer`` holds valid pairs of every blob in ``blobs``; return its status."""
    with trio.move_on_after(WAIT):
        while True:
            complete = True
            for blob_id in blobs:
                row = (await client.blob_status(blob_id))[peer]
                if not row.get("reachable") or sorted(row["valid_pairs"]) != row["pairs_expected"]:
                    complete = False
                    break
            if complete:
                return await healing_of(client, peer, detail=True)
            await trio.sleep(0.5)
    pytest.fail(f"peer {peer} did not heal within {WAIT} s: {await healing_of(client, peer)}")


async def test_wiped_peer_heals_every_blob_downloading_about_one_pair_each(net: Devnet) -> None:
    committee = committee_of(net)
    blobs = [blob_bytes(seed, size) for seed, size in enumerate([200_000, 700_000, 1 << 20, 3 << 20, 5_000_123])]
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        ids = await store_all(client, blobs)
        victim = 2
        net.stop(victim)
        walrusfs("devnet", "wipe", str(net.directory), "--peer", str(victim), check=True)
        assert not (peer_dir(net.directory, victim) / "slivers").exists()
        net.start(victim)
        # Reads while the peer heals return the right bytes.
        for blob_id, data in zip(ids, blobs):
            assert await client.read(blob_id) == data
        status = await wait_healed(client, victim, ids)
        heals = {r["blob_id"]: r for r in status["recent_heals"]}
        assert set(heals) == {str(b) for b in ids}
        for blob_id, data in zip(ids, blobs):
            record = heals[str(blob_id)]
            encoded = encode_blob(data, committee.config)
            pair = encoded.pairs[record["pairs"][0]]
            assert record["pair_bytes"] == len(pair.primary.data) + len(pair.secondary.data)
            # The measured claim: at most 1.2x the sliver pair plus the metadata, far below the blob.
            assert record["downloaded"] <= 1.2 * record["pair_bytes"], record
            assert 0 < record["metadata_bytes"] < 2000
            assert record["downloaded"] + record["metadata_bytes"] < 0.6 * len(data) + 4000
        assert status["healing"]["missing"] == 0
        for blob_id, data in zip(ids, blobs):
            assert await client.read(blob_id) == data


async def test_peer_down_during_20_stores_heals_them_all(net: Devnet) -> None:
    committee = committee_of(net)
    victim = 4
    net.stop(victim)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        blobs = [blob_bytes(100 + k, 50_000 + 37_000 * k) for k in range(20)]
        ids = await store_all(client, blobs)
        net.start(victim)
        status = await wait_healed(client, victim, ids)
        assert status["healing"]["healed"] >= 20
        rows = json.loads(walrusfs("blob-status", str(ids[7]), "--json", committee=net.committee, check=True).stdout)
        assert rows["validShards"] == N
        health = walrusfs("health", committee=net.committee)
        assert health.returncode == 0, health.stdout + health.stderr
        assert "missing 0" in health.stdout


async def test_scrubber_finds_a_flipped_byte_and_heals_it(net: Devnet) -> None:
    committee = committee_of(net)
    data = blob_bytes(7, 900_000)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        [blob_id] = await store_all(client, [data])
        victim = owner_of(committee, blob_id, 1)
        pair = blob_id.pair_for_shard(committee.peers[victim].shards[0], N)
        path = peer_dir(net.directory, victim) / "slivers" / str(blob_id)[:2] / f"{blob_id}.{pair}"
        with trio.move_on_after(30):
            while not path.exists():
                await trio.sleep(0.2)
        before = (await healing_of(client, victim))["healing"]["scrub"]["damaged"]
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 3] ^= 0x40
        path.write_bytes(bytes(raw))
        row = (await client.blob_status(blob_id))[victim]
        damaged_now = (await healing_of(client, victim))["healing"]["scrub"]["damaged"]
        # blob-status re-verifies what is on disk: the flipped pair is not valid, unless the
        # scrubber already caught (and counted) it in between.
        assert pair not in row["valid_pairs"] or damaged_now > before, row
        with trio.move_on_after(WAIT):
            while (await healing_of(client, victim))["healing"]["scrub"]["damaged"] <= before:
                await trio.sleep(0.5)
        await wait_healed(client, victim, [blob_id])
        assert await client.read(blob_id) == data


async def test_inconsistent_writer_is_certified_invalid_and_every_reader_agrees(net: Devnet, tmp_path: Path) -> None:
    committee = committee_of(net)
    config = committee.config
    p = config.primary_source_symbols
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        # Blob A: a parity row is tampered yet committed to. Its owner is down during the
        # store, heals on restart, and its rebuilt row contradicts the commitment.
        data_a = blob_bytes(11, 400_000)
        bad_pair = p + 1
        encoded_a = encode_inconsistent(data_a, config, bad_pair)
        owner = owner_of(committee, encoded_a.blob_id, bad_pair)
        net.stop(owner)
        result_a = await client.store_encoded(encoded_a, len(data_a), grace=1.0)
        net.start(owner)
        # Blob B: the same kind of writer, stored everywhere; a strict reader catches it.
        data_b = blob_bytes(12, 300_000)
        encoded_b = encode_inconsistent(data_b, config, p + 2)
        result_b = await client.store_encoded(encoded_b, len(data_b))
        with pytest.raises(InvalidBlobError) as caught:
            await client.read(encoded_b.blob_id, strict=True)
        assert caught.value.entry is not None and caught.value.entry.kind == BLOB_INVALID

        for blob_id in (result_a.blob_id, result_b.blob_id):
            with trio.move_on_after(WAIT):
                while await client.invalid_entry(blob_id) is None:
                    await trio.sleep(0.5)
            entry = await client.invalid_entry(blob_id)
            assert entry is not None, f"{blob_id} was never certified invalid"
            assert len(entry.payload["signers"]) >= committee.validity_threshold
            # Every peer deletes the slivers and answers "invalid".
            with trio.move_on_after(WAIT):
                while any(row.get("pairs") for row in await client.blob_status(blob_id)):
                    await trio.sleep(0.5)
            rows = await client.blob_status(blob_id)
            assert all(row["reachable"] and row["pairs"] == [] and row["invalid"] for row in rows), rows
            # Every reader, strict or not, in-process or the CLI, gets the same outcome.
            for strict in (False, True):
                with pytest.raises(InvalidBlobError):
                    await client.read(blob_id, strict=strict)
            for extra in ((), ("--strict",)):
                out = walrusfs("read", str(blob_id), "-o", str(tmp_path / "out"), *extra, committee=net.committee)
                assert out.returncode == 3, out.stderr
                assert "is invalid" in out.stderr and "certifies" in out.stderr
                assert not (tmp_path / "out").exists()
            status = walrusfs("blob-status", str(blob_id), committee=net.committee, check=True)
            assert "INVALID" in status.stdout
        shown = walrusfs("log", "--kind", BLOB_INVALID, "--json", committee=net.committee, check=True).stdout
        rows = [json.loads(line) for line in shown.splitlines()]
        assert {r["blobId"] for r in rows} >= {str(result_a.blob_id), str(result_b.blob_id)}
        assert all(r["validity"] == "valid" for r in rows)


async def test_forged_inconsistency_proofs_are_rejected_and_change_nothing(net: Devnet) -> None:
    committee = committee_of(net)
    config = committee.config
    data = blob_bytes(21, 250_000)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        [blob_id] = await store_all(client, [data])
        encoded = encode_blob(data, config)
        # Genuine symbols of a consistent blob: they rebuild the target exactly.
        target = 3
        symbols = tuple(
            recovery_symbols(config, encoded.pairs[k].primary, [target])[0] for k in range(config.primary_source_symbols)
        )
        forged = InconsistencyProof(Axis.SECONDARY, target, symbols)
        fields, body = m.proof_to_wire(forged)
        for protocol in (m.REPORT_INVALID, m.ATTEST_INVALID):
            with pytest.raises(m.RemoteError) as caught:
                await client._call(0, protocol, body, blob_id=blob_id.raw, **fields)
            assert caught.value.code == m.INVALID and "rejected" in caught.value.message
        # A malformed proof (a body of the wrong size) is refused the same way.
        with pytest.raises(m.RemoteError) as caught:
            await client._call(1, m.REPORT_INVALID, body[:-1], blob_id=blob_id.raw, **fields)
        assert caught.value.code == m.MALFORMED
        with pytest.raises(m.RemoteError) as caught:
            await client._call(2, m.REPORT_INVALID, body, blob_id=blob_id.raw, **{**fields, "target": "diagonal"})
        assert caught.value.code == m.MALFORMED
        assert await client.invalid_entry(blob_id) is None
        assert await client.read(blob_id) == data
        assert await client.read(blob_id, strict=True) == data
        rows = await client.blob_status(blob_id)
        assert all(row["valid_pairs"] == row["pairs_expected"] for row in rows if row["reachable"])
