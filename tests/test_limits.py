"""Outsiders cannot make a peer hold unbounded resources (fault model, "outsider"; p2p/limits.py).

Against real peer processes (n = 4), from raw TCP sockets and libp2p hosts with fresh
keys: stalled request headers, pair uploads that stall near their end or trickle, silent
TCP sockets, idle and busy outsider connections, repeated blob-status calls, and a
legitimately slow upload that must still succeed. Each test prints the peer's RSS or CPU
time and ends with an honest store and read.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from p2p.framing import FrameReader
from p2p.host import peer_info, running_host
from p2p.limits import Guard, Limits, Overloaded
from tests.faultnet import DelayProxy, point_at, port_of
from tests.ledgerkit import registration
from tests.procstat import cpu_seconds, rss_mib
from tests.test_network import Devnet
from walrusfs.client.blob import Client
from walrusfs.core import messages as m
from walrusfs.core.committee import Committee, parse_committee
from walrusfs.core.config import RS2
from walrusfs.core.metadata import BlobMetadata, SliverPairHashes
from walrusfs.core.redstuff import encode_blob
from walrusfs.devnet import peer_dir, running
from walrusfs.identity import load_identity
from walrusfs.peer.service import LIMITS_ENV

#: The defaults but for fewer outsider connection slots, so that filling them takes
#: 40 libp2p hosts in the test process rather than 200.
OVERRIDES = "outsider_connections=32"
LIMITS = Limits.parse(OVERRIDES)
MIB = 1 << 20


@contextmanager
def limits_env() -> Iterator[None]:
    """Peers started inside the block run with ``OVERRIDES``."""
    old = os.environ.get(LIMITS_ENV)
    os.environ[LIMITS_ENV] = OVERRIDES
    try:
        yield
    finally:
        if old is None:
            del os.environ[LIMITS_ENV]
        else:
            os.environ[LIMITS_ENV] = old


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with limits_env():
        devnet = Devnet(tmp_path_factory.mktemp("limits"), 4)
    try:
        yield devnet
    finally:
        devnet.down()


def committee_of(net: Devnet) -> Committee:
    return parse_committee(net.committee.read_text())


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def frame(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(header)) + header + struct.pack(">Q", len(body)) + body


async def honest_store_and_read(net: Devnet, tag: str, peers: int = 4) -> None:
    """The committee still serves: every peer runs, and a fresh client stores a blob and reads it back."""
    assert len(running(net.directory)) == peers, "a peer died"
    data = random.Random(tag).randbytes(200_000)
    with trio.fail_after(60):
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee_of(net), authority=net.authority)
            stored = await client.store(data)
            assert await client.read(stored.blob_id) == data


async def until_ended(stream: object, limit: float) -> str:
    """Read a stream until it ends; how it ended ("reset" or closed, "busy" for a busy reply, "answered", "timeout")."""
    reader = FrameReader(stream)
    with trio.move_on_after(limit):
        try:
            header = await reader.read_header(m.MAX_HEADER)
        except Exception:  # noqa: BLE001 - the reset is what is expected (py-libp2p may report it as EOF)
            return "reset"
        try:
            m.parse_response(header)
        except m.RemoteError as exc:
            return exc.code
        return "answered"
    return "timeout"


async def test_stalled_headers_are_reset_and_memory_returns(net: Devnet, tmp_path: Path) -> None:
    # 4 outsiders x 40 streams, each declaring a 1 MiB header and sending all of it but
    # its last byte. Unbounded, that is 160 MiB held for good; here each outsider may
    # buffer 8 MiB of headers and all outsiders 64 MiB, for at most header_deadline s.
    committee = committee_of(net)
    target = committee.peers[0]
    pid = running(net.directory)[0]
    base = rss_mib(pid)
    outcomes: list[tuple[str, float]] = []
    almost = struct.pack(">I", MIB) + b"h" * (MIB - 1)

    async def attacker() -> None:
        async with running_host(os.urandom(32)) as host:
            info = peer_info(target.peer_id, target.addrs)
            await host.connect(info)

            async def one() -> None:
                try:
                    stream = await host.new_stream(info.peer_id, [m.GET_STATUS])
                except Exception:  # noqa: BLE001 - refused at once is a fine outcome
                    outcomes.append(("refused", 0.0))
                    return
                started = trio.current_time()  # the deadline runs from here (negotiation has its own)
                async with trio.open_nursery() as nursery:
                    async def send() -> None:
                        try:
                            await stream.write(almost)
                        except Exception:  # noqa: BLE001 - a reset mid-write
                            pass
                    nursery.start_soon(send)
                    how = await until_ended(stream, 30)
                    nursery.cancel_scope.cancel()
                outcomes.append((how, trio.current_time() - started))

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(one)

    started = time.monotonic()
    with PeakRss(pid) as sampler:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(attacker)
        await trio.sleep(2.5)  # the sweep after the last reset gives memory back
    after = rss_mib(pid)
    kinds = {k: sum(1 for how, _ in outcomes if how == k) for k in {how for how, _ in outcomes}}
    slowest = max(t for _, t in outcomes)
    print(f"\n{len(outcomes)} stalled headers in {time.monotonic() - started:.1f} s: {kinds}; last ended after "
          f"{slowest:.1f} s; peer RSS MiB before {base:.0f}, peak {sampler.peak:.0f}, after {after:.0f}")
    assert len(outcomes) == 4 * 40
    assert "timeout" not in kinds and "answered" not in kinds
    assert slowest < LIMITS.header_deadline + 4, "a stalled header outlived its deadline"
    assert sampler.peak - base < 64 + 60, "stalled headers held more than the outsiders' header cap"
    assert after - base < 40, "memory did not come back"
    await honest_store_and_read(net, "headers")


def stalling_metadata(committee: Committee, length: int) -> tuple[BlobMetadata, int, int]:
    """Metadata (valid as metadata, for data nobody has) of a ``length``-byte blob; peer 0's pair and its size."""
    rng = random.Random(length)
    metadata = BlobMetadata(RS2, length, tuple(SliverPairHashes(rng.randbytes(32), rng.randbytes(32))
                                               for _ in range(committee.n_shards)))
    blob_id = metadata.blob_id()
    pair = blob_id.pair_for_shard(committee.peers[0].shards[0], committee.n_shards)
    config = metadata.config
    size = (config.primary_source_symbols + config.secondary_source_symbols) * metadata.symbol_size
    return metadata, pair, size


