"""Stalled peers: progress whenever peers holding 2f + 1 shards answer, however silent the rest are.

A stalled peer keeps its sockets open and never answers: a peer paused with SIGSTOP
(``walrusfs devnet pause``) or one running ``--fault stall`` (it accepts connections and
requests, and answers nothing). At n = 4 every position is stalled in turn, so a random
choice of peer cannot hide a dependency on one; at n = 7 two peers stall for good. Every
command must succeed with correct bytes. The subprocess timeouts only stop a hang; the
timings are printed, and the ratio targets live in ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import MountedVolume, fsync, wait_for
from tests.test_network import Devnet, walrusfs

LIMIT = 60.0  # a command that takes longer than this with f peers stalled is hung


def timed(*args: str, committee: Path) -> tuple[float, object]:
    started = time.monotonic()
    result = walrusfs(*args, committee=committee, timeout=LIMIT)
    return time.monotonic() - started, result


def exercise_cli(net: Devnet, tmp_path: Path, stalled: list[int], tag: str) -> dict[str, float]:
    """store, read, blob-status, log, health and audit start with ``stalled`` peers silent; their times."""
    times: dict[str, float] = {}
    data = random.Random(tag).randbytes(1 << 20)
    source = tmp_path / f"blob-{tag}"
    source.write_bytes(data)
    times["store"], stored = timed("store", str(source), "--json", committee=net.committee)
    assert stored.returncode == 0, stored.stderr
    blob = json.loads(stored.stdout)["blobId"]
    out = tmp_path / f"read-{tag}"
    times["read"], read = timed("read", blob, "-o", str(out), committee=net.committee)
    assert read.returncode == 0, read.stderr
    assert out.read_bytes() == data
    times["blob-status"], status = timed("blob-status", blob, "--json", committee=net.committee)
    assert status.returncode == 0, status.stderr
    peers = json.loads(status.stdout)["peers"]
    for k in stalled:
        assert not peers[k]["reachable"] and "unresponsive" in peers[k]["error"], peers[k]
    times["log"], logged = timed("log", "--json", committee=net.committee)
    assert logged.returncode == 0, logged.stderr
    assert blob in logged.stdout
    times["health"], health = timed("health", "--json", committee=net.committee)
    assert health.returncode == 1  # a peer is unresponsive: not healthy, but answered in time
    report = json.loads(health.stdout)
    assert [k for k, s in enumerate(report) if not s["reachable"]] == stalled, report
    times["audit start"], audit = timed("audit", "start", "--no-wait", "--sample", "1", committee=net.committee)
    # A round the previous case started may still be open: refusing is then the right answer.
    assert audit.returncode == 0 or "is still" in audit.stderr, audit.stderr
    print(f"\n{tag}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return times


@pytest.fixture(scope="module")
def net4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("stall4"), 4)
    try:
        yield net
    finally:
        net.down()


@pytest.mark.parametrize("position", range(4))
def test_every_command_works_with_any_one_of_4_peers_paused(net4: Devnet, tmp_path: Path, position: int) -> None:
    walrusfs("devnet", "pause", str(net4.directory), "--peer", str(position), check=True)
    try:
        exercise_cli(net4, tmp_path, [position], f"n4-paused-{position}")
    finally:
        walrusfs("devnet", "resume", str(net4.directory), "--peer", str(position), check=True)


def test_two_of_7_peers_stalled_for_good(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "net", 7, {5: "stall", 6: "stall"})
    try:
        exercise_cli(net, tmp_path, [5, 6], "n7-fault-stall")
    finally:
        net.down()


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedVolume]:
    volume = MountedVolume(tmp_path_factory.mktemp("stall-mount"), 4)
    try:
        yield volume
    finally:
        volume.close()


def test_mount_works_with_a_paused_peer_and_it_catches_up(vol: MountedVolume, tmp_path: Path) -> None:
    writer = vol.mount("writer")
    second = vol.mount("second")
    paused = 2
    walrusfs("devnet", "pause", str(vol.net.directory), "--peer", str(paused), check=True)
    files = {f"small-{k}": random.Random(k).randbytes(3000 + k) for k in range(3)}
    files["big"] = random.Random(99).randbytes(10 << 20)
    try:
        started = time.monotonic()
        for name, data in files.items():
            (writer.path / name).write_bytes(data)
            fsync(writer.path / name)
        print(f"\nwrites + fsyncs with a paused peer: {time.monotonic() - started:.1f} s")
        assert wait_for(lambda: all((second.path / n).exists() and (second.path / n).read_bytes() == d
                                    for n, d in files.items()), limit=30), "the second mount did not see the files"
        fresh = vol.mount("fresh-reader", volume=vol.volume_id, config=vol.root / "no-keys")
        started = time.monotonic()
        for name, data in files.items():
            assert (fresh.path / name).read_bytes() == data
        print(f"fresh read-only mount read everything in {time.monotonic() - started:.1f} s")
        fresh.stop()
    finally:
        walrusfs("devnet", "resume", str(vol.net.directory), "--peer", str(paused), check=True)

    def caught_up() -> bool:
        report = json.loads(walrusfs("health", "--json", committee=vol.net.committee, timeout=LIMIT).stdout)
        s = report[paused]
        return s["reachable"] and s["healing"]["missing"] == 0 and s["healing"]["held"] == s["healing"]["certified"]
    assert wait_for(caught_up, limit=120, step=2), "the resumed peer did not heal what it missed"
    assert writer.process is not None and writer.process.poll() is None
    assert os.path.ismount(writer.path)
