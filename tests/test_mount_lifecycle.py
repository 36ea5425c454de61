"""A volume keeps what its tree uses, and only that (issue 16): renewal, trash, release, restore.

The fold and the plan are pure and tested here directly. The rest runs on real devnets
(4 peer processes) with real FUSE mounts: a deleted file's chunks leave every peer's disk
once the (shortened) trash time passed, a chunk another volume also uses survives, a file
restored from the trash before then comes back bit-exactly; and a mount that stays up
across several short storage epochs keeps its live files readable (from a fresh mount too)
while it releases its deleted files' chunks; chunks that expired while no mount ran are
stored again from a mount's cache. A stalled peer (SIGSTOP) during the first two.

The large-file test deletes 24 MiB by default; WALRUSFS_LIFECYCLE_MIB=100 runs it with the
issue's 100 MiB.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mounting import MountedVolume, create_volume, fsync, volume_env, wait_for
from walrusfs.core.namespace import ROOT, Op
from walrusfs.devnet import running
from walrusfs.mount.lifecycle import HeldChunk, fold_usage, parse_duration, plan

BIG_MIB = int(os.environ.get("WALRUSFS_LIFECYCLE_MIB", "24"))
TRASH_SECONDS = 25
MIB = 1 << 20


# ---------------------------------------------------------------------------- pure


def _op(n: int, kind: str, **args: object) -> Op:
    return Op(bytes([n]) * 32, n << 16, b"\x01" * 32, kind, args)


def _content(*chunks: bytes | None, chunk_size: int = 4) -> dict[str, object]:
    return {"size": len(chunks) * chunk_size, "chunk_size": chunk_size, "chunks": list(chunks)}


def test_fold_tracks_references_trash_and_release_times() -> None:
    a, b, c, d = (bytes([0xA0 + k]) * 32 for k in range(4))
    f, g = b"\xf0" * 32, b"\xf1" * 32
    ops = [
        _op(1, "create", parent=ROOT, name="f", node=f),
        _op(2, "write", node=f, content=_content(a, b)),
        _op(3, "create", parent=ROOT, name="g", node=g),
        _op(4, "write", node=g, content=_content(b, c)),
        _op(5, "write", node=f, content=_content(a, d), base=bytes([2]) * 32),  # overwrite: b still in g
        _op(6, "unlink", parent=ROOT, name="g", node=g),  # b and c now unreferenced
        _op(7, "rename", parent=ROOT, name="f", new_parent=ROOT, new_name="h", node=f),
    ]
    usage = fold_usage(reversed(ops))  # any arrival order: the fold sorts
    assert usage.referenced == {a, d}
    assert usage.unreferenced_since == {b: 6 << 16, c: 6 << 16}
    assert [(i.path, i.kind) for i in usage.trash] == [("/f", "overwritten"), ("/g", "deleted")]
    assert usage.files == 1 and usage.logical_bytes == 8

    def held(blob: bytes, end: int, hlc: int = 1) -> HeldChunk:
        return HeldChunk(blob[:1] * 32 + b"", blob, end, True, True, 4, hlc)

    registrations = [held(a, 12), held(b, 30), held(c, 30), held(d, 30)]
    encoded = lambda n: 10 * n  # noqa: E731
    removed_ms = (6 << 16) >> 16  # hlc_millis of the unlink
    early = plan(usage, registrations, 10, removed_ms + 1000, 5000, set(), encoded)
    assert early.extend == [a[:1] * 32] and early.delete == [] and set(early.pending) == {b, c}
    assert {i.path for i in early.restorable} == {"/f", "/g"}
    late = plan(usage, registrations, 10, removed_ms + 6000, 5000, set(), encoded)
    assert sorted(late.delete) == sorted([b[:1] * 32, c[:1] * 32]) and not late.restorable
    # A chunk this mount's unpublished staging still uses is never released.
    staged = plan(usage, registrations, 10, removed_ms + 6000, 5000, {c}, encoded)
    assert staged.delete == [b[:1] * 32]
    # A needed chunk no live registration holds is reported, whatever the trash time.
    gone = plan(usage, [held(b, 30)], 10, removed_ms, 5000, set(), encoded)
    assert gone.missing == sorted([a, d])
    assert parse_duration("7d") == 7 * 86400 and parse_duration("30") == 30 and parse_duration("2m") == 120


def test_a_hard_linked_file_keeps_its_chunks_until_its_last_name_goes() -> None:
    a, b = b"\xa0" * 32, b"\xb0" * 32
    f, o, d = b"\xf0" * 32, b"\xf1" * 32, b"\xd0" * 32
    ops = [
        _op(1, "create", parent=ROOT, name="f", node=f),
        _op(2, "write", node=f, content=_content(a)),
        _op(3, "mkdir", parent=ROOT, name="d", node=d),
        _op(4, "link", parent=ROOT, name="g", node=f),
        _op(5, "link", parent=d, name="x", node=f),
        _op(6, "unlink", parent=ROOT, name="f", node=f),  # two names left
        _op(7, "create", parent=ROOT, name="o", node=o),
        _op(8, "write", node=o, content=_content(b)),
        _op(9, "rename", parent=ROOT, name="o", node=o, new_parent=ROOT, new_name="g", replaces=f),  # d/x left
    ]
    usage = fold_usage(ops)
    assert usage.referenced == {a, b} and usage.unreferenced_since == {} and usage.trash == []
    assert usage.files == 2 and usage.logical_bytes == 8  # one node, however many names
    gone = fold_usage([*ops, _op(10, "unlink", parent=d, name="x", node=f)])
    assert gone.referenced == {b} and gone.unreferenced_since == {a: 10 << 16}
    assert [(i.path, i.kind, i.chunks) for i in gone.trash] == [("/d/x", "deleted", {a})]
    # A link made concurrently with that unlink brings the node back: nothing is released.
    back = fold_usage([*ops, _op(10, "unlink", parent=d, name="x", node=f), _op(11, "link", parent=ROOT, name="y", node=f)])
    assert back.referenced == {a, b} and back.unreferenced_since == {}
    registrations = [HeldChunk(a, a, 30, True, True, 4, 1), HeldChunk(b, b, 30, True, True, 4, 1)]
    assert plan(back, registrations, 10, 10**9, 0, set(), lambda n: n).delete == []


# ---------------------------------------------------------------------------- helpers


def sliver_bytes(peer_dir: Path, blobs: set[str] | None = None) -> int:
    """Bytes of sliver pair files a peer holds (of ``blobs`` only, if given)."""
    total = 0
    for path in peer_dir.rglob("slivers/*/*"):
        if blobs is None or path.name.rsplit(".", 1)[0] in blobs:
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
    return total


def cli(mv: MountedVolume, *args: str, trash: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A walrusfs command on the volumes of ``mv`` (their keys, the devnet's writer key)."""
    env = volume_env(mv.config, mv.root / "state")
    if trash is not None:
        env["WALRUSFS_TRASH_SECONDS"] = str(trash)
    result = subprocess.run([sys.executable, "-m", "walrusfs", *args, "--committee", str(mv.net.committee)],
                            capture_output=True, text=True, env=env, timeout=180)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def blob_ids(path: Path) -> list[str]:
    """The chunk blob IDs of a file in a mount."""
    return [line for line in os.getxattr(path, "user.walrus.blob_ids").decode().split("\n") if line != "(hole)"]


