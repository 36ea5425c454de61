"""The FUSE operations: POSIX calls become namespace operations and staged contents.

Every handler runs on the trio loop that also runs the libp2p host, so nothing here blocks:
disk and SQLite work happens in ``Contents`` and ``VolumeLog`` worker threads. Checks that
POSIX requires (existence, type, emptiness) are made against this mount's current tree
before an operation is signed; the namespace fold then keeps concurrent writers from
losing anything.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from ..client.blob import ReadError
from ..core.metadata import BlobId
from ..core.namespace import (
    BLOCKDEV,
    CHARDEV,
    DEVICES,
    DIRECTORY,
    FIFO,
    FILE,
    LIMITS,
    LOWER,
    ROOT,
    ROOT_KEPT_BITS,
    SOCKET,
    SYMLINK,
    Node,
    in_range,
)
from .contents import Contents, QuotaRefused
from .statusdoc import StatusPages, incomplete_note
from .volumelog import VolumeLog

log = logging.getLogger("walrusfs.fs")

ATTR_TIMEOUT = 1.0
#: relatime: a read updates a file's atime only if it is not after its mtime or ctime, or
#: this old (each update is a signed namespace operation, so not on every read).
RELATIME_NS = 24 * 3600 * 10**9
XATTR_PREFIX = "user.walrus."
NAME_MAX = 255


#: A special node's kind -> its file type bits, and back.
SPECIAL_TYPES = {FIFO: stat.S_IFIFO, SOCKET: stat.S_IFSOCK, CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}
SPECIAL_KINDS = {bits: kind for kind, bits in SPECIAL_TYPES.items()}


def _error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _fit(value: int, name: str) -> int:
    """``value`` clamped into the range attribute ``name`` may hold (see ``namespace.LIMITS``)."""
    return min(max(value, LOWER.get(name, 0)), LIMITS[name] - 1)


#: How often a waiting fsync looks for a signal sent to its caller.
SIGNAL_POLL = 0.2


def signal_pending(pid: int) -> bool:
    """Whether thread ``pid`` has a signal waiting that it neither blocks nor ignores (or is gone)."""
    masks = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn"):
                    masks[key] = int(value.strip(), 16)
    except (OSError, ValueError):
        return True  # the caller is gone: nobody waits for the answer
    pending = masks.get("SigPnd", 0) | masks.get("ShdPnd", 0)
    return bool(pending & ~masks.get("SigBlk", 0) & ~masks.get("SigIgn", 0))


@dataclass
class Handle:
    """An open file."""

    node: bytes
    writable: bool
    last_end: int = -1
    pid: int = 0  # who opened it: a waiting fsync watches this thread for signals


class WalrusFS(pyfuse3.Operations):
    """A volume's tree as a FUSE filesystem."""

    enable_writeback_cache = True

    def __init__(self, vlog: VolumeLog, contents: Contents, read_only: bool, status: Any = None,
                 keep_owners: bool = False, owner: tuple[int, int] | None = None, umask: int = 0) -> None:
        super().__init__()
        self.vlog = vlog
        self.contents = contents
        self.read_only = read_only or not vlog.volume.writable
        # Another device's uid and gid mean nothing on this machine (and let a writer hand
        # files to whoever it likes here): every node is the mounting user's unless asked.
        self.keep_owners = keep_owners
        #: Who every node shows as without ``keep_owners`` (--uid/--gid), and the permission
        #: bits masked out of every shown mode (--umask): what the kernel checks other users against.
        self.owner = owner if owner is not None else (os.getuid(), os.getgid())
        self.umask = umask & 0o777
        self.status_extra = status or (dict)
        self._inode_of: dict[bytes, int] = {ROOT: pyfuse3.ROOT_INODE}
        self._node_of: dict[int, bytes] = {pyfuse3.ROOT_INODE: ROOT}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, list[tuple[str, bytes]]] = {}
        self._dir_pids: dict[int, int] = {}
        self._next_fh = 1
        self._seen_version: dict[bytes, Any] = {}
        self.statfs_source: Any = None
        self.status_pages = StatusPages()

    # ------------------------------------------------------------------ helpers

    @property
    def ns(self) -> Any:
        """The current namespace (replaced when the log refolds)."""
        return self.vlog.namespace

    def _inode(self, node_id: bytes) -> int:
        inode = self._inode_of.get(node_id)
        if inode is None:
            inode = self._inode_of[node_id] = self._next_inode
            self._node_of[inode] = node_id
            self._next_inode += 1
        return inode

    def _node(self, inode: int) -> Node:
        node_id = self._node_of.get(inode)
        node = self.ns.nodes.get(self.ns.resolve(node_id)) if node_id is not None else None
        if node is None:
            raise _error(errno.ENOENT)
        return node

    def _directory(self, inode: int) -> Node:
        node = self._node(inode)
        if node.kind != DIRECTORY:
            raise _error(errno.ENOTDIR)
        if node.node_id != ROOT and node.parent is None:
            raise _error(errno.ENOENT)  # removed while someone held it
        return node

    def _unnamed(self, node_id: bytes) -> bool:
        """Whether a node has no name left in the (current) tree."""
        node = self.ns.nodes.get(self.ns.resolve(node_id))
        return node is None or not node.links

    def _writable(self) -> None:
        if self.read_only:
            raise _error(errno.EROFS)

    @staticmethod
    def _name(name: bytes) -> str:
        if len(name) > NAME_MAX:
            raise _error(errno.ENAMETOOLONG)
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(errno.EILSEQ) from None

    def _child(self, directory: Node, name: str) -> Node | None:
        child = self.ns.children.get(directory.node_id, {}).get(name)
        return self.ns.nodes[child] if child is not None else None

    def _existing_child(self, directory: Node, name: str) -> Node:
        child = self._child(directory, name)
        if child is None:
            raise _error(errno.ENOENT)
        return child

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self._inode(node.node_id)
        attr.generation = 0
        attr.entry_timeout = ATTR_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        # Every value is clamped again where it meets pyfuse3, which raises OverflowError (and
        # ends the mount) for one that does not fit its C type: the log validator and the fold
        # keep them in range, this keeps a mount alive should anything else ever get through.
        mode = node.mode & (LIMITS["mode"] - 1) & ~self.umask
        mtime, ctime = node.mtime_ns, node.ctime_ns
        if node.kind == FILE:
            attr.st_mode = stat.S_IFREG | mode
            attr.st_size = _fit(self.contents.size_of(node), "size")
            attr.st_nlink = node.nlink  # its names; 0 once unlinked while open
            mtime = self.contents.mtime_of(node)
            if mtime != node.mtime_ns and mtime <= time.time_ns():
                ctime = max(ctime, mtime)  # staged bytes: written (or truncated) then, not yet signed
        elif node.kind == DIRECTORY:
            if node.node_id == ROOT:
                mode |= ROOT_KEPT_BITS  # nobody's chmod locks this mount's user out of the volume
            attr.st_mode = stat.S_IFDIR | mode
            children = self.ns.children.get(node.node_id, {})
            attr.st_nlink = 2 + sum(1 for c in children.values() if self.ns.nodes[c].kind == DIRECTORY)
            attr.st_size = 4096
        elif node.kind == SYMLINK:
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_size = len(node.target.encode())
            attr.st_nlink = node.nlink
        else:
            attr.st_mode = SPECIAL_TYPES.get(node.kind, stat.S_IFIFO) | mode
            attr.st_size = 0
            attr.st_nlink = node.nlink
            if node.kind in DEVICES:
                attr.st_rdev = _fit(node.rdev, "rdev")
        if self.keep_owners and node.node_id != ROOT and in_range("uid", node.uid) and in_range("gid", node.gid):
            attr.st_uid, attr.st_gid = node.uid, node.gid
        else:
            attr.st_uid, attr.st_gid = self.owner
        attr.st_blksize = 128 << 10
        attr.st_blocks = -(-attr.st_size // 512)
        attr.st_atime_ns = _fit(node.atime_ns, "atime_ns")
        attr.st_mtime_ns = _fit(mtime, "mtime_ns")
        attr.st_ctime_ns = _fit(ctime, "ctime_ns")
        return attr

    def _open_handle(self, node: bytes, writable: bool, ctx: Any = None) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(node, writable, pid=getattr(ctx, "pid", 0))
        self.contents.opens[node] += 1
        if writable:
            self.contents.writers[node] += 1
        return fh

    def remote_change(self, rewritten: set[bytes]) -> None:
        """Another device rewrote these files: show them under fresh inodes.

        With the writeback cache the kernel never takes a regular file's size or mtime from
        the filesystem again while it holds the inode, so a rewritten file gets a new inode
        number (open handles keep the old one) and its directory entry is invalidated.
        """
        for node_id in rewritten:
            node = self.ns.nodes.get(self.ns.resolve(node_id))
            if node is None or node.kind != FILE or node_id not in self._inode_of or self.contents.opens[node_id]:
                continue
            del self._inode_of[node_id]  # the old number keeps resolving for the kernel's references
            for directory, name in node.links:  # every hard link names the old inode
                parent = self._inode_of.get(directory)
                if parent is not None:
                    pyfuse3.invalidate_entry_async(parent, name.encode(), ignore_enoent=True)

    # ------------------------------------------------------------------ lookups

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        """Find a name in a directory."""
        directory = self._directory(parent_inode)
        if name == b".":
            return self._attr(directory)
        if name == b"..":
            return self._attr(self.ns.nodes[directory.parent or ROOT])
        if len(name) > NAME_MAX:
            raise _error(errno.ENAMETOOLONG)  # what ext4 says for every call that looks such a name up
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(errno.ENOENT) from None  # no name here is anything but UTF-8
        return self._attr(self._existing_child(directory, text))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        """Attributes of a node."""
        return self._attr(self._node(inode))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        """A symbolic link's target."""
        node = self._node(inode)
        if node.kind != SYMLINK:
            raise _error(errno.EINVAL)
        return node.target.encode()

    async def opendir(self, inode: int, ctx: Any) -> int:
        """Snapshot a directory's entries, so a listing is consistent under concurrent change."""
        directory = self._directory(inode)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = sorted(self.ns.children.get(directory.node_id, {}).items())
        self._dir_pids[fh] = getattr(ctx, "pid", 0)
        await self._relatime(inode, directory)
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """List a directory from its snapshot."""
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            name, node_id = entries[index]
            node = self.ns.nodes.get(node_id)
            if node is None:
                continue
            if not pyfuse3.readdir_reply(token, name.encode(), self._attr(node), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        """Drop a directory snapshot."""
        self._dirs.pop(fh, None)
        self._dir_pids.pop(fh, None)

    # ------------------------------------------------------------------ namespace changes

    def _new_node_args(self, parent: Node, name: str, mode: int, ctx: Any) -> dict[str, Any]:
        if self._child(parent, name) is not None:
            raise _error(errno.EEXIST)
        return {"parent": parent.node_id, "name": name, "node": os.urandom(32), "mode": mode & 0o7777,
                "uid": getattr(ctx, "uid", 0), "gid": getattr(ctx, "gid", 0), "mtime_ns": time.time_ns()}

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Create and open a regular file."""
        self.contents.touch()
        self._writable()
        parent = self._directory(parent_inode)
        args = self._new_node_args(parent, self._name(name), mode, ctx)
        await self.vlog.append("create", args)
        node = self.ns.nodes[args["node"]]
        self.contents.stage(node)
        fh = self._open_handle(node.node_id, True, ctx)
        await self.contents.opened_for_writing(node.node_id)
        return pyfuse3.FileInfo(fh=fh), self._attr(node)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        """Make a regular file, a FIFO, a socket or a device node (metadata: the mount is ``nodev``)."""
        self.contents.touch()
        self._writable()
        kind = SPECIAL_KINDS.get(stat.S_IFMT(mode))
        if kind is None and not stat.S_ISREG(mode):
            raise _error(errno.EINVAL)  # the kernel lets no other type through
        parent = self._directory(parent_inode)
        args = self._new_node_args(parent, self._name(name), mode, ctx)
        if kind is None:
            await self.vlog.append("create", args)
        else:
            if kind in DEVICES:
                if not in_range("rdev", rdev):
                    raise _error(errno.EINVAL)
                args["rdev"] = rdev
            await self.vlog.append("mknod", {**args, "type": kind})
        return self._attr(self.ns.nodes[args["node"]])

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        """Make a directory."""
        self.contents.touch()
        self._writable()
        parent = self._directory(parent_inode)
        args = self._new_node_args(parent, self._name(name), mode, ctx)
        await self.vlog.append("mkdir", args)
        return self._attr(self.ns.nodes[self.ns.resolve(args["node"])])

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        """Make a symbolic link."""
        self.contents.touch()
        self._writable()
        parent = self._directory(parent_inode)
        args = self._new_node_args(parent, self._name(name), 0o777, ctx)
        try:
            args["target"] = target.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(errno.EILSEQ) from None
        await self.vlog.append("symlink", args)
        return self._attr(self.ns.nodes[args["node"]])

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        """Give a node another name (a hard link): one node, its data and attributes, under both."""
        self.contents.touch()
        self._writable()
        node = self._node(inode)
        if node.kind == DIRECTORY:
            raise _error(errno.EPERM)  # the kernel refuses first; directories have one name
        parent = self._directory(new_parent_inode)
        name = self._name(new_name)
        if self._child(parent, name) is not None:
            raise _error(errno.EEXIST)
        if not node.links:
            raise _error(errno.ENOENT)  # unlinked while open: as linkat(2) of such a file
        await self.vlog.append("link", {"parent": parent.node_id, "name": name, "node": node.node_id,
                                        "ctime_ns": time.time_ns()})
        return self._attr(self.ns.nodes[node.node_id])

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        """Remove a file or symbolic link; an open file stays readable until closed."""
        self.contents.touch()
        self._writable()
        parent = self._directory(parent_inode)
        text = self._name(name)
        child = self._existing_child(parent, text)
        if child.kind == DIRECTORY:
            raise _error(errno.EISDIR)
        await self.vlog.append("unlink", {"parent": parent.node_id, "name": text, "node": child.node_id,
                                          "ctime_ns": time.time_ns()})
        if self._unnamed(child.node_id):  # its last name: staged bytes nobody can reach go (once closed)
            await self.contents.discard(child.node_id)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        """Remove an empty directory."""
        self.contents.touch()
        self._writable()
        parent = self._directory(parent_inode)
        text = self._name(name)
        child = self._existing_child(parent, text)
        if child.kind != DIRECTORY:
            raise _error(errno.ENOTDIR)
        if self.ns.children.get(child.node_id):
            raise _error(errno.ENOTEMPTY)
        await self.vlog.append("rmdir", {"parent": parent.node_id, "name": text, "node": child.node_id,
                                         "ctime_ns": time.time_ns()})

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        """Atomically move a name, replacing what the target held (POSIX rules)."""
        self.contents.touch()
        self._writable()
        if flags & ~1:  # RENAME_EXCHANGE and RENAME_WHITEOUT are not supported
            raise _error(errno.EINVAL)
        source_dir = self._directory(parent_inode_old)
        target_dir = self._directory(parent_inode_new)
        old, new = self._name(name_old), self._name(name_new)
        node = self._existing_child(source_dir, old)
        existing = self._child(target_dir, new)
        if existing is not None and existing.node_id == node.node_id:
            return
        if node.kind == DIRECTORY:
            ancestor: bytes | None = target_dir.node_id
            while ancestor is not None:
                if ancestor == node.node_id:
                    raise _error(errno.EINVAL)
                ancestor = self.ns.nodes[ancestor].parent
        args: dict[str, Any] = {"parent": source_dir.node_id, "name": old, "node": node.node_id,
                                "new_parent": target_dir.node_id, "new_name": new, "ctime_ns": time.time_ns()}
        if existing is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise _error(errno.EEXIST)
            if node.kind == DIRECTORY and existing.kind != DIRECTORY:
                raise _error(errno.ENOTDIR)
            if node.kind != DIRECTORY and existing.kind == DIRECTORY:
                raise _error(errno.EISDIR)
            if existing.kind == DIRECTORY and self.ns.children.get(existing.node_id):
                raise _error(errno.ENOTEMPTY)
            args["replaces"] = existing.node_id
        await self.vlog.append("rename", args)
        if existing is not None and existing.kind == FILE and self._unnamed(existing.node_id):
            await self.contents.discard(existing.node_id)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        """Truncate, chmod, chown, utimens."""
        self.contents.touch()
        node = self._node(inode)
        log.debug("setattr %s size=%s %s", node.node_id.hex()[:8], fields.update_size, attr.st_size)
        changes: dict[str, int] = {}
        if fields.update_mode and stat.S_IMODE(attr.st_mode) != node.mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid and attr.st_uid != node.uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid and attr.st_gid != node.gid:
            changes["gid"] = attr.st_gid
        if (fields.update_mtime and not in_range("mtime_ns", attr.st_mtime_ns)) or (
                fields.update_atime and not in_range("atime_ns", attr.st_atime_ns)):
            # Every replica rejects an entry with a time beyond 64-bit nanoseconds (namespace.LIMITS):
            # signing one would leave this mount's chain stuck behind it for good.
            raise _error(errno.EINVAL)
        if fields.update_mtime and attr.st_mtime_ns != node.mtime_ns:
            changes["mtime_ns"] = attr.st_mtime_ns
        if fields.update_atime and attr.st_atime_ns != node.atime_ns:
            changes["atime_ns"] = attr.st_atime_ns  # utimensat sets each time exactly, UTIME_OMIT none
        if fields.update_size or changes:
            self._writable()
        if fields.update_size:
            if node.kind == DIRECTORY:
                raise _error(errno.EISDIR)
            if node.kind != FILE:
                raise _error(errno.EINVAL)
            # The kernel keeps a regular file's times (writeback cache) and sends the mtime
            # with a truncation that changed it; one sent without (the same size again) left
            # it as it was, and a stamp of our own would publish a time the writer never saw.
            await self.contents.truncate(node, attr.st_size, stamp=False)
        if fields.update_mtime and node.kind == FILE and node.node_id in self.contents.staged:
            # After the truncation (which keeps the staged time): the kernel's time (a truncate
            # in writeback mode that changed it sends the one it shows) or the caller's is the file's.
            self.contents.staged[node.node_id].mtime_ns = attr.st_mtime_ns
        if fields.update_size and fh is None:
            await self.contents.commit(node.node_id)
        if changes:
            # The kernel tells the change time it keeps for a regular file (writeback cache).
            when = attr.st_ctime_ns if fields.update_ctime and in_range("ctime_ns", attr.st_ctime_ns) else time.time_ns()
            await self.vlog.append("setattr", {"node": node.node_id, **changes, "ctime_ns": when})
        return self._attr(self._node(inode))

    # ------------------------------------------------------------------ file I/O

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        """Open a file; the kernel keeps its cached pages only if nobody else changed the file."""
        node = self._node(inode)
        if node.kind == DIRECTORY:
            raise _error(errno.EISDIR)
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writable:
            self._writable()
            self.contents.stage(node)
        if flags & os.O_TRUNC and node.kind == FILE:
            # With atomic O_TRUNC (which the writeback cache implies) the kernel sends no
            # setattr for `>`, `cp` over a file or open(path, "w"): the truncation arrives
            # here or nowhere, and a shorter rewrite would publish the old file's tail.
            self._writable()
            await self.contents.truncate(node, 0)
        version = (node.version, node.node_id in self.contents.staged)
        keep = self._seen_version.get(node.node_id) in (version, (node.version, False), (None, True))
        if node.kind == FILE and self.contents.invalid_chunks(node):
            keep = False  # drop pages read before the blob was certified invalid
        self._seen_version[node.node_id] = version
        if flags & os.O_ACCMODE != os.O_WRONLY and not flags & os.O_NOATIME and node.kind == FILE:
            await self._relatime(inode, node)
        fh = self._open_handle(node.node_id, writable, ctx)
        if writable:
            await self.contents.opened_for_writing(node.node_id)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _relatime(self, inode: int, node: Node) -> None:
        """Record a read's access time the way ``relatime`` does (at open: reads may never reach us).

        The kernel serves cached pages and listings without asking, so opening a file for
        reading, or a directory, stands for the read. Like relatime, only an atime not after
        the mtime or ctime, or a day old, is advanced, so a file read again and again costs
        no operations.
        """
        if self.read_only or self.vlog.delegation is None or getattr(self.vlog, "refused", None):
            return  # nothing to sign with, or nothing signed would count (no grant): reads stay reads
        now = time.time_ns()
        atime = node.atime_ns
        mtime = self.contents.mtime_of(node) if node.kind == FILE else node.mtime_ns
        if atime > mtime and atime > node.ctime_ns and now - atime < RELATIME_NS:
            return
        await self.vlog.append("setattr", {"node": node.node_id, "atime_ns": _fit(now, "atime_ns")})
        # The kernel would show its cached attributes (atime included) until they time out.
        await trio.to_thread.run_sync(self._forget_attributes, inode)

    @staticmethod
    def _forget_attributes(inode: int) -> None:
        try:
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError:
            pass  # the kernel no longer holds it: nothing cached

    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Read verified bytes; EIO if they cannot be verified."""
        handle = self._handles[fh]
        node = self._node(self._inode(handle.node))
        try:
            data = await self.contents.read(node, off, size, sequential=off == handle.last_end)
        except ReadError as exc:
            log.error("read of %s failed: %s", handle.node.hex()[:16], exc)
            raise _error(errno.EIO) from None
        handle.last_end = off + len(data)
        return data

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """Stage a write."""
        self.contents.touch()
        handle = self._handles[fh]
        log.debug("write fh=%d node=%s off=%d len=%d", fh, handle.node.hex()[:8], off, len(buf))
        if not handle.writable:
            raise _error(errno.EBADF)
        node = self._node(self._inode(handle.node))
        try:
            written = await self.contents.write(node, off, buf)
        except ReadError as exc:
            log.error("write to %s needed a chunk that cannot be read: %s", handle.node.hex()[:16], exc)
            raise _error(errno.EIO) from None
        return written

    async def flush(self, fh: int) -> None:
        """close(): the staged bytes are durable when this returns; the upload follows."""
        self.contents.touch()
        handle = self._handles.get(fh)
        log.debug("flush fh=%d", fh)
        if handle is not None and handle.writable:
            await self.contents.commit(handle.node)
            refused = self.contents.quota_problem(handle.node)
            if refused is not None:
                # Kept staged (nothing lost) and retried; close tells the writer now.
                log.warning("close of %s: Disk quota exceeded: %s", handle.node.hex()[:16], refused)
                raise _error(errno.EDQUOT)

    async def release(self, fh: int) -> None:
        """Last close of a handle."""
        handle = self._handles.pop(fh, None)
        log.debug("release fh=%d", fh)
        if handle is None:
            return
        self.contents.opens[handle.node] -= 1
        if handle.writable:
            self.contents.writers[handle.node] -= 1
            if self.contents.writers[handle.node] <= 0:
                del self.contents.writers[handle.node]
        if self.contents.opens[handle.node] <= 0:
            del self.contents.opens[handle.node]
            node = self.ns.nodes.get(handle.node)
            if node is None or node.parent is None:
                await self.contents.discard(handle.node)
                return
        if handle.writable:
            await self.contents.commit(handle.node)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Return once the file's chunks are certified and its namespace entry is in the log."""
        handle = self._handles[fh]
        try:
            await self._until_signalled(handle.pid, lambda: self.contents.sync(handle.node))
        except QuotaRefused as exc:
            log.warning("fsync of %s: Disk quota exceeded: %s", handle.node.hex()[:16], exc)
            raise _error(errno.EDQUOT) from None

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Return once every pending upload and namespace entry of this mount is in the log."""
        try:
            await self._until_signalled(self._dir_pids.get(fh, 0), self.contents.sync_all)
        except QuotaRefused as exc:
            log.warning("fsync of the volume: Disk quota exceeded: %s", exc)
            raise _error(errno.EDQUOT) from None

    async def _until_signalled(self, pid: int, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job``; if the caller gets a signal first, fail with EINTR (it must never see success).

        fsync waits as long as the peers are away; the kernel waits for our answer even for
        a signal, and pyfuse3 does not pass FUSE interrupts on, so the caller's pending
        signals are watched here instead.
        """
        interrupted = False
        error: Exception | None = None
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal interrupted
                while not (pid and signal_pending(pid)):
                    await trio.sleep(SIGNAL_POLL)
                interrupted = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                await job()
            except Exception as exc:  # re-raised below as itself, not in an exception group
                error = exc
            nursery.cancel_scope.cancel()
        if interrupted:
            raise _error(errno.EINTR)
        if error is not None:
            raise error

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        """Capacity as the peers report it: what the fullest peer's free space allows."""
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        free = self.statfs_source() if self.statfs_source is not None else 0
        data.f_blocks = data.f_bfree = data.f_bavail = free // 4096
        data.f_files = len(self.ns.nodes) + 1_000_000
        data.f_ffree = data.f_favail = 1_000_000
        data.f_namemax = NAME_MAX
        return data

    # ------------------------------------------------------------------ xattrs

    def _walrus_xattrs(self, node: Node) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if node.node_id == ROOT:
            status = {"volume": self.vlog.volume.volume_id, "device": self.vlog.device_id.hex(),
                      "read_only": self.read_only, "entries_signed": self.vlog.head,
                      "entries_published": self.vlog.published, "publish_error": self.vlog.last_error,
                      "log_synced": self.vlog.synced_once.is_set(), "log_error": self.vlog.sync_error,
                      "volume_kind": self.vlog.volume.kind, "unreadable_entries": self.vlog.unreadable,
                      **self.contents.status(), **self.status_extra()}
            out["status"] = self.status_pages.render(status)
            out["volume"] = self.vlog.volume.volume_id.encode()
        if node.kind == FILE:
            staged = self.contents.staged.get(node.node_id)
            chunks = node.content.chunks
            out["blob_ids"] = "\n".join(str(BlobId(c)) if c else "(hole)" for c in chunks).encode()
            certificates = []
            for chunk in chunks:
                entry = self.vlog.state.certified_entry(BlobId(chunk)) if chunk else None
                certificates.append(entry.id.hex() if entry is not None else ("(hole)" if not chunk else "(unknown)"))
            out["certificates"] = "\n".join(certificates).encode()
            if any(o is not None for o in node.content.offsets):  # a packed file: where in its pack
                out["packed"] = "\n".join("-" if o is None else str(o) for o in node.content.offsets).encode()
            out["version"] = (node.version or b"").hex().encode()
            out["chunk_size"] = str(node.content.chunk_size).encode()
            out["pending"] = b"yes" if staged is not None else b"no"
            incomplete = self.contents.incomplete.get(node.node_id)
            if incomplete is not None:
                out["incomplete"] = incomplete_note(incomplete).encode()
            invalid = self.contents.invalid_chunks(node)
            if invalid:
                out["invalid"] = "\n".join(f"chunk {i}: {why}" for i, why in sorted(invalid.items())).encode()
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        """``user.walrus.*`` describe storage; other ``user.*`` names are the file's own."""
        node = self._node(inode)
        text = name.decode("utf-8", "replace")
        if text.startswith(XATTR_PREFIX):
            key = text[len(XATTR_PREFIX):]
            page = self.status_pages.page(key) if node.node_id == ROOT else None
            value = page if page is not None else self._walrus_xattrs(node).get(key)
        else:
            value = node.xattrs.get(text)
        if value is None:
            raise _error(errno.ENODATA)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        """Every attribute name of a node."""
        node = self._node(inode)
        names = [(XATTR_PREFIX + k).encode() for k in self._walrus_xattrs(node)]
        return names + [k.encode() for k in sorted(node.xattrs)]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        """Set a ``user.*`` attribute (``user.walrus.*`` is read-only)."""
        text = self._name(name)
        if not text.startswith("user."):
            raise _error(errno.ENOTSUP)
        if text.startswith(XATTR_PREFIX):
            raise _error(errno.EPERM)
        self._writable()
        if len(value) > 16 << 10:
            raise _error(errno.E2BIG)
        node = self._node(inode)
        await self.vlog.append("setxattr", {"node": node.node_id, "name": text, "value": bytes(value),
                                            "ctime_ns": time.time_ns()})

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        """Remove a ``user.*`` attribute."""
        text = self._name(name)
        node = self._node(inode)
        if text == XATTR_PREFIX + "incomplete" and node.node_id in self.contents.incomplete:
            await self.contents.clear_incomplete(node.node_id)  # checked by its user: this mount's note only
            return
        if text.startswith(XATTR_PREFIX):
            raise _error(errno.EPERM)
        if text not in node.xattrs:
            raise _error(errno.ENODATA)
        self._writable()
        await self.vlog.append("removexattr", {"node": node.node_id, "name": text, "ctime_ns": time.time_ns()})
