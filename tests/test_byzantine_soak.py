"""Soak: a mount writes and reads while one member answers with garbage and one outsider floods.

Four peer processes (f = 1). Peer 3 runs ``--fault hostile``: every reply it gives is
generated junk made from the honest one (wrong types, huge values, junk entries, junk
headers and bodies). An outsider with no key in the committee and no volume of ours keeps,
for the whole run, up to ``IDLE`` idle TCP connections open to each honest peer (churning
them), opens libp2p streams whose request header stalls half-way, and pushes namespace
entries for volumes it makes up (allowed today: anyone may create a volume). Meanwhile the
mount creates, overwrites, appends, truncates, renames, deletes (fsync after each) and
reads back what it acknowledged. At the end a fresh mount and the writer after a remount
must show exactly the acknowledged files, every honest peer must be alive, and their peak
RSS must stay bounded.

``WALRUSFS_BYZANTINE_SOAK_SECONDS`` sets how long the operations run (default 30).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

import cbor2
import trio
from nacl.signing import SigningKey

from p2p.framing import FrameReader
from p2p.host import peer_info, running_host
from tests.mounting import MountedVolume, fsync, wait_for
from tests.procstat import rss_mib
from tests.test_soak import Workload, compare
from walrusfs.core import messages as m
from walrusfs.core.committee import parse_committee
from walrusfs.core.log import GENESIS, NAMESPACE, delegate_device, sign_entry
from walrusfs.core.namespace import ROOT
from walrusfs.devnet import running

SECONDS = float(os.environ.get("WALRUSFS_BYZANTINE_SOAK_SECONDS", "30"))
HOSTILE, HONEST = 3, (0, 1, 2)
IDLE = 60  # idle TCP connections the outsider holds open to each honest peer
RSS_LIMIT_MIB = 400  # an honest peer idles near 100 MiB; the flood may not grow it without bound


class Reading(Workload):
    """The soak's workload, plus reads of acknowledged files checked byte for byte."""

    def __init__(self, root: Path, seed: int, deadline: float) -> None:
        super().__init__(root, seed, deadline)
        self.wrong_reads: list[str] = []

    def step(self) -> None:
        if self.acknowledged and self.rng.random() < 0.3:
            name = self.rng.choice(sorted(self.acknowledged))
            if name not in self.uncertain and (self.root / name).read_bytes() != self.acknowledged[name]:
                self.wrong_reads.append(name)
            self.counts["read"] += 1
            return
        super().step()


class Outsider(threading.Thread):
    """Floods the honest peers with idle connections, stalled headers and made-up volumes' entries."""

    def __init__(self, committee_file: Path, pids: dict[int, int], deadline: float) -> None:
        super().__init__(daemon=True)
        self.committee = parse_committee(committee_file.read_text())
        self.pids = pids
        self.deadline = deadline
        self.counts = {"connections": 0, "stalled headers": 0, "entries pushed": 0, "entries accepted": 0}
        self.peak: dict[int, int] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            trio.run(self._flood)
        except BaseException as exc:  # the test reports it; a flood tool that breaks proves nothing
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def _flood(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._idle_connections)
            nursery.start_soon(self._stalled_headers)
            nursery.start_soon(self._entries)
            nursery.start_soon(self._watch_memory)

    def _address(self, peer: int) -> tuple[str, int]:
        parts = self.committee.peers[peer].addrs[0].split("/")
        return parts[2], int(parts[4])

    async def _idle_connections(self) -> None:
        held: list[socket.socket] = []
        rng = random.Random(1)
        try:
            while time.monotonic() < self.deadline:
                while len(held) < IDLE * len(HONEST):
                    sock = socket.socket()
                    sock.setblocking(False)
                    try:
                        sock.connect(self._address(HONEST[len(held) % len(HONEST)]))
                    except BlockingIOError:
                        pass
                    held.append(sock)
                    self.counts["connections"] += 1
                for _ in range(10):  # churn: the oldest few go, new ones come
                    held.pop(rng.randrange(len(held))).close()
                await trio.sleep(0.5)
        finally:
            for sock in held:
                sock.close()

    async def _stalled_headers(self) -> None:
        # A libp2p stream that declares a 1 MiB header and sends 100 bytes of it, then waits.
        while time.monotonic() < self.deadline:
            with trio.move_on_after(10):
                async with running_host(os.urandom(32)) as host:
                    for peer in HONEST:
                        target = self.committee.peers[peer]
                        info = peer_info(target.peer_id, target.addrs)
                        with trio.move_on_after(3):
                            await host.connect(info)
                            for _ in range(5):
                                stream = await host.new_stream(info.peer_id, [m.GET_METADATA])
                                await stream.write(struct.pack(">I", 1 << 20) + b"\xa1" * 100)
                                self.counts["stalled headers"] += 1
                    await trio.sleep(5)
            await trio.sleep(0.5)

    async def _entries(self) -> None:
        async with running_host(os.urandom(32)) as host:
            infos = []
            for peer in HONEST:
                target = self.committee.peers[peer]
                infos.append(peer_info(target.peer_id, target.addrs))
            k = 0
            while time.monotonic() < self.deadline:
                volume, device = SigningKey(os.urandom(32)), SigningKey(os.urandom(32))
                delegation = delegate_device(volume, bytes(device.verify_key))
                prev, entries = GENESIS, []
                for seq in range(1, 11):
                    payload = {"volume": bytes(volume.verify_key), "delegation": delegation,
                               "op": {"kind": "mkdir", "args": {"parent": ROOT, "name": f"junk{seq}", "node": os.urandom(32)}}}
                    entry = sign_entry(device, seq, prev, int(time.time() * 1000) << 16, NAMESPACE, payload)
                    prev = entry.id
                    entries.append(entry.encode())
                info = infos[k % len(infos)]
                k += 1
                with trio.move_on_after(5):
                    try:
                        await host.connect(info)
                        stream = await host.new_stream(info.peer_id, [m.LOG_PUSH])
                        header = m.request(entries=entries)
                        await stream.write(struct.pack(">I", len(header)) + header + struct.pack(">Q", 0))
                        await stream.close()
                        self.counts["entries pushed"] += len(entries)
                        reply = cbor2.loads(await FrameReader(stream).read_header(m.MAX_HEADER))
                        self.counts["entries accepted"] += sum(r[0] == "accepted" for r in reply.get("results", []))
                    except Exception:
                        pass  # a refused push is the peer defending itself
                await trio.sleep(1.0)

    async def _watch_memory(self) -> None:
        while time.monotonic() < self.deadline:
            for peer, pid in self.pids.items():
                try:
                    self.peak[peer] = max(self.peak.get(peer, 0), rss_mib(pid))
                except OSError:
                    pass  # a peer that died: the test checks who is alive at the end
            await trio.sleep(1.0)


