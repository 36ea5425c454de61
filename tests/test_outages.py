"""Mounts and peers that outlive outages: quorum lost mid-upload, every peer restarting, a full disk.

A 4-peer devnet (f = 1) in real processes. Peers are killed (SIGKILL), stalled (SIGSTOP:
sockets open, nothing answers) or stopped; the mount process must still be running
afterwards, fsync must never report success while the peers are away (and a signal must
interrupt it), and once the peers are back every staged file must be certified and read
back bit-exactly by a fresh mount. What a test waits for is bounded; every stopped peer is
continued and every mount unmounted in ``finally``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import MountedVolume, volume_env, wait_for
from tests.test_network import EXE, Devnet, walrusfs
from walrusfs.client.blob import DELIVER_ENV, GRACE_PERIOD
from walrusfs.core.committee import parse_committee
from walrusfs.devnet import peer_dir, running

FSYNC_CHILD = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("fsyncing", flush=True)
os.fsync(fd)
print("synced", flush=True)
"""


class Net(MountedVolume):
    """A 4-peer devnet and a volume."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 4)

    def pid(self, index: int) -> int:
        return running(self.net.directory)[index]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("outages"))
    try:
        yield n
    finally:
        n.close()


def sync_within(path: Path, limit: float) -> None:
    """fsync ``path`` in a child process (a hang must fail the test, not freeze it)."""
    child = subprocess.run([sys.executable, "-c", FSYNC_CHILD, str(path)], capture_output=True, text=True,
                           timeout=limit)
    assert child.returncode == 0 and "synced" in child.stdout, child.stderr


def write_files(directory: Path, prefix: str, seed: int) -> dict[str, bytes]:
    """A few files of different shapes: empty, small, several chunks (the devnet mounts use 1 MiB chunks)."""
    rng = random.Random(seed)
    files = {f"{prefix}-empty": b"", f"{prefix}-small": rng.randbytes(3000),
             f"{prefix}-multi": rng.randbytes((2 << 20) + 12345)}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def assert_fresh_mount_reads(net: Net, name: str, files: dict[str, bytes]) -> None:
    """A new mount (empty cache, its own view of the log) reads every file bit-exactly."""
    fresh = net.mount(name)
    try:
        for file, data in files.items():
            assert wait_for(lambda: (fresh.path / file).exists(), limit=30), f"{file} missing in a fresh mount"
            assert (fresh.path / file).read_bytes() == data, f"{file} differs in a fresh mount"
    finally:
        fresh.stop()


#: Seconds the writer's stores give a stalled peer past the grace period (30 by default).
DELIVER = 4.0


def test_mount_outlives_losing_quorum_mid_upload_and_fsync_waits(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DELIVER_ENV, str(DELIVER))  # the mount process inherits it
    writer = net.mount("writer", "--chunk-size", "1MiB")
    killed, stalled = 3, 2
    stalled_pid = net.pid(stalled)
    net.net.stop(killed, kill=True)
    os.kill(stalled_pid, signal.SIGSTOP)
    try:
        files = write_files(writer.path, "outage", 1)
        child = subprocess.Popen([sys.executable, "-c", FSYNC_CHILD, str(writer.path / "outage-multi")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Past the point where stores to the stalled peer give up (the mount used to exit
        # then): GRACE_PERIOD + DELIVER s, and a first retry after it.
        time.sleep(GRACE_PERIOD + DELIVER + 8)
        assert writer.process is not None and writer.process.poll() is None, writer.log.read_text()[-3000:]
        assert child.poll() is None, f"fsync returned while 2 of 4 peers were away: {child.communicate()}"
        pending = writer.status()["pending"]
        assert pending, "nothing pending although no upload can be certified"
        assert any(p["error"] and p["attempts"] >= 1 for p in pending), pending
        # The stalled peer was given up on (what the mount used to exit over), and it lives on.
        assert any(f"no answer within {GRACE_PERIOD + DELIVER:.0f} s" in (p["error"] or "") for p in pending), pending
        print("status while quorum is lost:", json.dumps(pending)[:600])
        # A signal interrupts the waiting fsync (EINTR), which never reported success.
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=15)
        assert "synced" not in out and child.returncode == -signal.SIGTERM
    finally:
        os.kill(stalled_pid, signal.SIGCONT)
        net.net.start(killed)
    started = time.monotonic()
    sync_within(writer.path, 180)
    print(f"everything certified {time.monotonic() - started:.1f} s after the peers returned")
    assert writer.process is not None and writer.process.poll() is None
    assert writer.status()["pending"] == []
    assert_fresh_mount_reads(net, "fresh-after-quorum-loss", files)


def test_mount_outlives_every_peer_restarting_and_starts_without_peers(net: Net) -> None:
    writer = net.mounts[0] if net.mounts else net.mount("writer")
    if writer.process is None:
        writer.start()
    peers = list(range(4))
    net.net.stop(*peers)
    try:
        files = write_files(writer.path, "restart", 2)
        time.sleep(5)  # several log-sync rounds with no peer answering
        assert writer.process is not None and writer.process.poll() is None, writer.log.read_text()[-3000:]
        assert writer.status()["log_error"], "the status should say the log cannot be reached"
        # Unmount with the files still staged, and mount again while every peer is down:
        # the mount comes up and serves what it has staged.
        writer.stop()
        writer.start(limit=60)
        for file, data in files.items():
            assert (writer.path / file).read_bytes() == data
        # A first mount has nothing to serve: it gives up with one line, not a traceback.
        fresh_dir = net.root / "mnt-no-peers"
        fresh_dir.mkdir()
        result = subprocess.run(
            [EXE, "mount", str(fresh_dir), "--volume", "vol", "--committee", str(net.net.committee),
             "--state", str(net.root / "state" / "no-peers"), "--startup-timeout", "3"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env=volume_env(net.config, net.root / "state"),
        )
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: no committee peer served the log within 3 s") and len(last) < 400, last
    finally:
        net.net.start(*peers)
    sync_within(writer.path, 180)
    assert writer.process is not None and writer.process.poll() is None
    assert_fresh_mount_reads(net, "fresh-after-restart", files)


def fill(path: Path) -> None:
    """Write to ``path`` until its filesystem has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 4096, 1):
            while True:
                try:
                    if os.write(fd, b"\xff" * block) < block:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)


