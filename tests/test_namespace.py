"""The namespace fold: convergence under concurrency, and nothing lost to conflicts (pure)."""

from __future__ import annotations

import hashlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walrusfs.core.namespace import DIRECTORY, FILE, ROOT, Content, Namespace, Op, build

ALICE, BOB, CAROL = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32


def op(author: bytes, hlc: int, kind: str, **args: object) -> Op:
    op_id = hashlib.blake2b(author + hlc.to_bytes(8, "big") + kind.encode() + repr(sorted(args.items())).encode(), digest_size=32).digest()
    return Op(op_id, hlc, author, kind, args)


def content(tag: str) -> Content:
    return Content(len(tag), 4, (hashlib.blake2b(tag.encode(), digest_size=32).digest(),))


def contents(ns: Namespace) -> set[Content]:
    return {value[2] for value in ns.tree().values() if value[0] == FILE}


def test_concurrent_writes_keep_both_versions() -> None:
    create = op(ALICE, 1 << 16, "create", parent=ROOT, name="notes.txt", node=b"\x01" * 32)
    first = op(ALICE, 2 << 16, "write", node=b"\x01" * 32, base=None, content=content("v1"))
    a = op(ALICE, 3 << 16, "write", node=b"\x01" * 32, base=first.op_id, content=content("alice"))
    b = op(BOB, 3 << 16, "write", node=b"\x01" * 32, base=first.op_id, content=content("bob"))
    ns = build([create, first, a, b])
    tree = ns.tree()
    assert {content("alice"), content("bob")} <= contents(ns)
    assert tree["/notes.txt"][2] == content("bob")  # later in (stamp, author) order wins the name
    assert any(path.startswith("/notes.txt.conflict-") for path in tree)


def test_sequential_writes_do_not_conflict() -> None:
    create = op(ALICE, 1 << 16, "create", parent=ROOT, name="f", node=b"\x01" * 32)
    w1 = op(ALICE, 2 << 16, "write", node=b"\x01" * 32, base=None, content=content("1"))
    w2 = op(BOB, 3 << 16, "write", node=b"\x01" * 32, base=w1.op_id, content=content("2"))
    assert list(build([create, w1, w2]).tree()) == ["/f"]


def test_concurrent_creates_and_mkdirs() -> None:
    ops = [
        op(ALICE, 1 << 16, "create", parent=ROOT, name="a", node=b"\x01" * 32),
        op(BOB, 1 << 16, "create", parent=ROOT, name="a", node=b"\x02" * 32),
        op(ALICE, 2 << 16, "mkdir", parent=ROOT, name="d", node=b"\x03" * 32),
        op(BOB, 2 << 16, "mkdir", parent=ROOT, name="d", node=b"\x04" * 32),
        op(ALICE, 3 << 16, "create", parent=b"\x03" * 32, name="x", node=b"\x05" * 32),
        op(BOB, 3 << 16, "create", parent=b"\x04" * 32, name="y", node=b"\x06" * 32),
    ]
    tree = build(ops).tree()
    assert "/a" in tree and any(p.startswith("/a.conflict-") for p in tree)
    assert tree["/d"][0] == DIRECTORY and "/d/x" in tree and "/d/y" in tree  # merged directory


def test_unlink_and_rename_only_touch_what_the_writer_saw() -> None:
    ops = [
        op(ALICE, 1 << 16, "create", parent=ROOT, name="f", node=b"\x01" * 32),
        op(ALICE, 2 << 16, "unlink", parent=ROOT, name="f", node=b"\x01" * 32),
        op(BOB, 3 << 16, "create", parent=ROOT, name="f", node=b"\x02" * 32),
        op(ALICE, 4 << 16, "unlink", parent=ROOT, name="f", node=b"\x01" * 32),  # stale: not Bob's file
        op(BOB, 5 << 16, "create", parent=ROOT, name="g", node=b"\x03" * 32),
        op(ALICE, 6 << 16, "create", parent=ROOT, name="h", node=b"\x04" * 32),
        # Alice renames h over g without having seen Bob's g: g survives as a conflict copy.
        op(ALICE, 7 << 16, "rename", parent=ROOT, name="h", node=b"\x04" * 32, new_parent=ROOT, new_name="g"),
    ]
    ns = build(ops)
    assert ns.lookup("f").node_id == b"\x02" * 32
    assert ns.lookup("g").node_id == b"\x04" * 32
    assert any(path.startswith("/g.conflict-") for path in ns.tree())


