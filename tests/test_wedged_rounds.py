"""Rounds cannot be wedged (issue 15, finding 3), against 4 real peer processes.

Peer 3 is stopped and this test acts as that member with its real key: it asks the honest
members for commitments and pushes crafted, validly signed ``challenge-start`` entries
(heads nobody reaches, round 2^62 - 1, a burst of starts, a start it never reveals for),
and an outsider tries its own start entry and the start request. Before the fix one such
start made every honest peer refuse every sliver for good. Afterwards reads work, an
honest round starts and closes, and the same holds after restarting every honest peer.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2p.framing import FrameReader
from p2p.host import IHost, running_host
from p2p.rpc import PeerUnavailable, serve
from tests.test_healing import committee_of
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import AuditError, Client
from walrusfs.client.members import call_member
from walrusfs.core import messages as m
from walrusfs.core.challenge import (
    audit_request_bytes,
    round_secret,
    seed_commitment,
    sign_commitment,
    start_context,
)
from walrusfs.core.committee import Committee
from walrusfs.core.log import CHALLENGE_START, Entry, sign_entry
from walrusfs.core.metadata import BlobId
from walrusfs.core.rounds import CLOSED, ROUND_EXPIRY, summary
from walrusfs.devnet import peer_dir, start_peer, stop_peers
from walrusfs.identity import load_identity

N = 4
HOSTILE = 3
HONEST = (0, 1, 2)


class Member:
    """Member 3's key, writing its own chain and pushing entries straight to the honest peers."""

    def __init__(self, net: Devnet, committee: Committee) -> None:
        self.identity = load_identity(peer_dir(net.directory, HOSTILE))
        self.keys = {k: load_identity(peer_dir(net.directory, k)).signing_key for k in range(N)}
        self.committee = committee
        self.seq, self.prev = 0, bytes(32)

    async def sync(self, client: Client) -> None:
        chain = sorted((e for e in await client.log_entries(0) if e.author == self.identity.public_key),
                       key=lambda e: e.seq)
        self.seq, self.prev = (chain[-1].seq, chain[-1].id) if chain else (0, bytes(32))

    def sign(self, payload: dict[str, Any], key: SigningKey | None = None) -> Entry:
        entry = sign_entry(key or self.identity.signing_key, self.seq + 1, self.prev, (1 << 40) + self.seq,
                           CHALLENGE_START, payload)
        return entry

    async def push(self, client: Client, entry: Entry) -> set[str]:
        outcomes = set()
        for peer in HONEST:
            reply, _ = await client._call(peer, m.LOG_PUSH, entries=[entry.encode()])
            [(outcome, reason)] = reply["results"]
            outcomes.add(outcome if outcome != "rejected" else f"rejected: {reason}")
        if outcomes <= {"accepted", "duplicate"}:  # duplicate: one honest peer fetched it from another
            self.seq, self.prev = entry.seq, entry.id
        else:
            assert all(o.startswith("rejected") for o in outcomes), outcomes
        return outcomes

    def start(self, number: int, prev: bytes, heads: list[list[int]], commits: dict[int, tuple[bytes, bytes]],
              nonce: bytes) -> dict[str, Any]:
        return {"round": number, "prev": prev, "nonce": nonce, "sample": 2, "heads": heads,
                "commits": [[k, c, s] for k, (c, s) in sorted(commits.items())]}

    def commitment(self, k: int, number: int, nonce: bytes, context: bytes) -> tuple[bytes, bytes]:
        """Member ``k``'s commitment, signed with its key: only for the out-of-model cases below."""
        c = seed_commitment(number, k, round_secret(bytes([k]) * 32, number, nonce))
        return c, sign_commitment(self.keys[k], number, nonce, k, c, context)


def answer_as_a_silent_member(host: IHost) -> None:
    """Answer every walrusfs protocol with an error, as a member that says nothing useful.

    The honest peers reuse this host's connection (it holds member 3's peer ID) for their own
    requests to member 3; a protocol it did not serve would make them drop the connection,
    and with it this test's requests.
    """

    async def refuse(reader: FrameReader, remote: str) -> tuple[bytes, bytes]:
        await reader.read_header(m.MAX_HEADER)
        length = await reader.body_length(m.MAX_BODY)
        async for _ in reader.body_chunks(length):
            pass
        return m.error(m.INVALID, "this member answers nothing"), b""

    protocols = [value for name, value in vars(m).items() if isinstance(value, str) and value.startswith("/walrusfs/")]
    for protocol in protocols:
        serve(host, protocol, refuse, lambda exc: m.error(m.MALFORMED, str(exc)))


