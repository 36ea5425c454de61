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
        choice = self.rng.choice(["create", "mkdir", "write", "write", "rename", "unlink", "rmdir", "setattr",
                                  "link", "link", "mknod", "times"])
        parent = self.rng.choice(dirs).node_id
        when = {"ctime_ns": self.hlc * 1000 + self.rng.randrange(1000)} if self.rng.random() < 0.5 else {}
        if choice in ("create", "mkdir"):
            return op(self.author, self.hlc, choice, parent=parent, name=self.rng.choice(names), node=fresh, **when)
        if choice == "mknod":
            return op(self.author, self.hlc, "mknod", parent=parent, name=self.rng.choice(names), node=fresh,
                      type=self.rng.choice(["fifo", "chardev"]), rdev=self.rng.randrange(300))
        movable = [n for n in nodes if n.node_id != ROOT]
        linkable = [n for n in movable if n.kind != DIRECTORY]
        if choice == "write" and files:
            f = self.rng.choice(files)
            return op(self.author, self.hlc, "write", node=f.node_id, base=f.version,
                      content=content(f"{self.author.hex()[:2]}{self.hlc}"), last_parent=f.parent, last_name=f.name)
        if choice == "rename" and movable:
            n = self.rng.choice(movable)
            where, name = self.rng.choice(n.links)  # any of its names
            new_name = self.rng.choice(names)
            replaces = ns.children[parent].get(new_name, b"")
            return op(self.author, self.hlc, "rename", parent=where, name=name, node=n.node_id,
                      new_parent=parent, new_name=new_name, replaces=replaces, **when)
        if choice == "unlink" and linkable:
            f = self.rng.choice(linkable)
            where, name = self.rng.choice(f.links)
            return op(self.author, self.hlc, "unlink", parent=where, name=name, node=f.node_id, **when)
        if choice == "link" and linkable:
            return op(self.author, self.hlc, "link", parent=parent, name=self.rng.choice(names),
                      node=self.rng.choice(linkable).node_id, **when)
        if choice == "rmdir" and len(dirs) > 1:
            d = self.rng.choice([d for d in dirs if d.node_id != ROOT])
            return op(self.author, self.hlc, "rmdir", parent=d.parent, name=d.name, node=d.node_id, **when)
        if choice == "setattr" and movable:
            return op(self.author, self.hlc, "setattr", node=self.rng.choice(movable).node_id, mode=self.rng.choice([0o600, 0o644]))
        if choice == "times":
            times = {k: self.rng.randrange(-5, 10**6) for k in ("atime_ns", "mtime_ns") if self.rng.random() < 0.7}
            return op(self.author, self.hlc, "setattr", node=self.rng.choice(nodes).node_id, **times, **when)
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
    assert first.tree() == second.tree()  # names, contents, link counts and times alike
    assert {n: (v.mtime_ns, v.atime_ns, v.ctime_ns) for n, v in first.nodes.items()} == \
        {n: (v.mtime_ns, v.atime_ns, v.ctime_ns) for n, v in second.nodes.items()}
    # Every name a node records is its directory's entry and the other way round; a node's
    # place is its first name; a directory has at most one name.
    for node in first.nodes.values():
        for directory, name in node.links:
            assert first.children[directory][name] == node.node_id
        assert (node.parent, node.name) == (node.links[0] if node.links else (None, None))
        assert node.kind != DIRECTORY or len(node.links) <= 1
    for directory, entries in first.children.items():
        for name, node_id in entries.items():
            assert (directory, name) in first.nodes[node_id].links


MS = 1_000_000  # nanoseconds


