"""Paged, byte-bounded log-heads and log-range replies, and the callers' walks over them (in process)."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.test_log import COMMITTEE as MEMBERS_ONLY
from walrusfs.client import logpages
from walrusfs.client.logpages import RoundBudget, check_ranges, heads_pages, range_pages
from walrusfs.core import messages as m
from walrusfs.core.lifecycle import GRANT, Grant, sponsor
from walrusfs.core.log import GENESIS, NAMESPACE, Entry, delegate_device, sign_entry
from walrusfs.core.namespace import ROOT
from walrusfs.core.wire import MessageError
from walrusfs.identity import Identity
from walrusfs.mount import volumelog
from walrusfs.peer.replication import LogService
from walrusfs.peer.store import PeerStore

#: Peers admit namespace entries only on a granted account: the flooding writer has a
#: grant (an outsider without one is refused before anything is stored).
OPERATOR = SigningKey(b"\x0e" * 32)
ACCOUNT = SigningKey(b"\x0d" * 32)
COMMITTEE = dataclasses.replace(MEMBERS_ONLY, operators=(bytes(OPERATOR.verify_key),))
GRANTED = sign_entry(OPERATOR, 1, GENESIS, 1 << 40, GRANT, Grant(bytes(ACCOUNT.verify_key), 1 << 40, 0, 1000).to_wire())


def sponsored(volume: SigningKey) -> dict[str, bytes]:
    """The payload fields that put ``volume``'s entries on the granted account."""
    return {"account": bytes(ACCOUNT.verify_key), "sponsorship": sponsor(ACCOUNT, bytes(volume.verify_key))}


def outsider_authors(count: int, rng: random.Random) -> list[Entry]:
    """One namespace entry from each of ``count`` fresh device keys of a self-made volume (a granted writer's flood)."""
    volume = SigningKey(rng.randbytes(32))
    out = []
    for _ in range(count):
        device = SigningKey(rng.randbytes(32))
        payload = {"volume": bytes(volume.verify_key), "delegation": delegate_device(volume, bytes(device.verify_key)),
                   "op": {"kind": "mkdir", "args": {"parent": ROOT, "name": "d", "node": rng.randbytes(32)}},
                   **sponsored(volume)}
        out.append(sign_entry(device, 1, GENESIS, 1 << 40, NAMESPACE, payload))
    return out


def maximal_chain(count: int, rng: random.Random, pad: int = 60_000) -> list[Entry]:
    """``count`` entries of one device chain, each near the largest an entry may be."""
    volume, device = SigningKey(rng.randbytes(32)), SigningKey(rng.randbytes(32))
    delegation = delegate_device(volume, bytes(device.verify_key))
    out: list[Entry] = []
    for seq in range(1, count + 1):
        args = {"parent": ROOT, "name": f"f{seq}", "node": rng.randbytes(32), "pad": rng.randbytes(pad)}
        payload = {"volume": bytes(volume.verify_key), "delegation": delegation, "op": {"kind": "mkdir", "args": args},
                   **sponsored(volume)}
        out.append(sign_entry(device, seq, out[-1].id if out else GENESIS, (1 << 40) + seq, NAMESPACE, payload))
    return out


class _NoBody:
    async def body_length(self, limit: int) -> int:
        return 0


def serving(service: LogService) -> logpages.Call:
    """A ``call`` that runs the peer's own handlers and round-trips their replies through the wire codec."""
    handlers = service.handlers()

    async def call(protocol: str, **fields: Any) -> dict[str, Any]:
        header, _ = await handlers[protocol](m.parse_request(m.request(**fields)), _NoBody())
        assert len(header) <= m.MAX_HEADER
        call.sizes.append(len(header))  # type: ignore[attr-defined]
        return m.parse_response(header)

    call.sizes = []  # type: ignore[attr-defined]
    return call


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LogService]:
    store = PeerStore(tmp_path / "peer", min_free=0)
    service = LogService(Identity(bytes([1]) * 32), COMMITTEE, store, 0)
    assert await service.receive([GRANTED]) == [("accepted", "")]
    yield service
    store.close()


