"""The main job (examples/local_volume.py) stops like Ctrl-C on SIGHUP (its terminal closed) and SIGTERM.

It waits for pending uploads, unmounts and stops its 7 peers: nothing is left mounted, dead or
running. The second run reuses the first one's peers and volume and finds the file written
just before the first run's SIGHUP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mounting import fusermount_u
from tests.test_network import EXE
from walrusfs.devnet import running

REPO = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def run_until_signalled(base: Path, signum: signal.Signals, expect: list[str]) -> None:
    """Start the main job, check the files in ``expect``, write one more, signal it, check it cleaned up."""
    job = subprocess.Popen([sys.executable, str(REPO / "examples" / "local_volume.py"), "--dir", str(base)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    mnt = base / "mnt"
    try:
        seen = []
        deadline = time.monotonic() + 180
        for line in job.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "is mounted at" in line or time.monotonic() > deadline:
                break
        assert os.path.ismount(mnt), "".join(seen)
        mount_pid = json.loads(os.getxattr(mnt, "user.walrus.status"))["pid"]
        peers = list(running(base / "net").values())
        assert len(peers) == 7
        for name in expect:
            assert (mnt / name).read_text() == "uploaded before unmounting"
        (mnt / f"before-{signum.name}.txt").write_text("uploaded before unmounting")
        job.send_signal(signum)
        out, _ = job.communicate(timeout=180)
        assert job.returncode == 0, "".join(seen) + out
        assert f"{signum.name}: waiting for pending uploads" in out and "unmounted and stopped the peers" in out
        assert not os.path.ismount(mnt) and gone(mount_pid)
        assert all(gone(pid) for pid in peers) and not running(base / "net")
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        fusermount_u(mnt)


def test_main_job_stops_cleanly_on_sighup_then_sigterm(tmp_path: Path) -> None:
    try:
        run_until_signalled(tmp_path, signal.SIGHUP, [])
        run_until_signalled(tmp_path, signal.SIGTERM, ["before-SIGHUP.txt"])
    finally:
        subprocess.run([EXE, "devnet", "down", str(tmp_path / "net")], capture_output=True)
