"""Soak: mixed file operations with fsync after each, while up to f peers are killed or stalled.

Seven peer processes (f = 2). One thread changes files in a mount: creates, O_TRUNC
overwrites (mostly shorter), appends, truncates, renames (also over existing files) and
deletes, with fsync after each change; a change counts as acknowledged once its fsync
returned. Another thread keeps at most f peers faulty at any time, each either SIGKILLed
and restarted later or SIGSTOPped and continued later. At the end every peer is back,
and a fresh mount and the writer after a remount must both show exactly the acknowledged
files: none lost, none wrong, none resurrected.

``WALRUSFS_SOAK_SECONDS`` sets how long the operations run (default 45; the README
records an 8-minute run, 480).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.mounting import MountedVolume, fsync, wait_for
from tests.test_network import Devnet, walrusfs
from walrusfs.devnet import running

SECONDS = float(os.environ.get("WALRUSFS_SOAK_SECONDS", "45"))
PEERS, F = 7, 2
FSYNC_LIMIT = 240.0  # one fsync waiting longer than this (all but f peers up) is a failure


class Faults(threading.Thread):
    """Keeps up to F peers killed or stalled, each for a few seconds, until told to stop."""

    def __init__(self, net: Devnet, seed: int) -> None:
        super().__init__(daemon=True)
        self.net = net
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.down: dict[int, tuple[str, float, int]] = {}  # peer -> (kind, until, pid)
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def _recover(self, peer: int) -> None:
        kind, _, pid = self.down.pop(peer)
        if kind == "stalled":
            os.kill(pid, signal.SIGCONT)
        else:
            result = walrusfs("devnet", "start", str(self.net.directory), "--peer", str(peer))
            if result.returncode != 0:
                self.errors.append(f"restart of peer {peer} failed: {result.stderr[-500:]}")

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(1.0, 4.0)):
                now = time.monotonic()
                for peer in [p for p, (_, until, _) in self.down.items() if until <= now]:
                    self._recover(peer)
                if len(self.down) >= F:
                    continue
                peer = self.rng.choice([p for p in range(PEERS) if p not in self.down])
                pid = running(self.net.directory).get(peer)
                if pid is None:
                    continue
                until = now + self.rng.uniform(3.0, 15.0)
                if self.rng.random() < 0.5:
                    os.kill(pid, signal.SIGSTOP)
                    self.down[peer] = ("stalled", until, pid)
                else:
                    walrusfs("devnet", "stop", str(self.net.directory), "--peer", str(peer), "--kill")
                    self.down[peer] = ("killed", until, pid)
                self.counts[self.down[peer][0]] += 1
        finally:
            for peer in list(self.down):
                self._recover(peer)


class Workload(threading.Thread):
    """Random changes to files in ``root``, each fsynced; records what was acknowledged."""

    def __init__(self, root: Path, seed: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.acknowledged: dict[str, bytes] = {}
        self.uncertain: set[str] = set()  # a change whose fsync failed: either outcome is right
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.slowest = 0.0
        self.fsync_seconds: list[float] = []
        self.finished = 0.0
        self._next = 0

    def _data(self) -> bytes:
        size = self.rng.choice([0, self.rng.randint(1, 4096), self.rng.randint(4097, 70_000),
                                self.rng.randint(70_001, 700_000)])
        return self.rng.randbytes(size)

    def _new_name(self) -> str:
        self._next += 1
        return f"f{self._next:05d}"

    def _synced(self, path: Path | None = None, fd: int | None = None) -> None:
        started = time.monotonic()
        if fd is not None:
            os.fsync(fd)
        else:
            assert path is not None
            fsync(path)
        took = time.monotonic() - started
        self.slowest = max(self.slowest, took)
        self.fsync_seconds.append(took)

    def step(self) -> None:
        names = sorted(self.acknowledged)
        ops: list[tuple[str, Callable[[], None]]] = [("create", self.create)] * (3 if len(names) < 40 else 1)
        if names:
            ops += [("overwrite", self.overwrite), ("overwrite", self.overwrite), ("append", self.append),
                    ("truncate", self.truncate), ("rename", self.rename), ("delete", self.delete)]
        kind, op = self.rng.choice(ops)
        op()
        self.counts[kind] += 1

    def create(self) -> None:
        name, data = self._new_name(), self._data()
        with open(self.root / name, "wb") as f:
            f.write(data)
            f.flush()
            self._synced(self.root / name)
        self.acknowledged[name] = data

    def overwrite(self) -> None:
        name = self.rng.choice(sorted(self.acknowledged))
        old = self.acknowledged[name]
        data = self._data() if self.rng.random() < 0.3 else self.rng.randbytes(self.rng.randint(0, max(1, len(old) // 2)))
        with open(self.root / name, "wb") as f:  # O_TRUNC
            f.write(data)
            f.flush()
            self._synced(fd=f.fileno())
        self.acknowledged[name] = data

    def append(self) -> None:
        name = self.rng.choice(sorted(self.acknowledged))
        extra = self.rng.randbytes(self.rng.randint(1, 50_000))
        with open(self.root / name, "ab") as f:
            f.write(extra)
            f.flush()
            self._synced(fd=f.fileno())
        self.acknowledged[name] += extra

    def truncate(self) -> None:
        name = self.rng.choice(sorted(self.acknowledged))
        old = self.acknowledged[name]
        size = self.rng.randint(0, len(old) + 20_000)
        os.truncate(self.root / name, size)
        self._synced(self.root / name)
        self.acknowledged[name] = old[:size].ljust(size, b"\0")

    def rename(self) -> None:
        names = sorted(self.acknowledged)
        source = self.rng.choice(names)
        target = self.rng.choice(names) if self.rng.random() < 0.3 else self._new_name()
        os.rename(self.root / source, self.root / target)
        self._synced(self.root)
        self.acknowledged[target] = self.acknowledged.pop(source)

    def delete(self) -> None:
        name = self.rng.choice(sorted(self.acknowledged))
        os.unlink(self.root / name)
        self._synced(self.root)
        del self.acknowledged[name]

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            before = dict(self.acknowledged)
            try:
                self.step()
            except OSError as exc:
                # Not acknowledged: the files it touched may hold either version.
                self.errors.append(f"{type(exc).__name__}: {exc}")
                changed = {n for n in set(before) | set(self.acknowledged) if before.get(n) != self.acknowledged.get(n)}
                self.uncertain |= changed or set(before)
        self.finished = time.monotonic()


def compare(view: Path, acknowledged: dict[str, bytes], uncertain: set[str]) -> tuple[list[str], list[str]]:
    """(lost, wrong) file names of ``view`` against the acknowledged contents."""
    present = {p.name for p in view.iterdir()}
    lost = [n for n in acknowledged if n not in present and n not in uncertain]
    wrong = [n for n in acknowledged if n in present and n not in uncertain
             and (view / n).read_bytes() != acknowledged[n]]
    resurrected = [n for n in present - set(acknowledged) - uncertain]
    return lost, wrong + [f"{n} (deleted, but present)" for n in resurrected]


def test_soak_mixed_operations_with_f_peers_killed_or_stalled(tmp_path: Path) -> None:
    vol = MountedVolume(tmp_path, PEERS)
    net = vol.net
    faults = Faults(net, seed=13)
    try:
        writer = vol.mount("writer", "--chunk-size", "256KiB")
        started = time.monotonic()
        work = Workload(writer.path, seed=13, deadline=started + SECONDS)
        faults.start()
        work.start()
        work.join(SECONDS + FSYNC_LIMIT)
        assert not work.is_alive(), f"an operation hung for over {FSYNC_LIMIT} s with at most f peers faulty"
        faults.stop_event.set()
        faults.join(120)
        assert not faults.is_alive()
        elapsed = work.finished - started
        fsyncs = sorted(work.fsync_seconds)
        median = fsyncs[len(fsyncs) // 2] if fsyncs else 0.0
        assert writer.process is not None and writer.process.poll() is None, "the mount process exited"
        assert wait_for(lambda: running(net.directory).keys() == set(range(PEERS)), limit=60)
        fsync(writer.path)
        fresh = vol.mount("fresh", "--chunk-size", "256KiB")
        lost, wrong = compare(fresh.path, work.acknowledged, work.uncertain)
        writer.stop()
        writer.start()
        lost_after_remount, wrong_after_remount = compare(writer.path, work.acknowledged, work.uncertain)
        print(f"\nsoak: {sum(work.counts.values())} operations in {elapsed:.0f} s {dict(work.counts)}; "
              f"faults {dict(faults.counts)}; fsync median {median:.2f} s, slowest {work.slowest:.1f} s; "
              f"{len(work.acknowledged)} files ({sum(map(len, work.acknowledged.values()))} bytes) acknowledged; "
              f"failed operations {len(work.errors)}, uncertain files {len(work.uncertain)}; "
              f"fresh mount: {len(lost)} lost, {len(wrong)} wrong; writer after remount: "
              f"{len(lost_after_remount)} lost, {len(wrong_after_remount)} wrong")
        assert not faults.errors, faults.errors
        assert not work.errors, work.errors[:5]
        assert (lost, wrong) == ([], []), (lost[:10], wrong[:10])
        assert (lost_after_remount, wrong_after_remount) == ([], []), (lost_after_remount[:10], wrong_after_remount[:10])
        assert sum(work.counts.values()) >= 20, work.counts
    finally:
        faults.stop_event.set()
        faults.join(120)
        vol.close()
