"""A POSIX semantics battery: run it on a mount and on a local directory, compare results."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _try(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except OSError as exc:
        return f"errno {errno.errorcode.get(exc.errno, exc.errno)}"


def run_battery(root: Path) -> list[tuple[str, Any]]:
    """Do a fixed series of file operations under ``root``; return what each observed."""
    out: list[tuple[str, Any]] = []

    def record(label: str, action: Callable[[], Any]) -> None:
        out.append((label, _try(action)))

    a, b, c = root / "a", root / "b", root / "c"
    record("write a", lambda: a.write_bytes(b"alpha" * 1000))
    record("read a", lambda: a.read_bytes() == b"alpha" * 1000)
    record("rename a->b", lambda: os.rename(a, b))
    record("a gone", lambda: a.exists())
    record("listing", lambda: sorted(os.listdir(root)))
    record("write c", lambda: c.write_bytes(b"gamma"))
    record("rename b over c", lambda: os.rename(b, c))
    record("c holds b", lambda: c.read_bytes()[:5])
    record("b gone", lambda: b.exists())

    # unlink while open: still readable through the descriptor, link count 0
    fd = os.open(c, os.O_RDONLY)
    record("unlink open c", lambda: os.unlink(c))
    record("read unlinked", lambda: os.pread(fd, 5, 0))
    record("nlink unlinked", lambda: os.fstat(fd).st_nlink)
    os.close(fd)
    record("c gone", lambda: os.path.exists(c))

    t = root / "t"
    record("write t", lambda: t.write_bytes(b"0123456789"))
    record("truncate 4", lambda: os.truncate(t, 4))
    record("read t", lambda: t.read_bytes())
    record("extend 8", lambda: os.truncate(t, 8))
    record("read t extended", lambda: t.read_bytes())
    record("size t", lambda: t.stat().st_size)

    def sparse() -> tuple[int, bytes, bytes]:
        with open(root / "sparse", "wb") as f:
            f.write(b"head")
            f.seek((1 << 20) + 5)
            f.write(b"tail")
        data = (root / "sparse").read_bytes()
        return len(data), data[:4], data[(1 << 20) + 5 :] + bytes(data[100:108])

    record("sparse", sparse)

    def appends() -> bytes:
        with open(root / "log", "ab") as f:
            f.write(b"one\n")
        with open(root / "log", "ab") as f:
            f.write(b"two\n")
        return (root / "log").read_bytes()

    record("appends", appends)
    record("overwrite middle", lambda: (os.truncate(root / "log", 8), _pwrite(root / "log", b"TW", 4),
                                        (root / "log").read_bytes())[2])

    d = root / "d"
    record("mkdir d", lambda: d.mkdir())
    record("mkdir d again", lambda: d.mkdir())
    record("file in d", lambda: (d / "f").write_bytes(b"x"))
    record("rmdir non-empty", lambda: os.rmdir(d))
    record("unlink dir", lambda: os.unlink(d))
    record("rmdir file", lambda: os.rmdir(d / "f"))
    record("open missing", lambda: open(root / "missing", "rb"))
    record("path through file", lambda: open(d / "f" / "x", "rb"))
    record("excl create", lambda: os.open(d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    record("mkdir e", lambda: (root / "e").mkdir())
    record("rename dir over file", lambda: os.rename(root / "e", d / "f"))
    record("rename file over dir", lambda: os.rename(d / "f", root / "e"))
    record("rename dir into itself", lambda: os.rename(d, d / "sub"))
    record("rename dir over non-empty dir", lambda: os.rename(root / "e", d))
    record("rename dir over empty dir", lambda: (os.mkdir(root / "g"), os.rename(root / "e", root / "g"))[1])
    record("rename missing", lambda: os.rename(root / "missing", root / "x"))
    record("nlink d", lambda: (os.mkdir(d / "s1"), os.mkdir(d / "s2"), d.stat().st_nlink)[2])
    record("symlink", lambda: os.symlink("d/f", root / "ln"))
    record("readlink", lambda: os.readlink(root / "ln"))
    record("read via link", lambda: (root / "ln").read_bytes())
    record("lstat link", lambda: stat.S_ISLNK(os.lstat(root / "ln").st_mode))
    record("chmod", lambda: (os.chmod(d / "f", 0o640), stat.S_IMODE((d / "f").stat().st_mode))[1])
    record("utime", lambda: (os.utime(d / "f", ns=(1_600_000_000_000_000_000,) * 2), (d / "f").stat().st_mtime_ns)[1])
    record("rmdir missing", lambda: os.rmdir(root / "nope"))
    record("rmdir g", lambda: os.rmdir(root / "g"))

    def listing_under_change() -> tuple[bool, bool]:
        for i in range(20):
            (root / f"l{i:02d}").write_bytes(b"")
        seen = []
        with os.scandir(root) as it:
            for index, item in enumerate(it):
                seen.append(item.name)
                if index == 5:
                    for j in range(5):
                        (root / f"new{j}").write_bytes(b"")
                    os.unlink(root / "l19")
        originals = {f"l{i:02d}" for i in range(19)}
        return originals <= set(seen), len(seen) == len(set(seen))

    record("listing under change", listing_under_change)
    record("final listing", lambda: sorted(os.listdir(root)))
    return out


def _pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
