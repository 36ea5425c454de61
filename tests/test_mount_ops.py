"""Running a mount the way people keep one running (issue 18): other users, background, boot, crashes.

One 4-peer devnet and one volume serve the module. Covered: --allow-other with the kernel
checking permissions for another user (uid 65534), --uid/--gid/--umask; --background that
returns once the mount serves and fails with the mount's error; READY=1 on a fake
$NOTIFY_SOCKET; ``mount -t fuse.walrusfs`` and an fstab line with ``_netdev`` (``mount -T``)
through /sbin/mount.fuse.walrusfs; a dead mount point (the mount SIGKILLed) that ``walrusfs
status`` explains, ``walrusfs umount`` cleans and ``walrusfs mount`` cleans by itself; files
open for writing when the mount was SIGKILLed keep what reached it and are marked incomplete;
``walrusfs status`` with 2,000 pending uploads. Every mount is unmounted in teardown
(tests/test_main_job.py has the main job's signals).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.mounting import Mount, MountedVolume, fusermount_u, volume_env, wait_for
from tests.test_network import EXE
from walrusfs.cli.mounthelper import HelperError, translate

NOBODY = 65534
HELPER = Path("/sbin/mount.fuse.walrusfs")


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedVolume]:
    volume = MountedVolume(tmp_path_factory.mktemp("mount-ops"), 4)
    try:
        yield volume
    finally:
        volume.close()


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    """A command's outcome (never raises for its exit code)."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command as uid/gid 65534 with no supplementary groups."""
    return run(*args, user=NOBODY, group=NOBODY, extra_groups=[])


def mount_args(vol: MountedVolume, path: Path, state: Path, *extra: str) -> list[str]:
    return [EXE, "mount", str(path), "--volume", "vol", "--committee", str(vol.net.committee), "--state", str(state),
            *extra]


def pid_of(path: Path) -> int:
    return json.loads(os.getxattr(path, "user.walrus.status"))["pid"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def kill_mount(path: Path) -> None:
    """SIGKILL the process serving ``path`` and wait until the mount point is dead."""
    pid = pid_of(path)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: gone(pid), limit=20)

    def dead() -> bool:
        try:
            os.statvfs(path)
        except OSError as exc:
            return exc.errno == errno.ENOTCONN
        return False

    assert wait_for(dead, limit=10)


