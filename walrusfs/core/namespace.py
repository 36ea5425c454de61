"""A volume's directory tree as a deterministic fold over namespace operations (pure).

Operations come from the log, each stamped (hybrid logical clock, author, op ID). The tree
is the result of applying every known operation in that total order, so any two mounts that
hold the same operations hold the same tree, whatever order they learned them in. Each
operation is defined in every state (a concurrent change never makes one fail), and nothing
is lost to concurrency:

* a content write names the version it was based on; if another writer's version landed in
  between, the displaced version stays reachable as ``NAME.conflict-AUTHOR-MILLIS``;
* a create of a name that a concurrent create already took gets such a conflict name, and
  two concurrent ``mkdir`` of one name merge into one directory;
* ``unlink`` and ``rename`` name the node the writer saw; a name that now points elsewhere
  is left alone, and a node displaced by a rename is kept as a conflict copy;
* ``rmdir`` of a directory that gained entries concurrently does nothing;
* a write to a node another writer unlinked brings it back, under a conflict name.

A node other than a directory may have several names (hard links): ``link`` adds one, and
``unlink`` or a replacing ``rename`` removes the one the writer named, so the node leaves
the tree only with its last name. A ``link`` to a node whose names were all removed
concurrently brings it back under the new name; one to a name taken concurrently gets a
conflict name.

Times follow POSIX and come from the operations alone, never from the clock of the replica
applying them: an operation may carry the writer's times (``mtime_ns``, ``atime_ns``, and
``ctime_ns``, the moment of the change); one that carries none takes its stamp's wall-clock
part. A change to a node advances its ctime, a change to a directory's entries (create,
remove, rename in or out) advances the directory's mtime and ctime, all to that moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROOT = bytes(32)
FILE, DIRECTORY, SYMLINK = "file", "dir", "symlink"
#: Special files, made by ``mknod``: metadata only (a device node's number is ``rdev``; the
#: kernel itself serves FIFOs and sockets, and mounts are ``nodev``).
FIFO, SOCKET, CHARDEV, BLOCKDEV = "fifo", "socket", "chardev", "blockdev"
SPECIAL = (FIFO, SOCKET, CHARDEV, BLOCKDEV)
DEVICES = (CHARDEV, BLOCKDEV)
#: Attribute -> exclusive upper bound; the lower bound is 0, or ``LOWER``'s. These are what
#: the kernel can be told (permission bits only, the file type comes from the node's kind;
#: uid_t and gid_t; a signed 64-bit nanosecond time, before 1970 too, as on ext4; a size; a
#: device number as FUSE carries it, 32 bits):
#: the log validator rejects an operation with a value outside them, and the fold ignores
#: one that got past it, so no writer can hand a mount a value that it cannot show.
LIMITS = {"mode": 0o7777 + 1, "uid": 2**32, "gid": 2**32, "mtime_ns": 2**63, "atime_ns": 2**63, "ctime_ns": 2**63,
          "size": 2**63, "chunk_size": 2**63, "rdev": 2**32}
#: The times a node has.
TIMES = ("mtime_ns", "atime_ns", "ctime_ns")
#: Attribute -> inclusive lower bound, where it is not 0.
LOWER = {name: -(2**63) for name in TIMES}
#: Bits of the volume root's mode nobody can take away: its owner (the mounting user, see
#: ``WalrusFS``) can always list and enter it, whatever another device's chmod said.
ROOT_KEPT_BITS = 0o700


def in_range(name: str, value: object) -> bool:
    """Whether ``value`` is an integer (not a bool) that attribute ``name`` may hold."""
    return isinstance(value, int) and not isinstance(value, bool) and LOWER.get(name, 0) <= value < LIMITS[name]


@dataclass(frozen=True)
class Content:
    """A file's bytes: ``size`` bytes in chunks of ``chunk_size``, each a blob ID (None = a hole).

    In a private volume each chunk is sealed, and ``hashes`` holds its plaintext hash (the
    chunk's key is derived from it); a public volume's content has no hashes. A chunk with
    an offset in ``offsets`` is packed: its (sealed) bytes are that range of a blob many
    small files share (a pack), not the whole blob.
    """

    size: int = 0
    chunk_size: int = 4 << 20
    chunks: tuple[bytes | None, ...] = ()
    hashes: tuple[bytes | None, ...] = ()
    offsets: tuple[int | None, ...] = ()

    def hash_of(self, index: int) -> bytes | None:
        """The plaintext hash that opens chunk ``index`` (None in a public volume)."""
        return self.hashes[index] if index < len(self.hashes) else None

    def offset_of(self, index: int) -> int | None:
        """Where packed chunk ``index`` starts in its blob (None: the chunk is the whole blob)."""
        return self.offsets[index] if index < len(self.offsets) else None


@dataclass(frozen=True)
class Op:
    """One namespace operation as recorded in the log.

    An entry that carries one op gives it the entry's ID; an entry that carries a batch
    gives each op an ID of its own and the same ``batch`` key, and ``index`` is its place
    in the batch (see ``log.entry_ops``), so the ops of one entry follow each other in the
    order they were written.
    """

    op_id: bytes
    hlc: int
    author: bytes
    kind: str
    args: Mapping[str, Any]
    batch: bytes = b""
    index: int = 0

    @property
    def order(self) -> tuple[int, bytes, bytes, int]:
        """Position in the total order every mount applies operations in."""
        return (self.hlc, self.author, self.batch or self.op_id, self.index)


@dataclass
class Node:
    """A file, directory, symbolic link or special file."""

    node_id: bytes
    kind: str
    mode: int
    mtime_ns: int
    parent: bytes | None = None
    name: str | None = None
    content: Content = field(default_factory=Content)
    version: bytes | None = None  # op ID of the write that produced ``content``
    # ``parent`` and ``name`` are the node's first name still in the tree (None when it has
    # none); ``links`` holds every name, in the order they were made.
    target: str = ""
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    atime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0  # a device node's number
    links: list[tuple[bytes, str]] = field(default_factory=list)

    @property
    def nlink(self) -> int:
        """How many names the node has in the tree."""
        return len(self.links)

    def changed(self, when: int) -> None:
        """The node's attributes or names changed at ``when``: its ctime."""
        self.ctime_ns = when

    def modified(self, when: int) -> None:
        """A directory's entries (or a file's bytes) changed at ``when``: mtime and ctime."""
        self.mtime_ns = self.ctime_ns = when


def _attr(args: Mapping[str, Any], name: str, default: int) -> int:
    """Argument ``name`` if present and in range, else ``default`` (the same on every replica)."""
    value = args.get(name, default)
    return value if in_range(name, value) else default


def _stamp_ns(op: Op) -> int:
    """An operation's stamp as the nanosecond time a node gets when the writer gave none."""
    return min(max(op.hlc >> 16, 0) * 1_000_000, LIMITS["mtime_ns"] - 1)


def _when(op: Op, args: Mapping[str, Any]) -> int:
    """The moment of an operation's change: the writer's ``ctime_ns``, else its ``mtime_ns``, else the stamp."""
    return _attr(args, "ctime_ns", _attr(args, "mtime_ns", _stamp_ns(op)))


def conflict_name(name: str, op: Op) -> str:
    """The name a version displaced by ``op`` is kept under."""
    return f"{name}.conflict-{op.author.hex()[:8]}-{op.hlc >> 16}"


class Namespace:
    """The tree; ``apply`` operations in their total order (``build`` sorts them for you)."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, Node] = {ROOT: Node(ROOT, DIRECTORY, 0o755, 0)}
        self.children: dict[bytes, dict[str, bytes]] = {ROOT: {}}
        self.aliases: dict[bytes, bytes] = {}
        self.last: tuple[int, bytes, bytes, int] | None = None

    # ------------------------------------------------------------------ queries

    def resolve(self, node_id: bytes) -> bytes:
        """The node an ID refers to, following merged-directory aliases."""
        while node_id in self.aliases:
            node_id = self.aliases[node_id]
        return node_id

    def lookup(self, path: str) -> Node | None:
        """The node at a slash-separated path, or None."""
        node_id = ROOT
        for part in (p for p in path.split("/") if p):
            entries = self.children.get(node_id)
            if entries is None or part not in entries:
                return None
            node_id = entries[part]
        return self.nodes[node_id]

    def listing(self, directory: bytes) -> dict[str, bytes]:
        """Name -> node ID of a directory's entries."""
        return dict(self.children.get(self.resolve(directory), {}))

    def tree(self) -> dict[str, tuple[Any, ...]]:
        """Every path with what it holds: a comparable picture of the whole tree."""
        out: dict[str, tuple[Any, ...]] = {}

        def walk(directory: bytes, prefix: str) -> None:
            for name, node_id in sorted(self.children.get(directory, {}).items()):
                node = self.nodes[node_id]
                path = f"{prefix}/{name}"
                out[path] = (node.kind, node.mode, node.content, node.target, tuple(sorted(node.xattrs.items())),
                             node.mtime_ns, node.atime_ns, node.ctime_ns, node.rdev, node.nlink)
                if node.kind == DIRECTORY:
                    walk(node_id, path)

        walk(ROOT, "")
        return out

    # ------------------------------------------------------------------ applying

    def apply(self, op: Op) -> None:
        """Apply one operation; operations must come in ``Op.order``."""
        if self.last is not None and op.order <= self.last:
            raise ValueError("namespace operations must be applied in their total order")
        self.last = op.order
        handler = getattr(self, "_op_" + op.kind.replace("-", "_"), None)
        if handler is None:
            return
        try:
            handler(op, op.args)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            # The log validator lets no such operation through; one that reaches the fold by
            # another way (an old state database, a future validator bug) ends here with what
            # it did so far, the same on every replica (the fold is pure), instead of raising
            # out of a mount's refresh and leaving the rest of that batch unapplied there.
            pass

    def _free_name(self, directory: bytes, name: str, op: Op) -> str:
        taken = self.children[directory]
        candidate = conflict_name(name, op)
        suffix = 1
        while candidate in taken:
            suffix += 1
            candidate = f"{conflict_name(name, op)}-{suffix}"
        return candidate

    def _link(self, directory: bytes, name: str, node_id: bytes) -> None:
        self.children[directory][name] = node_id
        node = self.nodes[node_id]
        node.links.append((directory, name))
        if node.parent is None:
            node.parent, node.name = directory, name

    def _unlink_name(self, directory: bytes, name: str) -> Node:
        """Remove one directory entry; the node it named keeps its other names (if any)."""
        node = self.nodes[self.children[directory].pop(name)]
        node.links.remove((directory, name))
        if (node.parent, node.name) == (directory, name):
            node.parent, node.name = node.links[0] if node.links else (None, None)
        return node

    def _directory(self, args: Mapping[str, Any], key: str = "parent") -> bytes | None:
        directory = self.resolve(args.get(key, ROOT))
        node = self.nodes.get(directory)
        if node is None or node.kind != DIRECTORY or (directory != ROOT and node.parent is None):
            return None
        return directory

    def _create(self, op: Op, args: Mapping[str, Any], kind: str) -> None:
        directory = self._directory(args)
        node_id = args["node"]
        if directory is None or node_id in self.nodes:
            return
        name = str(args["name"])
        existing = self.children[directory].get(name)
        if existing is not None and kind == DIRECTORY and self.nodes[existing].kind == DIRECTORY:
            self.aliases[node_id] = existing  # concurrent mkdir of one name: one directory
            return
        mtime = _attr(args, "mtime_ns", _stamp_ns(op))
        node = Node(node_id, kind, _attr(args, "mode", 0o644), mtime,
                    target=str(args.get("target", "")), uid=_attr(args, "uid", 0), gid=_attr(args, "gid", 0),
                    atime_ns=_attr(args, "atime_ns", mtime), ctime_ns=_attr(args, "ctime_ns", mtime),
                    rdev=_attr(args, "rdev", 0) if kind in DEVICES else 0)
        self.nodes[node_id] = node
        if kind == DIRECTORY:
            self.children[node_id] = {}
        self._link(directory, name if existing is None else self._free_name(directory, name, op), node_id)
        self.nodes[directory].modified(_when(op, args))

    def _op_create(self, op: Op, args: Mapping[str, Any]) -> None:
        self._create(op, args, FILE)

    def _op_mkdir(self, op: Op, args: Mapping[str, Any]) -> None:
        self._create(op, args, DIRECTORY)

    def _op_symlink(self, op: Op, args: Mapping[str, Any]) -> None:
        self._create(op, args, SYMLINK)

    def _op_mknod(self, op: Op, args: Mapping[str, Any]) -> None:
        if args.get("type") in SPECIAL:
            self._create(op, args, str(args["type"]))

    def _op_write(self, op: Op, args: Mapping[str, Any]) -> None:
        node = self.nodes.get(self.resolve(args["node"]))
        if node is None or node.kind != FILE:
            return
        content = args["content"]
        if not isinstance(content, Content):
            content = Content(content["size"], content["chunk_size"], tuple(content["chunks"]),
                              tuple(content.get("hashes", ())), tuple(content.get("offsets", ())))
        if not (in_range("size", content.size) and in_range("chunk_size", content.chunk_size) and content.chunk_size):
            return  # a size no kernel can be told, or chunks that reads would divide by zero for
        base = args.get("base")
        if node.version is not None and base != node.version and node.parent is not None:
            # Another writer's version landed after the one this write started from: keep it.
            keep = Node(
                op.op_id, FILE, node.mode, node.mtime_ns, content=node.content, version=node.version,
                uid=node.uid, gid=node.gid, xattrs=dict(node.xattrs), atime_ns=node.atime_ns, ctime_ns=node.ctime_ns,
            )
            self.nodes[keep.node_id] = keep
            self._link(node.parent, self._free_name(node.parent, node.name or "file", op), keep.node_id)
            self.nodes[node.parent].modified(_when(op, {"ctime_ns": args.get("ctime_ns")}))
        if node.parent is None and node.name is None and args.get("last_parent") is not None:
            directory = self._directory(args, "last_parent")
            if directory is not None:  # written after a concurrent unlink: bring it back
                self._link(directory, self._free_name(directory, str(args.get("last_name", "file")), op), node.node_id)
                self.nodes[directory].modified(_when(op, {"ctime_ns": args.get("ctime_ns")}))
        node.content = content
        node.version = op.op_id
        node.mtime_ns = _attr(args, "mtime_ns", _stamp_ns(op))
        # A write is signed when its upload ends, after changes made to the file meanwhile
        # (a chmod): its change time never moves ctime back, nor past the stamp's millisecond.
        node.ctime_ns = max(node.ctime_ns, _attr(args, "ctime_ns", min(node.mtime_ns, _stamp_ns(op) + 999_999)))

    def _op_unlink(self, op: Op, args: Mapping[str, Any]) -> None:
        directory = self._directory(args)
        if directory is None:
            return
        node_id = self.children[directory].get(str(args["name"]))
        if node_id is None or node_id != self.resolve(args["node"]):
            return  # the name now means something the writer never saw
        node = self.nodes[node_id]
        if node.kind == DIRECTORY:
            return
        self._unlink_name(directory, str(args["name"]))
        when = _when(op, args)
        node.changed(when)
        self.nodes[directory].modified(when)

    def _op_rmdir(self, op: Op, args: Mapping[str, Any]) -> None:
        directory = self._directory(args)
        if directory is None:
            return
        node_id = self.children[directory].get(str(args["name"]))
        if node_id is None or node_id != self.resolve(args["node"]) or self.children.get(node_id):
            return  # gone, replaced, or no longer empty
        self._unlink_name(directory, str(args["name"]))
        self.nodes[directory].modified(_when(op, args))

    def _op_rename(self, op: Op, args: Mapping[str, Any]) -> None:
        source = self._directory(args, "parent")
        target = self._directory(args, "new_parent")
        if source is None or target is None:
            return
        node_id = self.children[source].get(str(args["name"]))
        if node_id is None or node_id != self.resolve(args["node"]):
            return
        # A directory must not move below itself.
        ancestor: bytes | None = target
        while ancestor is not None:
            if ancestor == node_id:
                return
            ancestor = self.nodes[ancestor].parent
        new_name = str(args["new_name"])
        existing = self.children[target].get(new_name)
        if existing == node_id:
            return  # POSIX: a rename onto the same file (the same name, or another link) does nothing
        when = _when(op, args)
        if existing is not None and existing != node_id:
            replaced = self.nodes[existing]
            if replaced.kind == DIRECTORY and self.children.get(existing):
                return  # POSIX: cannot replace a non-empty directory
            # The writer saw it (an ordinary replacing rename): that name goes, the node's
            # other names stay. Someone else put it there concurrently: keep it under a conflict name.
            self._unlink_name(target, new_name)
            if existing != self.resolve(args.get("replaces", b"")) and replaced.kind != DIRECTORY:
                self._link(target, self._free_name(target, new_name, op), existing)
            replaced.changed(when)
        self._unlink_name(source, str(args["name"]))
        self._link(target, new_name, node_id)
        self.nodes[node_id].changed(when)
        self.nodes[source].modified(when)
        self.nodes[target].modified(when)

    def _op_link(self, op: Op, args: Mapping[str, Any]) -> None:
        directory = self._directory(args)
        node_id = self.resolve(args["node"])
        node = self.nodes.get(node_id)
        if directory is None or node is None or node.kind == DIRECTORY:
            return  # directories have one name (and the root none)
        name = str(args["name"])
        existing = self.children[directory].get(name)
        if existing == node_id:
            return
        self._link(directory, name if existing is None else self._free_name(directory, name, op), node_id)
        when = _when(op, args)
        node.changed(when)
        self.nodes[directory].modified(when)

    def _op_setattr(self, op: Op, args: Mapping[str, Any]) -> None:
        node = self.nodes.get(self.resolve(args["node"]))
        if node is None:
            return
        updates = {k: args[k] for k in ("mode", "uid", "gid", "mtime_ns", "atime_ns") if in_range(k, args.get(k))}
        if node.node_id == ROOT:
            # The root belongs to every mount of the volume: nobody's chown or chmod may lock
            # the others out of it (ownership is the mounting user's anyway).
            updates.pop("uid", None)
            updates.pop("gid", None)
            if "mode" in updates:
                updates["mode"] |= ROOT_KEPT_BITS
        for key, value in updates.items():
            setattr(node, key, value)
        if set(updates) - {"atime_ns"} or in_range("ctime_ns", args.get("ctime_ns")):
            # An explicit change (utimensat included) carries its moment; a read's atime does not.
            node.changed(_when(op, {"ctime_ns": args.get("ctime_ns")}))

    def _op_setxattr(self, op: Op, args: Mapping[str, Any]) -> None:
        node = self.nodes.get(self.resolve(args["node"]))
        value = args["value"]
        if node is not None and isinstance(value, bytes):  # bytes(n) of an integer would allocate n bytes
            node.xattrs[str(args["name"])] = value
            node.changed(_when(op, {"ctime_ns": args.get("ctime_ns")}))

    def _op_removexattr(self, op: Op, args: Mapping[str, Any]) -> None:
        node = self.nodes.get(self.resolve(args["node"]))
        if node is not None and node.xattrs.pop(str(args["name"]), None) is not None:
            node.changed(_when(op, {"ctime_ns": args.get("ctime_ns")}))


def build(ops: Iterable[Op]) -> Namespace:
    """The tree that a set of operations (duplicates ignored) produces."""
    namespace = Namespace()
    seen: set[bytes] = set()
    for op in sorted(ops, key=lambda o: o.order):
        if op.op_id not in seen:
            seen.add(op.op_id)
            namespace.apply(op)
    return namespace
