"""Two versions of the read path against each other, in one run: client CPU per MB, wall time, peak memory.

Run ``python benchmarks/read_versions.py OLD_TREE [NEW_TREE] [--rounds 6] [--size-mib 64]``
with two checkouts of walrusfs (NEW_TREE defaults to this one). It starts a devnet of 7
peers from NEW_TREE, stores one blob, then alternates (the order swapping every round):

* a worker process with ``PYTHONPATH=<tree>`` that connects, reads the blob once to warm
  up (connections, the codec's tables), then times 3 more ``Client.read`` calls: CPU
  seconds of its own process (``time.process_time``), wall seconds, and its peak RSS;
* ``walrusfs read BLOB_ID -o FILE`` from that tree: CPU (utime + stime) and peak RSS from
  ``wait4``.

Both versions read from the same peers, so peer-side changes are not measured; the
medians and the load average are printed. Made for issue 20's streaming read (verify a
row from its chunks, never join it), and kept for the next change to the read path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
READS = 3


def worker(committee: str, blob: str, reads: int) -> None:
    """Read ``blob`` once to warm up, then ``reads`` times; print CPU, wall and peak RSS as JSON."""
    import resource

    import trio

    from p2p.host import configure_logging, running_host
    from walrusfs.allocator import tune_allocator
    from walrusfs.client.blob import Client
    from walrusfs.core.committee import parse_committee
    from walrusfs.core.metadata import BlobId

    configure_logging(50)
    tune_allocator()
    parsed = parse_committee(Path(committee).read_text())

    async def main() -> tuple[float, float, int]:
        async with running_host(os.urandom(32)) as host:
            client = Client(host, parsed)
            blob_id = BlobId.parse(blob)
            await client.health()
            length = len(await client.read(blob_id))
            cpu = wall = 0.0
            for _ in range(reads):
                started, cpu_started = time.perf_counter(), time.process_time()
                data = await client.read(blob_id)
                cpu += time.process_time() - cpu_started
                wall += time.perf_counter() - started
                assert len(data) == length
                del data
            return cpu / reads, wall / reads, length

    cpu, wall, length = trio.run(main)
    print(json.dumps({"cpu": cpu, "wall": wall, "mb": length / 1e6,
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def sample(tree: Path, committee: Path, blob: str, out: Path) -> dict[str, float]:
    """One worker and one CLI read with ``tree``'s code."""
    # Run in the tree: `python -m` puts the working directory before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(tree), "WALRUSFS_COMMITTEE": str(committee)}
    job = json.dumps([str(committee), blob, READS])  # one argument: a blob ID may start with '-'
    done = subprocess.run([PYTHON, __file__, f"--worker={job}"], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cli = subprocess.Popen([PYTHON, "-m", "walrusfs", "read", blob, "-o", str(out)], env=env, cwd=tree,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(cli.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"walrusfs read ({tree}) failed: {cli.stderr.read().decode() if cli.stderr else ''}")
    if cli.stderr is not None:
        cli.stderr.close()
    result.update(cli_cpu=usage.ru_utime + usage.ru_stime, cli_rss=usage.ru_maxrss / 1024)
    return result


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("old", nargs="?", type=Path, help="the tree to compare against")
    parser.add_argument("new", nargs="?", type=Path, default=HERE, help="the tree to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size-mib", type=int, default=64)
    args = parser.parse_args()
    if args.worker:
        committee, blob, reads = json.loads(args.worker)
        worker(committee, blob, reads)
        return 0
    if args.old is None:
        parser.error("name the tree to compare against")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    env = {**os.environ, "PYTHONPATH": str(trees["new"])}
    with tempfile.TemporaryDirectory(prefix="walrusfs-readvs-") as tmp:
        directory = Path(tmp) / "devnet"
        committee = directory / "committee.toml"
        subprocess.run([PYTHON, "-m", "walrusfs", "devnet", "up", "--peers", "7", str(directory)], env=env, check=True,
                       cwd=trees["new"], stdout=subprocess.DEVNULL)
        try:
            source = Path(tmp) / "blob"
            source.write_bytes(os.urandom(args.size_mib << 20))
            stored = subprocess.run([PYTHON, "-m", "walrusfs", "store", str(source), "--json"],
                                    env={**env, "WALRUSFS_COMMITTEE": str(committee)}, cwd=trees["new"],
                                    capture_output=True, text=True, check=True)
            blob = json.loads(stored.stdout)["blobId"]
            results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for round_ in range(args.rounds):
                order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
                for name in order:
                    results[name].append(sample(trees[name], committee, blob, Path(tmp) / "out"))
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run([PYTHON, "-m", "walrusfs", "devnet", "down", str(directory)], env=env,
                           cwd=trees["new"], stdout=subprocess.DEVNULL)
    mb = results["new"][0]["mb"]
    print(f"{args.size_mib} MiB blob, 7 peers, {args.rounds} rounds alternating; medians; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| tree | Client.read CPU ms/MB | wall s | worker peak RSS MiB | `walrusfs read` CPU s | its peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name in ("old", "new"):
        rows = results[name]

        def median(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(row[key] for row in rows)

        print(f"| {name} ({trees[name]}) | {1000 * median('cpu') / mb:.2f} | {median('wall'):.3f} | {median('rss'):.0f} "
              f"| {median('cli_cpu'):.2f} | {median('cli_rss'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