def test_times_come_from_the_operations_as_posix_has_them() -> None:
    d, f, g = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    ns = build([
        op(ALICE, 1000 << 16, "mkdir", parent=ROOT, name="d", node=d, mtime_ns=1000 * MS),
        op(ALICE, 1001 << 16, "create", parent=d, name="f", node=f, mtime_ns=1001 * MS + 7),
    ])
    dir_, file_ = ns.nodes[d], ns.nodes[f]
    assert (file_.atime_ns, file_.mtime_ns, file_.ctime_ns) == (1001 * MS + 7,) * 3
    assert (dir_.atime_ns, dir_.mtime_ns, dir_.ctime_ns) == (1000 * MS, 1001 * MS + 7, 1001 * MS + 7)
    assert ns.nodes[ROOT].mtime_ns == ns.nodes[ROOT].ctime_ns == 1000 * MS  # the mkdir changed the root

    # utimensat sets atime and mtime each exactly (the issue: atime took mtime's value); the
    # change itself is the ctime, never the times it sets.
    ns.apply(op(ALICE, 1002 << 16, "setattr", node=f, atime_ns=1900 * MS, mtime_ns=1950 * MS, ctime_ns=1002 * MS))
    assert (file_.atime_ns, file_.mtime_ns, file_.ctime_ns) == (1900 * MS, 1950 * MS, 1002 * MS)
    ns.apply(op(ALICE, 1003 << 16, "setattr", node=f, mtime_ns=5, ctime_ns=1003 * MS))  # atime omitted
    assert (file_.atime_ns, file_.mtime_ns, file_.ctime_ns) == (1900 * MS, 5, 1003 * MS)
    ns.apply(op(ALICE, 1004 << 16, "setattr", node=f, mode=0o600))  # no ctime given: the stamp's
    assert file_.ctime_ns == 1004 * MS and file_.mtime_ns == 5
    ns.apply(op(ALICE, 1005 << 16, "setattr", node=f, atime_ns=1005 * MS))  # a read (relatime): atime alone
    assert (file_.atime_ns, file_.ctime_ns) == (1005 * MS, 1004 * MS)
    ns.apply(op(ALICE, 1006 << 16, "setxattr", node=f, name="user.k", value=b"v", ctime_ns=1006 * MS))
    ns.apply(op(ALICE, 1007 << 16, "removexattr", node=f, name="user.absent", ctime_ns=1007 * MS))  # no change
    assert file_.ctime_ns == 1006 * MS

    # A write signed after its upload: its mtime is the write's, ctime never goes back.
    ns.apply(op(ALICE, 1010 << 16, "write", node=f, content=content("x"), mtime_ns=1008 * MS))
    assert (file_.mtime_ns, file_.ctime_ns) == (1008 * MS, 1008 * MS)
    ns.apply(op(ALICE, 1011 << 16, "setattr", node=f, mode=0o640, ctime_ns=1011 * MS))
    ns.apply(op(ALICE, 1012 << 16, "write", node=f, content=content("y"), mtime_ns=1009 * MS,
                base=file_.version))
    assert (file_.mtime_ns, file_.ctime_ns) == (1009 * MS, 1011 * MS)
    # ... nor does a future mtime (touch -d tomorrow) move ctime past the write's stamp.
    ns.apply(op(ALICE, 1013 << 16, "write", node=f, content=content("z"), mtime_ns=9999 * MS, base=file_.version))
    assert file_.ctime_ns == 1013 * MS + 999_999

    # Entries in and out of a directory: its mtime and ctime; the moved node's ctime.
    ns.apply(op(ALICE, 1020 << 16, "create", parent=ROOT, name="g", node=g, mtime_ns=1020 * MS))
    ns.apply(op(ALICE, 1021 << 16, "rename", parent=ROOT, name="g", node=g, new_parent=d, new_name="g",
                ctime_ns=1021 * MS))
    root = ns.nodes[ROOT]
    assert (root.mtime_ns, dir_.mtime_ns, dir_.ctime_ns, ns.nodes[g].ctime_ns) == (1021 * MS,) * 4
    assert ns.nodes[g].mtime_ns == 1020 * MS
    ns.apply(op(ALICE, 1022 << 16, "unlink", parent=d, name="g", node=g, ctime_ns=1022 * MS))
    assert (dir_.mtime_ns, ns.nodes[g].ctime_ns, root.mtime_ns) == (1022 * MS, 1022 * MS, 1021 * MS)
    ns.apply(op(ALICE, 1023 << 16, "unlink", parent=d, name="g", node=g, ctime_ns=1023 * MS))  # stale: nothing
    assert dir_.mtime_ns == 1022 * MS
    ns.apply(op(ALICE, 1024 << 16, "unlink", parent=d, name="f", node=f))
    ns.apply(op(ALICE, 1025 << 16, "rmdir", parent=ROOT, name="d", node=d, ctime_ns=1025 * MS))
    assert dir_.ctime_ns == 1024 * MS and (root.mtime_ns, root.ctime_ns) == (1025 * MS, 1025 * MS)
    # Times before 1970 are times too (ext4 keeps them).
    ns.apply(op(ALICE, 1026 << 16, "setattr", node=ROOT, mtime_ns=-(10**18), atime_ns=-1))
    assert (root.atime_ns, root.mtime_ns) == (-1, -(10**18))


def test_special_files_are_nodes_with_a_type_and_a_device_number() -> None:
    ns = build([
        op(ALICE, 1 << 16, "mknod", parent=ROOT, name="fifo", node=b"\x01" * 32, type="fifo", mode=0o640),
        op(ALICE, 2 << 16, "mknod", parent=ROOT, name="null", node=b"\x02" * 32, type="chardev", rdev=259),
        op(ALICE, 3 << 16, "mknod", parent=ROOT, name="sock", node=b"\x03" * 32, type="socket", rdev=7),
        op(ALICE, 4 << 16, "mknod", parent=ROOT, name="odd", node=b"\x04" * 32, type="dir"),  # not special: nothing
        op(BOB, 4 << 16, "mknod", parent=ROOT, name="fifo", node=b"\x05" * 32, type="blockdev", rdev=2**32),
        op(ALICE, 5 << 16, "write", node=b"\x01" * 32, content=content("data")),  # a FIFO holds no bytes
    ])
    tree = ns.tree()
    assert (tree["/fifo"][0], tree["/fifo"][1], tree["/fifo"][2]) == ("fifo", 0o640, Content())
    assert (tree["/null"][0], tree["/null"][-2]) == ("chardev", 259)
    assert (tree["/sock"][0], tree["/sock"][-2]) == ("socket", 0)  # only device nodes have a number
    assert "/odd" not in tree
    conflict = [v for p, v in tree.items() if p.startswith("/fifo.conflict-")]
    assert [(v[0], v[-2]) for v in conflict] == [("blockdev", 0)]  # an out-of-range number is not taken