async def heads_and_last(client: Client, committee: Committee) -> tuple[list[list[int]], int, bytes]:
    """Peer 0's heads and its last valid round (number, start ID)."""
    reply, _ = await client._call(0, m.LOG_HEADS)
    by_key = {bytes.fromhex(a): seq for a, (seq, _) in reply["heads"].items()}
    status, _ = await client._call(0, m.GET_STATUS)
    challenge = status["challenge"]
    last = bytes.fromhex(challenge["start"]) if challenge["round"] else bytes(32)
    return [[k, by_key.get(p.public_key, 0)] for k, p in enumerate(committee.peers)], challenge["round"], last


def read_back(net: Devnet, tmp_path: Path, blob: BlobId, data: bytes) -> None:
    """``walrusfs read`` returns the blob's bytes."""
    out = tmp_path / f"out-{blob}"
    result = walrusfs("read", str(blob), "-o", str(out), committee=net.committee, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data


async def store_many(client: Client, count: int, tag: int) -> dict[BlobId, bytes]:
    """Store ``count`` small blobs at once; each is certified (a quorum confirmed, the log took it)."""
    out: dict[BlobId, bytes] = {}

    async def one(data: bytes) -> None:
        result = await client.store(data, grace=0)  # peer 3 is down: no point waiting for it
        out[result.blob_id] = data

    async with trio.open_nursery() as nursery:
        for k in range(count):
            nursery.start_soon(one, random.Random(tag + k).randbytes(2_000 + k))
    return out


async def honest_round(client: Client, member0: SigningKey) -> dict[str, Any]:
    """A round requested with member 0's signature: it starts and closes, the honest peers passing."""
    entry = await client.start_audit(2, (0, member0))
    with trio.fail_after(60):
        while True:
            found = (await client.audit_rounds()).rounds.get(entry.id)
            if found is not None and found.start is not None and found.phase(client.committee) == CLOSED:
                break
            await trio.sleep(0.3)
    info = summary(found, client.committee)
    results = {row["peer"]: row["result"] for row in info["peers"]}
    assert all(results[k] == "passed" for k in HONEST), results
    return info


async def reads_work(net: Devnet, tmp_path: Path, client: Client, blobs: dict[BlobId, bytes]) -> None:
    """Every blob reads back at once (no round holds it), the newest also with ``walrusfs read``; nothing refused."""
    for blob, data in blobs.items():
        assert await client.read(blob, challenge_wait=0) == data
    newest = list(blobs)[-1]
    await trio.to_thread.run_sync(read_back, net, tmp_path, newest, blobs[newest])
    for k in HONEST:
        reply, _ = await call_member(client.host, client.committee, k, m.GET_STATUS)
        assert reply["challenge"]["refused_reads"] == 0, (k, reply["challenge"])


async def test_hostile_starts_wedge_nothing_and_a_restart_keeps_it_so(tmp_path: Path) -> None:
    started = time.monotonic()
    net = Devnet(tmp_path / "net", N)
    try:
        committee = committee_of(net)
        stop_peers(net.directory, [HOSTILE])
        member = Member(net, committee)
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, authority=net.authority)
            blobs = await store_many(client, 2, 0)
            await member.sync(client)
            heads, last, prev = await heads_and_last(client, committee)
            number = last + 1
            async with running_host(member.identity.seed) as as_member:
                answer_as_a_silent_member(as_member)
                # A member asking for commitments to heads nobody reaches, or to round
                # 2^62 - 1, gets none: members commit only to heads they hold and to the next round.
                far = [[k, seq + 10**6 if k != HOSTILE else seq] for k, seq in heads]
                for ask_round, ask_heads in ((number, far), ((1 << 62) - 1, heads)):
                    with pytest.raises(m.RemoteError, match="no commitment"):
                        await call_member(as_member, committee, 0, m.CHALLENGE_COMMIT, round=ask_round,
                                          nonce=b"n" * 16, prev=prev, heads=ask_heads)
                # The honest commitments it does get (for the real next round) bind those heads.
                # Asked again with other nonces (a burst), members commit to one start only.
                nonce = b"a" * 16
                got: dict[int, tuple[bytes, bytes]] = {}
                for k in HONEST:
                    reply, _ = await call_member(as_member, committee, k, m.CHALLENGE_COMMIT, round=number,
                                                 nonce=nonce, prev=prev, heads=heads)
                    got[k] = (reply["commitment"], reply["signature"])
                    with pytest.raises(m.RemoteError, match="already committed"):
                        await call_member(as_member, committee, k, m.CHALLENGE_COMMIT, round=number,
                                          nonce=b"b" * 16, prev=prev, heads=heads)
            context = start_context(prev, heads)
            mine = seed_commitment(number, HOSTILE, round_secret(member.identity.seed, number, nonce))
            own = (mine, sign_commitment(member.identity.signing_key, number, nonce, HOSTILE, mine, context))
            rejected = {
                # Honest commitments reused for heads nobody reaches, or for round 2^62 - 1.
                "far heads": member.start(number, prev, far, {**got, HOSTILE: own}, nonce),
                "huge round": member.start((1 << 62) - 1, prev, heads, {**got, HOSTILE: own}, nonce),
                # Only its own commitment: too few.
                "alone": member.start(number, prev, heads, {HOSTILE: own}, nonce),
            }
            for name, payload in rejected.items():
                outcomes = await member.push(client, member.sign(payload))
                assert all(o.startswith("rejected") and "challenge-start" in o for o in outcomes), (name, outcomes)
            # An outsider's start entry, and its request that a peer start a round.
            outsider = SigningKey(os.urandom(32))
            forged = sign_entry(outsider, 1, bytes(32), 1, CHALLENGE_START, rejected["far heads"])
            reply, _ = await client._call(0, m.LOG_PUSH, entries=[forged.encode()])
            assert reply["results"][0][0] == "rejected" and "not a committee member" in reply["results"][0][1]
            for fields in ({}, {"member": 0, "signature": outsider.sign(audit_request_bytes(number)).signature}):
                with pytest.raises(m.RemoteError, match="only committee members"):
                    await client._call(1, m.AUDIT_START, sample=2, **fields)
            # Out of the threat model (honest members' keys sign the commitments), so the
            # log takes it; the rules still make it harmless: heads nobody reaches, after a
            # round nobody knows (unresolved for good: it refuses nothing, blocks nothing).
            nowhere = b"\x07" * 32
            forged_commits = {k: member.commitment(k, number + 1, nonce, start_context(nowhere, far)) for k in HONEST}
            taken = {"accepted", "duplicate"}
            unreachable = member.sign(member.start(number + 1, nowhere, far, forged_commits, nonce))
            assert await member.push(client, unreachable) <= taken
            # The real next round with the honest commitments: valid, and member 3 never
            # reveals, so it cannot complete. The same start again (a burst): void, as a
            # member starts one round after each round.
            real = member.sign(member.start(number, prev, heads, {**got, HOSTILE: own}, nonce))
            assert await member.push(client, real) <= taken
            for _ in range(5):
                again = member.sign(member.start(number, prev, heads, {**got, HOSTILE: own}, nonce))
                assert await member.push(client, again) <= taken
            with trio.fail_after(30):
                while (status := (await client._call(0, m.GET_STATUS))[0]["challenge"]).get("start") != real.id.hex():
                    await trio.sleep(0.2)
            assert status["round"] == number and status["phase"] == "revealing", status
            print(f"\nhostile entries pushed after {time.monotonic() - started:.0f} s")

            # Reads go on: nothing known is sampled, so nothing is refused.
            blobs.update(await store_many(client, 1, 100))
            await reads_work(net, tmp_path, client, blobs)
            # The stuck round blocks the next until ROUND_EXPIRY more blobs are certified.
            member0 = member.keys[0]
            with pytest.raises(AuditError, match="still revealing"):
                await client.start_audit(2, (0, member0))
            await store_many(client, ROUND_EXPIRY, 200)
            info = await honest_round(client, member0)
            assert info["round"] == number + 1 and info["prev"] == real.id.hex(), info
            print(f"honest round {info['round']} closed after {time.monotonic() - started:.0f} s")

            # Restart every honest peer: the same holds.
            await trio.to_thread.run_sync(stop_peers, net.directory, list(HONEST))
            for k in HONEST:
                start_peer(net.directory, k)
            with trio.fail_after(60):
                for k in HONEST:
                    while True:
                        try:
                            await call_member(host, committee, k, m.GET_STATUS)
                            break
                        except (PeerUnavailable, m.RemoteError):
                            await trio.sleep(0.3)
            blobs.update(await store_many(client, 1, 300))
            await reads_work(net, tmp_path, client, blobs)
            info = await honest_round(client, member0)
            assert info["round"] == number + 2, info
        print(f"hostile starts, restart and rounds: {time.monotonic() - started:.0f} s")
    finally:
        net.down()
