"""Encoding parameters derived from the shard count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walrusfs.core.config import MAX_SYMBOL_SIZE, WALRUS_MAX_SYMBOL_SIZE, EncodingConfig
from walrusfs.core.errors import BlobTooLarge, CodecError, InvalidParameter


@pytest.mark.parametrize(
    ("n", "f", "p", "s"),
    [(4, 1, 2, 3), (7, 2, 3, 5), (10, 3, 4, 7), (13, 4, 5, 9), (100, 33, 34, 67), (1000, 333, 334, 667), (5, 1, 3, 4)],
)
def test_source_symbol_counts(n: int, f: int, p: int, s: int) -> None:
    config = EncodingConfig(n)
    assert (config.f, config.primary_source_symbols, config.secondary_source_symbols) == (f, p, s)
    assert config.quorum == 2 * f + 1
    assert config.validity_threshold == f + 1


@given(st.integers(4, 1200), st.integers(0, 10**10), st.sampled_from([WALRUS_MAX_SYMBOL_SIZE, MAX_SYMBOL_SIZE]))
def test_symbol_size_is_smallest_even_size_that_fits(n: int, length: int, cap: int) -> None:
    config = EncodingConfig(n, cap)
    if length > config.max_blob_size:
        with pytest.raises(BlobTooLarge):
            config.symbol_size(length)
        return
    size = config.symbol_size(length)
    assert size % 2 == 0 and 2 <= size <= cap
    assert size * config.source_symbols >= length
    assert size == 2 or (size - 2) * config.source_symbols < length


def test_reference_sizes() -> None:
    config = EncodingConfig(10)
    assert config.symbol_size(33) == 2
    # Walrus's own test value for an empty blob on 10 shards.
    assert config.encoded_blob_length(0) == 10 * (2 * 11 + 10 * 64 + 32)
    assert EncodingConfig(7).walrus_max_blob_size == 15 * 65534
    assert EncodingConfig(7, WALRUS_MAX_SYMBOL_SIZE).max_blob_size == 15 * 65534
    assert EncodingConfig(7).max_blob_size == 15 * (32 << 20)


@pytest.mark.parametrize("bad", [0, 3, -2, 2.0, True])
def test_bad_symbol_caps_are_rejected(bad: object) -> None:
    with pytest.raises(InvalidParameter, match="maximum symbol size"):
        EncodingConfig(7, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 3, -1, 65536, 4.0, "7", True, None])
def test_bad_shard_counts_are_rejected_clearly(bad: object) -> None:
    with pytest.raises(InvalidParameter, match="shard count"):
        EncodingConfig(bad)  # type: ignore[arg-type]


def test_too_large_and_negative_lengths() -> None:
    config = EncodingConfig(4)
    with pytest.raises(BlobTooLarge, match="exceeds the maximum"):
        config.symbol_size(config.max_blob_size + 1)
    with pytest.raises(InvalidParameter, match="non-negative"):
        config.symbol_size(-1)
    with pytest.raises(CodecError):
        config.check_index(4)
