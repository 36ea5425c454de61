"""A flood of authors and maximal entries (issue 15, finding 5): log sync keeps working.

Real peer processes (n = 4) with the listing-reply budget lowered to 16 KiB, so a few
hundred self-made authors and a chain of maximal entries need several pages each (at the
real 1 MiB budget it takes about 10,500 authors, or 17 maximal entries in one range).
Since issue 16 an outsider's flood is refused outright (its account holds no grant, and
nothing is stored); the same flood by a granted writer is what log sync must survive.
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

from p2p.host import running_host
from p2p.rpc import PeerUnavailable
from tests.mounting import MountedVolume, wait_for, walrusfs
from tests.procstat import rss_mib
from tests.test_log_paging import ACCOUNT, maximal_chain, outsider_authors
from walrusfs.client.blob import Client
from walrusfs.client.logpages import heads_pages
from walrusfs.core.committee import Committee, parse_committee
from walrusfs.core.errors import CodecError
from walrusfs.core.log import Entry
from walrusfs.core.messages import LOG_PUSH, entries_within

BUDGET = 16 << 10  # 148 heads a page
AUTHORS = 400
MAXIMAL = 17  # each above the budget: one per range reply


async def push_flood(committee: Committee, entries: list[Entry]) -> set[str]:
    """Push entries to peer 0 from a fresh key (no membership), in requests that fit the budget; the outcomes."""
    outcomes: set[str] = set()
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee)
        encoded = [e.encode() for e in entries]
        while encoded:
            batch = entries_within(encoded, BUDGET, 500)
            del encoded[: len(batch)]
            reply, _ = await client._call(0, LOG_PUSH, entries=batch)
            outcomes |= {r[0] for r in reply["results"]}
    return outcomes


def all_heads(committee: Committee, peers: list[int]) -> dict[int, tuple[int, dict[bytes, Any]]]:
    """Each peer's every head, walked page by page: peer -> (pages, author -> (seq, head ID))."""

    async def walk() -> dict[int, tuple[int, dict[bytes, Any]]]:
        out: dict[int, tuple[int, dict[bytes, Any]]] = {}
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee)
            for peer in peers:
                async def call(protocol: str, **fields: Any) -> dict[str, Any]:
                    return (await client._call(peer, protocol, **fields))[0]  # noqa: B023 - awaited in this iteration

                heads: dict[bytes, Any] = {}
                pages = 0
                try:
                    async for page in heads_pages(call):
                        pages += 1
                        heads.update(page.heads)
                except (PeerUnavailable, CodecError):
                    pages = 0  # not up yet (a restarting peer): counts as not converged
                out[peer] = (pages, heads)
        return out

    return trio.run(walk)


def test_a_writers_flood_leaves_mounts_stores_log_and_catch_up_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WALRUSFS_REPLY_BUDGET", str(BUDGET))  # the peers, mounts and CLI started below
    started = time.monotonic()

    def stage(what: str) -> None:
        print(f"{time.monotonic() - started:6.1f} s  {what}", flush=True)

    volume = MountedVolume(tmp_path, peers=4)
    try:
        committee = parse_committee(volume.net.committee.read_text())
        first = volume.mount("first")
        (first.path / "before.txt").write_bytes(b"written before the flood")
        first.sync()
        rss_before = rss_mib(first.process.pid)  # type: ignore[union-attr]
        volume.net.stop(3)
        stage("mount up, peer 3 stopped")

        rng = random.Random(15)
        flood = outsider_authors(AUTHORS, rng) + maximal_chain(MAXIMAL, rng)
        flooded = {e.author for e in flood}
        # Its account holds no grant yet: an outsider's flood, refused and not stored.
        assert trio.run(push_flood, committee, flood) == {"rejected"}
        assert not flooded & set(all_heads(committee, [0])[0][1])
        stage("an outsider's flood refused")
        # Granted, the same writer floods: that is what log sync must survive.
        walrusfs("grant", "create", bytes(ACCOUNT.verify_key).hex(), "--quota", "1GiB",
                 committee=volume.net.committee, check=True)
        assert wait_for(lambda: trio.run(push_flood, committee, flood[:1]) <= {"accepted", "duplicate"}, 30)
        assert trio.run(push_flood, committee, flood) <= {"accepted", "duplicate"}
        stage("a granted writer's flood pushed")

        # The stopped honest peer restarts now and catches up (checked below) while the rest goes on.
        volume.net.start(3)

        # A new mount starts and sees the files; the running one is still up and follows.
        second = volume.mount("second")
        stage("second mount up")
        assert (second.path / "before.txt").read_bytes() == b"written before the flood"
        assert first.process is not None and first.process.poll() is None
        (first.path / "after.txt").write_bytes(b"written after the flood")
        first.sync()
        assert wait_for(lambda: (second.path / "after.txt").exists(), 30)
        stage("second mount up and following")

        # A store is certified and logged; `walrusfs log` shows it and the flood.
        (tmp_path / "blob").write_bytes(rng.randbytes(50_000))
        stored = volume.net.store_ok(tmp_path / "blob")
        stage("stored")
        shown = walrusfs("log", "--json", committee=volume.net.committee, check=True)
        rows = [json.loads(line) for line in shown.stdout.splitlines()]
        assert any(r.get("blobId") == stored["blobId"] for r in rows)
        assert len(rows) >= AUTHORS + MAXIMAL
        stage("stored and logged")

        def caught_up() -> bool:
            heads = all_heads(committee, [0, 1, 2, 3])
            return flooded <= set(heads[0][1]) and all(heads[p][1] == heads[0][1] for p in (1, 2, 3))

        assert wait_for(caught_up, 60), "the restarted peer did not catch up"
        pages = {p: n for p, (n, _) in all_heads(committee, [0, 1, 2, 3]).items()}
        assert min(pages.values()) >= 3, pages  # the flood does not fit one reply
        stage("every peer holds the same heads (peer 3 caught up)")

        rss = {name: rss_mib(m.process.pid) for name, m in (("first", first), ("second", second))}  # type: ignore[union-attr]
        print(f"\nheads pages per peer {pages}; mount RSS before the flood {rss_before:.0f} MB, "
              f"after: {', '.join(f'{k} {v:.0f} MB' for k, v in rss.items())}; "
              f"{time.monotonic() - started:.1f} s in all")
        assert max(rss.values()) < rss_before + 100

        # Every peer restarts with the flood in its store; a fresh mount still starts and a
        # store is still certified and logged.
        second.stop()
        volume.net.stop(0, 1, 2, 3)
        volume.net.start(0, 1, 2, 3)
        third = volume.mount("third")
        assert (third.path / "after.txt").read_bytes() == b"written after the flood"
        (tmp_path / "blob2").write_bytes(rng.randbytes(50_000))
        volume.net.store_ok(tmp_path / "blob2")
        stage("every peer restarted: a fresh mount and a store work")
    finally:
        volume.close()
