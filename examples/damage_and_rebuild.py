"""Encode a file with RedStuff, damage the stored slivers, heal them and read the file back.

Each shard is a directory holding one sliver pair per blob, as a storage peer would. The
example then wipes f shards, flips a byte in a sliver of another, detects the damage by
verifying every sliver against the blob's metadata, rebuilds each lost sliver from recovery
symbols with Merkle proofs (about one sliver's worth of data, not the blob), and finally
reads the file back from the surviving slivers, verified, comparing SHA-256.

    python examples/damage_and_rebuild.py [FILE] [--shards N] [--dir DIR]

Without FILE it makes a 3 MiB sample. Files larger than one blob are split into blobs.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
from pathlib import Path

from walrusfs.allocator import tune_allocator
from walrusfs.core.config import EncodingConfig
from walrusfs.core.errors import CodecError
from walrusfs.core.metadata import BlobMetadata
from walrusfs.core.recovery import needed_symbols, rebuild_sliver, recovery_symbol
from walrusfs.core.redstuff import (
    Axis,
    Sliver,
    encode_blob,
    pair_index,
    read_blob,
    verify_sliver,
)


def sliver_path(root: Path, shard: int, blob: str, axis: Axis) -> Path:
    """Where shard ``shard`` keeps its sliver of ``blob`` on ``axis``."""
    return root / f"shard-{shard:03d}" / f"{blob}.{axis.value}"


def load(root: Path, shard: int, blob: str, axis: Axis, index: int, symbol_size: int) -> Sliver | None:
    """The stored sliver, or None when it is missing."""
    path = sliver_path(root, shard, blob, axis)
    if not path.exists():
        return None
    return Sliver(axis, index, symbol_size, path.read_bytes())


def main() -> int:
    """Run the demonstration; exit non-zero if anything does not come back bit-exact."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, help="file to store (default: a 3 MiB sample)")
    parser.add_argument("--shards", type=int, default=7, help="number of shards, n >= 4 (default 7)")
    parser.add_argument("--dir", type=Path, help="where the shards live (default: a temporary directory)")
    args = parser.parse_args()
    tune_allocator()
    try:
        config = EncodingConfig(args.shards)
    except CodecError as exc:
        parser.error(str(exc))
    data = args.file.read_bytes() if args.file else random.Random(7).randbytes(3 << 20)
    root = args.dir or Path(tempfile.mkdtemp(prefix="walrusfs-demo-"))
    n, f = config.n_shards, config.f
    step = max(1, config.max_blob_size)
    chunks = [data[k : k + step] for k in range(0, len(data), step)] or [b""]
    print(f"storing {len(data)} bytes as {len(chunks)} blob(s) on {n} shards (f = {f}) in {root}")

    # Write: encode each blob and give sliver pair i to the shard the blob ID assigns.
    blobs: list[tuple[str, BlobMetadata]] = []
    for chunk in chunks:
        encoded = encode_blob(chunk, config)
        blob = str(encoded.blob_id)
        for pair in encoded.pairs:
            shard = encoded.blob_id.shard_for_pair(pair.index, n)
            for sliver in (pair.primary, pair.secondary):
                path = sliver_path(root, shard, blob, sliver.axis)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(sliver.data)
        blobs.append((blob, encoded.metadata))
        print(f"  blob {blob}: {len(chunk)} bytes, symbol size {config.symbol_size(len(chunk))}")

    # Damage: wipe f shards entirely and flip one byte in a sliver on another shard.
    rng = random.Random(len(data))
    wiped = rng.sample(range(n), f)
    for shard in wiped:
        shutil.rmtree(root / f"shard-{shard:03d}", ignore_errors=True)
    rotten = rng.choice([k for k in range(n) if k not in wiped])
    victim = sliver_path(root, rotten, blobs[0][0], Axis.PRIMARY)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    victim.write_bytes(bytes(raw))
    print(f"damage: wiped shards {sorted(wiped)}, flipped a byte of shard {rotten}'s primary sliver")

    # Heal: every shard checks its slivers and rebuilds the missing or corrupt ones.
    healed = wiped_download = 0
    for blob, metadata in blobs:
        blob_id = metadata.blob_id()
        size = metadata.symbol_size
        for shard in range(n):
            pair = blob_id.pair_for_shard(shard, n)
            for axis in Axis:
                index = pair_index(axis, pair, n)
                sliver = load(root, shard, blob, axis, index, size)
                try:
                    if sliver is None:
                        raise CodecError("missing")
                    verify_sliver(metadata, sliver)
                    continue
                except CodecError as problem:
                    reason = str(problem) if sliver is not None else "missing"
                # Ask the other shards for symbol `index` of their slivers on the other axis.
                other = Axis.SECONDARY if axis is Axis.PRIMARY else Axis.PRIMARY
                symbols = []
                for helper in range(n):
                    if helper == shard or len(symbols) == needed_symbols(config, axis):
                        continue
                    source_index = pair_index(other, blob_id.pair_for_shard(helper, n), n)
                    source = load(root, helper, blob, other, source_index, size)
                    if source is None:
                        continue
                    symbol = recovery_symbol(config, source, index)
                    if shard in wiped:
                        wiped_download += len(symbol.data) + 32 * len(symbol.proof)
                    symbols.append(symbol)
                rebuilt = rebuild_sliver(metadata, axis, index, symbols)
                path = sliver_path(root, shard, blob, axis)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(rebuilt.data)
                healed += 1
                if sliver is not None:
                    print(f"  shard {shard}: {axis.value} sliver {index} of {blob[:10]}... was corrupt ({reason}); rebuilt")
    pair_bytes = sum(config.encoded_slivers_length(len(c)) // n for c in chunks)
    per_shard = wiped_download / max(len(wiped), 1)
    print(
        f"healed {healed} slivers; each wiped shard downloaded {per_shard:.0f} bytes of symbols and "
        f"proofs for its {pair_bytes} bytes of sliver pairs ({per_shard / max(len(data), 1):.2f}x the "
        f"file; re-downloading the file would be 1x per shard)"
    )

    # Read: any p primary slivers per blob, verified, decoded and consistency-checked.
    out = bytearray()
    for blob, metadata in blobs:
        blob_id = metadata.blob_id()
        size = metadata.symbol_size
        readers = rng.sample(range(n), config.primary_source_symbols)
        slivers = [load(root, s, blob, Axis.PRIMARY, blob_id.pair_for_shard(s, n), size) for s in readers]
        out += read_blob(metadata, [s for s in slivers if s is not None])
    ok = hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    print(f"read back {len(out)} bytes from shards chosen at random: sha256 {'matches' if ok else 'DIFFERS'}")
    if not args.dir:
        shutil.rmtree(root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
