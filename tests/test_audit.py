"""Storage challenges on 7 real peer processes: rounds in the log, failures, slow peers, refusals.

Two devnets (the second also serves a FUSE mount): one of honest peers (every peer passes; the challenged set recomputed from the
log alone; forged, outsider and replayed pass certificates rejected), and one where peer 6
discarded 10% of its pairs, later with f = 2 slowed peers and a second discarder that tries
to fetch its missing data mid-round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from tests.conftest import blob_bytes
from tests.mounting import Mount, create_volume, wait_for
from tests.test_healing import committee_of, store_all
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client
from walrusfs.client.members import call_member
from walrusfs.core import messages as m
from walrusfs.core.challenge import pass_from_payload, pass_payload, sign_pass
from walrusfs.core.committee import Committee
from walrusfs.core.log import (
    CHALLENGE_KINDS,
    CHALLENGE_PASS,
    LogError,
    LogState,
    check_entry,
    sign_entry,
)
from walrusfs.core.metadata import BlobId
from walrusfs.core.redstuff import blob_id_of
from walrusfs.core.rounds import CLOSED, Rounds
from walrusfs.devnet import peer_dir
from walrusfs.identity import load_identity
from walrusfs.peer.service import HOLD_FILE

N = 7
WAIT = 60.0


def audit(net: Devnet, *args: str) -> tuple[int, Any]:
    # Only committee members start rounds: the operator signs with member 0's key.
    key = ["--key", str(peer_dir(net.directory, 0))] if args[0] == "start" else []
    result = walrusfs("audit", *args, *key, "--json", committee=net.committee, timeout=300)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def results(info: dict[str, Any]) -> dict[int, str]:
    return {row["peer"]: row["result"] for row in info["peers"]}


async def peer_status(client: Client, peer: int) -> dict[str, Any]:
    reply, _ = await call_member(client.host, client.committee, peer, m.GET_STATUS, detail=True)
    return reply


async def wait_in_every_log(client: Client, entry_ids: set[bytes]) -> None:
    """Wait until every peer's log holds all of ``entry_ids``."""
    with trio.move_on_after(WAIT):
        while True:
            missing = 0
            for peer in range(N):
                held = {e.id for e in await client.log_entries(peer)}
                missing += len(entry_ids - held)
            if not missing:
                return
            await trio.sleep(0.5)
    pytest.fail(f"{missing} pass entries are missing from some peer's log after {WAIT} s")


async def wait_settled(client: Client) -> None:
    """Wait until every peer's log certifies the same blobs and every peer holds its pairs of each.

    A store returns once 2f + 1 shards confirmed (plus a 1 s grace); the others get their
    slivers by healing, 5 s later. A round started before then fails an honest peer that
    lacks a sampled blob: that race made the audit tests fail now and then.
    """
    with trio.move_on_after(WAIT):
        while True:
            health = await client.health()
            counts = {(h.get("healing") or {}).get("certified") for h in health}
            if len(counts) == 1 and all(h["reachable"] and h["healing"]["missing"] == 0 for h in health):
                return
            await trio.sleep(0.5)
    pytest.fail(f"peers did not settle within {WAIT} s: {[h.get('healing') for h in health]}")


def blobs(count: int, seed: int) -> list[bytes]:
    return [blob_bytes(seed + k, 1_000 + 1_997 * k) for k in range(count)]


# ---------------------------------------------------------------------- honest devnet


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("auditnet"), N)
    try:
        yield net
    finally:
        net.down()


