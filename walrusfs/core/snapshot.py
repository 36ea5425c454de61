"""Volume snapshots: a folded tree, its log position and a writer's signature, in a canonical form (pure).

A mount that starts with nothing folds every namespace entry of its volume; with a
snapshot it loads the tree a writer folded and applies only the entries after the
snapshot's position. A snapshot holds the ``Namespace`` exactly (every node, named or not,
the merged-directory aliases and the fold's last position in the total order), so the
fold goes on from it as it would have from the entries, and the position: for every
author of the volume's entries, the seq and ID of its last entry the fold took in.

Wire form (format 1), a canonical CBOR map ``{"v", "kind": "volume-snapshot", "header",
"tree", "signer", "delegation", "signature"}``:

* ``header`` is the canonical CBOR of ``{"v", "kind": "volume-snapshot-header", "format",
  "volume", "heads": [[author, seq, id], ...] (by author), "last": [hlc, author, key,
  index] (the fold's last place in the total order, ``Op.order``: the key is a single op's
  ID or a batched entry's batch key) or null, "folded" (namespace entries folded), "nodes", "tree" (BLAKE2b-256 of the tree bytes)}``;
* ``signature`` is the signer's Ed25519 signature over ``SNAPSHOT_DOMAIN`` + header, and
  ``delegation`` the volume key's delegation of the signer (the one namespace entries
  carry), so only a key that may write the volume can sign one;
* ``tree`` is the binary encoding below, nodes by ID, attributes by name (canonical: one
  tree has one encoding). Struct-packed rather than CBOR so a 100,000-node tree decodes in
  about a second with every value checked; it is the same encoding a mount keeps its
  local copy's tree in.

``open_snapshot`` checks all of it and raises only ``SnapshotError``, in time linear in
its input: a snapshot no fold could have produced (a value out of range, a name twice in
a directory, a directory inside itself, an alias loop) is refused, never half loaded.
A private volume's snapshot blob is sealed as a whole (``sealing.seal_snapshot``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import wire
from .errors import CodecError
from .log import PATH_MAX, LogError, check_delegation
from .namespace import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    FILE,
    LIMITS,
    ROOT,
    SOCKET,
    SYMLINK,
    Content,
    Namespace,
    Node,
)

SNAPSHOT_DOMAIN = b"walrusfs/volume-snapshot/v1\x00"
FORMAT = 1
#: Largest snapshot a mount reads (a few hundred bytes per node: millions of files).
MAX_SNAPSHOT_BYTES = 1 << 30
#: Largest header (its heads list one row per author of the volume's entries).
MAX_HEADER_BYTES = 64 << 20
KINDS = (FILE, DIRECTORY, SYMLINK, FIFO, SOCKET, CHARDEV, BLOCKDEV)
_KIND_INDEX = {kind: index for index, kind in enumerate(KINDS)}
_TREE_MAGIC = b"WFSTREE1"
# Per node: ID, kind, mode, uid, gid, rdev, mtime, atime, ctime, size, chunk size, has a
# version, and the counts of what follows it: chunks, plaintext hashes, pack offsets,
# target bytes, extended attributes, names. Then the version, each chunk column as one
# flag byte per item (0 a hole, 1 an ID) followed by the IDs, the offsets column likewise
# (0 none, 1 an offset) followed by the offsets (8 bytes each), the target, the attributes
# (name length, name, value length, value) and the names (directory ID, name length, name).
_NODE = struct.Struct("<32sBIIIIqqqQQBIIIIII")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_ID = 32
#: Longest extended attribute value (an op carrying it fits a 64 KiB entry).
MAX_XATTR = 64 << 10

Heads = dict[bytes, tuple[int, bytes]]


class SnapshotError(CodecError, ValueError):
    """A snapshot is malformed, not signed by a writer of the volume, or describes no tree a fold makes."""


# ---------------------------------------------------------------------------- the tree


def encode_tree(namespace: Namespace) -> bytes:
    """The canonical binary encoding of a folded tree (nodes by ID, attributes by name)."""
    parts = [_TREE_MAGIC, _U32.pack(len(namespace.nodes)), _U32.pack(len(namespace.aliases))]
    append = parts.append
    pack_node, pack32, pack16 = _NODE.pack, _U32.pack, _U16.pack
    for node_id in sorted(namespace.nodes):
        node = namespace.nodes[node_id]
        content = node.content
        target = node.target.encode()
        append(pack_node(node_id, _KIND_INDEX[node.kind], node.mode, node.uid, node.gid, node.rdev, node.mtime_ns,
                         node.atime_ns, node.ctime_ns, content.size, content.chunk_size, node.version is not None,
                         len(content.chunks), len(content.hashes), len(content.offsets), len(target),
                         len(node.xattrs), len(node.links)))
        if node.version is not None:
            append(node.version)
        for column in (content.chunks, content.hashes):
            if column:
                append(bytes(item is not None for item in column))
                append(b"".join(item for item in column if item is not None))
        if content.offsets:
            append(bytes(offset is not None for offset in content.offsets))
            append(b"".join(_U64.pack(offset) for offset in content.offsets if offset is not None))
        append(target)
        for name in sorted(node.xattrs):
            raw, value = name.encode(), node.xattrs[name]
            append(pack16(len(raw)) + raw + pack32(len(value)))
            append(value)
        for directory, name in node.links:
            raw = name.encode()
            append(directory + pack16(len(raw)) + raw)
    for alias in sorted(namespace.aliases):
        append(alias + namespace.aliases[alias])
    return b"".join(parts)


class _Truncated(Exception):
    pass


def decode_tree(data: bytes) -> Namespace:
    """The tree ``encode_tree`` encoded, checked to be one a fold can make; ``SnapshotError`` otherwise."""
    try:
        return _decode_tree(bytes(data))
    except SnapshotError:
        raise
    except UnicodeDecodeError:
        raise SnapshotError("snapshot tree holds a name that is not UTF-8") from None
    except (_Truncated, struct.error):
        raise SnapshotError("snapshot tree is truncated") from None
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise SnapshotError(f"malformed snapshot tree: {type(exc).__name__}: {exc}") from None


_EMPTY = Content()


def _column(data: bytes, pos: int, n: int, end: int) -> tuple[tuple[bytes | None, ...], int]:
    """A chunk column of ``n`` items at ``pos`` (flag bytes, then the IDs of those flagged 1); and the position after it."""
    flags = data[pos : pos + n]
    pos += n
    present = flags.count(1)
    if len(flags) != n or present + flags.count(0) != n or pos + present * _ID > end:
        raise SnapshotError("snapshot tree: a chunk is neither a blob ID nor a hole")
    if not present:
        return (None,) * n, pos
    if present == n:
        return tuple(data[pos + k * _ID : pos + (k + 1) * _ID] for k in range(n)), pos + n * _ID
    column: list[bytes | None] = []
    for flag in flags:
        if flag:
            column.append(data[pos : pos + _ID])
            pos += _ID
        else:
            column.append(None)
    return tuple(column), pos


def _offsets(data: bytes, pos: int, chunks: tuple[bytes | None, ...], end: int) -> tuple[tuple[int | None, ...], int]:
    """A pack offsets column for ``chunks`` at ``pos`` (flag bytes, then 8 bytes per offset); and the position after it."""
    n = len(chunks)
    flags = data[pos : pos + n]
    pos += n
    present = flags.count(1)
    if len(flags) != n or present + flags.count(0) != n or pos + present * 8 > end:
        raise SnapshotError("snapshot tree: a pack offset is neither an offset nor none")
    column: list[int | None] = []
    for flag, chunk in zip(flags, chunks):
        if flag:
            offset = _U64.unpack_from(data, pos)[0]
            pos += 8
            # What ``log.check_op`` lets a write carry: where a stored chunk starts, in range.
            if chunk is None or offset >= LIMITS["size"]:
                raise SnapshotError("snapshot tree: a pack offset is out of range or of a hole")
            column.append(offset)
        else:
            column.append(None)
    return tuple(column), pos


def _decode_tree(data: bytes) -> Namespace:
    # One pass with a running offset (a call per field costs more than the rest together).
    # Every length is checked against what is left before it is used, so a count can never
    # make the decoder allocate or loop beyond the input's size.
    end = len(data)
    if data[: len(_TREE_MAGIC)] != _TREE_MAGIC or end < len(_TREE_MAGIC) + 8:
        raise SnapshotError("not a snapshot tree (format 1)")
    pos = len(_TREE_MAGIC)
    count, alias_count = _U32.unpack_from(data, pos)[0], _U32.unpack_from(data, pos + 4)[0]
    pos += 8
    if count * _NODE.size + alias_count * 2 * _ID > end - pos:
        raise SnapshotError("snapshot tree declares more nodes than it holds")
    unpack_node, unpack16, unpack32 = _NODE.unpack_from, _U16.unpack_from, _U32.unpack_from
    node_size = _NODE.size
    mode_limit, size_limit = LIMITS["mode"], LIMITS["size"]
    nodes: dict[bytes, Node] = {}
    previous = b""
    for _ in range(count):
        (node_id, kind_index, mode, uid, gid, rdev, mtime, atime, ctime, size, chunk_size, has_version,
         n_chunks, n_hashes, n_offsets, target_size, n_xattrs, n_links) = unpack_node(data, pos)
        pos += node_size
        if node_id <= previous:
            raise SnapshotError("snapshot tree nodes must be listed once each, by ID")
        previous = node_id
        if kind_index >= len(KINDS) or has_version > 1:
            raise SnapshotError("snapshot tree: a node of an unknown kind")
        if mode >= mode_limit or size >= size_limit or not 0 < chunk_size < size_limit:
            raise SnapshotError("snapshot tree: a node's mode, size or chunk size is out of range")
        if (n_chunks != -(-size // chunk_size) or (n_hashes and n_hashes != n_chunks)
                or (n_offsets and n_offsets != n_chunks)):
            raise SnapshotError("snapshot tree: a node's chunk list does not match its size")
        if target_size >= PATH_MAX:
            raise SnapshotError("snapshot tree: a symbolic link target is too long")
        if (has_version * _ID + 2 * n_chunks + n_offsets + target_size + 6 * n_xattrs + (_ID + 2) * n_links
                > end - pos):
            raise _Truncated
        version = None
        if has_version:
            version = data[pos : pos + _ID]
            pos += _ID
        chunks, pos = _column(data, pos, n_chunks, end)
        hashes, pos = _column(data, pos, n_hashes, end) if n_hashes else ((), pos)
        if hashes and any((h is None) != (c is None) for h, c in zip(hashes, chunks)):
            raise SnapshotError("snapshot tree: a node's plaintext hashes do not match its chunks")
        offsets, pos = _offsets(data, pos, chunks, end) if n_offsets else ((), pos)
        target = data[pos : pos + target_size].decode("utf-8")
        pos += target_size
        if "\0" in target:
            raise SnapshotError("snapshot tree: a symbolic link target holds NUL")
        xattrs: dict[str, bytes] = {}
        for _ in range(n_xattrs):
            name_size = unpack16(data, pos)[0]
            name = data[pos + 2 : pos + 2 + name_size].decode("utf-8")
            pos += 2 + name_size
            value_size = unpack32(data, pos)[0]
            pos += 4
            if value_size > MAX_XATTR or pos + value_size > end or not name or "\0" in name or name in xattrs:
                raise SnapshotError("snapshot tree: an extended attribute is malformed or listed twice")
            xattrs[name] = data[pos : pos + value_size]
            pos += value_size
        links: list[tuple[bytes, str]] = []
        for _ in range(n_links):
            directory = data[pos : pos + _ID]
            name_size = unpack16(data, pos + _ID)[0]
            raw = data[pos + _ID + 2 : pos + _ID + 2 + name_size]
            pos += _ID + 2 + name_size
            # A file name as ``check_op`` has it, checked on the bytes (the same rules).
            if (not 0 < len(raw) == name_size <= 255 or b"/" in raw or b"\0" in raw or raw in (b".", b"..")
                    or len(directory) != _ID):
                raise SnapshotError("snapshot tree: a directory entry has no valid file name")
            links.append((directory, raw.decode("utf-8")))
        if pos > end:
            raise _Truncated
        content = (_EMPTY if not size and chunk_size == _EMPTY.chunk_size
                   else Content(size, chunk_size, chunks, hashes, offsets))
        first = links[0] if links else (None, None)
        nodes[node_id] = Node(node_id, KINDS[kind_index], mode, mtime, first[0], first[1], content, version, target,
                              uid, gid, xattrs, atime, ctime, rdev, links)
    aliases: dict[bytes, bytes] = {}
    for _ in range(alias_count):
        alias, target_id = data[pos : pos + _ID], data[pos + _ID : pos + 2 * _ID]
        pos += 2 * _ID
        if alias in nodes or alias in aliases or getattr(nodes.get(target_id), "kind", None) != DIRECTORY:
            raise SnapshotError("snapshot tree: an alias is not a merged directory")
        aliases[alias] = target_id
    if pos != end:
        raise SnapshotError("snapshot tree has trailing bytes")
    root = nodes.get(ROOT)
    if root is None or root.kind != DIRECTORY or root.links:
        raise SnapshotError("snapshot tree: the root is missing, not a directory, or named")
    children: dict[bytes, dict[str, bytes]] = {n: {} for n, node in nodes.items() if node.kind == DIRECTORY}
    for node in nodes.values():
        if node.kind == DIRECTORY and len(node.links) > 1:
            raise SnapshotError("snapshot tree: a directory has more than one name")
        for directory, name in node.links:
            entries = children.get(directory)
            if entries is None or name in entries:
                raise SnapshotError("snapshot tree: an entry is in no directory, or a name is taken twice")
            entries[name] = node.node_id
    _check_acyclic(nodes)
    namespace = Namespace()
    namespace.nodes, namespace.children, namespace.aliases = nodes, children, aliases
    return namespace


def _check_acyclic(nodes: Mapping[bytes, Node]) -> None:
    """Every directory's chain of parents ends (at the root, or at an unnamed directory): no loops."""
    done: set[bytes] = set()
    for start, node in nodes.items():
        if node.kind != DIRECTORY or start in done:
            continue
        path: list[bytes] = []
        on_path: set[bytes] = set()
        current: bytes | None = start
        while current is not None and current not in done:
            if current in on_path:
                raise SnapshotError("snapshot tree: a directory is inside itself")
            on_path.add(current)
            path.append(current)
            current = nodes[current].parent
        done.update(path)


