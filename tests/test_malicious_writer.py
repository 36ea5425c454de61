"""A malicious writer (a validly delegated device) against two real mounts over a real devnet (n = 4).

Issue 15, finding 6: a device that set a mode, uid or gid of 2^32 or a size of 2^63 made
every other mount of the volume die of pyfuse3's OverflowError on ``ls``, and again on
every remount. Here the writer's entries are built with the pure core and pushed to the
peers directly: values no mount can show are rejected by every peer (public volume) or,
sealed where peers cannot read them (private volume), accepted by the peers and skipped
by every mount after opening them; the root cannot be chmodded, chowned or replaced, and
the values that do pass (the largest in range) only change the writer's own files. Both
mounts, a remount and a fresh mount keep listing and reading the honest files byte for byte.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from tests.mounting import Mount, MountedVolume, fsync, wait_for
from walrusfs.client.blob import Client
from walrusfs.client.members import call_member
from walrusfs.client.writer import load_key
from walrusfs.core.committee import parse_committee
from walrusfs.core.lifecycle import sponsor
from walrusfs.core.log import (
    GENESIS,
    NAMESPACE,
    Entry,
    Outcome,
    delegate_device,
    next_hlc,
    sign_entry,
)
from walrusfs.core.messages import LOG_PUSH
from walrusfs.core.namespace import ROOT
from walrusfs.core.sealing import open_ops, open_payload, seal_ops, seal_payload
from walrusfs.identity import read_seed_file
from walrusfs.mount.volumelog import entry_context

EVIL_FILE, EVIL_SPARSE = b"\xe1" * 32, b"\xe2" * 32
HONEST = {"a.txt": b"hello from the honest mount\n", "dir/b.bin": random.Random(6).randbytes(300_000)}


class Writer:
    """A delegated device signing whatever namespace entries it likes, in one chain.

    It writes on ``account``'s grant (the devnet's writer key, which sponsors the volume as
    a mount's user would), so peers admit its entries and only their values are judged.
    """

    def __init__(self, volume_key: SigningKey, account: SigningKey, read_key: bytes | None) -> None:
        self.volume_key = volume_key
        self.read_key = read_key
        self.account = account
        self.key = SigningKey(os.urandom(32))
        self.entries: list[Entry] = []
        self.hlc = 0

    def sign(self, kind: str, **args: Any) -> Entry:
        return self.sign_ops([{"kind": kind, "args": args}], batch=False)

    def sign_ops(self, ops: list[dict[str, Any]], batch: bool = True) -> Entry:
        payload = {"volume": bytes(self.volume_key.verify_key),
                   "delegation": delegate_device(self.volume_key, bytes(self.key.verify_key)),
                   "account": bytes(self.account.verify_key),
                   "sponsorship": sponsor(self.account, bytes(self.volume_key.verify_key))}
        self.hlc = next_hlc(self.hlc, int(time.time() * 1000))
        volume, seq = bytes(self.volume_key.verify_key), len(self.entries) + 1
        context = entry_context(bytes(self.key.verify_key), seq)
        if batch:  # one entry carrying several ops (issue 19)
            if self.read_key is None:
                payload["ops"] = ops
            else:
                payload["sealed_ops"] = seal_ops(self.read_key, volume, ops, context)
        elif self.read_key is None:
            payload["op"] = ops[0]
        else:
            payload["sealed"] = seal_payload(self.read_key, volume, ops[0], context)
        prev = self.entries[-1].id if self.entries else GENESIS
        entry = sign_entry(self.key, len(self.entries) + 1, prev, self.hlc, NAMESPACE, payload)
        self.entries.append(entry)
        return entry


async def honest_node(client: Client, name: str, volume: bytes, read_key: bytes | None) -> bytes:
    """The node ID the honest mount's create of ``name`` gave it, read back from the log."""
    entries = await client.fullest_log() or []
    for e in entries:
        if e.kind != NAMESPACE:
            continue
        context = entry_context(e.author, e.seq)
        if read_key is None:
            ops = e.payload["ops"] if "ops" in e.payload else [e.payload["op"]]
        elif "sealed_ops" in e.payload:
            ops = open_ops(read_key, volume, e.payload["sealed_ops"], context)
        else:
            ops = [open_payload(read_key, volume, e.payload["sealed"], context)]
        for op in ops:
            if op["kind"] == "create" and op["args"]["name"] == name:
                return op["args"]["node"]
    raise AssertionError(f"no create of {name} in the log")