def test_hard_links_name_one_node_until_its_last_name_goes() -> None:
    f, d, g = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    ops = [
        op(ALICE, 1 << 16, "create", parent=ROOT, name="f", node=f),
        op(ALICE, 2 << 16, "write", node=f, content=content("data")),
        op(ALICE, 3 << 16, "mkdir", parent=ROOT, name="d", node=d),
        op(ALICE, 4 << 16, "link", parent=d, name="x", node=f, ctime_ns=4000),
        op(ALICE, 5 << 16, "link", parent=ROOT, name="d", node=f),  # taken (by d): a conflict name
        op(ALICE, 6 << 16, "link", parent=ROOT, name="dl", node=d),  # a directory: nothing
        op(ALICE, 7 << 16, "link", parent=ROOT, name="f", node=f),  # already its name: nothing
    ]
    ns = build(ops)
    node = ns.nodes[f]
    assert node.nlink == 3 and (node.parent, node.name) == (ROOT, "f") and node.ctime_ns == 5 * MS
    assert ns.lookup("d/x") is node and ns.tree()["/d/x"] == ns.tree()["/f"]
    assert "/dl" not in ns.tree() and ns.nodes[d].nlink == 1
    # Unlinking one name leaves the others; the node's place moves to its next name.
    ns.apply(op(ALICE, 8 << 16, "unlink", parent=ROOT, name="f", node=f, ctime_ns=8 * MS))
    assert node.nlink == 2 and (node.parent, node.name) == (d, "x") and ns.lookup("f") is None
    assert node.ctime_ns == ns.nodes[ROOT].mtime_ns == 8 * MS
    # A rename onto another name of the same node does nothing (POSIX).
    conflict = next(name for name in ns.children[ROOT] if name.startswith("d.conflict-"))
    ns.apply(op(ALICE, 9 << 16, "rename", parent=ROOT, name=conflict, node=f, new_parent=d, new_name="x"))
    assert node.nlink == 2 and ns.children[ROOT][conflict] == f
    # A rename over one of its names takes that name only.
    ns.apply(op(ALICE, 10 << 16, "create", parent=ROOT, name="g", node=g))
    ns.apply(op(ALICE, 11 << 16, "rename", parent=ROOT, name="g", node=g, new_parent=d, new_name="x", replaces=f))
    assert node.nlink == 1 and ns.lookup("d/x").node_id == g and ns.children[ROOT][conflict] == f
    ns.apply(op(ALICE, 12 << 16, "unlink", parent=ROOT, name=conflict, node=f))
    assert node.nlink == 0 and node.parent is None and node.content == content("data")


def test_concurrent_link_and_unlink_lose_nothing() -> None:
    f = b"\x01" * 32
    base = [op(ALICE, 1 << 16, "create", parent=ROOT, name="f", node=f),
            op(ALICE, 2 << 16, "write", node=f, content=content("data"))]
    # Bob unlinks f while Alice links it as g (she saw f): the node lives on under g.
    ns = build([*base, op(BOB, 3 << 16, "unlink", parent=ROOT, name="f", node=f),
                op(ALICE, 4 << 16, "link", parent=ROOT, name="g", node=f)])
    assert ns.lookup("f") is None and ns.lookup("g").content == content("data")
    # In the other order too (Alice's link stamped first).
    ns = build([*base, op(ALICE, 3 << 16, "link", parent=ROOT, name="g", node=f),
                op(BOB, 4 << 16, "unlink", parent=ROOT, name="f", node=f)])
    assert ns.lookup("f") is None and ns.lookup("g").nlink == 1
    # Alice links f as g while Bob creates another g: both stay, one under a conflict name.
    ns = build([*base, op(ALICE, 3 << 16, "link", parent=ROOT, name="g", node=f),
                op(BOB, 3 << 16, "create", parent=ROOT, name="g", node=b"\x02" * 32)])
    assert ns.nodes[f].nlink == 2 and any(p.startswith("/g.conflict-") for p in ns.tree())
    # Bob renames another file over g while Alice, who had not seen g yet, linked f there.
    ns = build([*base, op(ALICE, 3 << 16, "link", parent=ROOT, name="g", node=f),
                op(BOB, 3 << 16, "create", parent=ROOT, name="h", node=b"\x02" * 32),
                op(BOB, 4 << 16, "rename", parent=ROOT, name="h", node=b"\x02" * 32, new_parent=ROOT, new_name="g")])
    assert ns.lookup("g").node_id == b"\x02" * 32 and ns.nodes[f].nlink == 2  # kept as g.conflict-...