async def test_every_peer_passes_and_the_certificates_are_in_every_log(honest: Devnet) -> None:
    committee = committee_of(honest)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=honest.authority)
        await store_all(client, blobs(20, 100))
        await wait_settled(client)
        code, info = audit(honest, "start", "--sample", "8")
        assert code == 0, info
        assert info["phase"] == CLOSED and info["sample"] == 8
        assert set(results(info).values()) == {"passed"}
        for row in info["peers"]:
            # 2f + 1 attestations, the peer's own counting as one (f + 1 honest others checked it).
            assert len(row["attested_by"]) >= committee.quorum
            assert len([k for k in row["attested_by"] if k != row["peer"]]) >= committee.quorum - 1
        await wait_in_every_log(client, {bytes.fromhex(row["pass_entry"]) for row in info["peers"]})
        code, history = audit(honest, "history")
        assert code == 0 and history[-1]["start"] == info["start"]
        health = json.loads(walrusfs("health", "--json", committee=honest.committee, check=True).stdout)
        assert [p["last_audit"] for p in health] == [{"round": info["round"], "result": "passed"}] * N
        # A round follows a closed one only after log progress: refused with nothing new
        # certified, started once a blob was.
        refused = walrusfs("audit", "start", "--sample", "4", "--no-wait", "--key", str(peer_dir(honest.directory, 0)),
                           committee=honest.committee, timeout=300)
        print(f"\na start with nothing certified since the last round: {refused.stderr.strip()[-300:]}")
        assert refused.returncode != 0 and "certified since it started" in refused.stderr, refused.stderr[-2000:]
        await store_all(client, [os.urandom(3_000)])
        await wait_settled(client)
        code, again = audit(honest, "start", "--sample", "4")
        assert code == 0 and again["round"] == info["round"] + 1


async def test_the_challenged_set_is_computed_from_the_log_alone(honest: Devnet) -> None:
    committee = committee_of(honest)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=honest.authority)
        await store_all(client, blobs(6, 300))
        await wait_settled(client)
        code, info = audit(honest, "start", "--sample", "5")
        assert code == 0, info
        # Anyone holding the log replays it: the seed from the reveals, the eligible blobs from
        # the start's heads, and the sample from both.
        state = LogState(committee)
        for entry in await client.log_entries(3):
            state.apply(entry)
        rounds = Rounds(committee).extend(e for e in state.counted() if e.kind in CHALLENGE_KINDS)
        replayed = rounds.rounds[bytes.fromhex(info["start"])]
        assert replayed.seed(committee).hex() == info["seed"]
        sample = replayed.sample(committee, state)
        assert sample is not None and len(sample) == 5
        for peer in range(N):
            used = (await peer_status(client, peer))["challenge"]
            assert used["start"] == info["start"] and used["sample_ids"] == [str(b) for b in sample]
        # Blobs certified after the start are not eligible, however many arrive.
        assert set(sample) <= set(state.certified_as_of(replayed.heads(committee)))


def _signed_pass(committee: Committee, keys: list[SigningKey], start: bytes, number: int, seed: bytes, peer: int,
                 signers: list[int]) -> dict[str, Any]:
    return {"start": start, "round": number, "seed": seed, "peer": peer, "signers": signers,
            "signatures": [sign_pass(keys[k], number, seed, peer) for k in range(len(signers))]}