def test_write_after_concurrent_unlink_brings_the_file_back() -> None:
    ops = [
        op(ALICE, 1 << 16, "create", parent=ROOT, name="f", node=b"\x01" * 32),
        op(BOB, 2 << 16, "unlink", parent=ROOT, name="f", node=b"\x01" * 32),
        op(ALICE, 3 << 16, "write", node=b"\x01" * 32, base=None, content=content("late"), last_parent=ROOT, last_name="f"),
    ]
    assert content("late") in contents(build(ops))


def test_rmdir_of_a_directory_that_gained_entries_does_nothing() -> None:
    ops = [
        op(ALICE, 1 << 16, "mkdir", parent=ROOT, name="d", node=b"\x01" * 32),
        op(BOB, 2 << 16, "create", parent=b"\x01" * 32, name="x", node=b"\x02" * 32),
        op(ALICE, 3 << 16, "rmdir", parent=ROOT, name="d", node=b"\x01" * 32),
    ]
    assert "/d/x" in build(ops).tree()


class Writer:
    """A mount with its own replica, generating operations from what it has seen."""

    def __init__(self, author: bytes, rng: random.Random) -> None:
        self.author, self.rng, self.seen, self.hlc = author, rng, {}, 0

    def view(self) -> Namespace:
        return build(self.seen.values())

    def make(self, clock: int) -> Op | None:
        ns = self.view()
        self.hlc = max(self.hlc + 1, clock)
        nodes = [n for n in ns.nodes.values() if n.node_id == ROOT or n.parent is not None]
        dirs = [n for n in nodes if n.kind == DIRECTORY]
        files = [n for n in nodes if n.kind == FILE]
        names = ["a", "b", "c", "d"]
        fresh = hashlib.blake2b(self.author + self.hlc.to_bytes(8, "big"), digest_size=32).digest()
        choice = self.rng.choice(["create", "mkdir", "write", "write", "rename", "unlink", "rmdir", "setattr"])
        parent = self.rng.choice(dirs).node_id
        if choice in ("create", "mkdir"):
            return op(self.author, self.hlc, choice, parent=parent, name=self.rng.choice(names), node=fresh)
        movable = [n for n in nodes if n.node_id != ROOT]
        if choice == "write" and files:
            f = self.rng.choice(files)
            return op(self.author, self.hlc, "write", node=f.node_id, base=f.version,
                      content=content(f"{self.author.hex()[:2]}{self.hlc}"), last_parent=f.parent, last_name=f.name)
        if choice == "rename" and movable:
            n = self.rng.choice(movable)
            new_name = self.rng.choice(names)
            replaces = ns.children[parent].get(new_name, b"")
            return op(self.author, self.hlc, "rename", parent=n.parent, name=n.name, node=n.node_id,
                      new_parent=parent, new_name=new_name, replaces=replaces)
        if choice == "unlink" and files:
            f = self.rng.choice(files)
            return op(self.author, self.hlc, "unlink", parent=f.parent, name=f.name, node=f.node_id)
        if choice == "rmdir" and len(dirs) > 1:
            d = self.rng.choice([d for d in dirs if d.node_id != ROOT])
            return op(self.author, self.hlc, "rmdir", parent=d.parent, name=d.name, node=d.node_id)
        if choice == "setattr" and movable:
            return op(self.author, self.hlc, "setattr", node=self.rng.choice(movable).node_id, mode=self.rng.choice([0o600, 0o644]))
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(5, 40))
def test_concurrent_writers_converge_in_any_order(rng: random.Random, steps: int) -> None:
    writers = [Writer(a, rng) for a in (ALICE, BOB, CAROL)]
    pool: dict[bytes, Op] = {}
    for clock in range(1, steps + 1):
        writer = rng.choice(writers)
        if rng.random() < 0.3:
            writer.seen.update(pool)  # sync
            continue
        new = writer.make(clock)
        if new is not None:
            writer.seen[new.op_id] = new
            pool[new.op_id] = new
    ops = list(pool.values())
    orders = [ops + rng.sample(ops, k=len(ops) // 3) for _ in range(2)]
    for order in orders:
        rng.shuffle(order)
    first, second = build(orders[0]), build(orders[1])
    assert first.tree() == second.tree()
    # Every file that the final tree still links is reachable from the root, and every
    # node's recorded place agrees with its directory entry.
    for node in first.nodes.values():
        if node.parent is not None:
            assert first.children[node.parent][node.name] == node.node_id
