"""A POSIX semantics battery: run it on a mount and on a local directory, compare results."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import time
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
    names = root / "names"
    names.mkdir()
    out.extend(name_errors(names))
    times = root / "times"
    times.mkdir()
    out.extend(timestamps(times))
    types = root / "types"
    types.mkdir()
    out.extend(file_types(types))
    links = root / "links"
    links.mkdir()
    out.extend(hard_links(links))
    out.extend(reserve(root / "reserved"))
    return out


def reserve(path: Path) -> list[tuple[str, Any]]:
    """posix_fallocate: the file grows to cover the range, its bytes kept, the rest zeros (never shrinks).

    On a mount, fallocate(2) itself is EOPNOTSUPP (pyfuse3 3.5 has no fallocate handler) and
    the C library writes the zeros instead; on ext4 the call reserves them. Same result.
    """
    out: list[tuple[str, Any]] = []
    path.write_bytes(b"data")
    fd = os.open(path, os.O_RDWR)
    try:
        out.append(("posix_fallocate grows", _try(lambda: (os.posix_fallocate(fd, 0, 200_000), os.fstat(fd).st_size)[1])))
        out.append(("posix_fallocate keeps", _try(lambda: os.pread(fd, 200_010, 0) == b"data" + bytes(199_996))))
        out.append(("posix_fallocate within", _try(lambda: (os.posix_fallocate(fd, 100, 10), os.fstat(fd).st_size)[1])))
        out.append(("posix_fallocate at offset", _try(lambda: (os.posix_fallocate(fd, 300_000, 5), os.fstat(fd).st_size)[1])))
        out.append(("posix_fallocate bad length", _try(lambda: os.posix_fallocate(fd, 0, 0))))
    finally:
        os.close(fd)
    out.append(("reserved bytes", _try(lambda: path.read_bytes() == b"data" + bytes(300_001))))
    return out


def hard_links(root: Path) -> list[tuple[str, Any]]:
    """Several names for one node: counts, shared data and attributes, unlink and rename of one name."""
    out: list[tuple[str, Any]] = []

    def record(label: str, action: Callable[[], Any]) -> None:
        out.append((label, _try(action)))

    def counts(*paths: Path) -> list[Any]:
        return [os.lstat(p).st_nlink if os.path.lexists(p) else None for p in paths]

    def same(*paths: Path) -> bool:
        return len({os.lstat(p).st_ino for p in paths}) == 1

    a, b, sub = root / "a", root / "b", root / "sub"
    a.write_bytes(b"shared bytes")
    sub.mkdir()
    c = sub / "c"
    record("link", lambda: (os.link(a, b), counts(a, b), same(a, b))[1:])
    record("link in another dir", lambda: (os.link(b, c), counts(a, b, c), same(a, c))[1:])
    record("dir nlink unchanged", lambda: (os.stat(root).st_nlink, os.stat(sub).st_nlink))
    record("write through one name", lambda: (_pwrite(b, b"SH", 0), a.read_bytes(), c.read_bytes())[1:])
    record("append through another", lambda: (_append(c, b"!"), a.read_bytes(), os.stat(b).st_size)[1:])
    record("chmod through one name", lambda: (os.chmod(c, 0o600), stat.S_IMODE(os.stat(a).st_mode))[1])
    record("xattr through one name", lambda: (os.setxattr(a, "user.k", b"v"), os.getxattr(c, "user.k"))[1])
    record("truncate through one name", lambda: (os.truncate(b, 6), a.read_bytes(), os.stat(c).st_size)[1:])
    record("link over a name", lambda: os.link(a, b))
    record("link a directory", lambda: os.link(sub, root / "sub2"))
    record("link missing", lambda: os.link(root / "missing", root / "x"))
    record("link into missing dir", lambda: os.link(a, root / "nodir" / "x"))
    record("rename onto another link", lambda: (os.rename(a, c), counts(a, b, c))[1])
    record("rename one name", lambda: (os.rename(a, root / "a2"), counts(root / "a2", b, c), same(b, root / "a2"))[1:])
    record("unlink one name", lambda: (os.unlink(root / "a2"), counts(b, c), c.read_bytes())[1:])
    (root / "other").write_bytes(b"other")
    record("rename over a linked name", lambda: (os.rename(root / "other", b), b.read_bytes(), c.read_bytes(),
                                                counts(b, c))[1:])

    def unlinked_open() -> list[Any]:
        fd = os.open(c, os.O_RDONLY)
        try:
            os.link(c, root / "d")
            os.unlink(c)
            seen: list[Any] = [os.fstat(fd).st_nlink, os.pread(fd, 6, 0)]
            os.unlink(root / "d")
            seen += [os.fstat(fd).st_nlink, os.pread(fd, 6, 0)]
            seen.append(_try(lambda: os.link(f"/proc/self/fd/{fd}", root / "back", follow_symlinks=True)))
            return seen
        finally:
            os.close(fd)

    record("unlink names while open", unlinked_open)
    record("link a symlink", lambda: (os.symlink("b", root / "s"), os.link(root / "s", root / "s2", follow_symlinks=False),
                                      os.readlink(root / "s2"), counts(root / "s", root / "s2"))[2:])
    record("link a fifo", lambda: (os.mkfifo(root / "p"), os.link(root / "p", root / "p2"), counts(root / "p", root / "p2"),
                                   stat.S_ISFIFO(os.lstat(root / "p2").st_mode))[2:])

    def many() -> list[Any]:  # a `cp -al` tree: every file a link
        (root / "tree").mkdir()
        for i in range(3):
            (root / "tree" / f"f{i}").write_bytes(bytes([i]) * (i + 1))
        os.mkdir(root / "copy")
        for i in range(3):
            os.link(root / "tree" / f"f{i}", root / "copy" / f"f{i}")
        return [(os.stat(root / "copy" / f"f{i}").st_nlink, (root / "copy" / f"f{i}").read_bytes()) for i in range(3)]

    record("linked tree", many)
    record("final", lambda: sorted((e.name, e.stat(follow_symlinks=False).st_nlink) for e in os.scandir(root)))
    return out


def file_types(root: Path) -> list[tuple[str, Any]]:
    """FIFOs, sockets and device nodes: made, shown with their type, mode and device number, used, removed."""
    out: list[tuple[str, Any]] = []

    def record(label: str, action: Callable[[], Any]) -> None:
        out.append((label, _try(action)))

    def shown(path: Path) -> tuple[str, int, int, int, int]:
        st = os.lstat(path)
        kind = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char", stat.S_IFBLK: "block",
                stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}[stat.S_IFMT(st.st_mode)]
        return kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_rdev, st.st_nlink

    os.umask(umask := os.umask(0o022))  # the modes below are what the umask leaves
    record("umask", lambda: umask)
    record("mkfifo", lambda: (os.mkfifo(root / "fifo", 0o640), shown(root / "fifo"))[1])
    record("mkfifo existing", lambda: os.mkfifo(root / "fifo"))
    record("mknod fifo", lambda: (os.mknod(root / "fifo2", stat.S_IFIFO | 0o600), shown(root / "fifo2"))[1])
    record("mknod socket", lambda: (os.mknod(root / "sock", stat.S_IFSOCK | 0o644), shown(root / "sock"))[1])
    record("mknod file", lambda: (os.mknod(root / "plain", stat.S_IFREG | 0o600), shown(root / "plain"))[1])
    record("mknod no type", lambda: (os.mknod(root / "plain0", 0o644), shown(root / "plain0"))[1])
    record("mknod dir", lambda: os.mknod(root / "dir", stat.S_IFDIR | 0o755))
    record("mknod bad type", lambda: os.mknod(root / "bad", 0o170000 | 0o644))
    # Device nodes need CAP_MKNOD (both sides say EPERM without it).
    record("mknod char", lambda: (os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)), shown(root / "null"))[1])
    record("mknod block", lambda: (os.mknod(root / "disk", stat.S_IFBLK | 0o660, os.makedev(259, 70000)),
                                   shown(root / "disk"))[1])
    record("device numbers", lambda: (os.major(os.lstat(root / "disk").st_rdev), os.minor(os.lstat(root / "disk").st_rdev)))

    def fifo_round_trip() -> bytes:
        reader = os.open(root / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        try:
            writer = os.open(root / "fifo", os.O_WRONLY)
            os.write(writer, b"through the pipe")
            os.close(writer)
            return os.read(reader, 100)
        finally:
            os.close(reader)

    record("fifo round trip", fifo_round_trip)
    record("fifo without reader", lambda: os.open(root / "fifo", os.O_WRONLY | os.O_NONBLOCK))

    def unix_socket() -> tuple[Any, ...]:
        cwd = os.getcwd()
        os.chdir(root)  # a socket's path must fit in 108 bytes
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with server, client:
                server.bind("agent.sock")
                server.listen(1)
                client.connect("agent.sock")
                conn, _ = server.accept()
                with conn:
                    client.sendall(b"hello")
                    return conn.recv(5), shown(root / "agent.sock")[:3]
        finally:
            os.chdir(cwd)

    record("unix socket", unix_socket)
    record("bind taken", lambda: socket.socket(socket.AF_UNIX).bind(str(root / "fifo")))
    record("chmod fifo", lambda: (os.chmod(root / "fifo", 0o604), shown(root / "fifo"))[1])
    record("chmod socket", lambda: (os.chmod(root / "sock", 0o600), shown(root / "sock"))[1])
    record("truncate fifo", lambda: os.truncate(root / "fifo", 0))
    record("readlink fifo", lambda: os.readlink(root / "fifo"))
    record("xattr on fifo", lambda: (os.setxattr(root / "fifo2", "user.k", b"v"), os.getxattr(root / "fifo2", "user.k"))[1])
    record("rename fifo", lambda: (os.rename(root / "fifo2", root / "fifo3"), shown(root / "fifo3"))[1])
    record("rename over fifo", lambda: (os.rename(root / "plain", root / "fifo3"), shown(root / "fifo3"))[1])
    record("unlink socket", lambda: os.unlink(root / "agent.sock"))
    record("rmdir fifo", lambda: os.rmdir(root / "fifo"))
    record("listing", lambda: sorted((e.name, e.is_file(), e.is_dir(), e.is_symlink()) for e in os.scandir(root)))
    record("types", lambda: {e.name: shown(Path(e.path))[0] for e in os.scandir(root)})
    return out


def name_errors(root: Path) -> list[tuple[str, Any]]:
    """ENAMETOOLONG and ELOOP from every call that meets a too-long name or a symlink loop."""
    out: list[tuple[str, Any]] = []

    def record(label: str, action: Callable[[], Any]) -> None:
        out.append((label, _try(action)))

    (root / "f").write_bytes(b"x")
    (root / "dir").mkdir()
    for length in (256, 1025):  # past NAME_MAX; past what the FUSE kernel module forwards
        long = root / ("n" * length)
        inner = root / "dir" / ("n" * length) / "x"
        calls: dict[str, Callable[[], Any]] = {
            "stat": lambda: os.stat(long), "lstat": lambda: os.lstat(long),
            "stat inner": lambda: os.stat(inner), "access": lambda: os.access(long, os.R_OK),
            "chmod": lambda: os.chmod(long, 0o600), "chown": lambda: os.chown(long, 0, 0),
            "lchown": lambda: os.lchown(long, 0, 0), "truncate": lambda: os.truncate(long, 0),
            "utime": lambda: os.utime(long, ns=(0, 0)),
            "open": lambda: os.close(os.open(long, os.O_RDONLY)),
            "create": lambda: os.close(os.open(long, os.O_CREAT | os.O_WRONLY, 0o644)),
            "create inner": lambda: os.close(os.open(inner, os.O_CREAT | os.O_WRONLY, 0o644)),
            "mkdir": lambda: os.mkdir(long), "rmdir": lambda: os.rmdir(long), "unlink": lambda: os.unlink(long),
            "rename from": lambda: os.rename(long, root / "g"), "rename to": lambda: os.rename(root / "f", long),
            "symlink": lambda: os.symlink("f", long), "readlink": lambda: os.readlink(long),
            "link to": lambda: os.link(root / "f", long), "link from": lambda: os.link(long, root / "g"),
            "mkfifo": lambda: os.mkfifo(long), "mknod": lambda: os.mknod(long, stat.S_IFREG | 0o644),
            "listdir": lambda: os.listdir(long), "listdir inner": lambda: os.listdir(inner),
            "setxattr": lambda: os.setxattr(long, "user.k", b"v"), "getxattr": lambda: os.getxattr(long, "user.k"),
            "listxattr": lambda: os.listxattr(long), "removexattr": lambda: os.removexattr(long, "user.k"),
        }
        for label, call in calls.items():
            record(f"{label} name of {length}", call)
    just = root / ("m" * 255)
    record("create name of 255", lambda: just.write_bytes(b"ok"))
    record("stat name of 255", lambda: just.stat().st_size)
    record("rename to name of 255", lambda: (os.rename(just, root / "h"), os.rename(root / "h", just))[1])
    record("unlink name of 255", lambda: os.unlink(just))
    record("long xattr name", lambda: os.setxattr(root / "f", "user." + "k" * 251, b"v"))
    record("long symlink target", lambda: os.symlink("t" * 4096, root / "lt"))
    record("symlink target of 4095", lambda: (os.symlink("t" * 4095, root / "lt"), len(os.readlink(root / "lt")))[1])
    # ELOOP: a symlink cycle, a chain past the kernel's 40 links, O_NOFOLLOW on a link.
    record("loop", lambda: (os.symlink("l2", root / "l1"), os.symlink("l1", root / "l2")))
    record("stat loop", lambda: os.stat(root / "l1"))
    record("lstat loop", lambda: stat.S_ISLNK(os.lstat(root / "l1").st_mode))
    record("open loop", lambda: open(root / "l1", "rb"))
    record("create through loop", lambda: open(root / "l1", "wb"))
    record("path through loop", lambda: os.stat(root / "l1" / "x"))
    record("mkdir through loop", lambda: os.mkdir(root / "l1" / "x"))
    record("chmod loop", lambda: os.chmod(root / "l1", 0o600))
    record("truncate loop", lambda: os.truncate(root / "l1", 0))

    def chain(count: int) -> Any:
        os.symlink("f", root / "c0")
        for i in range(1, count):
            os.symlink(f"c{i - 1}", root / f"c{i}")
        return os.stat(root / f"c{count - 1}").st_size

    record("chain of 40", lambda: chain(40))
    record("chain of 41", lambda: (os.symlink("c39", root / "c40"), os.stat(root / "c40"))[1])
    record("nofollow open", lambda: os.open(root / "c0", os.O_RDONLY | os.O_NOFOLLOW))
    record("nofollow create", lambda: os.open(root / "c0", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
    record("nofollow utime", lambda: (os.utime(root / "c0", ns=(0, 5), follow_symlinks=False),
                                      os.lstat(root / "c0").st_mtime_ns)[1])
    record("leftovers", lambda: sorted(p for p in os.listdir(root) if not p.startswith("c")))
    return out


def _pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


PAST = 1_000_000_000 * 10**9  # 2001-09-09: older than anything an operation sets
#: Longer than the coarse clock's tick, so a time set after a pause is later than one before.
PAUSE = 0.012
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: Path, atime: int | str, mtime: int | str, follow: bool = True) -> None:
    """utimensat(2) with nanosecond times, "now" (UTIME_NOW) or "omit" (UTIME_OMIT) for each."""

    def spec(value: int | str) -> _Timespec:
        if value == "now":
            return _Timespec(0, UTIME_NOW)
        if value == "omit":
            return _Timespec(0, UTIME_OMIT)
        assert isinstance(value, int)
        return _Timespec(value // 10**9, value % 10**9)

    times = (_Timespec * 2)(spec(atime), spec(mtime))
    if _libc.utimensat(-100, os.fsencode(path), times, 0 if follow else 0x100) != 0:  # AT_FDCWD, AT_SYMLINK_NOFOLLOW
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


def timestamps(root: Path) -> list[tuple[str, Any]]:
    """Which of atime, mtime and ctime each operation advances, on the node and its directories; exact utimensat."""
    out: list[tuple[str, Any]] = []

    def record(label: str, action: Callable[[], Any]) -> None:
        out.append((label, _try(action)))

    def times(path: Path) -> tuple[int, int, int]:
        st = os.lstat(path)
        return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns

    def effect(action: Callable[[], Any], *paths: Path | tuple[Path, Path], age: bool = True) -> dict[str, str]:
        """Age ``paths`` (atime and mtime to PAST), pause, act; per path, which times advanced ("amc").

        A path given as (before, after) is looked at under its new name after the action.
        """
        pairs = [p if isinstance(p, tuple) else (p, p) for p in paths]
        for path, _ in pairs:
            if age:
                os.utime(path, ns=(PAST, PAST), follow_symlinks=False)
        before = [times(path) for path, _ in pairs]
        time.sleep(PAUSE)
        action()
        shown = {}
        for (old, new), earlier in zip(pairs, before):
            after = times(new) if os.path.lexists(new) else earlier
            shown[old.name] = "".join(k for k, b, a in zip("amc", earlier, after) if a > b) or "-"
        return shown

    d, e, f = root / "d", root / "e", root / "f"
    d.mkdir()
    e.mkdir()
    f.write_bytes(b"0123456789")

    def fresh(path: Path) -> bool:
        a, m, c = times(path)
        return a == m == c

    record("new file: one time", lambda: (d / "new").write_bytes(b"") or fresh(d / "new"))
    record("new dir: one time", lambda: (os.mkdir(d / "newdir"), fresh(d / "newdir"))[1])
    record("new symlink: one time", lambda: (os.symlink("x", d / "newlink"), fresh(d / "newlink"))[1])
    record("create", lambda: effect(lambda: os.close(os.open(d / "c", os.O_CREAT | os.O_WRONLY, 0o644)), d))
    record("create existing", lambda: effect(lambda: os.close(os.open(d / "c", os.O_CREAT | os.O_WRONLY)), d, d / "c"))
    record("mkdir", lambda: effect(lambda: os.mkdir(d / "m"), d))
    record("rmdir", lambda: effect(lambda: os.rmdir(d / "m"), d))
    record("symlink", lambda: effect(lambda: os.symlink("c", d / "s"), d))
    record("unlink", lambda: effect(lambda: os.unlink(d / "s"), d))
    record("mkfifo", lambda: effect(lambda: os.mkfifo(d / "p"), d))
    record("link", lambda: effect(lambda: os.link(f, d / "fl"), f, d, root))
    record("unlink a link", lambda: effect(lambda: os.unlink(d / "fl"), f, d))
    record("chmod", lambda: effect(lambda: os.chmod(f, 0o600), f, root))
    record("chmod dir", lambda: effect(lambda: os.chmod(d, 0o700), d, root))
    record("chown", lambda: effect(lambda: os.chown(f, 1234, 1234), f))
    record("truncate", lambda: effect(lambda: os.truncate(f, 4), f, root))
    record("write", lambda: effect(lambda: _pwrite(f, b"ab", 1), f, root))
    record("append", lambda: effect(lambda: _append(f, b"cd"), f))
    record("read", lambda: effect(lambda: f.read_bytes(), f, root))
    record("read again", lambda: effect(lambda: f.read_bytes(), f, age=False))  # relatime: atime is after mtime now
    record("list dir", lambda: effect(lambda: os.listdir(d), d))
    record("list dir again", lambda: effect(lambda: os.listdir(d), d, age=False))
    record("setxattr", lambda: effect(lambda: os.setxattr(f, "user.k", b"v"), f))
    record("removexattr", lambda: effect(lambda: os.removexattr(f, "user.k"), f))
    record("setxattr dir", lambda: effect(lambda: os.setxattr(d, "user.k", b"v"), d))
    record("rename in dir", lambda: effect(lambda: os.rename(d / "c", d / "c2"), d, (d / "c", d / "c2")))
    record("rename across", lambda: effect(lambda: os.rename(d / "c2", e / "c"), d, e, (d / "c2", e / "c")))
    record("rename dir", lambda: effect(lambda: os.rename(d, root / "d2"), root, (d, root / "d2")))
    (root / "d2").rename(d)
    (e / "victim").write_bytes(b"v")
    record("rename over", lambda: effect(lambda: os.rename(e / "c", e / "victim"), e, (e / "c", e / "victim")))
    record("utime follows link", lambda: (os.symlink("f", root / "lf"), os.utime(root / "lf", ns=(PAST + 1, PAST + 2)),
                                          times(f)[:2], times(root / "lf")[:2] != (PAST + 1, PAST + 2))[2:])

    def exact(path: Path, follow: bool = True) -> list[Any]:
        seen: list[Any] = []
        base = 1_800_000_000 * 10**9
        utimensat(path, base + 123_456_789, base + 10**17 + 987_654_321, follow)  # the issue: atime took mtime's value
        seen.append(times(path)[:2])
        utimensat(path, "omit", base + 2 * 10**17, follow)
        seen.append(times(path)[:2])
        utimensat(path, base + 5, "omit", follow)
        seen.append(times(path)[:2])
        ctime = times(path)[2]
        time.sleep(PAUSE)
        utimensat(path, "omit", "omit", follow)
        seen.append(times(path)[2] == ctime)  # both omitted: nothing changes, ctime included
        started = time.time_ns() - 10**9
        utimensat(path, "now", "omit", follow)
        a, m, c = times(path)
        seen.append((a >= started, m == base + 2 * 10**17, c > ctime))
        utimensat(path, "omit", "now", follow)
        a2, m2, _ = times(path)
        seen.append((a2 == a, m2 >= started))
        utimensat(path, 0, 0, follow)
        seen.append(times(path)[:2])
        return seen

    record("utimensat file", lambda: exact(f))
    record("utimensat dir", lambda: exact(d))
    record("utimensat symlink", lambda: exact(root / "lf", follow=False))
    record("utime before 1970", lambda: os.utime(f, ns=(-10**9, -10**9)))
    return out


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
