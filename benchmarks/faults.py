"""Fault benchmark: client and mount latency with all peers up vs with f of n peers stalled.

Run ``python benchmarks/faults.py`` (``--quick`` for a short try). It starts a devnet of
7 ``walrusfs peer`` processes on 127.0.0.1 (n = 7, so f = 2), a volume and a mount of it,
all in a temporary directory (or ``--dir``), then measures the median wall-clock latency of:

* ``walrusfs store`` of a fresh 1 MiB file (``--runs``, default 5) and of a fresh 64 MiB
  file (``--big-runs``, default 3): encode, upload, 2f + 1 confirmations, certificate;
* ``walrusfs read`` of the 1 MiB blob stored first (metadata and verified slivers);
* fsync of a small (4 KiB) file just written in the mount (only the fsync is timed; it
  returns once the file is certified and its namespace entry is in the log);
* ``walrusfs health`` (it exits 1 while a peer is unreachable: only its time counts).

First with every peer up, then with f = 2 peers (``--stalled``, default "5,6") stopped
with SIGSTOP: their processes and sockets stay open but never answer, which is harder on
a client than a crashed peer (no connection refused, only silence). BFT storage should
not care: a quorum of 2f + 1 is still up, so every operation should cost about the same.
The target is a stalled / all-up ratio <= 1.5 for every operation.

Each CLI call is a subprocess with ``WALRUSFS_COMMITTEE`` set and a timeout (``--timeout``,
default 300 s); fsync runs in a child process under the same timeout. A call that times
out is shown as '>TIMEOUT' (ratio 'inf'), and the remaining runs of that operation in that
phase are skipped (counted as timeouts) so a hang costs one timeout, not ``runs`` of them.
The stalled peers are always resumed (SIGCONT), the mount unmounted and the devnet
stopped, whatever happens. The script exits 0 whether or not the target is met.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mounting import Mount  # noqa: E402  (the tests' mount helper, as benchmarks/mount.py uses)
from walrusfs.devnet import running  # noqa: E402

EXE = shutil.which("walrusfs", path=str(Path(sys.executable).parent)) or "walrusfs"
PEERS = 7
F = (PEERS - 1) // 3
TARGET_RATIO = 1.5
SMALL = 1 << 20
BIG = 64 << 20
FSYNC_BYTES = 4096
TIMEOUT = math.inf  # a timed-out sample

# Child process for the fsync measurement: write the file, then time fsync alone.
FSYNC_CHILD = """
import os, sys, time
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
try:
    os.write(fd, os.urandom(size))
    start = time.perf_counter()
    os.fsync(fd)
    print(time.perf_counter() - start)
finally:
    os.close(fd)
