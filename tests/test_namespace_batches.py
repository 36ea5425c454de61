"""Namespace entries that carry a batch of ops: the same tree as one op per entry, hostile batches refused (no network).

Issue 19: a burst of file operations (an untar, ``cp -r``) signed one entry per op, so
peers checked and stored three signed entries per small file. A mount now signs the ops
of a burst as one entry; each op keeps an identity and a place in the total order of its
own, fixed before the batch is signed, so the tree a mount shows while the batch is open
is the one every mount folds afterwards.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from walrusfs.core import wire
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.log import (
    GENESIS,
    MAX_BATCH_OPS,
    MAX_PAYLOAD,
    NAMESPACE,
    Entry,
    LogError,
    LogState,
    Outcome,
    check_entry,
    decode_entry,
    delegate_device,
    entry_ops,
    sign_entry,
)
from walrusfs.core.namespace import DIRECTORY, FILE, ROOT, Namespace, build
from walrusfs.core.sealing import (
    SealError,
    open_ops,
    open_payload,
    seal_ops,
    seal_payload,
)
from walrusfs.mount import volumelog
from walrusfs.mount.staging import MountState
from walrusfs.mount.volumelog import VolumeLog, entry_context
from walrusfs.mount.volumes import Volume

VOLUME = SigningKey(b"\x71" * 32)
VOLUME_ID = bytes(VOLUME.verify_key)
READ_KEY = b"\x72" * 32
AUTHORS = [SigningKey(bytes([0x73 + k]) * 32) for k in range(3)]
MEMBER = bytes(SigningKey(b"\x7a" * 32).verify_key)
# Namespace entries never consult the committee; a mount's view only asks who its members are.
COMMITTEE = Committee(0, (PeerInfo(peer_id_from_public_key(MEMBER), MEMBER, ("/ip4/127.0.0.1/tcp/4000",),
                                   (0, 1, 2, 3)),))


def payload(device: SigningKey, **form: Any) -> dict[str, Any]:
    return {"volume": VOLUME_ID, "delegation": delegate_device(VOLUME, bytes(device.verify_key)), **form}


class Chain:
    """One device's chain of namespace entries, single-op or batched."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.author = bytes(key.verify_key)
        self.entries: list[Entry] = []

    def sign(self, hlc: int, **form: Any) -> Entry:
        prev = self.entries[-1].id if self.entries else GENESIS
        entry = sign_entry(self.key, len(self.entries) + 1, prev, hlc, NAMESPACE, payload(self.key, **form))
        self.entries.append(entry)
        return entry


def raw_op(rng: random.Random, ns: Namespace, author: bytes, serial: int) -> dict[str, Any]:
    """A plausible op of ``author`` given the tree it sees (node IDs and names drawn from it)."""
    nodes = [n for n in ns.nodes.values() if n.node_id == ROOT or n.parent is not None]
    dirs = [n for n in nodes if n.kind == DIRECTORY]
    files = [n for n in nodes if n.kind == FILE]
    movable = [n for n in nodes if n.node_id != ROOT]
    names = ["a", "b", "c"]
    fresh = hashlib.blake2b(author + serial.to_bytes(4, "big"), digest_size=32).digest()
    parent = rng.choice(dirs).node_id
    choice = rng.choice(["create", "create", "mkdir", "write", "write", "rename", "unlink", "setattr", "rmdir"])
    if choice == "write" and files:
        f = rng.choice(files)
        blob = hashlib.blake2b(fresh, digest_size=32).digest()
        args = {"node": f.node_id, "content": {"size": 3, "chunk_size": 4, "chunks": [blob]}, "last_name": f.name}
        if f.version is not None:
            args["base"] = f.version
        return {"kind": "write", "args": args}
    if choice == "rename" and movable:
        n = rng.choice(movable)
        return {"kind": "rename", "args": {"parent": n.parent, "name": n.name, "node": n.node_id,
                                           "new_parent": parent, "new_name": rng.choice(names)}}
    if choice == "unlink" and files:
        f = rng.choice(files)
        return {"kind": "unlink", "args": {"parent": f.parent, "name": f.name, "node": f.node_id}}
    if choice == "rmdir" and len(dirs) > 1:
        d = rng.choice(dirs[1:])
        return {"kind": "rmdir", "args": {"parent": d.parent, "name": d.name, "node": d.node_id}}
    if choice == "setattr" and movable:
        return {"kind": "setattr", "args": {"node": rng.choice(movable).node_id, "mode": rng.choice([0o600, 0o755])}}
    kind = "mkdir" if choice == "mkdir" else "create"
    return {"kind": kind, "args": {"parent": parent, "name": rng.choice(names), "node": fresh, "mode": 0o644}}


