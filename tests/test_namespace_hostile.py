"""A malicious writer's namespace values: rejected by the validator, ignored by the fold, never shown raw (pure).

Issue 15, finding 6: a delegated device that set a mode, uid or gid of 2^32 or a size of
2^63 made pyfuse3 raise OverflowError in every other mount's ``ls`` (and again on every
remount), and a chmod 000 or chown of the volume root locked the other mounts out.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from walrusfs.core.committee import Committee
from walrusfs.core.log import (
    GENESIS,
    NAMESPACE,
    NAMESPACE_OPS,
    LogError,
    check_entry,
    delegate_device,
    sign_entry,
)
from walrusfs.core.namespace import (
    DIRECTORY,
    LIMITS,
    ROOT,
    ROOT_KEPT_BITS,
    SYMLINK,
    Content,
    Namespace,
    Op,
    build,
    in_range,
)
from walrusfs.mount.operations import WalrusFS

VOLUME = SigningKey(b"\x51" * 32)
DEVICE = SigningKey(b"\x52" * 32)
DELEGATION = delegate_device(VOLUME, bytes(DEVICE.verify_key))
NODES = [ROOT, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
ATTRS = ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "rdev")

#: The values that crashed mounts, their neighbours, and anything else an integer can be.
hostile_ints = st.one_of(
    st.sampled_from([0, 1, -1, 0o7777, 0o10000, 0o100755, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1]),
    st.integers(-(2**80), 2**80),
)
hostile_values = st.one_of(hostile_ints, st.booleans(), st.none(), st.binary(max_size=40), st.text(max_size=8),
                           st.lists(st.integers(), max_size=3))


@st.composite
def hostile_ops(draw: st.DrawFn) -> dict[str, Any]:
    """A namespace op of any kind, with well-formed IDs and names but hostile attribute values."""
    kind = draw(st.sampled_from(sorted(NAMESPACE_OPS)))
    args: dict[str, Any] = {}
    for name, what in NAMESPACE_OPS[kind].items():
        args[name] = draw(st.sampled_from(NODES)) if what == "node" else draw(st.sampled_from(["a", "b", "c"]))
    for name in draw(st.sets(st.sampled_from(ATTRS))):
        args[name] = draw(hostile_values)
    if kind == "write":
        size, chunk_size = draw(hostile_ints), draw(hostile_ints)
        try:
            count = -(-size // chunk_size)
        except ZeroDivisionError:
            count = 1
        args["content"] = {"size": size, "chunk_size": chunk_size, "chunks": [None] * min(max(count, 0), 4)}
    if kind == "symlink":
        args["target"] = "x" * draw(st.sampled_from([1, 4095, 4096]))
    if kind == "mknod":
        args["type"] = draw(st.one_of(st.sampled_from(["fifo", "socket", "chardev", "blockdev", "file", "dir"]),
                                      hostile_values))
    if kind == "setxattr":
        args["value"] = draw(st.one_of(st.binary(max_size=8), st.integers(0, 2**40)))
    return {"kind": kind, "args": args}


def entry(op: dict[str, Any], seq: int = 1) -> Any:
    """``op`` signed by the test device (every entry its own chain's first: validity only)."""
    return sign_entry(DEVICE, seq, GENESIS, seq, NAMESPACE,
                      {"volume": bytes(VOLUME.verify_key), "delegation": DELEGATION, "op": op})


def as_op(index: int, op: dict[str, Any]) -> Op:
    op_id = hashlib.blake2b(index.to_bytes(4, "big") + repr(op).encode(), digest_size=32).digest()
    return Op(op_id, (index + 1) << 16, bytes(DEVICE.verify_key), op["kind"], op["args"])


def attributes(ns: Namespace, keep_owners: bool = False) -> dict[bytes, pyfuse3.EntryAttributes]:
    """What a mount hands pyfuse3 for every node of ``ns`` (raises what pyfuse3 would)."""
    vlog = SimpleNamespace(namespace=ns, volume=SimpleNamespace(writable=True))
    contents = SimpleNamespace(size_of=lambda node: node.content.size, mtime_of=lambda node: node.mtime_ns)
    fs = WalrusFS(vlog, contents, read_only=True, keep_owners=keep_owners)  # type: ignore[arg-type]
    return {node_id: fs._attr(node) for node_id, node in ns.nodes.items()}


COMMITTEE = Committee.__new__(Committee)  # namespace entries never consult the committee


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_ops())
def test_the_validator_passes_only_values_a_mount_can_show(op: dict[str, Any]) -> None:
    try:
        check_entry(entry(op), COMMITTEE)
    except LogError:
        return
    args = op["args"]
    for name in ATTRS:
        if name in args:
            assert in_range(name, args[name]), (name, args[name])
    if op["kind"] == "write":
        assert in_range("size", args["content"]["size"]) and 0 < args["content"]["chunk_size"] < LIMITS["chunk_size"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_ops(), min_size=1, max_size=12), st.randoms(use_true_random=False), st.booleans())