async def test_forged_outsider_and_replayed_pass_certificates_are_rejected(honest: Devnet) -> None:
    committee = committee_of(honest)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=honest.authority)
        rounds = (await client.audit_rounds()).ordered()
        assert len(rounds) >= 2, "needs the rounds of the tests above"
        old, new = rounds[-2], rounds[-1]
        old_seed, new_seed = old.seed(committee), new.seed(committee)
        real = pass_from_payload(next(iter(old.passed(committee).values())).payload)
        member = load_identity(peer_dir(honest.directory, 0))
        members = [load_identity(peer_dir(honest.directory, k)).signing_key for k in range(N)]
        outsiders = [SigningKey(bytes([0x70 + k]) * 32) for k in range(5)]
        chain = sorted((e for e in await client.log_entries(0) if e.author == member.public_key), key=lambda e: e.seq)
        head, prev = len(chain), chain[-1].id
        forged = {
            # Member keys, but signing another round's seed than the one named.
            "forged": {**pass_payload(new.start_id, real), "seed": new_seed},
            # A certificate's worth of signatures from keys outside the committee.
            "outsiders": _signed_pass(committee, outsiders, new.start_id, new.number, new_seed, 3, [0, 1, 2, 4, 5]),
            # An older round's certificate renumbered into the new round.
            "renumbered": {**pass_payload(new.start_id, real), "round": new.number},
            # A peer's own attestation counts once, and only with 2f others.
            "self-attested": _signed_pass(committee, [members[k] for k in (3, 0, 1, 2)], new.start_id, new.number,
                                          new_seed, 3, [3, 0, 1, 2]),
        }
        for name, payload in forged.items():
            entry = sign_entry(member.signing_key, head + 1, prev, 1, CHALLENGE_PASS, payload)
            with pytest.raises(LogError):
                check_entry(entry, committee)
            reply, _ = await call_member(host, committee, 2, m.LOG_PUSH, entries=[entry.encode()])
            [(outcome, reason)] = reply["results"]
            assert outcome == "rejected" and "challenge-pass" in reason, (name, reason)
        # A valid certificate replayed into a newer round verifies on its own but counts
        # nowhere: the new round's seed differs, so the fold ignores it.
        replayed = sign_entry(member.signing_key, head + 1, prev, 1, CHALLENGE_PASS,
                              pass_payload(new.start_id, real))
        check_entry(replayed, committee)
        fold = Rounds(committee)
        for found in (old, new):
            fold.extend([found.start, *found.reveals.values(), *found.closes.values()])  # type: ignore[list-item]
        fold.apply(replayed)
        assert real.peer not in fold.rounds[new.start_id].passed(committee)
        assert old_seed != new_seed
        # Only committee members may prove possession; this test's host is not one.
        with pytest.raises(m.RemoteError, match="committee members"):
            await call_member(host, committee, 1, m.CHALLENGE_PROVE, start=new.start_id, digests=[])


# ---------------------------------------------------------------------- the cadence


async def test_peers_start_rounds_by_the_cadence_in_turn(tmp_path: Path) -> None:
    """With --challenge-every 3, rounds start by themselves as blobs are certified, each by the member whose turn it is."""
    net = Devnet(tmp_path / "cadence", 4, None, "--challenge-every", "3", "--challenge-sample", "2")
    try:
        committee = committee_of(net)
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, authority=net.authority)
            for batch in range(2):
                # Nobody asks for a round: three more certified blobs make one.
                await store_all(client, blobs(3, 700 + 10 * batch))
                with trio.move_on_after(WAIT):
                    while True:
                        ordered = (await client.audit_rounds()).ordered()
                        if len(ordered) > batch and ordered[batch].phase(committee) == CLOSED:
                            break
                        await trio.sleep(0.5)
                assert len(ordered) == batch + 1 and ordered[batch].phase(committee) == CLOSED, ordered
        code, history = audit(net, "history")
        assert code == 0 and [info["round"] for info in history] == [1, 2]
        for info in history:
            assert set(results(info).values()) == {"passed"} and info["sample"] == 2
            # Round r is started by member r mod n: peers take turns.
            assert info["started_by"] == info["round"] % 4, info
        # The option is kept for restarts.
        net.stop(2)
        net.start(2)
        assert b"--challenge-every\x003\x00" in Path(f"/proc/{_pid(net, 2)}/cmdline").read_bytes()
    finally:
        net.down()


def _pid(net: Devnet, peer: int) -> int:
    return int(json.loads((net.directory / "devnet.json").read_text())[str(peer)]["pid"])


# ---------------------------------------------------------------------- faulty devnet


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("faultnet"), N, faults={6: "discard-tenth"})
    try:
        yield net
    finally:
        net.down()


FAULTY_BLOBS = blobs(30, 500)
_stored: set[Path] = set()


_fresh: dict[BlobId, bytes] = {}  # blobs stored for log progress between rounds (sample candidates too)


