"""A peer survives its clients: hundreds (2,000 in the long form) of short-lived client connections, then it stores and serves as before.

Every CLI command is a new libp2p connection from a fresh identity. py-libp2p 0.8.1 kept
one of its 250 inbound slots per connection for the host's lifetime (``p2p.host``
releases it when the connection closes); without that, a peer refused every client after
about 250 commands.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2p.host import running_host
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client
from walrusfs.core import messages as m
from walrusfs.core.committee import parse_committee
from walrusfs.devnet import running

#: CI opens 280 (past the old cliff of 250); WALRUSFS_CONNECTIONS=2000 is the long form the
#: README records (1,200 sequential, the rest in bursts of 50 concurrent).
TOTAL = int(os.environ.get("WALRUSFS_CONNECTIONS", "300"))
BURST = 50
SEQUENTIAL = TOTAL * 3 // 5
BURSTS = (TOTAL - SEQUENTIAL) // BURST


def usage(pid: int) -> tuple[int, int]:
    """(open descriptors, RSS in MiB) of a process."""
    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss // 1024


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    n = Devnet(tmp_path_factory.mktemp("connections"), 4)
    try:
        yield n
    finally:
        n.down()


async def test_many_client_connections_then_the_peer_stores_and_serves(net: Devnet, tmp_path: Path) -> None:
    committee = parse_committee(net.committee.read_text())
    pid = running(net.directory)[0]
    before = usage(pid)
    failures: list[str] = []

    async def one_client() -> None:
        try:
            with trio.fail_after(30):
                async with running_host(os.urandom(32)) as host:
                    await Client(host, committee)._call(0, m.GET_STATUS)
        except Exception as exc:  # noqa: BLE001 - counted and shown below
            failures.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.monotonic()
    for _ in range(SEQUENTIAL):
        await one_client()
    for _ in range(BURSTS):
        async with trio.open_nursery() as nursery:
            for _ in range(BURST):
                nursery.start_soon(one_client)
    after = usage(pid)
    print(f"\n{SEQUENTIAL + BURSTS * BURST} connections in {time.monotonic() - started:.0f} s; "
          f"peer 0 fds/RSS MiB before {before}, after {after}; failures {len(failures)}")
    assert failures == [], failures[:3]
    assert after[0] <= before[0] + 20, "descriptors grew with the number of past connections"
    assert after[1] <= before[1] + 100, "memory grew with the number of past connections"
    data = random.Random(7).randbytes(300_000)
    source = tmp_path / "blob"
    source.write_bytes(data)
    stored = await trio.to_thread.run_sync(lambda: net.store_ok(source))
    # The certificate holds the first 2f + 1 confirmations, which need not include peer 0;
    # blob-status below shows that peer 0 stored and confirmed the blob.
    out = tmp_path / "out"
    result = await trio.to_thread.run_sync(lambda: net.read(stored["blobId"], out))
    assert result.returncode == 0 and out.read_bytes() == data
    status = await trio.to_thread.run_sync(
        lambda: json.loads(walrusfs("blob-status", stored["blobId"], "--json", committee=net.committee).stdout))
    assert status["peers"][0]["confirmed"]