def test_the_fold_of_unchecked_hostile_ops_stays_showable_and_deterministic(
    ops: list[dict[str, Any]], rng: Any, keep_owners: bool,
) -> None:
    # Fed to the fold unchecked (as if the validator had a hole): it must still never raise,
    # keep every value in range and the root a directory its owner can enter.
    stamped = [as_op(i, op) for i, op in enumerate(ops)]
    ns = build(stamped)
    shuffled = list(stamped)
    rng.shuffle(shuffled)
    assert build(shuffled).tree() == ns.tree()
    root = ns.nodes[ROOT]
    assert root.kind == DIRECTORY and root.mode & ROOT_KEPT_BITS == ROOT_KEPT_BITS and (root.uid, root.gid) == (0, 0)
    for node in ns.nodes.values():
        for name in ATTRS:
            assert in_range(name, getattr(node, name)), (name, getattr(node, name))
        assert in_range("size", node.content.size) and node.content.chunk_size > 0  # reads divide by it
    shown = attributes(ns, keep_owners)
    assert stat.S_ISDIR(shown[ROOT].st_mode) and shown[ROOT].st_mode & 0o700 == 0o700
    assert (shown[ROOT].st_uid, shown[ROOT].st_gid) == (os.getuid(), os.getgid())
    if not keep_owners:
        assert all((a.st_uid, a.st_gid) == (os.getuid(), os.getgid()) for a in shown.values())


def test_the_root_cannot_be_taken_away() -> None:
    author = bytes(DEVICE.verify_key)
    ops = [
        Op(b"\x10" * 32, 1 << 16, author, "setattr", {"node": ROOT, "mode": 0, "uid": 4242, "gid": 4242}),
        Op(b"\x11" * 32, 2 << 16, author, "create", {"parent": ROOT, "name": "x", "node": ROOT, "mode": 0o644}),
        Op(b"\x12" * 32, 3 << 16, author, "symlink", {"parent": ROOT, "name": "y", "node": ROOT, "target": "/"}),
        Op(b"\x13" * 32, 4 << 16, author, "write", {"node": ROOT, "content": Content(5, 4, (None, None))}),
        Op(b"\x14" * 32, 5 << 16, author, "rename", {"parent": ROOT, "name": "", "node": ROOT,
                                                    "new_parent": ROOT, "new_name": "z"}),
        Op(b"\x15" * 32, 6 << 16, author, "rmdir", {"parent": ROOT, "name": "", "node": ROOT}),
        Op(b"\x16" * 32, 7 << 16, author, "mkdir", {"parent": b"\x01" * 32, "name": "d", "node": ROOT}),
    ]
    ns = build(ops)
    root = ns.nodes[ROOT]
    assert root.kind == DIRECTORY and root.mode == ROOT_KEPT_BITS and (root.uid, root.gid) == (0, 0)
    assert ns.tree() == {} and ns.lookup("") is root
    assert ns.nodes[ROOT].kind != SYMLINK
    # A chmod that leaves the owner its access still applies (e.g. 0o750 for a shared volume).
    ns.apply(Op(b"\x17" * 32, 8 << 16, author, "setattr", {"node": ROOT, "mode": 0o750}))
    assert ns.nodes[ROOT].mode == 0o750


def test_a_time_beyond_64_bit_nanoseconds_is_refused_before_it_is_signed() -> None:
    node = build([]).nodes[ROOT]
    appended: list[Any] = []
    vlog = SimpleNamespace(namespace=build([]), volume=SimpleNamespace(writable=True),
                           append=lambda *a: appended.append(a))
    contents = SimpleNamespace(touch=lambda: None, staged={}, size_of=lambda n: 0, mtime_of=lambda n: n.mtime_ns)
    fs = WalrusFS(vlog, contents, read_only=False)  # type: ignore[arg-type]
    attr = pyfuse3.EntryAttributes()
    attr.st_mtime_ns = 2**63  # year 2262: ext4 takes it, a signed 64-bit nanosecond time cannot hold it
    fields = SimpleNamespace(update_mode=False, update_uid=False, update_gid=False, update_mtime=True,
                             update_atime=False, update_ctime=False, update_size=False)
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(fs.setattr, pyfuse3.ROOT_INODE, attr, fields, None, None)
    assert info.value.errno == errno.EINVAL and not appended and node.mtime_ns == 0
