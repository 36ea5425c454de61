"""Helpers for tests of walrusfs and of code built on it (the way ``trio.testing`` ships its own).

Nothing here is used by the product itself.
"""

from __future__ import annotations

from dataclasses import replace

from .core.config import EncodingConfig
from .core.metadata import BlobMetadata
from .core.redstuff import EncodedBlob, Sliver, encode_blob, sliver_root


def encode_inconsistent(data: bytes, config: EncodingConfig, pair_index: int) -> EncodedBlob:
    """Encode like a malicious writer: pair ``pair_index``'s primary sliver is tampered yet committed to.

    Every sliver verifies against the resulting metadata, but the tampered row disagrees with
    the columns, so rebuilding it from recovery symbols, or decoding through it, exposes the
    inconsistency.
    """
    honest = encode_blob(data, config)
    config.check_index(pair_index, "sliver pair")
    good = honest.pairs[pair_index].primary
    tampered = bytearray(good.data)
    tampered[0] ^= 0xFF
    bad = Sliver(good.axis, good.index, good.symbol_size, bytes(tampered))
    hashes = list(honest.metadata.hashes)
    hashes[pair_index] = replace(hashes[pair_index], primary=sliver_root(config, bad))
    metadata = BlobMetadata(honest.metadata.encoding_type, honest.metadata.unencoded_length, tuple(hashes))
    pairs = list(honest.pairs)
    pairs[pair_index] = replace(pairs[pair_index], primary=bad)
    return EncodedBlob(metadata, metadata.blob_id(), tuple(pairs))