def _health(net: Devnet) -> list[dict]:
    return json.loads(walrusfs("health", "--json", committee=net.committee, timeout=120).stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_refuses_uploads_keeps_the_peer_up_and_heals_when_space_returns(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "net", 4)
    victim = 3
    directory = peer_dir(net.directory, victim)
    saved = tmp_path / "saved"
    mounted = False
    try:
        net.stop(victim)
        shutil.move(directory, saved)
        directory.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(directory)], check=True)
        mounted = True
        shutil.copytree(saved, directory, dirs_exist_ok=True)
        net.start(victim)
        filler = directory / "filler"
        fill(filler)
        assert shutil.disk_usage(directory).free < (1 << 20)
        # Up (started and answering) and seeing its full disk before anything is stored.
        assert wait_for(lambda: _health(net)[victim].get("disk_full"), limit=30, step=1), _health(net)[victim]
        victim_id = parse_committee(net.committee.read_text()).peers[victim].peer_id
        blobs = []
        for k in range(3):
            # A store returns once the others' quorum and the grace passed; a refusal that
            # comes later (the peer descheduled on a loaded machine) is reported as "no
            # confirmation before the store finished". Only then is another blob tried (the
            # same one again would be confirmed at once by the peers that hold it).
            for attempt in range(3):
                source = tmp_path / f"blob-{k}-{attempt}"
                source.write_bytes(random.Random(10 * k + attempt).randbytes(300_000 + k))
                result = net.store_ok(source)
                why = result.get("failures", {}).get(victim_id, "")
                if "disk-full" in why:
                    break
                assert "no confirmation before the store finished" in why, result
                print(f"blob {k}: the full peer answered after the store finished; storing it again")
            assert "disk-full" in why, result
            blobs.append(result["blobId"])
        pid = running(net.directory)[victim]
        assert Path(f"/proc/{pid}").exists()
        status = _health(net)[victim]
        assert status["reachable"] and status["disk_full"], status
        # A restart while the disk is still full comes up again (no crash loop).
        net.stop(victim)
        net.start(victim)
        assert _health(net)[victim]["reachable"]
        # Space returns: it accepts again and heals what it missed.
        filler.unlink()

        def healed() -> bool:
            s = _health(net)[victim]
            return s["reachable"] and not s["disk_full"] and s["healing"]["missing"] == 0 and \
                s["healing"]["held"] == s["healing"]["certified"] >= 3
        assert wait_for(healed, limit=120, step=2), json.dumps(_health(net)[victim]) + (directory / "peer.log").read_text()[-3000:]
        for blob in blobs:
            out = tmp_path / f"read-{blob}"
            assert net.read(blob, out).returncode == 0
    finally:
        net.down()
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)