def peer_dirs(mv: MountedVolume) -> list[Path]:
    return [mv.net.directory / f"peer-{k}" for k in range(mv.net.peers)]


# ---------------------------------------------------------------------------- on real peers


def test_deleted_file_released_after_trash_time_shared_chunk_survives_restore_is_exact(tmp_path: Path) -> None:
    # Public volumes: a chunk is shared across volumes only in the clear (private volumes
    # never share one; tests/test_private_volumes.py shows that).
    mv = MountedVolume(tmp_path, peers=4, volume_options=("--public",))
    stalled_pid = None
    try:
        create_volume(mv.config, "vol2", "--public")
        a = mv.mount("a", "--trash-time", f"{TRASH_SECONDS}s")
        b = mv.mount("b", volume="vol2")
        rng = random.Random(16)
        shared = rng.randbytes(4 * MIB)  # one whole chunk, also in vol2
        big = shared + rng.randbytes((BIG_MIB - 4) * MIB)
        victim, keep = rng.randbytes(6 * MIB + 123), rng.randbytes(MIB)
        (a.path / "big.bin").write_bytes(big)
        (a.path / "victim.bin").write_bytes(victim)
        (a.path / "keep.bin").write_bytes(keep)
        (b.path / "shared.bin").write_bytes(shared)
        fsync(a.path)
        fsync(b.path)
        big_chunks = set(blob_ids(a.path / "big.bin"))
        shared_chunk = blob_ids(b.path / "shared.bin")[0]
        assert shared_chunk in big_chunks
        only_big = big_chunks - {shared_chunk}
        before = [sliver_bytes(p) for p in peer_dirs(mv)]
        share = [sliver_bytes(p, only_big) for p in peer_dirs(mv)]
        assert all(s > 0 for s in share)
        du = json.loads(cli(mv, "volume", "du", "vol", "--json", trash=TRASH_SECONDS).stdout)
        print(f"\nvolume du before: {du}")
        assert du["files"] == 3 and du["logicalBytes"] == len(big) + len(victim) + len(keep)

        os.unlink(a.path / "big.bin")
        os.unlink(a.path / "victim.bin")
        fsync(a.path)
        deleted_at = time.time()
        trash = json.loads(cli(mv, "volume", "trash", "vol", "--json", trash=TRASH_SECONDS).stdout)
        assert {(r["path"], r["size"]) for r in trash} == {("/big.bin", len(big)), ("/victim.bin", len(victim))}
        # A stalled peer during the trash time: releases go through the others, it catches up.
        stalled = 3
        stalled_pid = running(mv.net.directory)[stalled]
        os.kill(stalled_pid, signal.SIGSTOP)

        restored = json.loads(cli(mv, "volume", "restore", "vol", "/victim.bin", "--json", trash=TRASH_SECONDS).stdout)
        assert restored["path"] == "/victim.bin"
        assert wait_for(lambda: (a.path / "victim.bin").exists(), limit=30)
        assert (a.path / "victim.bin").read_bytes() == victim
        second = mv.mount("second")  # its own state: nothing cached
        try:
            assert wait_for(lambda: (second.path / "victim.bin").exists(), limit=30)
            assert (second.path / "victim.bin").read_bytes() == victim
            assert not (second.path / "big.bin").exists()
        finally:
            second.stop()
        again = cli(mv, "volume", "restore", "vol", "/victim.bin", trash=TRASH_SECONDS, check=False)
        assert again.returncode != 0 and "exists" in again.stderr

        honest = [k for k in range(4) if k != stalled]
        dirs = peer_dirs(mv)
        limit = TRASH_SECONDS + 90
        assert wait_for(lambda: all(sliver_bytes(dirs[k], only_big) == 0 for k in honest), limit=limit, step=1), \
            f"chunks of the deleted file still on peers {[sliver_bytes(dirs[k], only_big) for k in honest]}"
        released_after = time.time() - deleted_at
        assert released_after >= TRASH_SECONDS - 1, f"released after {released_after:.1f} s, before the trash time"
        os.kill(stalled_pid, signal.SIGCONT)
        stalled_pid = None
        assert wait_for(lambda: sliver_bytes(dirs[stalled], only_big) == 0, limit=90, step=1), \
            "the stalled peer kept the released chunks after it resumed"
        after = [sliver_bytes(p) for p in dirs]
        for k in range(4):
            print(f"peer {k}: slivers {before[k]} -> {after[k]} bytes (file's encoded share {share[k]}, "
                  f"lowered by {before[k] - after[k]})")
            assert before[k] - after[k] >= share[k] * 0.99
        print(f"released {released_after:.1f} s after the delete (trash time {TRASH_SECONDS} s)")

        # The chunk vol2 also uses survives on every peer and reads back from a fresh mount of vol2.
        assert all(sliver_bytes(p, {shared_chunk}) > 0 for p in dirs)
        fresh2 = mv.mount("fresh2", volume="vol2")
        try:
            assert wait_for(lambda: (fresh2.path / "shared.bin").exists(), limit=30)
            assert (fresh2.path / "shared.bin").read_bytes() == shared
        finally:
            fresh2.stop()
        du = json.loads(cli(mv, "volume", "du", "vol", "--json", trash=TRASH_SECONDS).stdout)
        print(f"volume du after: {du}")
        assert du["pendingReleaseBytes"] == 0 and du["files"] == 2 and not du["missingChunks"]
        assert json.loads(cli(mv, "volume", "trash", "vol", "--json", trash=TRASH_SECONDS).stdout) == []
        gone = cli(mv, "volume", "restore", "vol", "/big.bin", trash=TRASH_SECONDS, check=False)
        assert gone.returncode == 4 and "not in the trash" in gone.stderr

        # gc --now releases at once what nothing references, without waiting for the trash time.
        (a.path / "now.bin").write_bytes(rng.randbytes(MIB))
        fsync(a.path)
        now_chunks = set(blob_ids(a.path / "now.bin"))
        os.unlink(a.path / "now.bin")
        fsync(a.path)
        gc_at = time.time()
        gc = json.loads(cli(mv, "gc", "vol", "--now", "--json").stdout)
        assert gc["deleted"] == len(now_chunks), gc
        assert wait_for(lambda: all(sliver_bytes(p, now_chunks) == 0 for p in peer_dirs(mv)), limit=30, step=0.5)
        print(f"gc --now: released {gc} in {time.time() - gc_at:.1f} s")
        assert time.time() - gc_at < TRASH_SECONDS

        # After a remount the restored file is still there, bit-exact.
        a.stop()
        a.start()
        assert wait_for(lambda: (a.path / "victim.bin").exists(), limit=30)
        assert (a.path / "victim.bin").read_bytes() == victim
        assert (a.path / "keep.bin").read_bytes() == keep
        assert not (a.path / "big.bin").exists()
    finally:
        if stalled_pid is not None:
            os.kill(stalled_pid, signal.SIGCONT)
        mv.close()


