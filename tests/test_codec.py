"""RS2 encoding and decoding: every sufficient subset decodes, every tampered byte is caught."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHARD_COUNTS, blob_bytes, blobs
from walrusfs.core import merkle
from walrusfs.core.config import EncodingConfig
from walrusfs.core.errors import (
    BlobTooLarge,
    CodecError,
    InvalidParameter,
    NotEnoughSymbols,
    VerificationError,
)
from walrusfs.core.redstuff import (
    Axis,
    Sliver,
    check_consistency,
    commitment,
    compute_metadata,
    decode_primary,
    decode_secondary,
    encode_blob,
    expanded_sliver,
    read_blob,
    rows_for_range,
    sliver_root,
    symbols_from_parts,
    verify_parts,
    verify_sliver,
    verify_symbols,
)

codec_settings = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def primaries(encoded, indices):  # type: ignore[no-untyped-def]
    return [encoded.pairs[i].primary for i in indices]


def secondaries(encoded, columns):  # type: ignore[no-untyped-def]
    n = len(encoded.pairs)
    return [encoded.pairs[n - 1 - c].secondary for c in columns]


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("length", [0, 1, 2, 33, 1000, 65537])
def test_every_subset_decodes_exhaustively(n: int, length: int) -> None:
    config = EncodingConfig(n)
    data = blob_bytes(n * 1000 + length, min(length, config.max_blob_size))
    encoded = encode_blob(data, config)
    p, s = config.primary_source_symbols, config.secondary_source_symbols
    for rows in itertools.combinations(range(n), p):
        assert decode_primary(config, len(data), primaries(encoded, rows)) == data
        assert read_blob(encoded.metadata, primaries(encoded, rows)) == data
    for columns in itertools.combinations(range(n), s):
        assert decode_secondary(config, len(data), secondaries(encoded, columns)) == data
        assert read_blob(encoded.metadata, secondaries(encoded, columns), strict=True) == data


@pytest.mark.parametrize("n", SHARD_COUNTS)
@codec_settings
@given(data=st.data())
def test_any_sufficient_subset_decodes(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    blob = data.draw(blobs(n))
    encoded = encode_blob(blob, config)
    for pair in encoded.pairs:
        verify_sliver(encoded.metadata, pair.primary)
        verify_sliver(encoded.metadata, pair.secondary)
    assert encoded.metadata.blob_id() == encoded.blob_id == compute_metadata(blob, config).blob_id()
    order = data.draw(st.permutations(range(n)))
    rows = order[: config.primary_source_symbols]
    assert read_blob(encoded.metadata, primaries(encoded, rows)) == blob
    columns = order[: config.secondary_source_symbols]
    assert read_blob(encoded.metadata, secondaries(encoded, columns)) == blob


@pytest.mark.parametrize("n", SHARD_COUNTS)
@codec_settings
@given(data=st.data())
def test_byte_ranges_use_only_the_rows_they_need(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    blob = data.draw(blobs(n))
    encoded = encode_blob(blob, config)
    offset = data.draw(st.integers(0, len(blob)))
    size = data.draw(st.integers(0, len(blob) - offset))
    expected = blob[offset : offset + size]
    needed = rows_for_range(config, len(blob), offset, size)
    assert all(r < config.primary_source_symbols for r in needed)
    # Only the systematic rows covering the range: fewer than p slivers suffice.
    assert decode_primary(config, len(blob), primaries(encoded, needed), offset, size) == expected
    # Without them, only the touched columns are decoded from parity rows.
    parity = range(config.primary_source_symbols, 2 * config.primary_source_symbols)
    assert decode_primary(config, len(blob), primaries(encoded, parity), offset, size) == expected


@pytest.mark.parametrize("n", SHARD_COUNTS)
@codec_settings
@given(data=st.data())
def test_any_flipped_byte_in_a_sliver_is_rejected(n: int, data: st.DataObject) -> None:
    config = EncodingConfig(n)
    blob = data.draw(blobs(n))
    encoded = encode_blob(blob, config)
    pair = encoded.pairs[data.draw(st.integers(0, n - 1))]
    sliver = data.draw(st.sampled_from([pair.primary, pair.secondary]))
    position = data.draw(st.integers(0, len(sliver.data) - 1))
    flipped = bytearray(sliver.data)
    flipped[position] ^= 1 << data.draw(st.integers(0, 7))
    bad = Sliver(sliver.axis, sliver.index, sliver.symbol_size, bytes(flipped))
    with pytest.raises(VerificationError, match="does not match its commitment"):
        verify_sliver(encoded.metadata, bad)
    # A reader handed the bad sliver among others skips it and still returns the right bytes.
    if bad.axis is Axis.PRIMARY:
        others = [p.primary for p in encoded.pairs if p.primary.index != bad.index]
        assert read_blob(encoded.metadata, [bad, *others]) == blob


def test_fast_path_needs_no_decoding_and_parity_path_is_checked() -> None:
    config = EncodingConfig(7)
    blob = blob_bytes(7, 500_000)
    encoded = encode_blob(blob, config)
    systematic = primaries(encoded, range(config.primary_source_symbols))
    assert decode_primary(config, len(blob), systematic) == blob
    check_consistency(encoded.metadata, blob, range(3))
    check_consistency(encoded.metadata, blob, strict=True)


def test_too_few_slivers() -> None:
    config = EncodingConfig(7)
    encoded = encode_blob(b"x" * 1000, config)
    with pytest.raises(NotEnoughSymbols, match="3 distinct primary"):
        decode_primary(config, 1000, primaries(encoded, [3, 4]))
    with pytest.raises(NotEnoughSymbols, match="5 distinct secondary"):
        decode_secondary(config, 1000, secondaries(encoded, [0, 1, 2, 6]))
    # Duplicates do not count twice.
    with pytest.raises(NotEnoughSymbols):
        decode_primary(config, 1000, primaries(encoded, [3, 3, 4]))
    with pytest.raises(NotEnoughSymbols, match="need 3 valid primary or 5 valid secondary"):
        read_blob(encoded.metadata, primaries(encoded, [1, 2]) + secondaries(encoded, [1]))


def test_malformed_inputs_raise_codec_errors() -> None:
    config = EncodingConfig(7)
    encoded = encode_blob(b"y" * 1000, config)
    good = encoded.pairs[0].primary
    with pytest.raises(InvalidParameter, match="positive even"):
        Sliver(Axis.PRIMARY, 0, 3, b"abc")
    with pytest.raises(InvalidParameter, match="whole number"):
        Sliver(Axis.PRIMARY, 0, good.symbol_size, good.data + b"z")
    with pytest.raises(InvalidParameter, match="must be bytes"):
        Sliver(Axis.PRIMARY, 0, 2, "text")  # type: ignore[arg-type]
    short = Sliver(Axis.PRIMARY, 0, good.symbol_size, good.data[: -good.symbol_size])
    with pytest.raises(InvalidParameter, match="expected"):
        verify_sliver(encoded.metadata, short)
    with pytest.raises(InvalidParameter, match="index"):
        verify_sliver(encoded.metadata, Sliver(Axis.PRIMARY, 7, good.symbol_size, good.data))
    with pytest.raises(VerificationError, match="symbol size"):
        verify_sliver(encoded.metadata, Sliver(Axis.PRIMARY, 0, good.symbol_size + 2, good.data[:0]))
    with pytest.raises(InvalidParameter, match="expected primary"):
        decode_primary(config, 1000, [encoded.pairs[0].secondary])
    with pytest.raises(InvalidParameter, match="exceeds the blob length"):
        decode_primary(config, 1000, primaries(encoded, range(3)), 900, 200)
    small = EncodingConfig(7, max_symbol_size=4)
    with pytest.raises(BlobTooLarge, match="exceeds the maximum of 60 bytes"):
        encode_blob(bytes(61), small)
    with pytest.raises(InvalidParameter, match="must be bytes"):
        encode_blob("text", config)  # type: ignore[arg-type]
    assert issubclass(BlobTooLarge, CodecError)


def test_bytearray_and_memoryview_inputs_encode_like_bytes() -> None:
    config = EncodingConfig(10)
    data = blob_bytes(1, 12345)
    expected = compute_metadata(data, config).blob_id()
    assert encode_blob(bytearray(data), config).blob_id == expected
    assert encode_blob(memoryview(data), config).blob_id == expected


@pytest.mark.slow
def test_a_thousand_shards() -> None:
    config = EncodingConfig(1000)
    blob = blob_bytes(1000, 300_000)
    encoded = encode_blob(blob, config)
    rows = list(range(500, 500 + config.primary_source_symbols))
    assert read_blob(encoded.metadata, primaries(encoded, rows)) == blob


@codec_settings
@given(data=st.data(), symbol_size=st.sampled_from([2, 48, 4096, 64 << 10, 70_002]), count=st.integers(1, 5))
def test_symbols_from_parts_cut_any_chunking_like_a_split(data: st.DataObject, symbol_size: int, count: int) -> None:
    # A received sliver arrives in chunks whose bounds have nothing to do with symbols.
    body = bytes(range(256)) * (symbol_size * count // 256 + 1)
    body = body[: symbol_size * count]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    bounds = [0, *cuts, len(body)]
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(bounds), max_size=len(bounds)))
    parts = [kind(body[a:b]) for kind, a, b in zip(kinds, bounds, bounds[1:])]
    symbols = symbols_from_parts(parts, symbol_size, count)
    assert symbols == [body[k : k + symbol_size] for k in range(0, len(body), symbol_size)]
    assert all(type(symbol) is bytes for symbol in symbols)
    with pytest.raises(InvalidParameter):
        symbols_from_parts([*parts, b"x"], symbol_size, count)


@pytest.mark.parametrize("n", [4, 7])
def test_verify_symbols_agrees_with_verify_sliver(n: int) -> None:
    encoded = encode_blob(blob_bytes(n, 300_000), EncodingConfig(n))
    metadata = encoded.metadata
    for pair in encoded.pairs:
        for sliver in (pair.primary, pair.secondary):
            verify_sliver(metadata, sliver)
            verify_symbols(metadata, sliver.axis, sliver.index, sliver.symbols())
            tampered = bytearray(sliver.data)
            tampered[len(tampered) // 3] ^= 1
            bad = Sliver(sliver.axis, sliver.index, sliver.symbol_size, bytes(tampered))
            for check in (lambda: verify_sliver(metadata, bad),
                          lambda: verify_symbols(metadata, bad.axis, bad.index, bad.symbols())):
                with pytest.raises(VerificationError):
                    check()
            with pytest.raises(InvalidParameter):
                verify_symbols(metadata, sliver.axis, sliver.index, sliver.symbols()[:-1])
            with pytest.raises(InvalidParameter):
                verify_symbols(metadata, sliver.axis, n, sliver.symbols())


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("symbol_size", [2, 4094, 65_536, 65_602, 262_144, 300_002, 524_352])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_verify_parts_agrees_with_verify_sliver_for_any_chunking(data: st.DataObject, n: int, symbol_size: int) -> None:
    """A sliver verified from the chunks it arrived in, expanded in windows, is judged as the whole sliver is.

    Symbols of 64 KiB and more are expanded ``_WINDOW`` bytes at a time (sizes here: one
    window, several, several with a tail shorter than 64 bytes); the root must be the one of
    the whole expansion, and any flipped byte, missing byte or wrong index must be refused.
    """
    config = EncodingConfig(n)
    p, s = config.primary_source_symbols, config.secondary_source_symbols
    length = p * s * symbol_size - data.draw(st.integers(0, 2 * p * s - 1))  # still this symbol size
    blob = blob_bytes(symbol_size + n, length)
    encoded = encode_blob(blob, config)
    assert encoded.metadata.symbol_size == symbol_size
    metadata = encoded.metadata
    pair = encoded.pairs[data.draw(st.integers(0, n - 1))]
    sliver = data.draw(st.sampled_from([pair.primary, pair.secondary]))
    # The windowed root is the root of the whole expansion.
    assert sliver_root(config, sliver) == merkle.root(expanded_sliver(config, sliver))
    body = sliver.data
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    bounds = [0, *cuts, len(body)]
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(bounds), max_size=len(bounds)))
    parts = [kind(body[a:b]) for kind, a, b in zip(kinds, bounds, bounds[1:])]
    verify_parts(metadata, sliver.axis, sliver.index, parts)
    at = data.draw(st.integers(0, len(body) - 1))
    tampered = bytearray(body)
    tampered[at] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(VerificationError):
        verify_parts(metadata, sliver.axis, sliver.index, [tampered[: len(body) // 2], tampered[len(body) // 2 :]])
    with pytest.raises(VerificationError):
        verify_sliver(metadata, Sliver(sliver.axis, sliver.index, sliver.symbol_size, bytes(tampered)))
    with pytest.raises(InvalidParameter):
        verify_parts(metadata, sliver.axis, sliver.index, [*parts, b"x"])
    with pytest.raises(InvalidParameter):
        verify_parts(metadata, sliver.axis, sliver.index, [body[:-2]])
    with pytest.raises(InvalidParameter):
        verify_parts(metadata, sliver.axis, n, parts)
    other = (sliver.index + 1) % n
    # A tiny blob's slivers can be equal (all padding): then the other index's commitment is
    # the same and accepting is right.
    if commitment(metadata, sliver.axis, other) != commitment(metadata, sliver.axis, sliver.index):
        with pytest.raises(VerificationError):
            verify_parts(metadata, sliver.axis, other, parts)
