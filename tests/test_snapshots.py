"""Volume snapshots, rebased log states and the mount's local copy, without a network (pure and SQLite).

A snapshot must hold a fold exactly (the fold goes on from it as from the entries), be
accepted only when a writer of the volume signed it, and refuse, with ``SnapshotError``
alone and in linear time, anything no fold makes. A ``LogState`` rebased at a verified
position and fed the rest must agree with one that saw everything. The local copy must
notice any row changed behind its back.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import struct
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

import tests.test_namespace as folds
import tests.test_namespace_batches as batches
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.log import (
    GENESIS,
    NAMESPACE,
    Entry,
    LogState,
    delegate_device,
    entry_ops,
    sign_entry,
)
from walrusfs.core.namespace import ROOT, Content, Namespace, Op, build
from walrusfs.core.sealing import seal_ops, seal_payload
from walrusfs.core.snapshot import (
    SnapshotError,
    decode_tree,
    encode_tree,
    open_snapshot,
    sign_snapshot,
    tree_fields,
)
from walrusfs.mount.logstore import LocalCopyError, LogStore, Position
from walrusfs.mount.staging import MountState
from walrusfs.mount.volumelog import VolumeLog, entry_context
from walrusfs.mount.volumes import Volume

VOLUME = SigningKey(b"\x31" * 32)
WRITER = SigningKey(b"\x32" * 32)
V = bytes(VOLUME.verify_key)
MEMBERS = [SigningKey(bytes([0x33 + k]) * 32) for k in range(4)]
MEMBER = MEMBERS[0]
COMMITTEE = Committee(0, tuple(
    PeerInfo(peer_id_from_public_key(bytes(k.verify_key)), bytes(k.verify_key), (f"/ip4/127.0.0.1/tcp/{4000 + i}",),
             (i,))
    for i, k in enumerate(MEMBERS)
))


def valid_content(tag: str) -> Content:
    """What ``check_op`` lets through: one chunk per chunk size of content."""
    return Content(3, 4, (hashlib.blake2b(tag.encode(), digest_size=32).digest(),))


def random_fold(rng: random.Random, steps: int) -> list[Op]:
    """Ops of three concurrent writers (as the namespace tests make them), with valid contents."""
    original, folds.content = folds.content, valid_content
    try:
        writers = [folds.Writer(a, rng) for a in (folds.ALICE, folds.BOB, folds.CAROL)]
        pool: dict[bytes, Op] = {}
        for clock in range(1, steps + 1):
            writer = rng.choice(writers)
            if rng.random() < 0.3:
                writer.seen.update(pool)
                continue
            new = writer.make(clock)
            if new is not None:
                writer.seen[new.op_id] = new
                pool[new.op_id] = new
        return sorted(pool.values(), key=lambda o: o.order)
    finally:
        folds.content = original


def signed(namespace: Namespace, heads: dict[bytes, tuple[int, bytes]] | None = None, key: SigningKey = WRITER,
           volume: SigningKey = VOLUME) -> bytes:
    tree = encode_tree(namespace)
    return sign_snapshot(key, delegate_device(volume, bytes(key.verify_key)), bytes(volume.verify_key),
                         heads or {b"\x01" * 32: (7, b"\x02" * 32)}, namespace.last, 11, tree, len(namespace.nodes))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(5, 60))
def test_a_snapshot_holds_the_fold_exactly_and_the_fold_goes_on_from_it(rng: random.Random, steps: int) -> None:
    ops = random_fold(rng, steps)
    cut = rng.randrange(len(ops) + 1)
    folded = build(ops[:cut])
    data = signed(folded)
    snapshot = open_snapshot(data, V)
    assert tree_fields(snapshot.namespace) == tree_fields(folded)
    assert encode_tree(snapshot.namespace) == encode_tree(folded)  # canonical: one tree, one encoding
    for op in ops[cut:]:
        snapshot.namespace.apply(op)
    assert tree_fields(snapshot.namespace) == tree_fields(build(ops))


def test_only_a_writer_of_the_volume_signs_a_snapshot_that_opens() -> None:
    folded = build(random_fold(random.Random(1), 30))
    data = signed(folded)
    assert open_snapshot(data, V).heads == {b"\x01" * 32: (7, b"\x02" * 32)}
    other_volume = SigningKey(b"\x3f" * 32)
    with pytest.raises(SnapshotError, match="another volume|not authorized"):
        open_snapshot(signed(folded, volume=other_volume), V)
    # A key the volume never delegated, carrying a delegation made for another key.
    forged = signed(folded).replace(bytes(WRITER.verify_key), bytes(MEMBER.verify_key))
    with pytest.raises(SnapshotError):
        open_snapshot(forged, V)
    with pytest.raises(SnapshotError):
        open_snapshot(data, bytes(other_volume.verify_key))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_snapshots_raise_snapshot_error_alone(data: st.DataObject) -> None:
    blob = bytearray(SNAPSHOT_BYTES)
    how = data.draw(st.sampled_from(["flip", "cut", "junk"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "cut":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        blob = bytearray(data.draw(st.binary(max_size=2000)))
    try:
        open_snapshot(bytes(blob), V)
    except SnapshotError:
        pass


SNAPSHOT_BYTES = signed(build(random_fold(random.Random(2), 40)))
TREE_BYTES = encode_tree(build(random_fold(random.Random(3), 40)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_writers_damaged_tree_is_refused_or_a_tree_the_fold_can_go_on_from(data: st.DataObject) -> None:
    """What a malicious writer could sign: any tree bytes. Refused, or usable: listable and foldable on."""
    tree = bytearray(TREE_BYTES)
    for _ in range(data.draw(st.integers(1, 3))):
        tree[data.draw(st.integers(0, len(tree) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    try:
        ns = decode_tree(bytes(tree))
    except SnapshotError:
        return
    ns.tree()
    for op in random_fold(random.Random(data.draw(st.integers(0, 3))), 20):
        ns.last = None
        ns.apply(op)


def bad_tree(change: str) -> bytes:
    """A signed snapshot of a tree no fold makes."""
    ns = Namespace()
    a, b = b"\x0a" * 32, b"\x0b" * 32
    for node_id, name in ((a, "a"), (b, "b")):
        ns.apply(Op(node_id, len(ns.nodes), folds.ALICE, "mkdir", {"parent": ROOT, "name": name, "node": node_id}))
    if change == "loop":
        # a inside b and b inside a, both out of the root's reach.
        for node, parent in ((a, b), (b, a)):
            ns.nodes[node].links = [(parent, "x")]
            ns.nodes[node].parent, ns.nodes[node].name = parent, "x"
        ns.children[ROOT] = {}
        ns.children[a], ns.children[b] = {"x": b}, {"x": a}
    elif change == "alias loop":
        ns.aliases[b"\x0c" * 32] = b"\x0d" * 32
        ns.aliases[b"\x0d" * 32] = b"\x0c" * 32
    elif change == "name twice":
        ns.nodes[b].links = [(ROOT, "a")]
        ns.nodes[b].name = "a"
    elif change == "file holds entries":
        ns.nodes[a].kind = "file"
        ns.nodes[b].links = [(a, "b")]
        ns.nodes[b].parent = a
    return signed(ns)


@pytest.mark.parametrize("change", ["loop", "alias loop", "name twice", "file holds entries"])
def test_a_snapshot_of_a_tree_no_fold_makes_is_refused(change: str) -> None:
    with pytest.raises(SnapshotError):
        open_snapshot(bad_tree(change), V)


def test_a_large_tree_decodes_in_linear_time() -> None:
    ns = Namespace()
    for i in range(20_000):
        node = hashlib.blake2b(i.to_bytes(4, "big"), digest_size=32).digest()
        ns.apply(Op(node, i + 1, folds.ALICE, "create", {"parent": ROOT, "name": f"f{i}", "node": node}))
    data = encode_tree(ns)
    started = time.perf_counter()
    assert len(decode_tree(data).nodes) == 20_001
    small = time.perf_counter() - started
    # Hostile counts cost nothing: a huge declared count is refused before any loop.
    with pytest.raises(SnapshotError):
        decode_tree(data[:8] + struct.pack("<II", 2**32 - 1, 0) + data[16:])
    assert small < 5.0


# ---------------------------------------------------------------------------- rebased states


def chain(key: SigningKey, count: int, start_hlc: int = 0) -> list:
    entries, prev = [], GENESIS
    device = bytes(key.verify_key)
    for seq in range(1, count + 1):
        op = {"kind": "mkdir", "args": {"parent": ROOT, "name": f"d{seq}", "node": bytes([seq % 256]) * 32}}
        entry = sign_entry(key, seq, prev, start_hlc + seq, NAMESPACE,
                           {"volume": V, "delegation": delegate_device(VOLUME, device), "op": op})
        entries.append(entry)
        prev = entry.id
    return entries


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_a_rebased_state_fed_the_rest_agrees_with_the_full_one(cuts: list[int], rng: random.Random) -> None:
    keys = [SigningKey(bytes([0x40 + k]) * 32) for k in range(len(cuts))]
    chains = [chain(key, 12, k * 100) for k, key in enumerate(keys)]
    full = LogState(COMMITTEE)
    for c in chains:
        for entry in c:
            full.apply(entry, checked=True)
    based = LogState(COMMITTEE)
    rest = []
    for key, c, cut in zip(keys, chains, cuts):
        if cut:
            based.rebase(bytes(key.verify_key), cut, c[cut - 1].id, {bytes(key.verify_key), V})
        rest += c[cut:]
    rng.shuffle(rest)
    for entry in rest + rest[: len(rest) // 2]:
        based.apply(entry, checked=True)
    assert based.heads() == full.heads()
    for c in chains:
        author = c[0].author
        assert based.head_id(author) == full.head_id(author)
    held = {e.id for e in based.counted()}
    assert held == {e.id for c, cut in zip(chains, cuts) for e in c[cut:]}
    # An entry at or below the base is the base's or not comparable: never a second chain.
    for key, c, cut in zip(keys, chains, cuts):
        if cut:
            assert based.apply(c[cut - 1], checked=True)[0].value == "duplicate"


# ---------------------------------------------------------------------------- the local copy


def test_the_local_copy_notices_rows_changed_behind_its_back(tmp_path: Path) -> None:
    entries = chain(SigningKey(b"\x50" * 32), 5)
    store = LogStore(tmp_path, b"\x51" * 32)
    assert store.claim(V, COMMITTEE, None)
    ops = [(e, [Op(e.id, e.hlc, e.author, "mkdir", dict(e.payload["op"]["args"]))]) for e in entries]
    store.add(entries, ops)
    position = Position({entries[0].author: (5, entries[-1].id, (entries[0].author, V))}, {entries[0].author}, 5)
    store.save_checkpoint(position, encode_tree(build(op for _, carried in ops for op in carried)))
    assert [e.id for e in store.chain(entries[0].author)] == [e.id for e in entries]
    assert len(store.ops({})) == 5 and store.checkpoint() is not None
    store.close()
    db = sqlite3.connect(tmp_path / "log.sqlite")
    with db:
        db.execute("UPDATE entries SET encoded = ? WHERE seq = 3", (entries[1].encode(),))
        db.execute("UPDATE ops SET op = ? WHERE seq = 2", (b"\xa0",))
        db.execute("UPDATE checkpoint SET tree = ?", (encode_tree(Namespace()),))
    db.close()
    store = LogStore(tmp_path, b"\x51" * 32)
    with pytest.raises(LocalCopyError):
        list(store.chain(entries[0].author))
    with pytest.raises(LocalCopyError):
        store.ops({})
    with pytest.raises(LocalCopyError):
        store.checkpoint()
    # Another mount's key reads none of it; another volume's mount drops it.
    with pytest.raises(LocalCopyError):
        LogStore(tmp_path, b"\x52" * 32).entry_id(entries[0].author, 1)
    assert not store.claim(b"\x00" * 32, COMMITTEE, None)
    assert store.counts() == (0, 0) and store.checkpoint() is None
    store.close()


class SlowStore:
    """A local copy whose writes take a while (a busy disk)."""

    def add(self, entries: object, ops: object = ()) -> None:
        time.sleep(0.2)


async def test_entries_applied_reach_the_tree_even_when_the_wait_for_the_disk_is_cancelled() -> None:
    """The start-up's time limit once cancelled a mount between taking entries and folding them: files lost."""
    import trio

    from walrusfs.mount.volumelog import VolumeLog
    from walrusfs.mount.volumes import Volume

    entries = chain(SigningKey(b"\x60" * 32), 3)
    client = type("Client", (), {"committee": COMMITTEE, "answered": set()})()
    vlog = VolumeLog(client, Volume(V, "vol", VOLUME, None, True), type("State", (), {"device": WRITER})(),
                     local=SlowStore())  # type: ignore[arg-type]
    vlog.starting = False
    with trio.CancelScope() as scope:
        # Cancelled already when the entries are applied (the limit passed while they were
        # checked): the wait for the disk must not keep them from the tree.
        scope.cancel()
        await vlog._accept(entries, {e.id: vlog._open(e) for e in entries})
    assert vlog.state.head(entries[0].author) == 3
    assert {n.name for n in vlog.namespace.nodes.values() if n.parent} == {"d1", "d2", "d3"}