async def attack(committee_path: Path, volume_key: SigningKey, read_key: bytes | None) -> dict[str, list[str]]:
    """Push the writer's entries to every peer; return each entry's outcomes, by label."""
    committee = parse_committee(committee_path.read_text())
    account = load_key(committee_path.parent / "writer.key")
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee)
        honest = await honest_node(client, "a.txt", bytes(volume_key.verify_key), read_key)
        # Values no mount can show: each from a fresh device of the writer (a rejected entry
        # stops its chain), each to be rejected by every peer.
        out_of_range = {
            "mode 2^32": ("setattr", {"node": honest, "mode": 2**32}),
            "uid 2^32": ("setattr", {"node": honest, "uid": 2**32}),
            "gid 2^32": ("setattr", {"node": ROOT, "gid": 2**32}),
            "negative mode": ("setattr", {"node": honest, "mode": -1}),
            "mode with a type": ("setattr", {"node": honest, "mode": stat.S_IFREG | 0o644}),
            "mtime 2^63": ("setattr", {"node": honest, "mtime_ns": 2**63}),
            "mtime before -2^63": ("setattr", {"node": ROOT, "mtime_ns": -(2**63) - 1}),
            "atime 2^63": ("setattr", {"node": honest, "atime_ns": 2**63}),
            "ctime -2^64": ("unlink", {"parent": ROOT, "name": "a.txt", "node": honest, "ctime_ns": -(2**64)}),
            "size 2^63": ("write", {"node": honest, "content": {"size": 2**63, "chunk_size": 2**62,
                                                                "chunks": [None, None, None]}}),
            "create uid 2^32": ("create", {"parent": ROOT, "name": "evil-big", "node": b"\xe3" * 32,
                                           "mode": 0o644, "uid": 2**32, "gid": 2**40, "mtime_ns": 2**64}),
        }
        labelled: dict[str, Entry] = {}
        for label, (kind, args) in out_of_range.items():
            labelled[label] = Writer(volume_key, account, read_key).sign(kind, **args)
        # Batches (issue 19): one bad op, or too many, and the whole entry goes, its good ops too.
        evil_batch = {"kind": "create", "args": {"parent": ROOT, "name": "evil-batch", "node": b"\xe4" * 32,
                                                 "mode": 0o644}}
        labelled["batch with one op out of range"] = Writer(volume_key, account, read_key).sign_ops(
            [evil_batch, {"kind": "setattr", "args": {"node": honest, "uid": 2**32}}])
        labelled["batch of 257 ops"] = Writer(volume_key, account, read_key).sign_ops(
            [evil_batch] + [{"kind": "setattr", "args": {"node": honest, "mode": 0}}] * 256)
        # One device's chain of values that pass (the extremes in range) and attacks on the root.
        writer = Writer(volume_key, account, read_key)
        for label, kind, args in [
            ("own file, largest values", "create", {"parent": ROOT, "name": "evil", "node": EVIL_FILE,
                                                    "mode": 0o7777, "uid": 2**32 - 2, "gid": 2**32 - 2,
                                                    "mtime_ns": 2**63 - 1}),
            ("own sparse file", "create", {"parent": ROOT, "name": "evil-sparse", "node": EVIL_SPARSE,
                                           "mode": 0o644, "mtime_ns": 0}),
            ("size 2^63 - 1", "write", {"node": EVIL_SPARSE, "mtime_ns": 0,
                                        "content": {"size": 2**63 - 1, "chunk_size": 2**62, "chunks": [None, None]}}),
            ("chmod 000 root", "setattr", {"node": ROOT, "mode": 0}),
            ("chown root", "setattr", {"node": ROOT, "uid": 4242, "gid": 4242}),
            ("root as a file", "create", {"parent": ROOT, "name": "root-file", "node": ROOT, "mode": 0o644}),
            ("root as a symlink", "symlink", {"parent": ROOT, "name": "root-link", "node": ROOT, "target": "/"}),
            ("write to root", "write", {"node": ROOT, "content": {"size": 1, "chunk_size": 4, "chunks": [None]}}),
            ("root renamed", "rename", {"parent": ROOT, "name": "a.txt", "node": ROOT, "new_parent": ROOT,
                                        "new_name": "gone"}),
        ]:
            labelled[label] = writer.sign(kind, **args)
        encoded = [e.encode() for e in labelled.values()]
        outcomes: dict[str, list[str]] = {label: [] for label in labelled}
        for peer in range(len(committee.peers)):
            reply, _ = await call_member(host, committee, peer, LOG_PUSH, entries=encoded)
            for label, (outcome, _reason) in zip(labelled, reply["results"]):
                outcomes[label].append(outcome)
        return outcomes