def run_script(seed: int, steps: int, batched: bool) -> tuple[LogState, dict[bytes, Chain]]:
    """Three devices, each step one device writing a burst of ops (one entry, or one per op) in its own millisecond.

    Each device picks its ops from the tree it has seen, its own burst included, as a
    mount does; syncs happen at random. The same seed makes the same choices in both
    forms exactly when both forms fold to the same trees along the way.
    """
    rng = random.Random(seed)
    chains = {bytes(k.verify_key): Chain(k) for k in AUTHORS}
    seen: dict[bytes, LogState] = {a: LogState(COMMITTEE) for a in chains}
    everything = LogState(COMMITTEE)
    serial = 0
    for step in range(1, steps + 1):
        author = rng.choice(sorted(chains))
        if rng.random() < 0.3:
            for entry in everything.counted():
                seen[author].apply(entry, checked=True)
            continue
        view = seen[author]
        ops = view.namespace_ops(VOLUME_ID)
        burst: list[dict[str, Any]] = []
        for _ in range(rng.randrange(1, 5)):
            serial += 1
            if batched:
                pending = [*ops, *entry_ops(_unsigned_batch(chains[author], step << 16, burst))]
            else:
                pending = ops
            raw = raw_op(rng, build(pending), author, serial)
            if batched:
                burst.append(raw)
            else:
                entry = chains[author].sign((step << 16) + len(burst), op=raw)
                burst.append(raw)
                view.apply(entry, checked=True)
                everything.apply(entry, checked=True)
                ops = view.namespace_ops(VOLUME_ID)
        if batched:
            entry = chains[author].sign(step << 16, ops=burst)
            assert view.apply(entry)[0] is Outcome.ACCEPTED  # checked in full: signature, every op
            everything.apply(entry, checked=True)
    return everything, chains


def _unsigned_batch(chain: Chain, hlc: int, raws: list[dict[str, Any]]) -> Entry:
    """The entry a batch will be (its ops' identities do not depend on the signature)."""
    prev = chain.entries[-1].id if chain.entries else GENESIS
    return Entry(chain.author, len(chain.entries) + 1, prev, hlc, NAMESPACE, {"ops": raws}, bytes(64))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(3, 25))