async def test_pair_uploads_that_stall_or_trickle_are_reset_and_release_memory_and_disk(
        net: Devnet, tmp_path: Path) -> None:
    # One outsider declares 4 uploads of a 53 MiB pair (a 64 MiB blob): its allowance
    # (192 MiB) admits 3 and refuses the 4th as busy. Two stop 64 KiB before their end,
    # one sends 1 MiB and then trickles 2 KiB/s: each is reset once it has sent less than
    # min_rate over rate_window s, and the memory and spool files they held are released.
    committee = committee_of(net)
    target = committee.peers[0]
    pid = running(net.directory)[0]
    spool = peer_dir(net.directory, 0) / "tmp"
    metadata, pair, size = stalling_metadata(committee, 64 * MIB)
    blob_id = metadata.blob_id()
    body = random.Random(3).randbytes(size)
    request = m.request(blob_id=blob_id.raw, pair=pair)
    outcomes: list[tuple[str, float]] = []
    base = rss_mib(pid)
    disk_peak = 0

    def spooled() -> int:
        total = 0
        for path in spool.iterdir():
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # removed in between
                pass
        return total

    async def watch_disk() -> None:
        nonlocal disk_peak
        while True:
            disk_peak = max(disk_peak, spooled())
            await trio.sleep(0.2)

    async with running_host(os.urandom(32)) as host:
        info = peer_info(target.peer_id, target.addrs)
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [m.PUT_METADATA])
        # A granted writer's upload (an outsider's would be refused before any pair).
        await stream.write(frame(m.request(blob_id=blob_id.raw, metadata=m.metadata_to_wire(metadata),
                                           registration=registration(blob_id, length=metadata.unencoded_length,
                                                                     authority=net.authority).to_wire())))
        assert await until_ended(stream, 10) == "answered"

        async def upload(send_first: int, trickle: bool, delay: float) -> None:
            await trio.sleep(delay)  # the refused one comes last
            stream = await host.new_stream(info.peer_id, [m.PUT_PAIR])
            stalled = trio.current_time()
            async with trio.open_nursery() as nursery:
                async def send() -> None:
                    nonlocal stalled
                    try:
                        await stream.write(struct.pack(">I", len(request)) + request + struct.pack(">Q", size))
                        for start in range(0, send_first, MIB):
                            await stream.write(body[start : min(start + MIB, send_first)])
                        stalled = trio.current_time()
                        while trickle:
                            await trio.sleep(1)
                            await stream.write(b"t" * 2048)
                    except Exception:  # noqa: BLE001 - the reset
                        pass
                nursery.start_soon(send)
                how = await until_ended(stream, 40)
                nursery.cancel_scope.cancel()
            outcomes.append((how, trio.current_time() - stalled))

        with PeakRss(pid) as sampler:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disk)
                async with trio.open_nursery() as uploads:
                    near_end = size - (64 << 10)
                    for k in range(4):
                        uploads.start_soon(upload, MIB if k in (1, 3) else near_end, k == 1, 0.0 if k < 3 else 2.0)
                await trio.sleep(2.5)
                nursery.cancel_scope.cancel()
    after = rss_mib(pid)
    left = list(spool.iterdir())
    print(f"\npair uploads stalled near the end (how each ended, s after it stalled): "
          f"{sorted((how, round(t, 1)) for how, t in outcomes)}; peer RSS MiB before {base:.0f}, "
          f"peak {sampler.peak:.0f}, after {after:.0f}; spool peak {disk_peak / MIB:.0f} MiB, after {len(left)} files")
    assert sorted(how for how, _ in outcomes) == ["busy", "reset", "reset", "reset"]
    resets = [t for how, t in outcomes if how == "reset"]
    assert max(resets) < LIMITS.rate_window + 4, "a stalled upload outlived the rate window"
    assert sampler.peak - base < 192 + 80, "more than one outsider's body allowance was held"
    assert after - base < 40, "memory did not come back"
    assert left == [], "spool files were left behind"
    await honest_store_and_read(net, "pairs")


