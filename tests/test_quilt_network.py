"""Quilts on real peers: one file read back fetches only its own slivers, and a fault in one
file's slivers stays in that file.

A quilt puts each file on whole rows of the p-row matrix, so it holds at most p - 1 files
(one at n = 4). To pack ~50 files the devnet here is 4 peer processes holding 40 shards
each: n = 160, f = 53, p = 54 rows, s = 107 columns (Walrus runs 1000 shards on about 100
nodes the same way). The scrubber is held off so that tampered slivers stay tampered.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.host import running_host
from tests.test_network import EXE, Devnet, walrusfs
from walrusfs import devnet as dn
from walrusfs.client.blob import Client, ReadError
from walrusfs.client.quilts import InvalidQuilt, read_index, read_patch, store_quilt
from walrusfs.core import messages as m
from walrusfs.core.committee import Committee, parse_committee, render_committee
from walrusfs.core.metadata import BlobId
from walrusfs.core.quilt import Patch, PatchEntry, PatchId

PEERS, SHARDS_EACH = 4, 40


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    directory = tmp_path_factory.mktemp("quiltnet")
    # `devnet up` keeps an existing committee file: write one whose peers hold 40 shards each.
    committee = dn.create(directory, PEERS)
    peers = tuple(dataclasses.replace(p, shards=tuple(range(k * SHARDS_EACH, (k + 1) * SHARDS_EACH)))
                  for k, p in enumerate(committee.peers))
    (directory / dn.COMMITTEE_FILE).write_text(render_committee(dataclasses.replace(committee, peers=peers)))
    saved = os.environ.get("WALRUSFS_SCRUB_PAUSE")
    os.environ["WALRUSFS_SCRUB_PAUSE"] = "3600"
    devnet = None
    try:
        devnet = Devnet(directory, PEERS)
        yield devnet
    finally:
        if devnet is not None:
            devnet.down()
        if saved is None:
            os.environ.pop("WALRUSFS_SCRUB_PAUSE", None)
        else:
            os.environ["WALRUSFS_SCRUB_PAUSE"] = saved


def committee_of(net: Devnet) -> Committee:
    return parse_committee(net.committee.read_text())


def files(seed: int, count: int) -> list[Patch]:
    rng = random.Random(seed)
    return [Patch(f"file-{seed}-{k}.txt", rng.randbytes(rng.randint(100, 2000)), {"n": str(k)} if k % 3 == 0 else {})
            for k in range(count)]


def count_slivers(client: Client) -> list[tuple[str, int]]:
    """Record every sliver ``client`` asks a peer for (axis, index)."""
    asked: list[tuple[str, int]] = []
    original = client._call

    async def counting(peer: int, protocol: str, body: Any = b"", **fields: Any) -> Any:
        if protocol == m.GET_SLIVER:
            asked.append((fields["axis"], fields["index"]))
        return await original(peer, protocol, body, **fields)

    client._call = counting  # type: ignore[method-assign]
    return asked


def pair_file(net: Devnet, committee: Committee, blob_id: BlobId, pair: int) -> Path:
    owner = committee.shard_owner(blob_id.shard_for_pair(pair, committee.n_shards))
    return dn.peer_dir(net.directory, owner) / "slivers" / str(blob_id)[:2] / f"{blob_id}.{pair}"


async def wait_all_pairs(net: Devnet, committee: Committee, blob_id: BlobId) -> None:
    """Wait (bounded) until every peer holds every pair: the store returns at the quorum."""
    with trio.move_on_after(30):
        while not all(pair_file(net, committee, blob_id, k).exists() for k in range(committee.n_shards)):
            await trio.sleep(0.2)


def flip(path: Path, *offsets: int) -> None:
    raw = bytearray(path.read_bytes())
    for at in offsets:
        raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_cli_round_trip_of_50_small_files(net: Devnet, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    rng = random.Random(50)
    for k in range(50):
        (source / f"small-{k:02d}.dat").write_bytes(rng.randbytes(rng.randint(200, 3500)))
    paths = sorted(str(p) for p in source.iterdir())
    started = time.monotonic()
    stored = walrusfs("store-quilt", *paths, "--tag", "small-07.dat:kind=seven", "--epochs", "2", "--json",
                      committee=net.committee, check=True)
    print(f"\nstore-quilt of 50 files: {time.monotonic() - started:.1f} s")
    report = json.loads(stored.stdout)
    quilt_id = report["quiltId"]
    assert [p["identifier"] for p in report["patches"]] == sorted(os.path.basename(p) for p in paths)
    listed = json.loads(walrusfs("list-quilt", quilt_id, "--json", committee=net.committee, check=True).stdout)
    assert [(p["identifier"], p["patchId"], p["tags"]) for p in listed["patches"]] == \
        [(p["identifier"], p["patchId"], p["tags"]) for p in report["patches"]]
    assert listed["patches"][7]["tags"] == {"kind": "seven"}
    out = tmp_path / "out"
    walrusfs("read-quilt", quilt_id, "--all", "-o", str(out), committee=net.committee, check=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())
    for path in source.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    # One file by identifier, one by patch ID (to stdout): bit-exact.
    one = tmp_path / "one"
    walrusfs("read-quilt", quilt_id, "small-31.dat", "-o", str(one), committee=net.committee, check=True)
    assert one.read_bytes() == (source / "small-31.dat").read_bytes()
    by_id = subprocess.run([EXE, "read-quilt", "--patch", report["patches"][12]["patchId"]], capture_output=True,
                           env={**os.environ, "WALRUSFS_COMMITTEE": str(net.committee)}, timeout=120, check=True)
    assert by_id.stdout == (source / "small-12.dat").read_bytes()
    missing = walrusfs("read-quilt", quilt_id, "no-such-file", committee=net.committee)
    assert missing.returncode == 4 and "no patch named 'no-such-file'" in missing.stderr
    refused = walrusfs("store-quilt", "--encrypt", paths[0], committee=net.committee)
    assert refused.returncode == 2 and "does not encrypt" in refused.stderr


async def test_reading_one_patch_fetches_only_its_slivers(net: Devnet) -> None:
    committee = committee_of(net)
    # Sizes that differ a lot, so some files take several rows.
    patches = [*files(1, 8), Patch("big.bin", random.Random(2).randbytes(9000))]
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        stored = await store_quilt(client, patches, epochs=2)
        quilt_id, index = stored.quilt_id, stored.quilt.index
        assert any(len(e.rows) > 1 for e in index.entries)
        reader = Client(host, committee)
        asked = count_slivers(reader)
        metadata = await reader.get_metadata(quilt_id)
        for patch, entry, pid in zip(patches, index.entries, stored.patch_ids()):
            asked.clear()
            assert await read_patch(reader, quilt_id, pid, metadata=metadata) == patch
            assert sorted(asked) == [("primary", r) for r in entry.rows], (entry, asked)
            asked.clear()
            assert await read_patch(reader, quilt_id, patch.identifier, metadata=metadata) == patch
            assert sorted(asked) == sorted([("primary", r) for r in (*index.rows, *entry.rows)]), (entry, asked)
        asked.clear()
        assert await read_index(reader, quilt_id, metadata=metadata) == index
        assert sorted(asked) == [("primary", r) for r in index.rows]
        # A patch ID pointing into the middle of a patch, and a blob that is no quilt, say so.
        big = index.entries[-1]
        with pytest.raises(InvalidQuilt, match="no valid patch at rows"):
            await read_patch(reader, quilt_id, PatchId(quilt_id, big.start + 1, big.end), metadata=metadata)
        p, s = committee.config.primary_source_symbols, committee.config.secondary_source_symbols
        junk = await client.store(b"\x07" * (p * s * 2), epochs=1)
        with pytest.raises(InvalidQuilt, match="not a quilt"):
            await read_index(reader, junk.blob_id)
        print(f"\nquilt of {len(patches)} files, {len(stored.quilt.data)} bytes on {committee.n_shards} shards "
              f"({stored.quilt.row_length}-byte rows): reading a file fetched its own rows only, "
              f"{[len(e.rows) for e in index.entries]} slivers per file")


async def test_a_corrupt_sliver_fails_only_its_patch(net: Devnet) -> None:
    committee = committee_of(net)
    patches = files(3, 3)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        stored = await store_quilt(client, patches, epochs=2)
        quilt_id, entries = stored.quilt_id, stored.quilt.index.entries
        await wait_all_pairs(net, committee, quilt_id)
        a, b, c = entries
        # One tampered sliver of B (what a bad disk or a lying member does): B still reads
        # right, from other slivers, and never as the tampered bytes.
        flip(pair_file(net, committee, quilt_id, b.start), 10)
        reader = Client(host, committee)
        asked = count_slivers(reader)
        assert await read_patch(reader, quilt_id, b.identifier) == patches[1]
        # The index's and B's rows, then (B's first row is bad) a decode from others.
        assert len(asked) > len(stored.quilt.index.rows) + len(b.rows), asked
        # Now every sliver pair but those of the index, A and C is tampered (far beyond f):
        # B cannot be read and says so; A and C still read from their own rows alone.
        keep = {*stored.quilt.index.rows, *a.rows, *c.rows}
        for pair in range(committee.n_shards):
            if pair not in keep:
                path = pair_file(net, committee, quilt_id, pair)
                flip(path, 0, path.stat().st_size - 1)
        asked.clear()
        with pytest.raises(ReadError) as failure:
            await read_patch(reader, quilt_id, stored.patch_ids()[1])
        assert "valid primary slivers" in str(failure.value) and "does not match its commitment" in str(failure.value)
        print(f"\nB failed loudly after asking for {len(asked)} slivers: {str(failure.value)[:160]}...")
        for patch, entry in ((patches[0], a), (patches[2], c)):
            asked.clear()
            assert await read_patch(reader, quilt_id, patch.identifier) == patch
            assert sorted(asked) == sorted([("primary", r) for r in (*stored.quilt.index.rows, *entry.rows)])


async def test_a_stalled_peer_does_not_stop_a_patch_read(net: Devnet) -> None:
    committee = committee_of(net)
    patches = files(4, 6)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        stored = await store_quilt(client, patches, epochs=2)
        quilt_id = stored.quilt_id
        await wait_all_pairs(net, committee, quilt_id)
        target: PatchEntry = stored.quilt.index.entries[2]
        # Stall the peer holding the patch's first row: the read must route around it.
        holder = committee.shard_owner(quilt_id.shard_for_pair(target.start, committee.n_shards))

        async def timed(job: Any) -> tuple[Any, float]:
            started = time.monotonic()
            with trio.fail_after(60):
                result = await job(Client(host, committee))  # a fresh client knows no peer yet
            return result, time.monotonic() - started

        got, up = await timed(lambda c: read_patch(c, quilt_id, target.identifier))
        assert got == patches[2]
        pid = dn.running(net.directory)[holder]
        os.kill(pid, signal.SIGSTOP)
        try:
            got, stalled = await timed(lambda c: read_patch(c, quilt_id, target.identifier))
            assert got == patches[2]
            got, by_id = await timed(lambda c: read_patch(c, quilt_id, target.patch_id(quilt_id)))
            assert got == patches[2]
            # The ordinary read of the whole quilt with the same peer stalled, for comparison.
            whole, plain = await timed(lambda c: c.read(quilt_id))
            assert whole == stored.quilt.data
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"\npatch read by identifier: {up:.2f} s with all peers up, {stalled:.2f} s with the holder of its "
              f"row ({SHARDS_EACH} of {committee.n_shards} shards) stalled; by patch ID {by_id:.2f} s; a plain read of "
              f"the whole quilt {plain:.2f} s (load {os.getloadavg()[0]:.1f})")
        assert stalled < 30
