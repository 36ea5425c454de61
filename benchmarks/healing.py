"""Healing benchmark: rebuild a wiped peer from recovery symbols vs re-downloading whole blobs.

Run ``python benchmarks/healing.py`` (``--gib`` sets how much the victim peer holds). It
starts a devnet of 7 ``walrusfs peer`` processes on 127.0.0.1 in a temporary directory,
stores blobs until one peer (the victim) holds about 1 GiB of sliver pairs, then:

* heal: stops the victim, wipes its data (identity kept), starts it, and times it until
  it holds a valid pair of every blob again; bytes are what the victim received while
  healing (symbols, proofs, headers and metadata), from its own counters;
* whole-blob baseline: re-downloads the same blobs whole (``Client.read``: metadata and p
  verified primary slivers, the least a one-dimensional repair could fetch) and re-encodes
  each to obtain the victim's pair, timed in this process.

Targets: >= 5x fewer bytes than whole-blob repair at n = 7, healing >= 20 MB/s of rebuilt
slivers. The byte ratio for one shard per peer is fixed by the code's shape: a pair is
p + s symbols and a blob p * s, so whole-blob repair fetches p*s/(p+s) times more. That
is 1.875 at n = 7; it passes 5 only from n = 22 on. The script prints it for several n.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

TARGET_RATIO = 5.0
TARGET_RATE = 20.0
HERE = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "walrusfs"]


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, check=False, cwd=HERE)
    if done.returncode != 0:
        raise SystemExit(f"walrusfs {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


async def healing_status(client: Any, victim: int) -> dict[str, Any] | None:
    status = (await client.health())[victim]
    return status.get("healing") if status["reachable"] else None


async def run(directory: Path, gib: float, blob_mib: int) -> None:
    from p2p.host import configure_logging, running_host
    from walrusfs.client.blob import Client
    from walrusfs.client.writer import load_authority
    from walrusfs.core.committee import parse_committee
    from walrusfs.core.redstuff import encode_blob

    configure_logging(logging.CRITICAL)  # a stopped peer is expected here, not news
    committee = parse_committee((directory / "committee.toml").read_text())
    config = committee.config
    blob_size = blob_mib << 20
    per_blob_pair = config.primary_sliver_size(blob_size) + config.secondary_sliver_size(blob_size)
    count = max(1, round(gib * (1 << 30) / per_blob_pair))
    victim = 3
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=load_authority(directory / "committee.toml"))
        print(f"storing {count} blobs of {blob_mib} MiB ({count * blob_size / 1e9:.2f} GB) on n = {committee.n_shards}...",
              flush=True)
        started = time.monotonic()
        blobs = []
        for k in range(count):
            data = os.urandom(blob_size)
            result = await client.store(data, grace=30.0, wait_logged=False)
            blobs.append(result.blob_id)
            print(f"  {k + 1}/{count} stored ({(k + 1) * blob_size / (time.monotonic() - started) / 1e6:.1f} MB/s)",
                  end="\r", flush=True)
        print()
        with trio.move_on_after(120):
            while True:
                state = await healing_status(client, victim)
                if state and state["certified"] == count and state["held"] == count:
                    break
                await trio.sleep(1)
        held = (await client.health())[victim]["stored_bytes"]
        print(f"victim peer {victim} holds {held / 2**30:.3f} GiB of sliver pairs; wiping it", flush=True)

        cli("devnet", "stop", str(directory), "--peer", str(victim))
        cli("devnet", "wipe", str(directory), "--peer", str(victim))
        # Timed from the restart command, so the peer's own start-up and log catch-up count.
        started = time.monotonic()
        cli("devnet", "start", str(directory), "--peer", str(victim))
        state = None
        with trio.move_on_after(3600):
            while True:
                state = await healing_status(client, victim)
                if state and state["certified"] == count and state["held"] == count and state["healing"] == 0:
                    break
                await trio.sleep(0.25)
        heal_seconds = time.monotonic() - started
        assert state is not None and state["held"] == count, f"victim did not heal: {state}"
        rebuilt = state["rebuilt_bytes"]
        heal_bytes = state["downloaded_bytes"] + state["metadata_bytes"]

        # Baseline: fetch every blob whole and re-encode it to get the victim's pair.
        received = 0

        def count_bytes(k: int) -> None:
            nonlocal received
            received += k

        started = time.monotonic()
        for blob_id in blobs:
            data = await client.read(blob_id, progress=count_bytes)
            await trio.to_thread.run_sync(encode_blob, data, config)
        whole_seconds = time.monotonic() - started

    print()
    print(f"{'repair of a wiped peer':<34}{'time':>10}{'downloaded':>14}{'rebuilt':>12}{'rate':>14}")
    print(f"{'RedStuff healing (recovery symbols)':<34}{heal_seconds:>9.1f}s{heal_bytes / 1e9:>12.3f}GB"
          f"{rebuilt / 1e9:>10.3f}GB{rebuilt / heal_seconds / 1e6:>10.1f} MB/s")
    print(f"{'whole-blob re-download':<34}{whole_seconds:>9.1f}s{received / 1e9:>12.3f}GB"
          f"{rebuilt / 1e9:>10.3f}GB{rebuilt / whole_seconds / 1e6:>10.1f} MB/s")
    ratio = received / heal_bytes
    print(f"bytes: whole-blob / healing = {ratio:.2f}x (target >= {TARGET_RATIO}x: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); healing downloads "
          f"{heal_bytes / rebuilt:.3f}x the slivers it rebuilds")
    rate = rebuilt / heal_seconds / 1e6
    print(f"healing throughput {rate:.1f} MB/s of rebuilt slivers (target >= {TARGET_RATE}: "
          f"{'met' if rate >= TARGET_RATE else 'NOT met'})")
    print("whole-blob / pair bytes by committee size (one shard per peer): "
          + ", ".join(f"n={n}: {ratio_for(n):.2f}x" for n in (4, 7, 10, 22, 31, 100, 1000)))


def ratio_for(n: int) -> float:
    """How many times more bytes whole-blob repair fetches than one sliver pair, for n shards."""
    f = (n - 1) // 3
    p, s = n - 2 * f, n - f
    return p * s / (p + s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of sliver pairs the victim holds")
    parser.add_argument("--blob-mib", type=int, default=32, help="size of each blob")
    parser.add_argument("--peers", type=int, default=7, help="committee size n (one shard per peer)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="walrusfs-heal-") as tmp:
        directory = Path(tmp) / "net"
        env = dict(os.environ, WALRUSFS_SCRUB_PAUSE="3600")
        os.environ.update(env)
        cli("devnet", "up", "--peers", str(args.peers), str(directory), env=env)
        try:
            trio.run(run, directory, args.gib, args.blob_mib)
        finally:
            cli("devnet", "down", str(directory))


if __name__ == "__main__":
    main()