def test_other_users_are_kept_out_unless_allow_other_and_then_checked_by_the_kernel(vol: MountedVolume) -> None:
    # Another user must be able to reach the mount point at all (pytest's directories are 0700).
    shared = Path(tempfile.mkdtemp(prefix="walrusfs-other-", dir="/tmp"))
    os.chmod(shared, 0o755)
    state = vol.root / "state" / "other"
    mount = Mount(vol.net.committee, shared / "mnt", "vol", vol.config, state)
    vol.mounts.append(mount)
    try:
        mount.start()
        (mount.path / "public.txt").write_text("for everyone\n")
        os.chmod(mount.path / "public.txt", 0o644)
        denied = as_nobody("cat", str(mount.path / "public.txt"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        mount.stop()

        mount.extra = ("--allow-other",)
        mount.start()
        assert as_nobody("cat", str(mount.path / "public.txt")).stdout == "for everyone\n"
        for attempt in (["sh", "-c", f"echo more >> {mount.path / 'public.txt'}"],
                        ["touch", str(mount.path / "mine.txt")]):
            refused = as_nobody(*attempt)
            assert refused.returncode != 0 and "Permission denied" in refused.stderr, attempt
        assert (mount.path / "public.txt").read_text() == "for everyone\n"
        mount.stop()

        mount.extra = ("--allow-other", "--uid", str(NOBODY), "--gid", str(NOBODY), "--umask", "077")
        mount.start()
        shown = os.stat(mount.path / "public.txt")
        assert (shown.st_uid, shown.st_gid, shown.st_mode & 0o777) == (NOBODY, NOBODY, 0o600)
        assert as_nobody("sh", "-c", f"echo more >> {mount.path / 'public.txt'}").returncode == 0
        assert (mount.path / "public.txt").read_text() == "for everyone\nmore\n"
        bad = run(*mount_args(vol, shared, state, "--uid", "no-such-user-here"))
        assert bad.returncode == 2 and "no user named" in bad.stderr
    finally:
        mount.stop()
        vol.mounts.remove(mount)
        shutil.rmtree(shared, ignore_errors=True)


def test_background_returns_once_serving_and_fails_with_the_mounts_error(vol: MountedVolume, tmp_path: Path) -> None:
    path, other, state = tmp_path / "bg", tmp_path / "bg2", tmp_path / "state-bg"
    path.mkdir()
    other.mkdir()
    env = volume_env(vol.config, tmp_path)
    started = run(*mount_args(vol, path, state, "--background"), env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert os.path.ismount(path) and "in the background" in started.stderr
        assert "mounted volume" in (state / "mount.log").read_text()
        assert os.stat(state / "mount.log").st_mode & 0o077 == 0
        (path / "bg.txt").write_text("served")
        # The state directory is taken: the child fails, and the parent says why.
        taken = run(*mount_args(vol, other, state, "--background"), env=env)
        assert taken.returncode == 1 and "in use by another mount" in taken.stderr, taken.stderr
        assert not os.path.ismount(other)
        pid = pid_of(path)
        done = run(EXE, "umount", str(path), env=env)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: gone(pid), limit=20)
    finally:
        fusermount_u(path)


def test_ready_is_sent_to_notify_socket_once_serving(vol: MountedVolume, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    path.mkdir()
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(90)
        env = {**volume_env(vol.config, tmp_path), "NOTIFY_SOCKET": address}
        process = subprocess.Popen(mount_args(vol, path, tmp_path / "state-notify"), env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            message = sock.recv(4096).decode()
            assert message.startswith("READY=1\n") and "serving volume" in message
            assert os.path.ismount(path)
            os.listdir(path)  # answered: serving, not only mounted
            fusermount_u(path)
            assert sock.recv(4096) == b"STOPPING=1"
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            fusermount_u(path)


def test_helper_translates_mount_arguments() -> None:
    command, env = translate(["vol", "/mnt/x", "-o", "rw,committee=/c.toml,state=/s,config=/cfg,allow_other,"
                              "uid=7,umask=022,_netdev,nofail,x-systemd.automount,noauto", "-t", "fuse.walrusfs"])
    assert command == ["mount", "/mnt/x", "--volume", "vol", "--background", "--fsname", "vol", "--committee",
                       "/c.toml", "--state", "/s", "--allow-other", "--uid", "7", "--umask", "022"]
    assert env == {"WALRUSFS_CONFIG_DIR": "/cfg"}
    command, _ = translate(["walrusfs-read:abc", "/mnt/x", "-r"])
    assert command == ["mount", "/mnt/x", "--cap", "walrusfs-read:abc", "--background", "--read-only"]
    assert translate(["vol", "/mnt/x", "-f", "-o", "committee=/c"])[0] is None  # mount -f: pretend
    with pytest.raises(HelperError, match="unknown option 'colour=red'"):
        translate(["vol", "/mnt/x", "-o", "colour=red"])
    assert translate(["vol", "/mnt/x", "-s", "-o", "colour=red"])[0] is not None  # sloppy
    with pytest.raises(HelperError, match="usage"):
        translate(["/mnt/x"])


def test_mount_t_fuse_walrusfs_and_an_fstab_line(vol: MountedVolume, tmp_path: Path) -> None:
    if not HELPER.exists():
        pytest.fail(f"{HELPER} is missing: scripts/setup.sh links it to .venv/bin/mount.walrusfs")
    path = tmp_path / "fstab-mnt"
    path.mkdir()
    options = f"committee={vol.net.committee},config={vol.config},state={tmp_path / 'state-t'}"
    # mount(8) passes the helper no PATH, and a boot has no WALRUSFS_* variables.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALRUSFS_")}
    try:
        done = run("mount", "-t", "fuse.walrusfs", "vol", str(path), "-o", f"{options},allow_other", env=env)
        assert done.returncode == 0, done.stderr
        shown = run("findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(path)).stdout
        assert shown.startswith("fuse.walrusfs") and "allow_other" in shown
        (path / "via-mount-t.txt").write_text("hello")
        pid = pid_of(path)
        assert run("umount", str(path)).returncode == 0
        assert wait_for(lambda: gone(pid), limit=20)

        fstab = tmp_path / "fstab"
        fstab.write_text(f"# a test fstab\nvol {path} fuse.walrusfs {options},_netdev,nofail 0 0\n")
        done = run("mount", "-T", str(fstab), str(path), env=env)
        assert done.returncode == 0, done.stderr
        assert (path / "via-mount-t.txt").read_text() == "hello"
        # The mount table shows fstab's source: mount -a knows the line is mounted already.
        assert run("findmnt", "-n", "-o", "SOURCE", str(path)).stdout.strip() == "vol"
        again = run("mount", "-a", "-T", str(fstab), "-O", "_netdev", env=env)
        assert again.returncode == 0, again.stderr
        assert run(EXE, "umount", str(path)).returncode == 0
        bad = run("mount", "-t", "fuse.walrusfs", "vol", str(path), "-o", f"{options},colour=red", env=env)
        assert bad.returncode != 0 and "unknown option 'colour=red'" in bad.stderr
        assert not os.path.ismount(path)
    finally:
        fusermount_u(path)


def test_a_dead_mount_point_is_explained_cleaned_and_remounted(vol: MountedVolume, tmp_path: Path) -> None:
    path, state = tmp_path / "dead", tmp_path / "state-dead"
    path.mkdir()
    env = volume_env(vol.config, tmp_path)
    try:
        assert run(*mount_args(vol, path, state, "--background"), env=env).returncode == 0
        (path / "kept.txt").write_text("closed before the crash")
        kill_mount(path)
        shown = run(EXE, "status", str(path), env=env)
        assert shown.returncode == 1 and "dead mount" in shown.stderr and f"walrusfs umount {path}" in shown.stderr
        cleaned = run(EXE, "umount", str(path), env=env)
        assert cleaned.returncode == 0 and "dead mount" in cleaned.stdout, cleaned.stderr
        assert not os.path.ismount(path) and os.listdir(path) == []

        assert run(*mount_args(vol, path, state, "--background"), env=env).returncode == 0
        assert (path / "kept.txt").read_text() == "closed before the crash"
        kill_mount(path)
        again = run(*mount_args(vol, path, state, "--background"), env=env)  # cleans it by itself
        assert again.returncode == 0 and "was a dead walrusfs mount" in again.stderr, again.stderr
        assert (path / "kept.txt").read_text() == "closed before the crash"
        assert run(EXE, "umount", str(path), env=env).returncode == 0
        missing = run(EXE, "umount", str(tmp_path / "nowhere"), env=env)
        assert missing.returncode == 2 and "does not exist" in missing.stderr
    finally:
        fusermount_u(path)


def test_files_open_for_writing_at_a_crash_keep_their_bytes_and_are_marked_incomplete(
        vol: MountedVolume, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(48 << 20))
    mount = vol.mount("incomplete", "--chunk-size", "1MiB")
    staging = mount.state / "staging"
    try:
        small = open(mount.path / "small.txt", "w")  # never closed: its bytes stay in the kernel's cache
        small.write("not yet flushed")
        copy = subprocess.Popen(["cp", str(source), str(mount.path / "copy.bin")], stderr=subprocess.DEVNULL)
        assert wait_for(lambda: sum(p.stat().st_size for p in staging.iterdir()) > 4 << 20, limit=60, step=0.05)
        mount.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        mount.process.wait(timeout=30)  # type: ignore[union-attr]
        copy.wait(timeout=30)
        try:
            small.close()
        except OSError:
            pass  # ENOTCONN: the mount is gone
        mount.process = None
        fusermount_u(mount.path)
        mount.start()
        kept, whole = (mount.path / "copy.bin").read_bytes(), source.read_bytes()
        assert len(kept) >= 4 << 20
        # What reached the mount, in place; a page the kernel had not written back yet reads as zeros.
        for start in range(0, len(kept), 1 << 20):
            block = kept[start:start + (1 << 20)]
            assert block == whole[start:start + len(block)] or block.count(0) == len(block), start
        for name in ("copy.bin", "small.txt"):
            note = os.getxattr(mount.path / name, "user.walrus.incomplete").decode()
            assert "open for writing when the mount stopped" in note
        assert f"{len(kept)} bytes" in os.getxattr(mount.path / "copy.bin", "user.walrus.incomplete").decode()
        text = run(EXE, "status", str(mount.path)).stdout
        assert "2 files were open for writing when the mount stopped" in text
        assert "/copy.bin" in text and "/small.txt" in text
        # Checked by its user, or written again: the mark goes.
        os.removexattr(mount.path / "copy.bin", "user.walrus.incomplete")
        (mount.path / "small.txt").write_text("written again")
        assert wait_for(lambda: mount.status()["incomplete_count"] == 0, limit=10)
        assert "user.walrus.incomplete" not in os.listxattr(mount.path / "small.txt")
    finally:
        mount.stop()


def test_status_works_with_2000_pending_uploads(vol: MountedVolume) -> None:
    mount = vol.mount("many")
    indices = list(range(vol.net.peers))
    vol.net.stop(*indices)  # nothing uploads: every file stays pending
    try:
        folder = mount.path / "many"
        folder.mkdir()
        with ThreadPoolExecutor(8) as pool:  # the mount overlaps their fsyncs: 3 times faster than one by one
            list(pool.map(lambda i: (folder / f"f{i:04}").write_bytes(b"x"), range(2000)))
        text = run(EXE, "status", str(mount.path))
        assert text.returncode == 0, text.stderr
        assert "2000 pending uploads:" in text.stdout and "walrusfs status --all" in text.stdout
        listed = run(EXE, "status", "--all", str(mount.path)).stdout
        assert sum(1 for line in listed.splitlines() if line.strip().startswith("f")) == 2000
        whole = run(EXE, "status", "--json", str(mount.path))
        info = json.loads(whole.stdout)
        assert info["pending_count"] == 2000 and len(info["pending"]) == 2000
        assert {p["name"] for p in info["pending"]} == {f"f{i:04}" for i in range(2000)}
        assert len(os.getxattr(mount.path, "user.walrus.status")) < 64 << 10
    finally:
        vol.net.start(*indices)
        mount.stop()