async def stored(net: Devnet) -> list[BlobId]:
    """The faulty devnet's 30 blobs, stored once per module."""
    committee = committee_of(net)
    if net.directory not in _stored:
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, authority=net.authority)
            await store_all(client, FAULTY_BLOBS)
            await wait_settled(client)  # before peer 6 discards anything (at its first round)
        _stored.add(net.directory)
    else:
        # One fresh blob before each further round: a round follows a closed one only after
        # log progress (MIN_ROUND_PROGRESS).
        # Waits until every peer holds its pair of it (not for all to settle: a discarding
        # peer never heals what it dropped).
        fresh = os.urandom(3_000)
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, authority=net.authority)
            await store_all(client, [fresh])
            blob_id = blob_id_of(fresh, committee.n_shards)
            _fresh[blob_id] = fresh
            with trio.move_on_after(WAIT):
                while not all(row.get("pairs") == row["pairs_expected"] for row in await client.blob_status(blob_id)):
                    await trio.sleep(0.5)
    return [blob_id_of(d, committee.n_shards) for d in FAULTY_BLOBS]


_modes: dict[tuple[Path, int], str] = {}


def restart(net: Devnet, peer: int, fault: str) -> None:
    """Run ``peer`` in fault mode ``fault`` (restarting it unless it already is)."""
    if _modes.get((net.directory, peer)) == fault:
        return
    net.stop(peer)
    walrusfs("devnet", "start", str(net.directory), "--peer", str(peer), "--fault", fault, check=True)
    _modes[(net.directory, peer)] = fault


async def wait_for_sample(client: Client) -> set[BlobId]:
    """The blobs challenged in the open round, once peer 0 has computed them."""
    with trio.move_on_after(WAIT):
        while (sample := (await peer_status(client, 0))["challenge"].get("sample_ids")) is None:
            await trio.sleep(0.1)
        return {BlobId.parse(s) for s in sample}
    pytest.fail(f"peer 0 computed no sample within {WAIT} s")


@contextmanager
def holding(net: Devnet, peers: tuple[int, ...] = (3, 4, 5)) -> Iterator[None]:
    """Slowed ``peers`` send no proofs inside the block, so a round started in it stays open.

    f + 1 = 3 of them: the other 4 peers' passes are short of the 5 a close needs. (With
    f = 2 held, the 5 others pass on their own: each prover's own attestation counts.)
    """
    flags = [peer_dir(net.directory, peer) / HOLD_FILE for peer in peers]
    for peer in peers:
        restart(net, peer, "slow-challenge")
    for flag in flags:
        flag.touch()
    try:
        yield
    finally:
        for flag in flags:
            flag.unlink(missing_ok=True)


async def test_a_peer_that_discarded_a_tenth_fails_and_all_others_pass(faulty: Devnet) -> None:
    await stored(faulty)
    code, info = audit(faulty, "start", "--sample", "30")
    assert code == 1 and info["phase"] == CLOSED
    assert results(info) == {**{k: "passed" for k in range(6)}, 6: "failed"}
    failed = next(row for row in info["peers"] if row["peer"] == 6)
    # The record says why: the checkers refused its proof, naming the blob.
    assert any(v.startswith("refused:") and "blob" in v for v in failed["verdicts"].values()), failed
    health = walrusfs("health", committee=faulty.committee)
    assert "storage challenge round 1: FAILED" in health.stdout


async def test_f_slowed_peers_still_pass(faulty: Devnet) -> None:
    await stored(faulty)
    restart(faulty, 3, "slow-challenge")
    restart(faulty, 4, "slow-challenge")
    code, info = audit(faulty, "start", "--sample", "30")
    assert code == 1 and info["phase"] == CLOSED
    assert results(info) == {**{k: "passed" for k in range(6)}, 6: "failed"}


