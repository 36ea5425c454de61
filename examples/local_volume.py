"""The main job: a local network of 7 storage peers and a mounted walrusfs volume.

Starts ``walrusfs devnet up`` (7 peer processes on 127.0.0.1), creates a volume, mounts it
at ``walrusfs-demo/mnt`` (or ``--dir DIR/mnt``) and waits; use the mount from another
terminal with any file tool. Ctrl-C, SIGTERM or SIGHUP (the terminal closed) waits for
pending uploads, unmounts and stops the peers. ``--check`` instead writes a file, fsyncs it, reads it back through
a second, read-only mount and exits.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EXE = str(Path(sys.executable).parent / "walrusfs")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(Exception):
    """A signal asked the main job to stop (it then cleans up like Ctrl-C)."""


def _stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def say(text: str) -> None:
    """Print, unless the terminal is gone (after SIGHUP)."""
    try:
        print(text, flush=True)
    except OSError:
        pass


def walrusfs(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the walrusfs CLI."""
    result = subprocess.run([EXE, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise SystemExit(f"walrusfs {' '.join(args)} failed:\n{result.stderr}")
    return result


def start_mount(mountpoint: Path, volume: str, committee: Path, state: Path, env: dict[str, str],
                log: Path) -> subprocess.Popen[bytes]:
    """Start a mount process and wait until the kernel shows the mount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # Its own session: Ctrl-C or a closed terminal reach this job, which unmounts after
        # the uploads, instead of the mount, which would stop at once.
        process = subprocess.Popen([EXE, "mount", str(mountpoint), "--volume", volume, "--committee", str(committee),
                                    "--state", str(state)], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                   start_new_session=True)
    for _ in range(600):
        if os.path.ismount(mountpoint):
            return process
        if process.poll() is not None:
            raise SystemExit(f"the mount exited:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the mount did not appear in 60 s:\n{log.read_text()[-2000:]}")


def main() -> None:
    """Run the local volume until interrupted (or once through with --check)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("walrusfs-demo"), help="where everything lives")
    parser.add_argument("--check", action="store_true", help="write, fsync, read back via a second mount, exit")
    args = parser.parse_args()
    base = args.dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WALRUSFS_CONFIG_DIR": str(base / "config")}
    net, mnt = base / "net", base / "mnt"
    committee = net / "committee.toml"
    if os.path.ismount(mnt):
        raise SystemExit(f"{mnt} is still mounted from an earlier run; run: walrusfs umount {mnt}")
    if _dead(mnt):
        # The mount of an earlier run was killed: clean it (its staged files upload now).
        walrusfs("umount", str(mnt), env=env)
    mounts: list[tuple[Path, subprocess.Popen[bytes]]] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        if not committee.exists():
            # Peers challenge each other by themselves: a round of 16 blobs per 50 certified.
            walrusfs("devnet", "up", "--challenge-every", "50", "--challenge-sample", "16", str(net), env=env)
        else:
            walrusfs("devnet", "down", str(net), env=env, check=False)
            for index in range(len(list(net.glob("peer-*")))):
                walrusfs("devnet", "start", str(net), "--peer", str(index), env=env)
        listed = json.loads(walrusfs("volume", "list", "--json", env=env).stdout)
        volume = next((v["volumeId"] for v in listed if v["name"] == "demo"), None)
        if volume is None:
            volume = json.loads(walrusfs("volume", "create", "demo", "--json", env=env).stdout)["volumeId"]
        mounts.append((mnt, start_mount(mnt, "demo", committee, base / "state", env, base / "mount.log")))
        say(f"7 peers are running (committee: {committee}); volume demo ({volume}) is mounted at {mnt}")
        if args.check:
            data = os.urandom(3 << 20)
            with open(mnt / "hello.bin", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # returns once certified by 2f+1 peers and in the log
            reader_mnt = base / "mnt-readonly"
            # Another user holds no keys: the volume is private, so it gets a read capability.
            read_cap = walrusfs("volume", "share", "demo", "--read", env=env).stdout.strip()
            mounts.append((reader_mnt, start_mount(reader_mnt, read_cap, committee, base / "state-ro",
                                                   {**env, "WALRUSFS_CONFIG_DIR": str(base / "no-keys")},
                                                   base / "mount-ro.log")))
            for _ in range(300):
                if (reader_mnt / "hello.bin").exists():
                    break
                time.sleep(0.1)
            same = hashlib.sha256((reader_mnt / "hello.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
            blobs = os.getxattr(mnt / "hello.bin", "user.walrus.blob_ids").decode().split()
            say(f"hello.bin: 3 MiB in {len(blobs)} chunk(s) {blobs}; read back through a read-only mount: "
                f"{'sha256 matches' if same else 'MISMATCH'}")
            if not same:
                raise SystemExit(1)
            return
        peer0_metrics = json.loads((net / "metrics.json").read_text())["0"]
        print(f"""
Try, in another terminal:
  cp /etc/services {mnt}/ && cat {mnt}/services | head
  mkdir {mnt}/photos && ls -la {mnt}
  getfattr -d -m user.walrus {mnt}/services        # blob IDs and certificate entries
  {EXE} status {mnt}                # pending uploads; the volume is private (peers see ciphertext)
  {EXE} volume share demo --read    # a capability that mounts it read-only elsewhere
  {EXE} health --committee {committee}
  {EXE} audit start --committee {committee} --key {net}/peer-0
      # a storage challenge round now, authorized by member 0 (only members start rounds;
      # peers also start one per 50 certified blobs)
  {EXE} audit history --committee {committee}
  curl -s http://{peer0_metrics}/metrics | grep ^walrusfs_peer_stored
      # Prometheus metrics (every peer's address: {net}/metrics.json)
  {EXE} devnet stop {net} --peer 3      # the volume keeps working with f = 2 peers down
Press Ctrl-C here (or close the terminal) to wait for uploads, unmount and stop the peers.""", flush=True)
        while mounts[0][1].poll() is None:
            time.sleep(0.5)
        say(f"the mount exited by itself (exit {mounts[0][1].returncode}); see {base / 'mount.log'}")
    except Stop as stop:
        say(f"{stop}: waiting for pending uploads, then unmounting and stopping the peers")
    finally:
        # Cleaning up is not cut short by another signal: Ctrl-C reaches `walrusfs umount`
        # (same terminal), which stops waiting for the uploads; they resume at the next run.
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda *_: None)
        for path, process in reversed(mounts):
            if os.path.ismount(path):
                walrusfs("umount", str(path), env=env, check=False)
            if os.path.ismount(path) or _dead(path):
                walrusfs("umount", "--no-wait", str(path), env=env, check=False)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        walrusfs("devnet", "down", str(net), env=env, check=False)
        say("unmounted and stopped the peers")


def _dead(path: Path) -> bool:
    """Whether ``path`` is a mount whose process exited ("Transport endpoint is not connected")."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


if __name__ == "__main__":
    main()
