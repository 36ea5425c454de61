"""Rounds cannot be wedged (issue 15, finding 3), against 4 real peer processes.

Peer 3 is stopped and this test acts as that member with its real key: it asks the honest
members for commitments and pushes crafted, validly signed ``challenge-start`` entries
(heads nobody reaches, round 2^62 - 1, a burst of starts, a start it never reveals for),
and an outsider tries its own start entry and the start request. Before the fix one such
start made every honest peer refuse every sliver for good. Afterwards reads work, an
honest round starts and closes, and the same holds after restarting every honest peer.
"""

from __future__ import annotations

import json
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
from p2p.rpc import serve
from tests.test_healing import committee_of, store_all
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client
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
from walrusfs.core.rounds import ROUND_EXPIRY
from walrusfs.devnet import peer_dir
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
        if outcomes == {"accepted"}:
            self.seq, self.prev = entry.seq, entry.id
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


def read_back(net: Devnet, tmp_path: Path, blobs: dict[str, bytes]) -> None:
    for blob, data in blobs.items():
        out = tmp_path / f"out-{blob}"
        result = walrusfs("read", blob, "-o", str(out), committee=net.committee, timeout=120)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == data


def store_one(net: Devnet, tmp_path: Path, tag: str) -> tuple[str, bytes]:
    data = random.Random(tag).randbytes(20_000)
    source = tmp_path / f"in-{tag}"
    source.write_bytes(data)
    stored = walrusfs("store", str(source), "--json", committee=net.committee, timeout=120)
    assert stored.returncode == 0, stored.stderr  # certified: a quorum confirmed and the log took it
    return json.loads(stored.stdout)["blobId"], data


def honest_round(net: Devnet) -> dict[str, Any]:
    """An honest round by member 0's key: it starts and closes, the honest peers passing."""
    result = walrusfs("audit", "start", "--sample", "2", "--json", "--key", str(peer_dir(net.directory, 0)),
                      committee=net.committee, timeout=120)
    assert result.stdout, result.stderr
    info = json.loads(result.stdout)
    assert info["phase"] == "closed", info
    results = {row["peer"]: row["result"] for row in info["peers"]}
    assert all(results[k] == "passed" for k in HONEST), results
    assert result.returncode == (0 if results[HOSTILE] == "passed" else 1)
    return info


async def refused_reads(client: Client) -> int:
    total = 0
    for k in HONEST:
        reply, _ = await call_member(client.host, client.committee, k, m.GET_STATUS)
        total += reply["challenge"]["refused_reads"]
    return total


async def test_hostile_starts_wedge_nothing_and_a_restart_keeps_it_so(tmp_path: Path) -> None:
    started = time.monotonic()
    net = Devnet(tmp_path / "net", N)
    try:
        committee = committee_of(net)
        blobs = dict([store_one(net, tmp_path, "first")])
        assert honest_round(net)["round"] == 1
        net.stop(HOSTILE)
        member = Member(net, committee)
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee)
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
            forged_commits = {k: member.commitment(k, number, nonce, start_context(nowhere, far)) for k in HONEST}
            assert await member.push(client, member.sign(member.start(number, nowhere, far, forged_commits, nonce))) \
                == {"accepted"}
            # The real next round with the honest commitments: valid, and member 3 never
            # reveals, so it cannot complete. The same start again (a burst): void, as a
            # member starts one round after each round.
            real = member.sign(member.start(number, prev, heads, {**got, HOSTILE: own}, nonce))
            assert await member.push(client, real) == {"accepted"}
            for _ in range(5):
                again = member.sign(member.start(number, prev, heads, {**got, HOSTILE: own}, nonce))
                assert await member.push(client, again) == {"accepted"}
            # Round 2^62 - 1, its commitments forged as above: void.
            huge = (1 << 62) - 1
            huge_commits = {k: member.commitment(k, huge, nonce, context) for k in HONEST}
            assert await member.push(client, member.sign(member.start(huge, prev, heads, huge_commits, nonce))) \
                == {"accepted"}
            await trio.sleep(1)

            status, _ = await client._call(0, m.GET_STATUS)
            assert status["challenge"]["round"] == number and status["challenge"]["start"] == real.id.hex()
            assert status["challenge"]["phase"] == "revealing", status["challenge"]
            # Reads go on: nothing known is sampled, so nothing is refused.
            blobs.update([store_one(net, tmp_path, "second")])
            read_back(net, tmp_path, blobs)
            assert await refused_reads(client) == 0
            # The stuck round blocks the next until ROUND_EXPIRY more blobs are certified.
            result = walrusfs("audit", "start", "--key", str(peer_dir(net.directory, 0)), committee=net.committee)
            assert result.returncode != 0 and "still revealing" in result.stderr, result.stderr
            await store_all(client, [random.Random(k).randbytes(500 + k) for k in range(ROUND_EXPIRY)])
            info = honest_round(net)
            assert info["round"] == number + 1 and info["prev"] == real.id.hex(), info

            # Restart every honest peer: the same holds.
            for k in HONEST:
                net.stop(k)
                net.start(k)
            blobs.update([store_one(net, tmp_path, "third")])
            read_back(net, tmp_path, blobs)
            assert await refused_reads(client) == 0
            info = honest_round(net)
            assert info["round"] == number + 2, info
        print(f"\nhostile starts: {time.monotonic() - started:.0f} s")
    finally:
        net.down()
