"""Codec benchmark: walrusfs RS2 encode+commit and decode against raw reed-solomon-leopard.

Run ``python benchmarks/codec.py``. Each case runs in a fresh subprocess so its peak memory is
its own. For every case, measured in the same run:

* raw: one primary-encoding pass of ``reed_solomon_leopard.encode`` over the same source
  data (every column of the message matrix expanded from p to n symbols), the floor that
  any RedStuff encoder pays;
* encode+commit: ``encode_blob`` (both dimensions, n*n leaf hashes, 2n Merkle trees,
  metadata, blob ID, sliver pairs), and ``compute_metadata`` alone (what ``blob-id`` runs);
* decode: ``decode_primary`` from p parity-only primary slivers (rows p..2p-1, so every
  column is Reed-Solomon decoded), and ``read_blob`` on them (sliver verification, decoding
  and the default consistency check);
* peak memory of one encode call: the peak of memory allocated through Python
  (tracemalloc: symbols, slivers, hashes) against the encoded size (all sliver pairs) of
  what one call encodes; and, for transparency, the growth of the process's peak RSS over
  the first (cold) call, which also counts thread stacks and allocator arenas.

The process runs with ``walrusfs.allocator.tune_allocator()``, as every ``walrusfs``
command does; ``--no-tune`` shows the glibc defaults.

Throughputs count unencoded blob bytes per second, best of ``--repeat`` runs.

Every case is one blob. At n = 7 a 64 MiB blob needs 4.5 MB symbols, beyond Walrus's
65534-byte cap (walrusfs raises the cap; see ``walrusfs.core.config``);
``--walrus-limits`` encodes each case as a sequence of blobs within Walrus's cap instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

CASES = {"n7": (7, 64 << 20), "n100": (100, 64 << 20), "n1000": (1000, 10 << 20)}
TARGET_N7_MBPS = 150.0
TARGET_N1000_BLOB_ID_S = 3.0
TARGET_MEMORY_RATIO = 3.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_case(name: str, repeat: int, tune: bool, walrus_limits: bool = False) -> dict[str, object]:
    """Measure one case in this process and return its numbers."""
    if tune:
        from walrusfs.allocator import tune_allocator

        tune_allocator()
    import reed_solomon_leopard as rs

    from walrusfs.core.config import WALRUS_MAX_SYMBOL_SIZE, EncodingConfig
    from walrusfs.core.redstuff import (
        compute_metadata,
        decode_primary,
        encode_blob,
        read_blob,
    )

    n, total = CASES[name]
    config = EncodingConfig(n, WALRUS_MAX_SYMBOL_SIZE) if walrus_limits else EncodingConfig(n)
    data = os.urandom(total)
    step = min(total, config.max_blob_size)
    blobs = [data[k : k + step] for k in range(0, total, step)]
    p, s = config.primary_source_symbols, config.secondary_source_symbols

    def raw() -> None:
        for blob in blobs:
            size = config.symbol_size(len(blob))
            padded = blob + bytes(p * s * size - len(blob))
            row = s * size
            for c in range(s):
                column = [padded[r * row + c * size : r * row + (c + 1) * size] for r in range(p)]
                rs.encode(column, n - p)

    before = _rss_bytes()
    encode_blob(blobs[0], config)
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    tracemalloc.start()
    encode_blob(blobs[0], config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    encoded_size = config.encoded_slivers_length(len(blobs[0]))

    def encode_all() -> None:
        for blob in blobs:  # one at a time, as a streaming writer would
            encode_blob(blob, config)

    def blob_ids() -> None:
        for blob in blobs:
            compute_metadata(blob, config).blob_id()

    t_raw = _best(raw, repeat)
    t_encode = _best(encode_all, repeat)
    t_blob_id = _best(blob_ids, repeat)

    encodings = [encode_blob(blob, config) for blob in blobs]
    parity = range(p, 2 * p)
    chosen = [[e.pairs[r].primary for r in parity] for e in encodings]

    def decode() -> None:
        for blob, slivers in zip(blobs, chosen):
            assert len(decode_primary(config, len(blob), slivers)) == len(blob)

    def verified_read() -> None:
        for e, slivers in zip(encodings, chosen):
            read_blob(e.metadata, slivers)

    assert b"".join(read_blob(e.metadata, c) for e, c in zip(encodings, chosen)) == data
    t_decode = _best(decode, repeat)
    t_read = _best(verified_read, repeat)
    mb = total / 1e6
    return {
        "case": name,
        "n": n,
        "bytes": total,
        "blobs": len(blobs),
        "symbol_size": config.symbol_size(len(blobs[0])),
        "raw_mbps": mb / t_raw,
        "encode_mbps": mb / t_encode,
        "blob_id_s": t_blob_id,
        "decode_mbps": mb / t_decode,
        "read_mbps": mb / t_read,
        "peak_bytes": peak,
        "rss_growth_bytes": rss_growth,
        "encoded_bytes": encoded_size,
    }


def main() -> int:
    """Run every case in a subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process, print JSON")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    parser.add_argument("--no-tune", action="store_true", help="keep glibc's default malloc thresholds")
    parser.add_argument("--walrus-limits", action="store_true", help="split data into blobs within Walrus's size cap")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeat, not args.no_tune, args.walrus_limits)))
        return 0
    results = []
    for name in CASES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--case", name, "--repeat", str(args.repeat)]
            + (["--no-tune"] if args.no_tune else [])
            + (["--walrus-limits"] if args.walrus_limits else []),
            check=True, capture_output=True, text=True,
        )
        results.append(json.loads(out.stdout))
    allocator = "glibc defaults" if args.no_tune else "walrusfs allocator tuning"
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, {allocator}")
    header = (
        "| n | data | blobs x symbol | raw RS MB/s | encode+commit MB/s (ratio to raw) | "
        "blob ID s | decode parity MB/s | verified read MB/s | peak mem / encoded | cold RSS growth |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in results:
        ratio = r["encode_mbps"] / r["raw_mbps"]
        print(
            f"| {r['n']} | {r['bytes'] >> 20} MiB | {r['blobs']} x {r['symbol_size']} B | "
            f"{r['raw_mbps']:.0f} | {r['encode_mbps']:.0f} ({ratio:.2f}x) | {r['blob_id_s']:.2f} | "
            f"{r['decode_mbps']:.0f} | {r['read_mbps']:.0f} | "
            f"{r['peak_bytes'] / 2**20:.0f} MiB / {r['encoded_bytes'] / 2**20:.0f} MiB = "
            f"{r['peak_bytes'] / r['encoded_bytes']:.2f}x | {r['rss_growth_bytes'] / 2**20:.0f} MiB |"
        )
    by = {r["case"]: r for r in results}
    checks = [
        (f"n=7 encode+commit >= {TARGET_N7_MBPS:.0f} MB/s", by["n7"]["encode_mbps"] >= TARGET_N7_MBPS),
        (f"n=1000 10 MiB blob ID < {TARGET_N1000_BLOB_ID_S:.0f} s", by["n1000"]["blob_id_s"] < TARGET_N1000_BLOB_ID_S),
        (
            f"peak memory < {TARGET_MEMORY_RATIO:.0f}x encoded size",
            all(r["peak_bytes"] < TARGET_MEMORY_RATIO * r["encoded_bytes"] for r in results),
        ),
    ]
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