# ---------------------------------------------------------------------------- batched and single entries


def mixed_log(seed: int, steps: int, read_key: bytes | None) -> list[tuple[Entry, list[dict[str, Any]]]]:
    """Three devices' chains mixing single-op and batched entries (sealed when ``read_key``), some writes packed.

    Each step one device writes a burst of ops picked from the tree it has seen, as one
    batched entry or one entry per op; each entry comes with the op maps it carries.
    """
    rng = random.Random(seed)
    chains = {bytes(k.verify_key): batches.Chain(k) for k in batches.AUTHORS}
    seen: dict[bytes, list[Op]] = {author: [] for author in chains}
    made: list[tuple[Entry, list[dict[str, Any]]]] = []
    serial = 0
    for step in range(1, steps + 1):
        author = rng.choice(sorted(chains))
        if rng.random() < 0.3:
            seen[author] = [op for entry, raws in made for op in entry_ops(entry, raws)]
            continue
        tree = build(seen[author])
        burst = []
        for _ in range(rng.randrange(1, 5)):
            serial += 1
            raw = batches.raw_op(rng, tree, author, serial)
            if raw["kind"] == "write" and rng.random() < 0.5:
                raw["args"]["content"]["offsets"] = [rng.randrange(1 << 20)]  # a packed file's chunk
            burst.append(raw)
        chain = chains[author]
        # Stamps of one step may tie with another device's: the fold orders by author, then key and index.
        hlc = (step // 2) << 16
        groups = [burst] if rng.random() < 0.5 else [[raw] for raw in burst]
        for index, group in enumerate(groups):
            context = entry_context(author, len(chain.entries) + 1)
            if read_key is None:
                form = {"ops": group} if len(groups) == 1 else {"op": group[0]}
            elif len(groups) == 1:
                form = {"sealed_ops": seal_ops(read_key, batches.VOLUME_ID, group, context)}
            else:
                form = {"sealed": seal_payload(read_key, batches.VOLUME_ID, group[0], context)}
            made.append((chain.sign(hlc + index, **form), group))
    return made


def volume_log(directory: Path, read_key: bytes | None) -> VolumeLog:
    """A mount's log with its local copy in ``directory`` (no peers: entries are handed to it as a sync would)."""
    state = MountState(directory)
    volume = Volume(batches.VOLUME_ID, "vol", batches.VOLUME, read_key, public=read_key is None)
    client = SimpleNamespace(committee=batches.COMMITTEE, answered=set())
    return VolumeLog(client, volume, state, local=LogStore(directory, bytes(state.device)))  # type: ignore[arg-type]


def close(vlog: VolumeLog) -> None:
    assert vlog.local is not None
    vlog.local.close()
    vlog.store.close()


async def take(vlog: VolumeLog, entries: list[Entry], rng: random.Random) -> None:
    """Hand ``entries`` to the mount in a few arrival batches, then refold if some came out of order."""
    while entries:
        cut = rng.randrange(1, len(entries) + 1)
        await vlog._accept(entries[:cut], {})
        entries = entries[cut:]
    vlog.starting = False
    if vlog._late:
        await vlog.refold()


def order_of(ops: list[Op]) -> list[tuple[bytes, tuple]]:
    return sorted((op.op_id, op.order) for op in ops)


@pytest.mark.parametrize("read_key", [None, b"\x72" * 32], ids=["public", "private"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), steps=st.integers(4, 24))
def test_a_restart_and_a_snapshot_fold_the_same_tree_whatever_mix_of_batched_and_single_entries(
    tmp_path: Path, read_key: bytes | None, seed: int, steps: int,
) -> None:
    import trio

    made = mixed_log(seed, steps, read_key)
    raws = {entry.id: group for entry, group in made}
    rng = random.Random(seed)
    arrival = [entry for entry, _ in made]
    rng.shuffle(arrival)  # a chain's later entries may come first (they wait for the earlier ones)
    split = rng.randrange(len(arrival) + 1)
    directory = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example (Hypothesis repeats some)

    def fold_of(vlog: VolumeLog) -> tuple[list[Op], dict[str, Any]]:
        ops = [op for e in vlog.state.counted() if e.id in raws for op in entry_ops(e, raws[e.id])]
        return ops, build(ops).tree()

    async def main() -> None:
        first = volume_log(directory, read_key)
        await first.load()
        await take(first, arrival[:split], rng)
        ops, tree = fold_of(first)
        assert first.namespace.tree() == tree
        assert await first.checkpoint(force=True)
        close(first)
        # A restart: the checkpoint's tree, and every op read back with the identity the fold gives it.
        again = volume_log(directory, read_key)
        await again.load()
        assert again.restored == "local copy" and again.namespace.tree() == tree
        assert order_of(await again.history()) == order_of(ops)
        # What it lacks (entries that waited for an earlier one are fetched again, as from peers).
        await take(again, [e for e in arrival if e.seq > again.state.head(e.author)], rng)
        assert again.namespace.tree() == build(op for e, g in made for op in entry_ops(e, g)).tree()
        close(again)

    trio.run(main)
    # A snapshot cut anywhere in the total order, even inside a batch: the fold goes on from it.
    ops = sorted((op for entry, group in made for op in entry_ops(entry, group)), key=lambda o: o.order)
    cut = rng.randrange(len(ops) + 1)
    snapshot = open_snapshot(signed(build(ops[:cut])), V)
    for op in ops[cut:]:
        snapshot.namespace.apply(op)
    assert tree_fields(snapshot.namespace) == tree_fields(build(ops))


def test_the_local_copy_gives_back_batched_ops_with_the_identities_the_fold_gives_them(tmp_path: Path) -> None:
    chain = batches.Chain(batches.AUTHORS[0])
    blob = b"\x0c" * 32
    single = chain.sign(1 << 16, op=batches.good_op(1))
    batch = chain.sign(2 << 16, ops=[batches.good_op(2), batches.good_op(3), {"kind": "create", "args": {
        "parent": ROOT, "name": "f", "node": b"\x0e" * 32}}, {"kind": "write", "args": {"node": b"\x0e" * 32, "content": {
            "size": 3, "chunk_size": 4, "chunks": [blob], "offsets": [4096]}}}])
    unread = chain.sign(3 << 16, sealed_ops=bytes(100))
    store = LogStore(tmp_path, b"\x51" * 32)
    store.claim(batches.VOLUME_ID, batches.COMMITTEE, None)
    store.add([single, batch, unread], [(single, entry_ops(single)), (batch, entry_ops(batch)), (unread, None)])
    back = store.ops({})
    want = entry_ops(single) + entry_ops(batch)
    assert [(seq, op.op_id, op.order, op.kind, op.args) for seq, op in back] == [
        (e.seq, op.op_id, op.order, op.kind, op.args) for e in (single, batch) for op in entry_ops(e)]
    assert build(op for _, op in back).lookup("f").content.offsets == (4096,)
    assert [op.op_id for _, op in store.ops({chain.author: 2})] == [want[0].op_id]  # cut at seq 2: counts 1
    store.close()
    # A row moved to another place in the batch, or made a single op, no longer passes.
    for change in ("UPDATE ops SET idx = 7 WHERE idx = 1", "UPDATE ops SET batched = 0 WHERE idx = 2"):
        copy = tmp_path / change.split()[3]
        copy.mkdir()
        (copy / "log.sqlite").write_bytes((tmp_path / "log.sqlite").read_bytes())
        db = sqlite3.connect(copy / "log.sqlite")
        with db:
            db.execute(change)
        db.close()
        damaged = LogStore(copy, b"\x51" * 32)
        with pytest.raises(LocalCopyError):
            damaged.ops({})
        damaged.close()


async def test_own_batches_reach_the_local_copy_and_a_restart_shows_them(tmp_path: Path) -> None:
    vlog = volume_log(tmp_path, None)
    await vlog.load()
    made = [await vlog.append("mkdir", batches.good_op(k)["args"]) for k in range(30)]
    assert not await vlog.checkpoint(force=True)  # the open batch's ops are in the tree, in no entry
    await vlog.flush()
    made += [await vlog.append("mkdir", batches.good_op(k)["args"]) for k in range(30, 35)]
    shown = vlog.namespace.tree()
    close(vlog)  # stopped with a batch open: the next start signs it
    again = volume_log(tmp_path, None)
    await again.load()
    assert again.head == 2 and again.namespace.tree() == shown
    assert await again.checkpoint(force=True)
    close(again)
    third = volume_log(tmp_path, None)
    await third.load()
    assert third.restored == "local copy" and third.namespace.tree() == shown
    assert order_of(await third.history()) == order_of(made)
    close(third)
