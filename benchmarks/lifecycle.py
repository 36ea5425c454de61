"""Lifecycle benchmark: does a volume's footprint on the peers follow its working set?

Run ``python benchmarks/lifecycle.py [--size MiB] [--rewrites N] [--peers N]``. It starts a
devnet with short storage epochs and a mount with a short trash time, writes a working set
of SIZE MiB (files of --file-mib), then rewrites every file with fresh random bytes N times
(fsync after each file: certified and in the log), and samples the peers' stored bytes
(sum of every peer's sliver pairs, from ``walrusfs health``) every few seconds throughout.
After the last rewrite it waits for the trash time to pass and the releases to reach the
peers, then prints the stored bytes against the working set's encoded size (the sliver
pairs its chunks need: what the peers must hold, nothing more).

Target (issue 16): after the trash time, stored bytes <= 1.1x the working set's encoded size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mounting import Mount, create_volume, fsync  # noqa: E402
from tests.test_network import Devnet, walrusfs  # noqa: E402
from walrusfs.core.committee import parse_committee  # noqa: E402

CHUNK = 4 << 20  # the mount's default chunk size


def stored_bytes(committee: Path) -> int | None:
    """Bytes of sliver pairs all peers hold together (None if a peer did not answer)."""
    result = walrusfs("health", "--json", committee=committee, timeout=60)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        return None
    values = [peer.get("stored_bytes") for peer in report]
    if any(not isinstance(v, int) for v in values):
        return None
    return sum(values)


def main() -> None:
    """Run the workload and print stored bytes over time against the working set's encoded size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="working set in MiB (default 1024)")
    parser.add_argument("--file-mib", type=int, default=64, help="size of each file in MiB (default 64)")
    parser.add_argument("--rewrites", type=int, default=5, help="times every file is rewritten (default 5)")
    parser.add_argument("--peers", type=int, default=4, help="devnet peers (default 4)")
    parser.add_argument("--epoch-seconds", type=int, default=30, help="storage epoch length (default 30)")
    parser.add_argument("--trash-seconds", type=int, default=20, help="mount's trash time (default 20)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples (default 5)")
    args = parser.parse_args()

    files = max(1, args.size // args.file_mib)
    file_bytes = args.file_mib << 20
    with tempfile.TemporaryDirectory(prefix="walrusfs-lifecycle-") as tmp:
        root = Path(tmp)
        net = Devnet(root / "net", args.peers, None, "--epoch-seconds", str(args.epoch_seconds))
        mount: Mount | None = None
        samples: list[tuple[float, int, str]] = []
        stop = threading.Event()
        phase = ["start"]
        started = time.monotonic()
        try:
            config = parse_committee(net.committee.read_text()).config
            # What the working set needs on the peers: every chunk's sliver pairs.
            chunks = [min(CHUNK, file_bytes - k) for k in range(0, file_bytes, CHUNK)]
            target = files * sum(config.encoded_slivers_length(c) for c in chunks)
            create_volume(root / "config", "vol")
            os.environ["WALRUSFS_TRASH_SECONDS"] = str(args.trash_seconds)
            mount = Mount(net.committee, root / "mnt", "vol", root / "config", root / "state" / "m").start()

            def sampler() -> None:
                while not stop.wait(args.sample):
                    value = stored_bytes(net.committee)
                    if value is not None:
                        samples.append((time.monotonic() - started, value, phase[0]))

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            written = 0
            for round_ in range(args.rewrites + 1):
                phase[0] = "write" if round_ == 0 else f"rewrite {round_}"
                t0 = time.monotonic()
                for k in range(files):
                    path = mount.path / f"file-{k:04d}"
                    with open(path, "wb") as f:
                        for _ in range(args.file_mib):
                            f.write(os.urandom(1 << 20))
                    fsync(path)
                    written += file_bytes
                took = time.monotonic() - t0
                print(f"{phase[0]}: {files} files, {files * args.file_mib} MiB in {took:.0f} s "
                      f"({files * file_bytes / took / 1e6:.1f} MB/s)", flush=True)
            mount.sync()
            phase[0] = "after"
            # The last rewrite's old versions leave the trash after the trash time; releases
            # then reach every peer within an epoch or so.
            deadline = time.monotonic() + args.trash_seconds + 4 * args.epoch_seconds + 120
            final = stored_bytes(net.committee)
            while time.monotonic() < deadline:
                final = stored_bytes(net.committee)
                if final is not None and final <= 1.05 * target:
                    break
                time.sleep(args.sample)
            stop.set()
            thread.join(timeout=60)
        finally:
            stop.set()
            if mount is not None:
                mount.stop()
            net.down()

    print()
    print(f"working set: {files} files x {args.file_mib} MiB = {files * args.file_mib} MiB, rewritten "
          f"{args.rewrites} times ({written / (1 << 20):.0f} MiB written); n = {args.peers}, epochs of "
          f"{args.epoch_seconds} s, trash time {args.trash_seconds} s")
    print(f"encoded working set (sliver pairs its chunks need): {target / 1e6:.1f} MB")
    print()
    print("| time s | phase | peers' stored MB | / encoded working set |")
    print("|---|---|---|---|")
    step = max(1, len(samples) // 40)
    for t, value, name in samples[::step] + samples[-1:]:
        print(f"| {t:.0f} | {name} | {value / 1e6:.1f} | {value / target:.2f}x |")
    peak = max((v for _, v, _ in samples), default=0)
    print()
    if final is None:
        print("final: a peer did not answer")
        raise SystemExit(1)
    ratio = final / target
    print(f"peak stored {peak / 1e6:.1f} MB ({peak / target:.2f}x); after the trash time {final / 1e6:.1f} MB = "
          f"{ratio:.2f}x the encoded working set (target <= 1.10x): {'met' if ratio <= 1.1 else 'NOT met'}")


if __name__ == "__main__":
    main()