def test_mount_up_across_epochs_renews_live_files_and_reclaims_deleted(tmp_path: Path) -> None:
    mv = MountedVolume(tmp_path, peers=4, devnet_options=("--epoch-seconds", "3"))
    stalled_pid = None
    try:
        a = mv.mount("a", "--chunk-size", "1MiB")
        # The volume's own trash time, in the log like any xattr (no --trash-time here).
        os.setxattr(a.path, "user.walrusfs.trash-seconds", b"4s")
        rng = random.Random(5)
        files = {f"live-{k}.bin": rng.randbytes(rng.randrange(MIB // 2, 3 * MIB)) for k in range(3)}
        doomed = {f"doomed-{k}.bin": rng.randbytes(2 * MIB + k) for k in range(2)}
        for name, data in {**files, **doomed}.items():
            (a.path / name).write_bytes(data)
        fsync(a.path)
        doomed_chunks = {c for name in doomed for c in blob_ids(a.path / name)}
        start = a.status()["lifecycle"]["epoch"]
        for name in doomed:
            os.unlink(a.path / name)
        fsync(a.path)
        dirs = peer_dirs(mv)
        # A stalled peer for a while: epochs, extensions and deletions go on without it.
        stalled_pid = running(mv.net.directory)[2]
        os.kill(stalled_pid, signal.SIGSTOP)
        time.sleep(6)
        os.kill(stalled_pid, signal.SIGCONT)
        stalled_pid = None
        # Chunks are stored for 5 epochs: past start + 6 only renewal keeps the live ones.
        assert wait_for(lambda: a.status()["lifecycle"]["epoch"] >= start + 7, limit=90, step=1)
        status = a.status()["lifecycle"]
        print(f"\nepochs {start} -> {status['epoch']}: {status}")
        assert status["trash_seconds"] == 4
        assert status["extended"] > 0 and status["deleted"] >= len(doomed_chunks) and not status["missing"]
        for name, data in files.items():
            assert (a.path / name).read_bytes() == data
        fresh = mv.mount("fresh")  # no cache: reads come from the peers
        try:
            for name, data in files.items():
                assert wait_for(lambda: (fresh.path / name).exists(), limit=30)
                assert (fresh.path / name).read_bytes() == data, f"{name} not readable after {status['epoch']} epochs"
        finally:
            fresh.stop()
        assert wait_for(lambda: all(sliver_bytes(p, doomed_chunks) == 0 for p in dirs), limit=60, step=1), \
            f"deleted files' chunks still held: {[sliver_bytes(p, doomed_chunks) for p in dirs]}"
        live_chunks = {c for name in files for c in blob_ids(a.path / name)}
        held = [sliver_bytes(p, live_chunks) for p in dirs]
        print(f"live chunks per peer {held} bytes; deleted chunks per peer "
              f"{[sliver_bytes(p, doomed_chunks) for p in dirs]}")
        assert all(h > 0 for h in held)
    finally:
        if stalled_pid is not None:
            os.kill(stalled_pid, signal.SIGCONT)
        mv.close()


def test_expired_chunks_are_stored_again_from_the_cache_after_a_long_absence(tmp_path: Path) -> None:
    mv = MountedVolume(tmp_path, peers=4, devnet_options=("--epoch-seconds", "3"))
    try:
        a = mv.mount("a", "--chunk-size", "1MiB")
        data = random.Random(9).randbytes(3 * MIB + 17)
        (a.path / "kept.bin").write_bytes(data)
        fsync(a.path)
        chunks = set(blob_ids(a.path / "kept.bin"))
        a.stop()  # before its first renewal: the chunks end 5 epochs after they were stored
        def expired() -> bool:
            result = cli(mv, "volume", "du", "vol", "--json", check=False)
            return result.returncode == 1 and len(json.loads(result.stdout)["missingChunks"]) == len(chunks)
        assert wait_for(expired, limit=90, step=2), "the chunks did not expire while no mount renewed them"
        assert wait_for(lambda: all(sliver_bytes(p, chunks) == 0 for p in peer_dirs(mv)), limit=60, step=1)
        a.start()  # its cache still holds the verified chunks
        assert wait_for(lambda: a.status()["lifecycle"]["stored_again"] >= len(chunks), limit=60, step=1), \
            a.status()["lifecycle"]
        print(f"\nafter the absence: {a.status()['lifecycle']}")
        fresh = mv.mount("fresh")
        try:
            assert wait_for(lambda: (fresh.path / "kept.bin").exists(), limit=30)
            assert (fresh.path / "kept.bin").read_bytes() == data
        finally:
            fresh.stop()
        du = json.loads(cli(mv, "volume", "du", "vol", "--json").stdout)
        assert not du["missingChunks"] and du["files"] == 1
    finally:
        mv.close()