"""


class Failed(Exception):
    """A walrusfs command failed (not a timeout)."""


def cli(args: list[str], env: dict[str, str], timeout: float, check: bool = True) -> tuple[float, str]:
    """Run walrusfs with ``args``; return (seconds, stdout), seconds = inf on timeout."""
    start = time.perf_counter()
    try:
        done = subprocess.run([EXE, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return TIMEOUT, ""
    seconds = time.perf_counter() - start
    if check and done.returncode != 0:
        raise Failed(f"walrusfs {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def random_file(path: Path, size: int) -> Path:
    """Write ``size`` random bytes to ``path`` (fresh content, so no store is a repeat)."""
    with open(path, "wb") as f:
        f.writelines(os.urandom(min(1 << 20, size - offset)) for offset in range(0, size, 1 << 20))
    return path


def fsync_seconds(path: Path, timeout: float) -> float:
    """Seconds one fsync of a freshly written 4 KiB file at ``path`` takes (inf on timeout)."""
    try:
        done = subprocess.run([sys.executable, "-c", FSYNC_CHILD, str(path), str(FSYNC_BYTES)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return TIMEOUT
    if done.returncode != 0:
        raise Failed(f"fsync of {path} failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout)


def sample(name: str, runs: int, measure: Callable[[int], float]) -> list[float]:
    """Call ``measure(run)`` ``runs`` times; after a timeout the remaining runs count as timeouts."""
    times: list[float] = []
    for k in range(runs):
        seconds = measure(k)
        times.append(seconds)
        shown = ">TIMEOUT" if seconds == TIMEOUT else f"{seconds:.3f} s"
        print(f"    {name} run {k + 1}/{runs}: {shown}", file=sys.stderr, flush=True)
        if seconds == TIMEOUT:
            times += [TIMEOUT] * (runs - k - 1)
            break
    return times


def phase(label: str, work: Path, mount: Mount, env: dict[str, str], blob_id: str, runs: int, big_runs: int,
          timeout: float) -> dict[str, list[float]]:
    """Run every operation of one phase; return operation -> sampled seconds."""
    print(f"  phase: {label}", file=sys.stderr, flush=True)
    files = work / "files"
    files.mkdir(exist_ok=True)
    tag = label.split()[0]

    def store(size: int) -> Callable[[int], float]:
        """A measurement storing a fresh file of ``size`` bytes."""
        def measure(k: int) -> float:
            source = random_file(files / f"{tag}-{size}-{k}.bin", size)
            try:
                return cli(["store", "--json", str(source)], env, timeout)[0]
            finally:
                source.unlink()
        return measure

    def read(k: int) -> float:
        """Read the 1 MiB blob to a local file."""
        return cli(["read", blob_id, "-o", str(files / "read.bin")], env, timeout)[0]

    def fsync(k: int) -> float:
        """fsync a new small file in the mount."""
        return fsync_seconds(mount.path / f"{tag}-small-{k}.txt", timeout)

    def health(k: int) -> float:
        """walrusfs health (exit status ignored)."""
        return cli(["health"], env, timeout, check=False)[0]

    results: dict[str, list[float]] = {}
    for name, count, measure in (
        ("store 1 MiB", runs, store(SMALL)),
        ("store 64 MiB", big_runs, store(BIG)),
        ("read 1 MiB", runs, read),
        ("fsync 4 KiB (mount)", runs, fsync),
        ("health", runs, health),
    ):
        try:
            results[name] = sample(name, count, measure)
        except Failed as error:
            print(f"    {name}: {error}", file=sys.stderr, flush=True)
            results[name] = []
    return results


def median(times: list[float]) -> float | None:
    """Median of the samples (inf if timeouts dominate), None if the operation failed."""
    return statistics.median(times) if times else None


def cell(seconds: float | None) -> str:
    """A table cell for a median."""
    if seconds is None:
        return "FAILED"
    return ">TIMEOUT" if seconds == TIMEOUT else f"{seconds:.3f}"


def ratio(up: float | None, stalled: float | None) -> float | None:
    """stalled / all-up, inf when the stalled phase timed out, None when it cannot be computed."""
    if up is None or stalled is None or up == TIMEOUT:
        return None
    return TIMEOUT if stalled == TIMEOUT else stalled / up


def signal_peers(pids: dict[int, int], signum: signal.Signals) -> None:
    """Send ``signum`` to each peer process, ignoring ones that are gone."""
    for pid in pids.values():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each small operation (default 5)")
    parser.add_argument("--big-runs", type=int, default=3, help="runs of the 64 MiB store (default 3)")
    parser.add_argument("--quick", action="store_true", help="a short try: --runs 2 --big-runs 1")
    parser.add_argument("--stalled", default="5,6", help="comma-separated peer indices to SIGSTOP (default 5,6)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a call counts as hung (300)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.big_runs = 2, 1
    stalled = sorted({int(i) for i in args.stalled.split(",") if i.strip()})
    if len(stalled) > F or not all(0 <= i < PEERS for i in stalled):
        parser.error(f"--stalled needs at most f = {F} distinct indices in 0..{PEERS - 1}")

    work = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="walrusfs-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    net = work / "net"
    committee = net / "committee.toml"
    config = work / "config"
    env = {**os.environ, "WALRUSFS_COMMITTEE": str(committee), "WALRUSFS_CONFIG_DIR": str(config)}
    mount: Mount | None = None
    paused: dict[int, int] = {}
    devnet_started = False
    try:
        print(f"starting {PEERS} peers in {net} ...", file=sys.stderr, flush=True)
        devnet_started = True
        cli(["devnet", "up", "--peers", str(PEERS), str(net)], env, args.timeout)
        cli(["volume", "create", "bench", "--json"], env, args.timeout)
        mount = Mount(committee, work / "mnt", "bench", config, work / "state" / "bench").start()
        first = random_file(work / "first.bin", SMALL)
        seconds, out = cli(["store", "--json", str(first)], env, args.timeout)
        if seconds == TIMEOUT:
            raise SystemExit("storing the 1 MiB blob to read timed out with every peer up")
        blob_id = json.loads(out)["blobId"]

        up = phase("all up", work, mount, env, blob_id, args.runs, args.big_runs, args.timeout)

        pids = running(net)
        missing = [i for i in stalled if i not in pids]
        if missing:
            raise SystemExit(f"peers {missing} are not running; cannot stall them")
        paused = {i: pids[i] for i in stalled}
        signal_peers(paused, signal.SIGSTOP)
        print(f"  stalled peers {stalled} (pids {sorted(paused.values())}) with SIGSTOP", file=sys.stderr, flush=True)
        try:
            down = phase(f"{len(stalled)} stalled", work, mount, env, blob_id, args.runs, args.big_runs,
                         args.timeout)
        finally:
            signal_peers(paused, signal.SIGCONT)
            paused = {}
    finally:
        signal_peers(paused, signal.SIGCONT)
        if mount is not None:
            mount.stop()
        if devnet_started:
            subprocess.run([EXE, "devnet", "down", str(net)], capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"walrusfs under faults: n = {PEERS} peers on 127.0.0.1 (f = {F}), {os.cpu_count()} cores; "
          f"stalled (SIGSTOP): peers {', '.join(map(str, stalled))}; runs {args.runs} "
          f"(64 MiB: {args.big_runs}), timeout {args.timeout:g} s")
    print()
    print(f"| operation | all up (median s) | {len(stalled)} stalled (median s) | ratio |")
    print("|---|---|---|---|")
    ok = True
    for name in up:
        a, b = median(up[name]), median(down[name])
        r = ratio(a, b)
        ok &= r is not None and r <= TARGET_RATIO
        shown = "n/a" if r is None else ("inf" if r == TIMEOUT else f"{r:.2f}")
        print(f"| {name} | {cell(a)} | {cell(b)} | {shown} |")
    print()
    print(f"target (every ratio <= {TARGET_RATIO}): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