def test_batched_entries_fold_to_the_same_tree_as_one_op_per_entry(seed: int, steps: int) -> None:
    single, _ = run_script(seed, steps, batched=False)
    batched, chains = run_script(seed, steps, batched=True)
    singles = single.namespace_ops(VOLUME_ID)
    ops = batched.namespace_ops(VOLUME_ID)
    assert len(ops) == len(singles) and len(batched.namespace_entries(VOLUME_ID)) <= len(singles)
    assert build(ops).tree() == build(singles).tree()
    # Any arrival order and duplicates: the same tree (each op has its own identity).
    rng = random.Random(seed)
    shuffled = ops + rng.sample(ops, len(ops) // 2)
    rng.shuffle(shuffled)
    assert build(shuffled).tree() == build(ops).tree()
    assert len({op.op_id for op in ops}) == len(ops) and len({op.order for op in ops}) == len(ops)


def test_single_op_entries_fold_as_they_always_did() -> None:
    chain = Chain(AUTHORS[0])
    node = b"\x01" * 32
    entry = chain.sign(5 << 16, op={"kind": "create", "args": {"parent": ROOT, "name": "old", "node": node}})
    (op,) = entry_ops(entry)
    # The entry's ID names the op, and the order is the old (stamp, author, ID) one.
    assert (op.op_id, op.order[:3], op.index) == (entry.id, (entry.hlc, entry.author, entry.id), 0)
    batch = chain.sign(6 << 16, ops=[{"kind": "write", "args": {"node": node, "base": entry.id, "content": {
        "size": 1, "chunk_size": 4, "chunks": [b"\x09" * 32]}}}])
    ns = build([*entry_ops(batch), op])
    assert ns.lookup("old").version == entry_ops(batch)[0].op_id and ns.lookup("old").content.size == 1
    assert set(ns.children[ROOT]) == {"old"}  # based on the old op's ID: no conflict copy


def good_op(k: int = 0) -> dict[str, Any]:
    return {"kind": "mkdir", "args": {"parent": ROOT, "name": f"d{k}", "node": hashlib.blake2b(bytes([k % 256]) + k.to_bytes(4, "big"), digest_size=32).digest()}}


@pytest.mark.parametrize("label, form, why", [
    ("too many ops", {"ops": [good_op(k) for k in range(MAX_BATCH_OPS + 1)]}, "1 to 256 ops"),
    ("no ops", {"ops": []}, "1 to 256 ops"),
    ("not a list", {"ops": {"kind": "mkdir"}}, "1 to 256 ops"),
    ("one op out of range", {"ops": [good_op(1), {"kind": "setattr", "args": {"node": ROOT, "mode": 2**32}}]},
     "op 1 of the batch"),
    ("one op malformed", {"ops": [good_op(1), {"kind": "create", "args": {"parent": ROOT, "name": "../x"}}]},
     "op 1 of the batch"),
    ("unknown kind", {"ops": [good_op(1), {"kind": "format-disk", "args": {}}]}, "op 1 of the batch"),
    ("an op and a batch", {"op": good_op(1), "ops": [good_op(2)]}, "exactly one of"),
    ("a sealed batch and a batch", {"sealed_ops": bytes(100), "ops": [good_op(2)]}, "exactly one of"),
    ("sealed batch too short", {"sealed_ops": bytes(10)}, "sealed ops must be"),
    ("sealed batch not bytes", {"sealed_ops": [1, 2]}, "sealed ops must be"),
])
def test_hostile_batches_are_rejected_whole(label: str, form: dict[str, Any], why: str) -> None:
    entry = sign_entry(AUTHORS[0], 1, GENESIS, 1, NAMESPACE, payload(AUTHORS[0], **form))
    with pytest.raises(LogError, match=why):
        check_entry(entry, COMMITTEE)
    assert LogState(COMMITTEE).apply(entry)[0] is Outcome.REJECTED


def test_a_huge_batch_is_refused_before_it_is_parsed() -> None:
    big = [{"kind": "setxattr", "args": {"node": ROOT, "name": f"user.x{k}", "value": bytes(16 << 10)}}
           for k in range(5)]
    entry = sign_entry(AUTHORS[0], 1, GENESIS, 1, NAMESPACE, payload(AUTHORS[0], ops=big))
    assert len(entry.encode()) > MAX_PAYLOAD
    with pytest.raises(LogError, match="too large"):
        decode_entry(entry.encode())


def test_a_sealed_batch_is_bound_to_its_place_and_never_opens_as_a_single_op() -> None:
    ops = [good_op(k) for k in range(3)]
    context = entry_context(bytes(AUTHORS[0].verify_key), 7)
    sealed = seal_ops(READ_KEY, VOLUME_ID, ops, context)
    assert open_ops(READ_KEY, VOLUME_ID, sealed, context) == ops
    for key, volume, where in [(b"\x00" * 32, VOLUME_ID, context), (READ_KEY, bytes(32), context),
                               (READ_KEY, VOLUME_ID, entry_context(bytes(AUTHORS[0].verify_key), 8))]:
        with pytest.raises(SealError):
            open_ops(key, volume, sealed, where)
    with pytest.raises(SealError):
        open_payload(READ_KEY, VOLUME_ID, sealed, context)  # a batch is not an op
    with pytest.raises(SealError):
        open_ops(READ_KEY, VOLUME_ID, seal_payload(READ_KEY, VOLUME_ID, ops[0], context), context)


# ---------------------------------------------------------------------------- a mount's own batches


def vlog_on(state_dir: Path, read_key: bytes | None = None) -> VolumeLog:
    """A mount's log over a real state directory; no peers (nothing here is published)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    client = SimpleNamespace(committee=COMMITTEE, answered=set())
    volume = Volume(VOLUME_ID, "vol", VOLUME, read_key, public=read_key is None)
    return VolumeLog(client, volume, MountState(state_dir))  # type: ignore[arg-type]


def folded(vlog: VolumeLog) -> dict[str, Any]:
    """The tree a mount that learns only the signed entries folds."""
    return build(op for entry in vlog.state.namespace_entries(VOLUME_ID) for op in vlog.ops_of(entry) or ()).tree()


@pytest.mark.parametrize("read_key", [None, READ_KEY], ids=["public", "private"])
async def test_a_burst_is_one_entry_shown_at_once_and_signed_with_the_same_identities(
    tmp_path: Path, read_key: bytes | None,
) -> None:
    vlog = vlog_on(tmp_path / "state", read_key)
    await vlog.load()
    made = [await vlog.append("mkdir", good_op(k)["args"]) for k in range(40)]
    assert vlog.head == 0 and set(vlog.namespace.children[ROOT]) == {f"d{k}" for k in range(40)}
    await vlog.flush()  # what a waiting fsync does
    assert vlog.head == 1
    (entry,) = vlog.state.chains[vlog.device_id]
    assert ("sealed_ops" if read_key else "ops") in entry.payload
    other = vlog_on(tmp_path / "other", read_key)  # another mount, opening the signed entry
    assert [(op.op_id, op.order) for op in other.ops_of(entry) or ()] == [(op.op_id, op.order) for op in made]
    other.store.close()
    assert folded(vlog) == vlog.namespace.tree()
    # Beyond the batch's limits, the next op opens the next entry.
    volumelog_limit = volumelog.BATCH_BYTES
    big = {"node": ROOT, "name": "user.big", "value": bytes(volumelog_limit // 2)}
    await vlog.append("setxattr", big)
    await vlog.append("setxattr", {**big, "name": "user.big2"})
    assert vlog.head == 2  # the first was signed when the second did not fit
    await vlog.flush()
    assert vlog.head == 3 and folded(vlog) == vlog.namespace.tree()
    vlog.store.close()


async def test_a_batch_left_open_by_a_stop_is_signed_on_the_next_start_with_the_same_ops(tmp_path: Path) -> None:
    vlog = vlog_on(tmp_path / "state")
    await vlog.load()
    await vlog.append("mkdir", good_op(1)["args"])
    await vlog.flush()
    made = [await vlog.append("mkdir", good_op(k)["args"]) for k in range(2, 6)]
    shown = vlog.namespace.tree()
    vlog.store.close()  # the mount stops before the batch is signed
    again = vlog_on(tmp_path / "state")
    await again.load()
    assert again.head == 2 and again.namespace.tree() == shown == folded(again)
    assert [op.op_id for op in again.ops()][1:] == [op.op_id for op in made]
    again.store.close()


async def test_an_op_of_another_device_cuts_the_batch_so_later_ops_follow_it(tmp_path: Path) -> None:
    vlog = vlog_on(tmp_path / "state")
    await vlog.load()
    await vlog.append("mkdir", good_op(1)["args"])
    opened = vlog._batch
    assert opened is not None
    # Another device makes a directory, stamped after the open batch; this device then
    # creates a file in it: the file's op must come after the directory's.
    other = Chain(AUTHORS[1])
    folder = b"\x0f" * 32
    entry = other.sign(opened.hlc + 5, op={"kind": "mkdir", "args": {"parent": ROOT, "name": "theirs", "node": folder}})
    await vlog._accept([entry], {})  # what a sync does with it
    await vlog.append("create", {"parent": folder, "name": "mine", "node": b"\x10" * 32})
    assert vlog.head == 1 and vlog._batch is not None and vlog._batch.hlc > entry.hlc
    await vlog.flush()
    assert folded(vlog) == vlog.namespace.tree() and vlog.namespace.lookup("theirs/mine") is not None
    vlog.store.close()


async def test_a_sealed_batch_with_one_bad_op_is_skipped_whole_and_the_chain_goes_on(tmp_path: Path) -> None:
    evil = Chain(AUTHORS[2])
    bad = [good_op(1), {"kind": "setattr", "args": {"node": ROOT, "mode": 2**32}}]
    first = evil.sign(1 << 16, sealed_ops=seal_ops(READ_KEY, VOLUME_ID, bad, entry_context(evil.author, 1)))
    second = evil.sign(2 << 16, sealed_ops=seal_ops(READ_KEY, VOLUME_ID, [good_op(2)],
                                                    entry_context(evil.author, 2)))
    moved = evil.sign(3 << 16, sealed_ops=seal_ops(READ_KEY, VOLUME_ID, [good_op(3)],
                                                   entry_context(evil.author, 2)))  # sealed for seq 2
    vlog = vlog_on(tmp_path / "state", READ_KEY)
    for entry in (first, second, moved):
        check_entry(entry, COMMITTEE)  # peers see only sizes
    await vlog._accept([first, second, moved], {})
    assert set(vlog.namespace.children[ROOT]) == {"d2"}
    assert (vlog.sealed_seen, vlog.unreadable) == (3, 2)
    vlog.store.close()


def test_pending_ops_are_stored_as_versioned_messages(tmp_path: Path) -> None:
    async def main() -> bytes:
        vlog = vlog_on(tmp_path / "state")
        await vlog.load()
        await vlog.append("mkdir", good_op(1)["args"])
        (row,) = vlog.store.pending_ops()
        vlog.store.close()
        return row[3]

    encoded = trio.run(main)
    assert wire.decode(encoded, 1 << 20) == {"v": wire.WIRE_VERSION, **good_op(1)}
