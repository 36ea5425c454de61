"""Mount start-up from the local copy and from writers' snapshots: real peers (n = 4), real mounts, real SQLite.

A restarted mount takes up its local copy and asks the peers only for what is new; a copy
changed behind its back is noticed and rebuilt from the peers; a fresh mount starts from a
writer's snapshot and shows what the writer shows; snapshots that are not what they claim
(a bad signature, a position the log does not hold) are refused and the log replayed.
Most of the volume is signed with the pure core (``tests/volumegen.py``) and pushed to the
peers, so hundreds of files cost no uploads.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from tests.mounting import MountedVolume, create_volume, fsync, wait_for
from tests.volumegen import publish_snapshot, seed_volume, volume_keys
from walrusfs.core import wire
from walrusfs.core.log import delegate_device
from walrusfs.core.namespace import Namespace
from walrusfs.core.sealing import seal_snapshot
from walrusfs.core.snapshot import encode_tree, sign_snapshot


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedVolume]:
    volume = MountedVolume(tmp_path_factory.mktemp("startup"), peers=4)
    yield volume
    volume.close()


def tree(root: Path) -> dict[str, tuple]:
    """Every path below a mount with its type, size, mode, mtime and link target."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            target = os.readlink(path) if path.is_symlink() else ""
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return out


def files(root: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(root))


def test_a_restart_takes_up_its_local_copy_and_fetches_only_new_entries(vol: MountedVolume) -> None:
    seeded = seed_volume(vol.config, "vol", vol.net.committee, 300, 3, prefix="a")
    writer = vol.mount("restart")
    assert wait_for(lambda: files(writer.path) == 300, 30)
    first = writer.status()["log"]
    assert first["restored"] is None and first["fetched_entries"] >= seeded
    writer.stop()
    new = seed_volume(vol.config, "vol", vol.net.committee, 5, 1, prefix="b")
    writer.start()
    assert wait_for(lambda: files(writer.path) == 305, 30)
    again = writer.status()["log"]
    print(f"first start fetched {first['fetched_entries']} entries; the restart {again['fetched_entries']} "
          f"({new} new)")
    assert again["restored"] == "local copy" and again["rebuilds"] == 0
    assert new <= again["fetched_entries"] <= new + 5  # the new entries, and at most a few relatime ops
    writer.stop()