def test_soak_with_a_garbage_member_and_a_flooding_outsider(tmp_path: Path) -> None:
    vol = MountedVolume(tmp_path, 4, {HOSTILE: "hostile"})
    net = vol.net
    try:
        writer = vol.mount("writer", "--chunk-size", "256KiB")
        pids = {k: pid for k, pid in running(net.directory).items() if k in HONEST}
        assert set(pids) == set(HONEST)
        before = {k: rss_mib(pid) for k, pid in pids.items()}
        started = time.monotonic()
        work = Reading(writer.path, seed=15, deadline=started + SECONDS)
        outsider = Outsider(net.committee, pids, deadline=started + SECONDS)
        outsider.start()
        work.start()
        work.join(SECONDS + 240)
        assert not work.is_alive(), "an operation hung for minutes with only one faulty member"
        outsider.join(60)
        assert not outsider.is_alive()
        alive = running(net.directory)
        assert all(alive.get(k) == pids[k] for k in HONEST), f"an honest peer died: {alive} (was {pids})"
        assert writer.process is not None and writer.process.poll() is None, "the mount process exited"
        fsync(writer.path)
        fresh = vol.mount("fresh", "--chunk-size", "256KiB")
        lost, wrong = compare(fresh.path, work.acknowledged, work.uncertain)
        writer.stop()
        writer.start()
        lost_again, wrong_again = compare(writer.path, work.acknowledged, work.uncertain)
        print(f"\nbyzantine soak: {sum(work.counts.values())} operations in {SECONDS:.0f} s {dict(work.counts)}; "
              f"outsider {outsider.counts}; honest RSS MiB before {before}, peak {outsider.peak}; "
              f"{len(work.acknowledged)} files acknowledged, {len(work.errors)} failed operations; "
              f"fresh mount {len(lost)} lost {len(wrong)} wrong; remount {len(lost_again)} lost {len(wrong_again)} wrong")
        assert not outsider.errors, outsider.errors
        assert not work.errors, work.errors[:5]
        assert not work.wrong_reads, work.wrong_reads[:10]
        assert (lost, wrong) == ([], []), (lost[:10], wrong[:10])
        assert (lost_again, wrong_again) == ([], []), (lost_again[:10], wrong_again[:10])
        assert sum(work.counts.values()) >= 15, work.counts
        assert max(outsider.peak.values()) < RSS_LIMIT_MIB, outsider.peak
        assert wait_for(lambda: all(running(net.directory).get(k) == pids[k] for k in HONEST), limit=5)
    finally:
        vol.close()