def hold_silent_sockets(port: int, count: int, stop: threading.Event) -> list[int]:
    """Keep ``count`` TCP connections to ``port`` open and silent, reopening any the peer closes a second later."""
    opened = [0]

    def run() -> None:
        socks: list[socket.socket | None] = [None] * count
        while not stop.is_set():
            for k in range(count):
                sock = socks[k]
                if sock is not None:
                    try:
                        sock.setblocking(False)
                        if sock.recv(1) == b"":
                            raise OSError("closed")
                    except BlockingIOError:
                        continue  # still open and silent
                    except OSError:
                        sock.close()
                        socks[k] = None
                        continue  # reopened on a later pass, a second from now
                try:
                    socks[k] = socket.create_connection(("127.0.0.1", port), timeout=2)
                    opened[0] += 1
                except OSError:
                    pass
            stop.wait(1.0)
        for sock in socks:
            if sock is not None:
                sock.close()

    threading.Thread(target=run, daemon=True).start()
    return opened


async def status_of(committee: Committee, seed: bytes) -> bool:
    """Whether a host with ``seed`` connects to peer 0 and gets a status answer within 10 s."""
    try:
        with trio.fail_after(10):
            async with running_host(seed) as host:
                reply, _ = await Client(host, committee)._call(0, m.GET_STATUS)
                return reply["ok"] is True
    except Exception:  # noqa: BLE001 - counted by the caller
        return False