def test_a_changed_local_copy_is_noticed_and_rebuilt_from_the_peers(vol: MountedVolume) -> None:
    mount = vol.mount("tamper")
    assert wait_for(lambda: files(mount.path) >= 300, 30)
    shown = tree(mount.path)
    mount.stop()
    db_path = mount.state / "log.sqlite"

    def flip_checkpoint(db: sqlite3.Connection) -> None:
        tree = bytearray(db.execute("SELECT tree FROM checkpoint").fetchone()[0])
        tree[len(tree) // 2] ^= 1
        db.execute("UPDATE checkpoint SET tree = ?", (bytes(tree),))

    def garble_grant(db: sqlite3.Connection) -> None:
        # A value of the wrong type, as a damaged page or another program might leave it.
        db.execute("UPDATE entries SET encoded = 'not an entry' WHERE kind = 'grant'")

    for change in (flip_checkpoint, garble_grant):
        db = sqlite3.connect(db_path)
        with db:
            change(db)
        db.close()
        mount.start()
        status = mount.status()["log"]
        assert status["rebuilds"] == 1 and status["restored"] is None, status
        assert any(why in status["local_problem"] for why in ("changed", "does not read")), status
        assert wait_for(lambda: tree(mount.path).keys() == shown.keys(), 30)
        mount.stop()


def test_a_fresh_mount_starts_from_a_writers_snapshot_and_shows_the_writers_tree(vol: MountedVolume) -> None:
    os.environ["WALRUSFS_SNAPSHOT_OPS"] = "50"  # reaches the mount process: it snapshots after 50 entries
    try:
        writer = vol.mount("snapshotter")
    finally:
        del os.environ["WALRUSFS_SNAPSHOT_OPS"]
    (writer.path / "made").mkdir()
    (writer.path / "made" / "one.txt").write_bytes(b"one\n" * 1000)
    (writer.path / "made" / "two.bin").write_bytes(os.urandom(70_000))
    os.symlink("one.txt", writer.path / "made" / "link")
    os.chmod(writer.path / "made" / "two.bin", 0o600)
    fsync(writer.path)
    assert wait_for(lambda: writer.status()["log"]["snapshots_made"] >= 1, 40)
    writer.stop()
    writer.start()
    fresh = vol.mount("fresh-from-snapshot")
    status = fresh.status()["log"]
    assert status["restored"] == "snapshot", status
    assert tree(fresh.path) == tree(writer.path)
    for name in ("one.txt", "two.bin"):
        assert (fresh.path / "made" / name).read_bytes() == (writer.path / "made" / name).read_bytes()
    # The history below the snapshot follows in the background; the tree stays the writer's.
    assert wait_for(lambda: fresh.status()["log"]["history_complete"], 60)
    assert tree(fresh.path) == tree(writer.path)
    fresh.stop()
    writer.stop()


def test_hostile_snapshots_are_refused_and_the_log_replayed(vol: MountedVolume) -> None:
    create_volume(vol.config, "hostile")
    seed_volume(vol.config, "hostile", vol.net.committee, 40, 2, prefix="h")
    volume_key, read_key = volume_keys(vol.config, "hostile")
    volume = bytes(volume_key.verify_key)
    tree_bytes = encode_tree(Namespace())

    def snapshot(liar: SigningKey, heads: dict, signature_ok: bool) -> bytes:
        data = sign_snapshot(liar, delegate_device(volume_key, bytes(liar.verify_key)), volume, heads, None, 9_999,
                             tree_bytes, 1)
        if not signature_ok:
            outer = wire.decode(data, len(data))
            outer["signature"] = bytes([outer["signature"][0] ^ 1]) + outer["signature"][1:]
            data = wire.encode(outer)
        return seal_snapshot(read_key, volume, data) if read_key else data

    # An empty tree claiming 9,999 entries, each published by a key the volume delegated:
    # one whose signature does not verify, one at a position (an author's entry 1) the
    # log does not hold.
    for heads, signature_ok in (({}, False), ({os.urandom(32): (1, os.urandom(32))}, True)):
        liar = SigningKey(os.urandom(32))
        trio.run(publish_snapshot, vol.net.committee, vol.config, "hostile", snapshot(liar, heads, signature_ok),
                 9_999, liar)
    mount = vol.mount("hostile-reader", volume="hostile")
    status = mount.status()["log"]
    assert status["restored"] is None and status["snapshots_rejected"] == 2, status
    assert files(mount.path) == 40
    mount.stop()


def test_files_written_in_batches_and_packed_survive_a_restart_and_a_snapshot(vol: MountedVolume) -> None:
    """A burst through the mount: batched entries, small files packed (their chunks at offsets in one blob)."""
    create_volume(vol.config, "burst")
    os.environ["WALRUSFS_SNAPSHOT_OPS"] = "1"  # a snapshot of whatever the burst signed
    try:
        writer = vol.mount("burst-writer", volume="burst")
    finally:
        del os.environ["WALRUSFS_SNAPSHOT_OPS"]
    (writer.path / "many").mkdir()
    written = {}
    for k in range(40):
        written[f"many/f{k}.bin"] = data = os.urandom(300 + 97 * k)
        (writer.path / f"many/f{k}.bin").write_bytes(data)
    fsync(writer.path / "many")
    status = writer.status()
    assert status["entries_signed"] <= 20 and status["packed_files"] >= 30, status  # 81 ops
    packed = {name: os.getxattr(writer.path / name, "user.walrus.packed") for name in written
              if "user.walrus.packed" in os.listxattr(writer.path / name)}
    assert len(packed) >= 30 and sum(offsets != b"0" for offsets in packed.values()) >= 20  # inside their pack
    assert wait_for(lambda: writer.status()["log"]["snapshots_made"] >= 1, 40)
    shown = tree(writer.path)
    writer.stop()
    writer.start()
    fresh = vol.mount("burst-fresh", volume="burst")
    assert writer.status()["log"]["restored"] == "local copy"
    assert fresh.status()["log"]["restored"] == "snapshot", fresh.status()["log"]
    for mount in (writer, fresh):
        assert tree(mount.path) == shown
        for name, data in written.items():
            if name in packed:
                assert os.getxattr(mount.path / name, "user.walrus.packed") == packed[name], name
            assert (mount.path / name).read_bytes() == data, name
    fresh.stop()
    writer.stop()
