"""Helpers for tests that mount volumes: a ``walrusfs mount`` process that always unmounts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.test_network import EXE, Devnet, walrusfs


def volume_env(config: Path, state: Path) -> dict[str, str]:
    """Environment naming a config directory (volume keys) and a state directory."""
    return {**os.environ, "WALRUSFS_CONFIG_DIR": str(config), "WALRUSFS_STATE_DIR": str(state)}


def share(config: Path, name: str, kind: str = "read") -> str:
    """The ``read``, ``verify`` or ``write`` capability of a volume whose keys live in ``config``."""
    result = subprocess.run([EXE, "volume", "share", name, f"--{kind}"], capture_output=True, text=True,
                            env=volume_env(config, config), check=True)
    return result.stdout.strip()


def create_volume(config: Path, name: str, *options: str) -> str:
    """Make a volume (private unless ``--public`` is among ``options``) whose keys live in ``config``; return its ID."""
    result = subprocess.run([EXE, "volume", "create", name, "--json", *options], capture_output=True, text=True,
                            env={**os.environ, "WALRUSFS_CONFIG_DIR": str(config)}, timeout=60, check=True)
    return json.loads(result.stdout)["volumeId"]


def fsync(path: Path) -> None:
    """fsync a file (certified and logged) or a mount's directory (everything it has pending)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fusermount_u(path: Path) -> None:
    """Unmount, lazily if busy; never raises."""
    if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


class Mount:
    """A mount served by its own process (file I/O from the serving process would deadlock).

    ``volume`` is a name or ID (``--volume``), or a capability string (``--cap``).
    """

    def __init__(self, committee: Path, mountpoint: Path, volume: str, config: Path, state: Path,
                 *extra: str) -> None:
        self.committee = committee
        self.path = mountpoint
        self.volume = volume
        self.config = config
        self.state = state
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = state.parent / f"{state.name}.log"
        mountpoint.mkdir(parents=True, exist_ok=True)
        state.parent.mkdir(parents=True, exist_ok=True)

    def start(self, limit: float = 90.0) -> Mount:
        """Start the mount process and wait until the kernel shows the mount."""
        which = "--cap" if self.volume.startswith("walrusfs-") else "--volume"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [EXE, "mount", str(self.path), which, self.volume, "--committee", str(self.committee),
                 "--state", str(self.state), *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=volume_env(self.config, self.state.parent),
            )
        deadline = time.monotonic() + limit
        while not os.path.ismount(self.path):
            if self.process.poll() is not None:
                raise AssertionError(f"mount exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mount did not appear in {limit} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def status(self) -> dict:
        """The mount's status (what ``walrusfs status --json`` prints)."""
        return json.loads(os.getxattr(self.path, "user.walrus.status"))

    def sync(self) -> None:
        """Wait until every upload and namespace entry of this mount is in the log."""
        fsync(self.path)

    def stop(self, limit: float = 60.0) -> None:
        """Unmount and wait for the process to exit (killing it if it will not)."""
        if os.path.ismount(self.path):
            fusermount_u(self.path)
        if self.process is not None:
            try:
                self.process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        if os.path.ismount(self.path):
            fusermount_u(self.path)

    def kill(self) -> None:
        """SIGKILL the mount process (a crash) and clear the dead mount."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        fusermount_u(self.path)


class MountedVolume:
    """A devnet of ``peers`` processes, one volume, and the mounts made of it (all stopped in ``close``)."""

    def __init__(self, root: Path, peers: int = 7, faults: dict[int, str] | None = None,
                 devnet_options: tuple[str, ...] = (), volume_options: tuple[str, ...] = ()) -> None:
        self.root = root
        self.net = Devnet(root / "net", peers, faults, *devnet_options)
        self.config = root / "config"
        self.mounts: list[Mount] = []
        try:
            self.volume_id = create_volume(self.config, "vol", *volume_options)
            #: What another user mounts read-only (a private volume's ID alone reads nothing).
            self.read_cap = share(self.config, "vol", "read")
        except BaseException:
            self.net.down()  # never leave peer processes behind a failed setup
            raise

    def mount(self, name: str, *extra: str, volume: str = "vol", config: Path | None = None,
              start: bool = True) -> Mount:
        """A mount of the volume (by name, with the key) in its own process and state directory."""
        mount = Mount(self.net.committee, self.root / f"mnt-{name}", volume, config or self.config,
                      self.root / "state" / name, *extra)
        self.mounts.append(mount)
        return mount.start() if start else mount

    def close(self) -> None:
        """Unmount everything, then stop the peers."""
        for mount in self.mounts:
            mount.stop()
        self.net.down()


def wait_for(predicate, limit: float = 30.0, step: float = 0.2) -> bool:  # noqa: ANN001
    """Poll ``predicate`` until true or ``limit`` seconds passed; return the last result."""
    deadline = time.monotonic() + limit
    while True:
        try:
            if predicate():
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


__all__ = ["Mount", "MountedVolume", "create_volume", "fsync", "fusermount_u", "volume_env", "wait_for", "walrusfs"]