async def test_silent_sockets_and_idle_outsiders_do_not_lock_out_clients_or_members(
        net: Devnet, tmp_path: Path) -> None:
    # 300 silent TCP sockets (more than the 256 handshakes a peer tracks; each one it
    # closes comes back a second later) and 40 outsider hosts that connect and idle
    # (more than the 32 outsider slots here). Fresh clients, a store and read, and a
    # member still get through. Then the outsiders keep a stream open each, so none of their
    # connections is idle: a new outsider is refused, a member still connects.
    committee = committee_of(net)
    target = committee.peers[0]
    pid = running(net.directory)[0]
    stop = threading.Event()
    opened = hold_silent_sockets(port_of(net.committee, 0), 300, stop)
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    # The member: peer 3's key, with peer 3 itself stopped so its connection is the only one.
    net.stop(3)
    member_seed = load_identity(peer_dir(net.directory, 3)).seed
    try:
        await trio.sleep(1)
        ok = [await status_of(committee, os.urandom(32)) for _ in range(3)]
        print(f"\nwith 300 silent sockets ({opened[0]} opened so far): {sum(ok)} of 3 fresh clients answered")
        assert all(ok)

        release = trio.Event()
        connected = settled = 0
        busy = trio.Event()

        async def outsider() -> None:
            nonlocal connected, settled
            try:
                async with running_host(os.urandom(32)) as host:
                    info = peer_info(target.peer_id, target.addrs)
                    with trio.fail_after(30):
                        await host.connect(info)
                    connected += 1
                    await busy.wait()
                    # One request answered on a stream kept open: the connection is in use.
                    stream = await host.new_stream(info.peer_id, [m.GET_STATUS])
                    await stream.write(frame(m.request()))
                    await FrameReader(stream).read_header(m.MAX_HEADER)
                    settled += 1
                    await release.wait()
            except Exception:  # noqa: BLE001 - evicted or refused outsiders are expected
                settled += 1

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(outsider)
            with trio.move_on_after(30):
                while connected < 40:
                    await trio.sleep(0.2)
            print(f"{connected} idle outsiders connected; peer fds {fds_before} before, "
                  f"{len(os.listdir(f'/proc/{pid}/fd'))} now")
            await honest_store_and_read(net, "idle-outsiders", peers=3)
            assert await status_of(committee, member_seed), "a member could not connect"
            busy.set()
            with trio.move_on_after(20):
                while settled < 40:
                    await trio.sleep(0.2)
            fresh = await status_of(committee, os.urandom(32))
            member = await status_of(committee, member_seed)
            print(f"outsider slots busy: a new outsider {'got in' if fresh else 'was refused'}, "
                  f"the member {'got in' if member else 'was refused'}")
            assert member, "a member was crowded out by outsiders"
            assert not fresh, "more outsiders than outsider slots were admitted"
            release.set()
    finally:
        stop.set()
        with limits_env():
            net.start(3)
    await trio.sleep(1.5)
    await honest_store_and_read(net, "after-outsiders")


async def test_repeated_blob_status_costs_little_cpu(net: Devnet) -> None:
    # blob-status re-verifies a pair only once its file changed (a stat per call): the
    # first call on a 24 MiB blob hashes peer 0's 20 MiB pair, the next ones do not.
    committee = committee_of(net)
    pid = running(net.directory)[0]
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        blob_id = (await client.store(random.Random(11).randbytes(24 * MIB))).blob_id
        for _ in range(100):  # the store may return before peer 0 has its pair (it confirms once it has)
            try:
                await client._call(0, m.GET_CONFIRMATION, blob_id=blob_id.raw)
                break
            except m.RemoteError:
                await trio.sleep(0.2)
        costs = []
        for _ in range(20):
            before = cpu_seconds(pid)
            reply, _ = await client._call(0, m.GET_BLOB_STATUS, blob_id=blob_id.raw)
            costs.append(cpu_seconds(pid) - before)
            assert reply["valid_pairs"] == reply["pairs"] and reply["pairs"]
    rest = sum(costs[1:]) / len(costs[1:])
    print(f"\nblob-status of a 24 MiB blob: peer CPU {costs[0] * 1000:.0f} ms the first time, "
          f"{rest * 1000:.1f} ms on average for the next {len(costs) - 1}")
    assert costs[0] >= 0.02, "the first call did not verify anything"
    assert rest < costs[0] / 4


