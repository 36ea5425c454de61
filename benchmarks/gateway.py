"""Gateway benchmark: store and read through `walrusfs gateway` against the `walrusfs` CLI, in one run.

Run ``python benchmarks/gateway.py``. It starts a devnet of 7 ``walrusfs peer`` processes
on 127.0.0.1 (in a temporary directory) and one ``walrusfs gateway``, then alternates, for
each size and round, the same operation both ways (which goes first alternates too):

* store: ``walrusfs store FILE`` against ``curl -T FILE $GATEWAY/v1/blobs?force=true``, each
  with fresh random bytes (a blob the peers already hold would be cheaper to store again);
* read: ``walrusfs read BLOB_ID -o FILE`` against ``curl -o FILE $GATEWAY/v1/blobs/BLOB_ID``
  of the same blob.

Times are wall-clock per command, as a user sees them: the CLI's include starting Python and
a libp2p host (a second or two on a loaded machine), which a running gateway has paid once.
So the same operations also run in this process on a warm ``Client`` (what both use, with
no process start and no HTTP): the gateway / client ratio is what HTTP and the gateway cost.
Throughput is blob bytes per second over the median of the rounds. Target: gateway >= 0.8x
the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

SIZES = {"1 MiB": 1 << 20, "16 MiB": 16 << 20, "64 MiB": 64 << 20}
TARGET = 0.8
EXE = shutil.which("walrusfs", path=str(Path(sys.executable).parent)) or "walrusfs"


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds ``args`` took, and its stdout; raises if it failed."""
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed, result.stdout


async def arun(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """``run`` from trio (the client's host keeps running meanwhile)."""
    return await trio.to_thread.run_sync(run, args, env)


def start_gateway(committee: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """A gateway on a free port, and its URL once it serves."""
    proc = subprocess.Popen([EXE, "gateway", "--bind", "127.0.0.1:0", "--committee", str(committee),
                             "--max-body-size", "128MiB"], stdout=subprocess.PIPE, stderr=open(log, "w"),
                            stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the gateway prints its address once it accepts requests
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"the gateway did not start: {log.read_text()}")
    return proc, line.split("http://", 1)[1].split()[0].rstrip(",")


async def bench(root: Path, env: dict[str, str], url: str, sizes: dict[str, int], rounds: int) -> list[tuple]:
    """Every operation, alternated; (size, op, MB/s for the CLI, gateway and client, medians)."""
    from p2p.host import configure_logging, running_host
    from walrusfs.client.blob import Client
    from walrusfs.client.writer import load_authority
    from walrusfs.core.committee import parse_committee
    from walrusfs.core.metadata import BlobId

    configure_logging(logging.CRITICAL)
    committee_path = Path(env["WALRUSFS_COMMITTEE"])
    committee = parse_committee(committee_path.read_text())
    results = []
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=load_authority(committee_path))
        for name, size in sizes.items():
            times: dict[str, list[float]] = {f"{way} {op}": [] for way in ("cli", "gateway", "client")
                                             for op in ("store", "read")}
            for k in range(rounds):
                order = [["cli", "gateway", "client"], ["gateway", "client", "cli"], ["client", "cli", "gateway"]][k % 3]
                blob_id = ""
                for way in order:
                    data = os.urandom(size)  # fresh bytes: the peers hold none of it yet
                    source = root / f"{way}-{k}.bin"
                    source.write_bytes(data)
                    if way == "cli":
                        seconds, out = await arun([EXE, "store", str(source), "--json"], env)
                        blob_id = json.loads(out)["blobId"]
                    elif way == "gateway":
                        seconds, out = await arun(["curl", "-sS", "-f", "-T", str(source),
                                                   f"{url}/v1/blobs?force=true"], env)
                        blob_id = json.loads(out)["newlyCreated"]["blobObject"]["blobId"]
                    else:
                        started = time.perf_counter()
                        blob_id = str((await client.store(data)).blob_id)
                        seconds = time.perf_counter() - started
                    times[f"{way} store"].append(seconds)
                    source.unlink()
                for way in order:
                    out_file = root / "read.out"
                    if way == "cli":
                        seconds, _ = await arun([EXE, "read", blob_id, "-o", str(out_file)], env)
                    elif way == "gateway":
                        seconds, _ = await arun(["curl", "-sS", "-f", "-o", str(out_file),
                                                 f"{url}/v1/blobs/{blob_id}"], env)
                    else:
                        started = time.perf_counter()
                        data = await client.read(BlobId.parse(blob_id))
                        await trio.Path(out_file).write_bytes(data)  # as the others write it
                        seconds = time.perf_counter() - started
                        del data
                    assert out_file.stat().st_size == size
                    out_file.unlink()
                    times[f"{way} read"].append(seconds)
            for op in ("store", "read"):
                medians = [statistics.median(times[f"{way} {op}"]) for way in ("cli", "gateway", "client")]
                results.append((name, op, *(size / m / 1e6 for m in medians), *medians))
    return results


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per size and operation (default 3).")
    parser.add_argument("--sizes", default=",".join(SIZES), help="Comma-separated subset of: " + ", ".join(SIZES))
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("the benchmark drives the gateway with curl; install it")
    sizes = {name: SIZES[name.strip()] for name in args.sizes.split(",")}
    with tempfile.TemporaryDirectory(prefix="walrusfs-gateway-bench-") as tmp:
        root = Path(tmp)
        net = root / "net"
        env = {**os.environ, "WALRUSFS_COMMITTEE": str(net / "committee.toml")}
        run([EXE, "devnet", "up", "--peers", "7", str(net)], env)
        gateway = None
        try:
            gateway, address = start_gateway(net / "committee.toml", root / "gateway.log")
            url = f"http://{address}"
            print(f"7 peers, gateway at {url}; {args.rounds} rounds; load average {os.getloadavg()[0]:.2f} at start")
            results = trio.run(bench, root, env, url, sizes, args.rounds)
            print(f"load average {os.getloadavg()[0]:.2f} at end")
            print(f"{'size':>7} {'op':>6} {'CLI MB/s':>9} {'gateway MB/s':>13} {'client MB/s':>12} "
                  f"{'gw/CLI':>7} {'gw/client':>9}   median s (CLI / gateway / client)")
            for name, op, cli_rate, gw_rate, client_rate, cli, gw, direct in results:
                mark = "" if gw_rate / cli_rate >= TARGET else f"  below the {TARGET}x target"
                print(f"{name:>7} {op:>6} {cli_rate:9.1f} {gw_rate:13.1f} {client_rate:12.1f} "
                      f"{gw_rate / cli_rate:6.2f}x {gw_rate / client_rate:8.2f}x   {cli:.2f} / {gw:.2f} / {direct:.2f}{mark}")
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(15)
            subprocess.run([EXE, "devnet", "down", str(net)], capture_output=True, env=env)


if __name__ == "__main__":
    main()