def test_page_after_visits_every_key_once() -> None:
    keys = sorted(os.urandom(32) for _ in range(1000))
    for room in (1, 7, 333, 1000, 5000):
        seen: list[bytes] = []
        after = None
        while True:
            page, more = m.page_after(keys, after, room)
            seen += page
            if not more:
                break
            after = page[-1]
        assert seen == keys
    assert m.page_after([], None, 10) == ([], False)


def test_entries_within_stops_before_the_budget_but_keeps_one() -> None:
    items = [b"x" * 1000] * 10
    assert len(m.entries_within(items, 3100, 500)) == 3
    assert len(m.entries_within(items, 10, 500)) == 1  # one always, if the frame holds it
    assert len(m.entries_within(items, 1 << 20, 4)) == 4
    assert m.entries_within([], 100, 5) == []


async def test_a_flood_of_authors_and_maximal_entries_pages_within_the_budget(
    service: LogService, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1)
    flood, big = outsider_authors(600, rng), maximal_chain(20, rng)
    for k in range(0, len(flood), 500):
        await service.receive(flood[k : k + 500])
    await service.receive(big)
    call = serving(service)
    # The real budget: a 500-entry range of maximal entries stops before MAX_HEADER.
    want = [(big[0].author, 1, 500)]
    [got] = check_ranges(await call(m.LOG_RANGE, wants=[[big[0].author, 1, 500]]), want)
    assert 1 <= len(got) < 20 and call.sizes[-1] <= m.MAX_HEADER
    # Many one-entry authors in one request: a few replies, not one per author.
    wants = [(e.author, 1, 1) for e in flood]
    before = len(call.sizes)
    fetched = [e async for batch in range_pages(call, wants) for e in batch]
    assert [e.id for e in fetched] == [e.id for e in flood] and len(call.sizes) - before == 1
    # A small budget: several heads pages, one maximal entry per range reply.
    monkeypatch.setenv("WALRUSFS_REPLY_BUDGET", "16384")
    authors: list[bytes] = []
    pages = 0
    async for page in heads_pages(call):
        pages += 1
        authors += page.heads
        assert call.sizes[-1] <= 16384 + 1024
    assert pages >= 4 and authors == sorted({e.author for e in [GRANTED, *flood, *big]})
    before = len(call.sizes)
    wants = [(e.author, 1, 1) for e in flood] + [(big[0].author, 1, 20)]
    entries = [e async for batch in range_pages(call, wants) for e in batch]
    assert [e.id for e in entries] == [e.id for e in flood + big]
    assert 20 <= len(call.sizes) - before <= 45 and max(call.sizes[before:]) <= 16384 + 70_000  # not one per author (620)
    # An author the peer lacks is skipped when others follow it in the same reply.
    lacking = [(flood[0].author, 1, 5), (flood[1].author, 1, 1)]
    assert [e.id async for batch in range_pages(call, lacking) for e in batch] == [flood[0].id, flood[1].id]
    # A round budget stops the walk early; the caller resumes at the last author.
    budget = RoundBudget(2 * 16384)
    assert len([p async for p in heads_pages(call, None, budget)]) < pages and budget.spent


def page_reply(heads: dict[bytes, int], more: bool) -> dict[str, Any]:
    return {"v": 1, "ok": True, "heads": {a.hex(): [s, bytes(32)] for a, s in heads.items()}, "more": more,
            "entries": len(heads), "digest": bytes(32), "evidence": bytes(32), "proofs": 0}


@pytest.mark.parametrize("case", ["more but empty", "same page again", "author before the cursor", "no total"])
async def test_heads_pages_that_do_not_progress_are_the_peers_failure(case: str) -> None:
    a, b = sorted([b"\x01" * 32, b"\x02" * 32])

    async def call(protocol: str, **fields: Any) -> dict[str, Any]:
        if case == "more but empty":
            return page_reply({}, True)
        if case == "same page again":
            return page_reply({a: 1, b: 1}, True)  # endless: ignores the cursor
        if case == "author before the cursor":
            return page_reply({a: 1} if "after" not in fields else {a: 1, b: 1}, True)
        reply = page_reply({a: 1}, False)
        del reply["entries"]
        return reply

    with pytest.raises(MessageError):
        async for _ in heads_pages(call):
            pass


