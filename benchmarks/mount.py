"""Mount benchmark: a walrusfs mount vs the blob CLI and a local disk, on one local devnet.

Run ``python benchmarks/mount.py [--size MiB] [--files N]``. It starts 7 ``walrusfs peer``
processes on 127.0.0.1 and a mount (all in a temporary directory), then, in one run:

* sequential write: write SIZE of random data into the mount in 1 MiB writes and fsync
  (fsync returns once every chunk is certified and the namespace entry is in the log),
  against ``walrusfs store`` of the same file (certified and logged);
* sequential read: read it back through a fresh mount (empty cache) against
  ``walrusfs read`` of the stored blob;
* cached re-read: read it again through that mount against re-reading a local disk file
  (both from the page cache);
* untar: extract N small files (0.5-3 KB) into the mount; files/s when tar returns
  (staged) and when everything is certified and in the log (fsync of the mount root);
* durable small files: ``cp -r`` of ``--small`` files of 4 KiB into the mount plus an
  fsync of the copied directory (so every file is certified and its namespace ops are in
  the log), in files/s, with the namespace entries the mount signed per file
  (``--only-small`` skips the other measurements).

Each is measured on a public volume and on a private one (chunks and names sealed), in
that order (``--kinds``), and the private/public ratios are printed.

Targets: mount write and read >= 80% of the blob CLI, cached re-read >= 300 MB/s,
untar >= 100 files/s; private volumes' write and read >= 0.9x public.

``--startup`` measures mount start-up instead: seconds from starting ``walrusfs mount``
until ``ls -R`` lists every file, for a private volume of 1,000, 10,000 and 100,000 files
(``--startup-files``), grown in that order on one devnet. The files are signed with the
pure core and pushed to the peers (``tests/volumegen.py``: a ``mkdir`` per 1,000 files, a
``create`` and a ``write`` per file, contents holes), not written through FUSE. At each
size, in one run: a fresh mount replaying the whole log (snapshots off), the same mount
restarted (its local copy), a writer that snapshots the volume, and a fresh mount from
that snapshot; ``--before DIR`` adds a fresh mount by the code in DIR (the tree before
this work). ``--batched`` signs the volume as a mount signs a burst (up to 256 ops per
batched entry) instead of one op per entry. Targets: restarted 100,000 files < 5 s, fresh < 30 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mounting import Mount, create_volume, fsync  # noqa: E402

EXE = shutil.which("walrusfs", path=str(Path(sys.executable).parent)) or "walrusfs"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run walrusfs, failing loudly."""
    result = subprocess.run([EXE, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"walrusfs {' '.join(args)} failed:\n{result.stderr}")
    return result


def drop_caches() -> None:
    """Empty the page cache so reads go to the filesystem (needs root; skipped otherwise)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def read_all(path: Path) -> int:
    """Read a file in 1 MiB blocks; return its length."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            total += len(block)
    return total


def timed(action) -> float:  # noqa: ANN001
    """Seconds ``action`` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(kind: str, committee: Path, config: Path, work: Path, local: Path, archive: Path, files: int,
            mounts: list[Mount]) -> dict[str, float]:
    """Seconds taken by each mount measurement on a fresh volume of ``kind`` (public or private)."""
    name = f"bench-{kind}"
    create_volume(config, name, *(("--public",) if kind == "public" else ()))
    writer = Mount(committee, work / f"mnt-{kind}", name, config, work / "state" / f"writer-{kind}").start()
    mounts.append(writer)
    out: dict[str, float] = {}

    def write_mount() -> None:
        with open(local, "rb") as source, open(writer.path / "big.bin", "wb") as target:
            while block := source.read(1 << 20):
                target.write(block)
            target.flush()
            os.fsync(target.fileno())

    out["write"] = timed(write_mount)
    # Sequential read through a fresh mount (nothing cached).
    reader = Mount(committee, work / f"mnt-read-{kind}", name, config, work / "state" / f"reader-{kind}").start()
    mounts.append(reader)
    drop_caches()
    out["read"] = timed(lambda: read_all(reader.path / "big.bin"))
    out["cached"] = timed(lambda: read_all(reader.path / "big.bin"))
    drop_caches()  # the mount's own chunk cache
    out["chunk_cache"] = timed(lambda: read_all(reader.path / "big.bin"))
    out["untar"] = timed(lambda: subprocess.run(["tar", "-xf", str(archive), "-C", str(writer.path)], check=True))
    out["certified"] = out["untar"] + timed(writer.sync)
    return out


def own_entries(state: Path) -> int:
    """How many namespace entries the mount with state directory ``state`` has signed."""
    with sqlite3.connect(f"file:{state / 'mount.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM own_entries").fetchone()[0]


def measure_small(kind: str, committee: Path, config: Path, work: Path, source: Path,
                  mounts: list[Mount], options: tuple[str, ...] = ()) -> tuple[float, int]:
    """Seconds to make ``source``'s small files durable through a fresh mount (``cp -r`` + directory fsync), and entries signed."""
    name = f"small-{kind}"
    create_volume(config, name, *(("--public",) if kind == "public" else ()))
    state = work / "state" / f"small-{kind}"
    mount = Mount(committee, work / f"mnt-small-{kind}", name, config, state, *options).start()
    mounts.append(mount)
    mount.sync()
    before = own_entries(state)

    def copy() -> None:
        subprocess.run(["cp", "-r", str(source), str(mount.path / "small")], check=True)
        fsync(mount.path / "small")

    seconds = timed(copy)
    return seconds, own_entries(state) - before


def load() -> str:
    """The 1-minute load average (other work on the machine skews every timing)."""
    return open("/proc/loadavg").read().split()[0]


def started_until_listed(mount: Mount, files: int, extra_env: dict[str, str] | None = None,
                         limit: float = 1800.0) -> float:
    """Seconds from starting ``mount`` until ``ls -R`` lists ``files`` files (each listing's time included)."""
    began = time.perf_counter()
    saved = dict(os.environ)
    os.environ.update(extra_env or {})
    try:
        mount.start(limit=limit)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    while time.perf_counter() - began < limit:
        listing = subprocess.run(["ls", "-R", str(mount.path)], capture_output=True, text=True).stdout
        if sum(1 for line in listing.splitlines() if line.endswith(".txt")) >= files:
            return time.perf_counter() - began
        time.sleep(0.2)
    raise SystemExit(f"{mount.path} did not list {files} files within {limit:.0f} s")


def startup(args: argparse.Namespace) -> None:
    """Mount start-up times at growing volume sizes (see the module docstring)."""
    from tests.volumegen import seed_volume
    from walrusfs.core.log import MAX_BATCH_OPS

    sizes = [int(n) for n in args.startup_files.split(",")]
    work = Path(tempfile.mkdtemp(prefix="walrusfs-startup-bench-"))
    net = work / "net"
    mounts: list[Mount] = []
    rows = []
    print(f"load average at start: {load()}", flush=True)
    run("devnet", "up", "--peers", str(args.peers), str(net))
    committee = net / "committee.toml"
    config = work / "config"
    try:
        create_volume(config, "vol")
        writer = Mount(committee, work / "mnt-writer", "vol", config, work / "state" / "writer")
        mounts.append(writer)
        have = 0
        for size in sizes:
            began = time.perf_counter()
            entries = seed_volume(config, "vol", committee, size - have, max(1, (size - have) // 1000),
                                  prefix=f"s{size}-", batch=MAX_BATCH_OPS if args.batched else 1)
            have = size
            print(f"{size} files: pushed {entries} entries to {args.peers} peers in "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
            row = {"files": size, "load": [load()]}
            if args.before:
                old = Mount(committee, work / f"mnt-before-{size}", "vol", config, work / "state" / f"before-{size}",
                            "--startup-timeout", "3600")
                mounts.append(old)
                row["before"] = started_until_listed(old, size, {"PYTHONPATH": str(Path(args.before).resolve())})
                old.stop()
            replay = Mount(committee, work / f"mnt-replay-{size}", "vol", config, work / "state" / f"replay-{size}",
                           "--startup-timeout", "3600")
            mounts.append(replay)
            row["fresh_replay"] = started_until_listed(replay, size, {"WALRUSFS_SNAPSHOTS": "off"})
            replay.stop()
            row["restart"] = started_until_listed(replay, size, {"WALRUSFS_SNAPSHOTS": "off"})
            replay.stop()
            # A writer snapshots what changed (after as many new entries as files here, so
            # every size has a snapshot of all of it).
            # (Batched, the new entries are far fewer than the files: a snapshot of any change.)
            started_until_listed(writer, size, {"WALRUSFS_SNAPSHOT_OPS": "1" if args.batched else str(size)})
            deadline = time.monotonic() + 600
            while writer.status()["log"]["snapshots_made"] == 0 and time.monotonic() < deadline:
                time.sleep(1)
            writer.stop()
            fresh = Mount(committee, work / f"mnt-fresh-{size}", "vol", config, work / "state" / f"fresh-{size}")
            mounts.append(fresh)
            row["fresh_snapshot"] = started_until_listed(fresh, size)
            row["restored"] = fresh.status()["log"]["restored"]
            fresh.stop()
            row["load"].append(load())
            rows.append(row)
            print(row, flush=True)
        form = "batched entries (up to 256 ops each)" if args.batched else "one op per entry"
        print(f"\nwalrusfs mount start-up: {args.peers} peers on 127.0.0.1, private volume, {form}; seconds from "
              "`walrusfs mount` until `ls -R` lists every file")
        header = f"{'files':>8}  {'fresh, whole log':>17}  {'restarted':>10}  {'fresh, snapshot':>16}"
        print(header + (f"  {'before (fresh)':>15}" if args.before else "") + "  load average")
        for row in rows:
            line = (f"{row['files']:>8,}  {row['fresh_replay']:>17.2f}  {row['restart']:>10.2f}  "
                    f"{row['fresh_snapshot']:>16.2f}")
            print(line + (f"  {row['before']:>15.2f}" if args.before else "") + f"  {' -> '.join(row['load'])}")
        print("targets: 100,000 files restarted < 5 s, fresh < 30 s")
    finally:
        for mount in mounts:
            mount.stop()
        subprocess.run([EXE, "devnet", "down", str(net)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="MiB for the sequential runs (default 256)")
    parser.add_argument("--files", type=int, default=1000, help="small files to untar (default 1000)")
    parser.add_argument("--small", type=int, default=1000, help="4 KiB files to make durable (default 1000, 0: none)")
    parser.add_argument("--only-small", action="store_true", help="measure only the durable small files")
    parser.add_argument("--mount-option", action="append", default=[],
                        help="an option for the small files' mount, e.g. --mount-option=--pack-below=0")
    parser.add_argument("--kinds", default="public,private",
                        help="volume kinds to measure, in order (default public,private)")
    parser.add_argument("--startup", action="store_true", help="measure mount start-up times instead")
    parser.add_argument("--startup-files", default="1000,10000,100000",
                        help="volume sizes for --startup, ascending (default 1000,10000,100000)")
    parser.add_argument("--peers", type=int, default=7, help="peers for --startup (default 7)")
    parser.add_argument("--before", help="with --startup: also time a fresh mount by the walrusfs in this directory")
    parser.add_argument("--batched", action="store_true",
                        help="with --startup: sign the volume in batched entries (up to 256 ops each), as a mount does")
    args = parser.parse_args()
    if args.startup:
        startup(args)
        return
    kinds = args.kinds.split(",")
    size = args.size << 20
    work = Path(tempfile.mkdtemp(prefix="walrusfs-mount-bench-"))
    net = work / "net"
    run("devnet", "up", str(net))
    committee = net / "committee.toml"
    config = work / "config"
    mounts: list[Mount] = []
    try:
        small: dict[str, tuple[float, int]] = {}
        if args.small:
            source = work / "small-src"
            rng = random.Random(3)
            for i in range(args.small):
                folder = source / f"d{i % 10}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"f{i}.bin").write_bytes(rng.randbytes(4096))
            small = {kind: measure_small(kind, committee, config, work, source, mounts, tuple(args.mount_option))
                     for kind in kinds}
            for kind, (seconds, entries) in small.items():
                print(f"{kind} durable small files: {args.small} x 4 KiB in {seconds:.1f} s = "
                      f"{args.small / seconds:.1f} files/s; {entries} namespace entries "
                      f"({entries / args.small:.2f} per file); load {os.getloadavg()[0]:.1f}", flush=True)
        if args.only_small:
            return
        local = work / "local.bin"
        with open(local, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        mb = size / 1e6
        archive = io.BytesIO()
        rng = random.Random(2)
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for i in range(args.files):
                payload = rng.randbytes(rng.randrange(500, 3000))
                info = tarfile.TarInfo(f"src/d{i % 20}/f{i}.txt")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        (work / "small.tar").write_bytes(archive.getvalue())

        results = {kind: measure(kind, committee, config, work, local, work / "small.tar", args.files, mounts)
                   for kind in kinds}

        stored: dict = {}
        t_cli_store = timed(lambda: stored.update(json.loads(
            run("store", str(local), "--json", "--committee", str(committee)).stdout)))
        out = work / "out.bin"
        t_cli_read = timed(lambda: run("read", stored["blobId"], "-o", str(out), "--committee", str(committee)))
        read_all(local)
        t_local = timed(lambda: read_all(local))
        local_dir = work / "local-untar"
        local_dir.mkdir()
        t_local_untar = timed(lambda: subprocess.run(["tar", "-xf", str(work / "small.tar"), "-C", str(local_dir)],
                                                     check=True))

        print(f"\nwalrusfs mount benchmark: 7 peers on 127.0.0.1, {args.size} MiB file, {args.files} small files")
        print(f"{'':<28}{'mount MB/s':>12}{'baseline MB/s':>15}  {'ratio':>6}  baseline")
        for kind, r in results.items():
            for label, mine, base, what in [
                ("sequential write", mb / r["write"], mb / t_cli_store, "walrusfs store"),
                ("sequential read", mb / r["read"], mb / t_cli_read, "walrusfs read"),
                ("cached re-read", mb / r["cached"], mb / t_local, "local disk file"),
            ]:
                print(f"{kind + ' ' + label:<28}{mine:>12.1f}{base:>15.1f}  {mine / base:>6.2f}  {what}")
            print(f"{kind + ' chunk-cache re-read':<28}{mb / r['chunk_cache']:>12.1f}")
            print(f"{kind + ' untar (staged)':<28}{args.files / r['untar']:>12.1f} files/s; "
                  f"local disk {args.files / t_local_untar:.0f} files/s")
            print(f"{kind + ' untar (certified)':<28}{args.files / r['certified']:>12.1f} files/s")
        if {"public", "private"} <= set(results):
            pub, priv = results["public"], results["private"]
            print("private / public (throughput ratio; target >= 0.90 for write and read):")
            for label, key in [("sequential write", "write"), ("sequential read", "read"),
                               ("chunk-cache re-read", "chunk_cache"), ("untar (certified)", "certified")]:
                print(f"  {label:<24}{pub[key] / priv[key]:>6.2f}")
        for kind, (seconds, entries) in small.items():
            print(f"{kind + ' durable 4 KiB files':<28}{args.small / seconds:>12.1f} files/s; "
                  f"{entries / args.small:.2f} namespace entries per file")
        print("targets: write and read ratio >= 0.80, cached re-read >= 300 MB/s, untar >= 100 files/s, "
              "durable 4 KiB files >= 30 files/s")
    finally:
        for mount in mounts:
            mount.stop()
        subprocess.run([EXE, "devnet", "down", str(net)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