async def test_reads_of_unchallenged_blobs_go_on_during_a_round_and_challenged_ones_wait(faulty: Devnet) -> None:
    committee = committee_of(faulty)
    ids, contents = await stored(faulty), FAULTY_BLOBS
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=faulty.authority)
        with holding(faulty):
            code, info = audit(faulty, "start", "--sample", "3", "--no-wait")
            assert code == 0, info
            start = info["start"]
            challenged = await wait_for_sample(client)
            assert challenged <= set(ids) | set(_fresh)  # drawn from the blobs this module stored
            # The victim may be one of the fresh blobs: look contents up among all of them.
            known = {**dict(zip(ids, contents)), **_fresh}
            # Every unchallenged blob reads back while the round is open: peers 3, 4 and 5
            # hold their proofs, so no more than 4 peers can pass.
            for blob_id, data in known.items():
                if blob_id not in challenged:
                    assert await client.read(blob_id, challenge_wait=0) == data
            rounds = await client.audit_rounds()
            assert rounds.rounds[bytes.fromhex(start)].phase(committee) != CLOSED
            # Challenged blobs are refused to anyone, with the reason.
            victim = next(iter(challenged))
            refusals = 0
            for peer in range(N):
                pair = victim.pair_for_shard(committee.peers[peer].shards[0], committee.n_shards)
                try:
                    await call_member(host, committee, peer, m.GET_SLIVER, blob_id=victim.raw, axis="primary",
                                      index=pair)
                except m.RemoteError as exc:
                    refusals += exc.code == m.CHALLENGED
            assert refusals >= committee.quorum
        # Once the held peers prove, the round closes and the waiting read returns the blob.
        assert await client.read(victim) == known[victim]
        assert (await client.audit_rounds()).rounds[bytes.fromhex(start)].phase(committee) == CLOSED


async def test_a_peer_fetching_its_missing_data_mid_round_is_refused_and_fails(faulty: Devnet) -> None:
    await stored(faulty)
    restart(faulty, 5, "discard-tenth-fetch")
    committee = committee_of(faulty)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=faulty.authority)
        before = sum([(await peer_status(client, k))["challenge"]["refused_reads"] for k in range(5)])
        code, info = audit(faulty, "start", "--sample", "30")
        assert code == 1 and info["phase"] == CLOSED
        assert results(info) == {**{k: "passed" for k in range(5)}, 5: "failed", 6: "failed"}
        after = sum([(await peer_status(client, k))["challenge"]["refused_reads"] for k in range(5)])
    assert after > before
    log = (peer_dir(faulty.directory, 5) / "peer.log").read_text()
    assert "mid-round was refused" in log and "challenged" in log


async def test_filesystem_reads_of_unchallenged_files_go_on_during_a_round(faulty: Devnet, tmp_path: Path) -> None:
    committee = committee_of(faulty)
    await stored(faulty)
    config = tmp_path / "config"
    create_volume(config, "vol")
    files = {f"f{k}.bin": blob_bytes(900 + k, 40_000 + k) for k in range(12)}
    writer = Mount(faulty.committee, tmp_path / "w", "vol", config, tmp_path / "state" / "w").start()
    try:
        for name, data in files.items():
            (writer.path / name).write_bytes(data)
        writer.sync()
    finally:
        writer.stop()
    # A fresh mount has nothing cached: every read below goes to the peers.
    reader = Mount(faulty.committee, tmp_path / "r", "vol", config, tmp_path / "state" / "r").start()
    try:
        assert wait_for(lambda: sorted(os.listdir(reader.path)) == sorted(files), limit=60)
        blob_of = {name: os.getxattr(reader.path / name, "user.walrus.blob_ids").decode().strip() for name in files}
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, authority=faulty.authority)
            with holding(faulty):
                code, info = audit(faulty, "start", "--sample", "3", "--no-wait")
                assert code == 0, info
                sample = {str(b) for b in await wait_for_sample(client)}
                unchallenged = [name for name in files if blob_of[name] not in sample]
                assert unchallenged
                for name in unchallenged:
                    assert (reader.path / name).read_bytes() == files[name]
                rounds = await client.audit_rounds()
                assert rounds.rounds[bytes.fromhex(info["start"])].phase(committee) != CLOSED
            # Released, the round closes; every file reads back, challenged ones included.
            with trio.move_on_after(WAIT):
                while (await client.audit_rounds()).rounds[bytes.fromhex(info["start"])].phase(committee) != CLOSED:
                    await trio.sleep(0.5)
        for name, data in files.items():
            assert (reader.path / name).read_bytes() == data
    finally:
        reader.stop()