@pytest.mark.parametrize("case", ["endless repeat", "empty", "wrong author", "gap", "too many", "counts lie"])
async def test_range_pages_that_are_malformed_or_endless_are_the_peers_failure(case: str) -> None:
    rng = random.Random(2)
    chain = maximal_chain(6, rng, pad=10)
    author = chain[0].author
    calls = 0

    async def call(protocol: str, **fields: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        [[_, start, _]] = fields["wants"]
        entries = {
            "endless repeat": chain[:2],  # the same two entries whatever is asked: a mount once held them all
            "empty": [],
            "wrong author": outsider_authors(1, rng),
            "gap": chain[start:start + 2],
            "too many": chain * 100,
            "counts lie": chain[:2],
        }[case]
        counts = [len(entries) + (1 if case == "counts lie" else 0)]
        return {"v": 1, "ok": True, "entries": [e.encode() for e in entries], "counts": counts}

    with pytest.raises(MessageError):
        async for _ in range_pages(call, [(author, 1, 2**40)]):
            pass
    assert calls <= 2


async def test_the_mount_follower_holds_one_rounds_budget_and_resumes(
    service: LogService, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    flood, big = outsider_authors(400, rng), maximal_chain(30, rng)
    await service.receive(flood)
    await service.receive(big)
    monkeypatch.setenv("WALRUSFS_REPLY_BUDGET", "16384")
    monkeypatch.setattr(volumelog, "FOLLOW_BYTES", 256 << 10)
    monkeypatch.setattr(volumelog, "HOLD_BYTES", 64 << 10)
    call = serving(service)

    async def client_call(peer: int, protocol: str, **fields: Any) -> tuple[dict[str, Any], bytes]:
        return await call(protocol, **fields), b""

    client = SimpleNamespace(committee=COMMITTEE, _call=client_call, silent=lambda peer: None, answered=set())
    vlog = volumelog.VolumeLog(client, SimpleNamespace(key=None, public_key=bytes(32)),  # type: ignore[arg-type]
                               SimpleNamespace(device=SigningKey(rng.randbytes(32))))  # type: ignore[arg-type]
    rounds = 0
    total = 0
    while True:
        rounds += 1
        accepted, complete = await vlog.sync_from(0)
        total += accepted
        if complete:
            break
        assert rounds < 50
    assert rounds >= 5 and total == len([GRANTED, *flood, *big]) == vlog.state.size
    assert vlog._cursor is None
    assert await vlog.sync_from(0) == (0, True)  # nothing new: one cheap pass


async def test_anti_entropy_pulls_a_flood_over_several_bounded_rounds(
    service: LogService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from walrusfs.peer import replication

    rng = random.Random(4)
    flood, big = outsider_authors(500, rng), maximal_chain(20, rng)
    await service.receive(flood)
    await service.receive(big)
    monkeypatch.setenv("WALRUSFS_REPLY_BUDGET", "16384")
    monkeypatch.setattr(replication, "PULL_BYTES", 256 << 10)
    store = PeerStore(tmp_path / "other", min_free=0)
    try:
        other = LogService(Identity(bytes([2]) * 32), COMMITTEE, store, 1)
        await other.receive([GRANTED])  # held before the flood, as on a peer that saw the grant long ago
        call = serving(service)

        async def to_first(peer: int, protocol: str, **fields: Any) -> dict[str, Any]:
            return await call(protocol, **fields)

        other._call_pooled = to_first  # type: ignore[method-assign]
        rounds = 0
        while other.state.heads() != service.state.heads():
            rounds += 1
            await other._pull(0)
            assert rounds < 40
        assert rounds >= 4 and other._authors == service._authors
    finally:
        store.close()