def listing(root: Path) -> str:
    """``ls -lR`` of a mount, which must succeed."""
    result = subprocess.run(["ls", "-lR", "--time-style=+%s", str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_mount(mount: Mount, keep_owners: bool = False) -> None:
    """Lists, stats and reads like an honest volume: the root is the user's, honest files intact."""
    assert wait_for(lambda: (mount.path / "evil-sparse").stat().st_size == 2**63 - 1, limit=30), \
        f"the writer's entries never reached {mount.path}"
    shown = listing(mount.path)
    assert "a.txt" in shown and "evil" in shown
    root = os.stat(mount.path)
    assert stat.S_ISDIR(root.st_mode) and root.st_mode & 0o700 == 0o700, oct(root.st_mode)
    assert (root.st_uid, root.st_gid) == (os.getuid(), os.getgid())
    assert sorted(os.listdir(mount.path)) == ["a.txt", "dir", "evil", "evil-sparse"]
    for name, data in HONEST.items():
        path = mount.path / name
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_size, info.st_uid) == (0o644, len(data), os.getuid()), name
        assert path.read_bytes() == data, name
    evil = os.stat(mount.path / "evil")
    assert stat.S_IMODE(evil.st_mode) == 0o7777 and evil.st_mtime_ns == 2**63 - 1
    assert evil.st_uid == (2**32 - 2 if keep_owners else os.getuid())
    with open(mount.path / "evil-sparse", "rb") as f:
        assert f.read(4096) == bytes(4096)  # a hole: zeros, not an error
    assert mount.process is not None and mount.process.poll() is None, mount.log.read_text()[-3000:]


@pytest.mark.parametrize("kind", ["public", "private"])
def test_a_malicious_writer_damages_only_its_own_files(tmp_path: Path, kind: str) -> None:
    started = time.monotonic()
    vol = MountedVolume(tmp_path / "vol", 4, volume_options=("--public",) if kind == "public" else ())
    try:
        honest = vol.mount("honest")
        other = vol.mount("other")
        (honest.path / "dir").mkdir()
        for name, data in HONEST.items():
            (honest.path / name).write_bytes(data)
            fsync(honest.path / name)
        assert wait_for(lambda: all((other.path / n).read_bytes() == d for n, d in HONEST.items()), limit=30)
        print(f"\nset up in {time.monotonic() - started:.1f} s")

        volume_key = SigningKey(read_seed_file(vol.config / "volumes" / "vol.key"))
        read_key = None if kind == "public" else read_seed_file(vol.config / "volumes" / "vol.readkey")
        outcomes = trio.run(attack, vol.net.committee, volume_key, read_key)
        for label, got in outcomes.items():
            print(f"{label}: {got}")
        passing = {"own file, largest values", "own sparse file", "size 2^63 - 1", "chmod 000 root", "chown root",
                   "root as a file", "root as a symlink", "write to root", "root renamed"}
        held = {Outcome.ACCEPTED.value, Outcome.DUPLICATE.value}  # the first peer relays to the others
        for label, got in outcomes.items():
            if label in passing or kind == "private":
                # Sealed, the out-of-range values pass the peers; the mounts skip them below.
                assert set(got) <= held, (label, got)
            else:
                assert got == [Outcome.REJECTED.value] * 4, (label, got)

        for mount in (honest, other):
            check_mount(mount)
        if kind == "private":
            # The mounts opened the sealed out-of-range ops and refused to apply them.
            refused = len(outcomes) - len(passing)
            assert wait_for(lambda: honest.status().get("unreadable_entries") == refused, limit=30), honest.status()
        other.stop()
        other.start()  # the remount that used to die on its first `ls`
        check_mount(other)
        fresh = vol.mount("fresh", "--keep-owners", volume=vol.read_cap, config=vol.root / "no-keys")
        check_mount(fresh, keep_owners=True)
        # The honest mount still writes, and the others see it.
        (honest.path / "after.txt").write_bytes(b"still writing")
        fsync(honest.path / "after.txt")
        assert wait_for(lambda: (fresh.path / "after.txt").read_bytes() == b"still writing", limit=30)
        # Every peer restarts with the writer's entries in its store; a remount still works.
        vol.net.stop(0, 1, 2, 3)
        vol.net.start(0, 1, 2, 3)
        other.stop()
        other.start()
        assert sorted(os.listdir(other.path)) == ["a.txt", "after.txt", "dir", "evil", "evil-sparse"]
        assert all((other.path / n).read_bytes() == d for n, d in HONEST.items())
        assert (other.path / "after.txt").read_bytes() == b"still writing"
        print(f"whole test {time.monotonic() - started:.1f} s")
    finally:
        vol.close()
