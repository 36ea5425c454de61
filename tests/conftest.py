"""Shared fixtures and strategies for the walrusfs tests."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from walrusfs.core.config import EncodingConfig

#: The shard counts the codec properties run for (n = 3f + 1 and not).
SHARD_COUNTS = (4, 7, 10, 13, 31, 100)
#: "Several MiB", capped by what one blob can hold for small n.
LARGEST_LENGTH = 6 * 1024 * 1024


def blob_bytes(seed: int, length: int) -> bytes:
    """Deterministic pseudo-random blob content (Hypothesis shrinks the seed, not megabytes)."""
    return random.Random(seed).randbytes(length)


@st.composite
def blob_lengths(draw: st.DrawFn, n: int) -> int:
    """Lengths from 0 bytes to several MiB, biased towards small and boundary lengths."""
    config = EncodingConfig(n)
    largest = min(config.max_blob_size, LARGEST_LENGTH)
    whole_matrix = config.source_symbols
    length = draw(
        st.one_of(
            st.integers(0, 200),
            st.integers(0, largest),
            # Around multiples of the matrix size, where the symbol size steps up.
            st.integers(1, 64).flatmap(lambda k: st.integers(k * whole_matrix - 3, k * whole_matrix + 3)),
            st.just(largest),
        )
    )
    return min(max(length, 0), largest)


@st.composite
def blobs(draw: st.DrawFn, n: int) -> bytes:
    """Pseudo-random blobs of the lengths ``blob_lengths`` picks."""
    return blob_bytes(draw(st.integers(0, 2**32)), draw(blob_lengths(n)))
