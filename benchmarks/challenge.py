"""Storage challenge benchmark: the time and bytes of a round over 1,000 blobs on 7 peers.

Run ``python benchmarks/challenge.py``. It starts a devnet of 7 ``walrusfs peer``
processes on 127.0.0.1 in a temporary directory, stores ``--blobs`` blobs of ``--blob-kib``
KiB each, then runs challenge rounds (``walrusfs audit start``) of the default sample (64
blobs) and of every blob, and prints per peer: the time until the round closed, the bytes
the round cost that peer (its proofs sent and their replies, the proofs it checked and its
replies, and the log entries it wrote, pushed to the 6 others), and that as a share of
the bytes it stores.

Target: bytes per peer below 1% of the data it stores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

TARGET = 0.01
HERE = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "walrusfs"]


def cli(*args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, check=False, cwd=HERE)
    if done.returncode not in ok:
        raise SystemExit(f"walrusfs {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


async def store(directory: Path, count: int, size: int) -> None:
    from p2p.host import configure_logging, running_host
    from walrusfs.client.blob import Client
    from walrusfs.client.writer import load_authority
    from walrusfs.core.committee import parse_committee

    configure_logging(logging.CRITICAL)
    committee = parse_committee((directory / "committee.toml").read_text())
    started = time.monotonic()
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=load_authority(directory / "committee.toml"))
        done = 0
        limiter = trio.Semaphore(4)

        async def one(k: int) -> None:
            nonlocal done
            async with limiter:
                await client.store(k.to_bytes(8, "little") + os.urandom(size - 8), grace=0.0)
            done += 1
            if done % 100 == 0:
                print(f"  stored {done}/{count} blobs ({time.monotonic() - started:.0f} s)", flush=True)

        async with trio.open_nursery() as nursery:
            for k in range(count):
                nursery.start_soon(one, k)


async def statuses(directory: Path) -> list[dict[str, Any]]:
    from p2p.host import configure_logging, running_host
    from walrusfs.client.blob import Client
    from walrusfs.core.committee import parse_committee

    configure_logging(logging.CRITICAL)
    committee = parse_committee((directory / "committee.toml").read_text())
    async with running_host(os.urandom(32)) as host:
        return await Client(host, committee).health()


def round_once(directory: Path, sample: int, env: dict[str, str]) -> None:
    started = time.monotonic()
    info = json.loads(cli("audit", "start", "--sample", str(sample), "--json", env=env, ok=(0, 1)))
    seconds = time.monotonic() - started
    for _ in range(10):  # a peer busy right after the round may miss one status call
        peers = trio.run(statuses, directory)
        if all(p["reachable"] for p in peers):
            break
        time.sleep(1)
    passed = sum(1 for row in info["peers"] if row["result"] == "passed")
    print(f"\nround {info['round']}: sample {info['sample']} blobs, {info['phase']} in {seconds:.2f} s "
          f"(audit start to close, as the CLI saw it), {passed}/{len(peers)} passed")
    print("peer  stored MB   proofs out/in   checks in/out   log out    total     share of stored")
    worst = 0.0
    for k, status in enumerate(peers):
        if not status["reachable"]:
            print(f"{k:>4}  unreachable: {status.get('error')}")
            continue
        traffic = (status.get("challenge") or {}).get("traffic") or {}
        total = sum(traffic.values())
        stored = status["stored_bytes"]
        share = total / stored if stored else 0.0
        worst = max(worst, share)
        print(f"{k:>4}  {stored / 1e6:>9.1f}   {traffic.get('proof_sent', 0):>6}/{traffic.get('proof_received', 0):<7}"
              f"  {traffic.get('check_received', 0):>6}/{traffic.get('check_sent', 0):<7}  {traffic.get('log_sent', 0):>7}"
              f"  {total:>8}  {share * 100:>8.3f}%")
    verdict = "met" if worst < TARGET else "NOT met"
    print(f"largest share: {worst * 100:.3f}% of stored bytes (target < {TARGET * 100:.0f}%: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=1000, help="blobs stored")
    parser.add_argument("--blob-kib", type=int, default=256, help="size of each blob in KiB")
    parser.add_argument("--samples", default="64,1000", help="comma-separated sample sizes, one round each")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    with tempfile.TemporaryDirectory(prefix="walrusfs-challenge-") as tmp:
        directory = Path(tmp) / "net"
        cli("devnet", "up", "--peers", "7", str(directory), env=env)
        env["WALRUSFS_COMMITTEE"] = str(directory / "committee.toml")
        try:
            print(f"storing {args.blobs} blobs of {args.blob_kib} KiB on 7 peers")
            trio.run(store, directory, args.blobs, args.blob_kib << 10)
            time.sleep(3)  # let the last certificates reach every log
            for sample in (int(s) for s in args.samples.split(",")):
                round_once(directory, sample, env)
        finally:
            cli("devnet", "down", str(directory))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
