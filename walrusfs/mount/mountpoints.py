"""Mount points as the kernel sees them: live, dead (their process exited) or plain directories.

A FUSE mount whose process died stays in the mount table, and every access to it fails with
ENOTCONN ("Transport endpoint is not connected") until it is unmounted. ``os.path.ismount``
and click's ``exists=True`` both take that for a missing directory, so the commands ask here.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: stat() of a FUSE mount whose process exited, or whose connection was aborted.
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
FSTYPE = "fuse.walrusfs"


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def absolute(path: Path) -> Path:
    """``path`` made absolute with its parent's symlinks resolved, never touching ``path`` itself (it may be dead)."""
    path = Path(os.path.abspath(path))
    if not path.name:
        return path
    path = Path(os.path.realpath(path.parent)) / path.name
    # A symlink to the mount point is followed (lstat of a dead mount fails: not a link).
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def mount_entry(path: Path) -> MountEntry | None:
    """The topmost mount at exactly ``path``, if any."""
    target = str(absolute(path))
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                after = line.split(" - ", 1)[1].split()
                if _unescape(fields[4]) == target and len(after) >= 2:
                    found = MountEntry(target, _unescape(after[0]), _unescape(after[1]))
    except OSError:
        return None
    return found


def state_of(path: Path) -> str:
    """'dead' (a mount whose process exited), 'mounted', 'directory', 'missing', 'not-directory' or 'denied'."""
    try:
        st = os.stat(path)
        # stat may be answered from the kernel's attribute cache for a second after the
        # process died; statfs always asks the filesystem.
        os.statvfs(path)
    except OSError as exc:
        if exc.errno in DEAD_ERRNOS:
            return "dead"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "denied"  # another user's mount without --allow-other
        return "missing" if exc.errno == errno.ENOENT else "not-directory"
    if not stat.S_ISDIR(st.st_mode):
        return "not-directory"
    return "mounted" if os.path.ismount(path) else "directory"


def dead_mount_hint(path: Path) -> str:
    """One sentence: what the dead mount at ``path`` is and how to clean it."""
    entry = mount_entry(path)
    kind = f" ({entry.fstype})" if entry is not None else ""
    if entry is not None and entry.fstype == FSTYPE:
        how = f"run: walrusfs umount {path}"
    else:
        how = f"unmount it with: fusermount3 -u {path} (or, as root, umount -l {path})"
    return (f"{path} is a dead mount{kind}: its mount process exited and it answers 'Transport endpoint is "
            f"not connected'; {how}")


def unmount(path: Path, lazy_if_busy: bool = True) -> str | None:
    """Unmount ``path`` (fusermount3 -u, then -uz if it is busy); None on success, else the error."""
    done = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    if lazy_if_busy:
        # A dead mount a shell still has as its working directory is "busy": detach it now,
        # the kernel lets it go when the last user leaves.
        lazy = subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, text=True)
        if lazy.returncode == 0:
            return None
    return done.stderr.strip() or f"fusermount3 exited with {done.returncode}"