# ---------------------------------------------------------------------------- signed snapshots


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: who signed it, where in the log it stands, and (decoded) the tree."""

    volume: bytes
    signer: bytes
    heads: Heads
    last: tuple[int, bytes, bytes, int] | None
    #: How many namespace entries the tree took in (batched or not: an entry counts once).
    folded: int
    namespace: Namespace
    #: The tree's canonical encoding (what a mount keeps as its first checkpoint).
    tree: bytes = b""


def encode_heads(heads: Mapping[bytes, tuple[int, bytes]]) -> list[list[Any]]:
    """Heads as the sorted rows a header carries."""
    return [[author, seq, entry_id] for author, (seq, entry_id) in sorted(heads.items())]


def decode_heads(rows: Any) -> Heads:
    """Heads from ``encode_heads`` rows, checked (32-byte keys and IDs, seq >= 1, sorted, once each)."""
    if not isinstance(rows, list):
        raise SnapshotError("snapshot heads must be a list")
    heads: Heads = {}
    previous = b""
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], bytes) and len(row[0]) == _ID
                and isinstance(row[1], int) and not isinstance(row[1], bool) and 1 <= row[1] < 2**62
                and isinstance(row[2], bytes) and len(row[2]) == _ID):
            raise SnapshotError("snapshot heads must be [author, seq, entry ID] rows")
        if row[0] <= previous:
            raise SnapshotError("snapshot heads must be sorted by author, once each")
        previous = row[0]
        heads[row[0]] = (row[1], row[2])
    return heads


def _last_field(last: Any) -> tuple[int, bytes, bytes, int] | None:
    if last is None:
        return None
    if not (isinstance(last, list) and len(last) == 4 and isinstance(last[0], int) and not isinstance(last[0], bool)
            and 0 <= last[0] < 2**63 and all(isinstance(x, bytes) and len(x) == _ID for x in last[1:3])
            and isinstance(last[3], int) and not isinstance(last[3], bool) and 0 <= last[3] < 2**32):
        raise SnapshotError("snapshot 'last' must be [hlc, author, key, index] or null")
    return (last[0], last[1], last[2], last[3])


def sign_snapshot(key: SigningKey, delegation: bytes, volume: bytes, heads: Mapping[bytes, tuple[int, bytes]],
                  last: tuple[int, bytes, bytes, int] | None, folded: int, tree: bytes, nodes: int) -> bytes:
    """A snapshot of ``tree`` (``encode_tree``) at ``heads``, signed by a key the volume delegated."""
    header = wire.encode({
        "v": wire.WIRE_VERSION, "kind": "volume-snapshot-header", "format": FORMAT, "volume": volume,
        "heads": encode_heads(heads), "last": list(last) if last is not None else None, "folded": folded,
        "nodes": nodes, "tree": hashlib.blake2b(tree, digest_size=32).digest(),
    })
    signature = key.sign(SNAPSHOT_DOMAIN + header).signature
    return wire.encode({"v": wire.WIRE_VERSION, "kind": "volume-snapshot", "header": header, "tree": tree,
                        "signer": bytes(key.verify_key), "delegation": delegation, "signature": signature})


def open_snapshot(data: bytes, volume: bytes) -> Snapshot:
    """Check a snapshot of ``volume`` (signature, delegation, header, tree) and decode it; ``SnapshotError`` otherwise."""
    try:
        outer = wire.decode(data, MAX_SNAPSHOT_BYTES)
        if set(outer) != {"v", "kind", "header", "tree", "signer", "delegation", "signature"}:
            raise SnapshotError("snapshot has missing or unknown fields")
        if outer["kind"] != "volume-snapshot":
            raise SnapshotError("not a volume snapshot")
        header_bytes = wire.field(outer, "header", bytes)
        tree = wire.field(outer, "tree", bytes)
        signer = wire.field(outer, "signer", bytes, size=32)
        delegation = wire.field(outer, "delegation", bytes)
        signature = wire.field(outer, "signature", bytes, size=64)
        check_delegation(volume, signer, delegation)
        try:
            VerifyKey(signer).verify(SNAPSHOT_DOMAIN + header_bytes, signature)
        except (BadSignatureError, ValueError):
            raise SnapshotError("snapshot signature is invalid") from None
        header = wire.decode(header_bytes, MAX_HEADER_BYTES)
        if set(header) != {"v", "kind", "format", "volume", "heads", "last", "folded", "nodes", "tree"}:
            raise SnapshotError("snapshot header has missing or unknown fields")
        if header["kind"] != "volume-snapshot-header" or header["format"] != FORMAT:
            raise SnapshotError(f"unsupported snapshot format {header.get('format')!r}")
        if wire.field(header, "volume", bytes, size=32) != volume:
            raise SnapshotError("snapshot is of another volume")
        if hashlib.blake2b(tree, digest_size=32).digest() != wire.field(header, "tree", bytes, size=32):
            raise SnapshotError("snapshot tree does not match its signed hash")
        heads = decode_heads(header["heads"])
        last = _last_field(header["last"])
        folded = wire.uint(header, "folded", 2**62)
        nodes = wire.uint(header, "nodes", 2**32)
    except LogError as exc:
        raise SnapshotError(f"snapshot signer: {exc}") from None
    except wire.MessageError as exc:
        raise SnapshotError(f"malformed snapshot: {exc}") from None
    namespace = decode_tree(tree)
    if len(namespace.nodes) != nodes:
        raise SnapshotError("snapshot tree does not hold the number of nodes its header names")
    namespace.last = last
    return Snapshot(volume, signer, heads, last, folded, namespace, tree)


def tree_fields(namespace: Namespace) -> dict[str, Any]:
    """A comparable picture of a namespace's whole state (tests: a decoded snapshot equals the fold)."""
    return {
        "nodes": {n: (v.kind, v.mode, v.uid, v.gid, v.rdev, v.mtime_ns, v.atime_ns, v.ctime_ns, v.content, v.version,
                      v.target, dict(v.xattrs), list(v.links), v.parent, v.name)
                  for n, v in namespace.nodes.items()},
        "children": {d: dict(c) for d, c in namespace.children.items()},
        "aliases": dict(namespace.aliases),
        "last": namespace.last,
    }