async def test_a_slow_but_steady_upload_is_not_cut_off(net: Devnet, tmp_path: Path) -> None:
    # Through a proxy holding each 16 KiB for 0.15 s (about 80 KiB/s, five times the
    # minimum rate), a pair upload lasting longer than the rate window still succeeds.
    proxy = DelayProxy(port_of(net.committee, 0), delay=0.15)
    try:
        committee = parse_committee(point_at(net.committee, 0, proxy.port, tmp_path / "via-proxy.toml").read_text())
        encoded = encode_blob(random.Random(5).randbytes(1 * MIB), committee.config)
        blob_id = encoded.blob_id
        pair = encoded.pairs[blob_id.pair_for_shard(committee.peers[0].shards[0], committee.n_shards)]
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee, authority=net.authority)
            registration = (await client.registration(blob_id, 5, True, 1 * MIB)).to_wire()
            await client._call(0, m.PUT_METADATA, blob_id=blob_id.raw, metadata=m.metadata_to_wire(encoded.metadata),
                               registration=registration)
            started = time.monotonic()
            await client._call(0, m.PUT_PAIR, (pair.primary.data, pair.secondary.data), blob_id=blob_id.raw,
                               pair=pair.index)
            took = time.monotonic() - started
            reply, _ = await client._call(0, m.GET_CONFIRMATION, blob_id=blob_id.raw, registration=registration)
        size = len(pair.primary.data) + len(pair.secondary.data)
        print(f"\nslow upload: {size / 1024:.0f} KiB in {took:.1f} s ({size / took / 1024:.0f} KiB/s)")
        assert reply["ok"] and took > LIMITS.rate_window
    finally:
        proxy.close()


async def test_after_the_attacks_every_peer_restarts_and_serves(net: Devnet) -> None:
    """Runs after the attack tests above (same devnet): a restart of every peer leaves nothing behind."""
    net.stop(0, 1, 2, 3)
    net.start(0, 1, 2, 3)
    await honest_store_and_read(net, "after every restart")


class FakeStream:
    """Stands in for a libp2p stream in the guard's bookkeeping."""

    def __init__(self) -> None:
        self.was_reset = False

    async def reset(self) -> None:
        self.was_reset = True


async def test_guard_caps_each_outsider_and_all_outsiders_but_gives_members_their_own_room() -> None:
    # No network: the bookkeeping alone, with small caps.
    limits = Limits(streams_per_peer=2, outsider_streams=3, member_streams=2, header_bytes_per_peer=100,
                    outsider_header_bytes=150, member_header_bytes=100)
    guard = Guard(limits, members=["member"])
    first = await guard.open_stream("a", FakeStream())
    await guard.open_stream("a", FakeStream())
    with pytest.raises(Overloaded, match="peer a"):
        await guard.open_stream("a", FakeStream())  # a's third: over its own cap, nothing idle to close
    await guard.open_stream("b", FakeStream())
    with pytest.raises(Overloaded, match="all outsiders"):
        await guard.open_stream("c", FakeStream())  # the fourth outsider stream
    member = await guard.open_stream("member", FakeStream())  # members are not outsiders
    member.hold_header(100)
    # An idle stream (between requests) makes room for a new one of the same peer.
    first.first = False
    first.waiting_for_frame()
    await guard.open_stream("a", FakeStream())
    assert first.stream.was_reset
    # Header bytes: each outsider 100, all outsiders 150.
    with pytest.raises(Overloaded, match="peer b"):
        guard._peers["b"].watches.copy().pop().hold_header(101)
    [b] = guard._peers["b"].watches
    b.hold_header(90)
    [a1, a2] = guard._peers["a"].watches
    with pytest.raises(Overloaded, match="all outsiders"):
        a1.hold_header(61)
    a1.hold_header(60)
    # Everything is released when streams close.
    for watch in [a1, a2, b, member]:
        guard.close_stream(watch)
    assert guard.status()["outsiders"] == {"streams": 0, "header_bytes": 0, "body_bytes": 0}
    assert guard._peers == {}
