"""RedStuff (RS2): two-dimensional Reed-Solomon encoding, decoding and sliver checks.

The message matrix has p rows and s columns of ``symbol_size``-byte symbols, filled
row-major from the blob. Expanding every column from p to n symbols and every row from s to
n symbols gives the n x n expanded matrix. Primary sliver i is the first s symbols of row i;
secondary sliver j is the first p symbols of column j. Commitments are Merkle roots over
whole expanded rows and columns, so a sliver is verified by re-expanding it.

Every symbol is its own Reed-Solomon shard: the Leopard codec interleaves bytes in 64-byte
chunks, so concatenating symbols into one shard would be a different code with different
blob IDs whenever the symbol size is not a multiple of 64.

All functions here are blocking and pure; async callers run them in worker threads.
Large symbols are processed on a small thread pool: the Reed-Solomon binding and hashlib
(for inputs of 2 KiB and more) release the GIL, so both cores share one blob's work.
"""

from __future__ import annotations

import bisect
import enum
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import reed_solomon_leopard as _rs

from . import merkle
from .config import RS2, EncodingConfig
from .errors import (
    InconsistentBlob,
    InvalidParameter,
    NotEnoughSymbols,
    VerificationError,
)
from .metadata import BlobId, BlobMetadata, SliverPairHashes

_T = TypeVar("_T")
_R = TypeVar("_R")

# hashlib holds the GIL below 2048 bytes, so smaller symbols gain nothing from threads.
_PARALLEL_MIN_SYMBOL = 2048
_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _map(fn: Callable[[_T], _R], items: Sequence[_T], parallel: bool) -> list[_R]:
    """Map ``fn`` over ``items``, on the codec's thread pool when worthwhile."""
    global _pool
    if not parallel or len(items) < 2 or _workers() == 1:
        return [fn(item) for item in items]
    if _pool is None:
        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="walrusfs-codec")
    return list(_pool.map(fn, items))


def _chunks(count: int, parts: int) -> list[range]:
    """Split range(count) into at most ``parts`` contiguous ranges."""
    parts = max(1, min(parts, count))
    bounds = [count * k // parts for k in range(parts + 1)]
    return [range(bounds[k], bounds[k + 1]) for k in range(parts)]


class Axis(enum.Enum):
    """Which dimension a sliver (or the sliver a recovery symbol rebuilds) belongs to."""

    PRIMARY = "primary"
    SECONDARY = "secondary"


def pair_index(axis: Axis, index: int, n_shards: int) -> int:
    """The sliver pair carrying sliver ``index`` on ``axis``; also the sliver index of a pair.

    Pair i holds primary sliver i and secondary sliver n - 1 - i, so the mapping is its own
    inverse.
    """
    return index if axis is Axis.PRIMARY else n_shards - 1 - index


@dataclass(frozen=True)
class Sliver:
    """A primary sliver (row ``index``, s symbols) or secondary sliver (column ``index``, p symbols)."""

    axis: Axis
    index: int
    symbol_size: int
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.axis, Axis):
            raise InvalidParameter(f"sliver axis must be an Axis, got {self.axis!r}")
        if not isinstance(self.index, int) or self.index < 0:
            raise InvalidParameter(f"sliver index must be a non-negative integer, got {self.index!r}")
        if not isinstance(self.symbol_size, int) or self.symbol_size <= 0 or self.symbol_size % 2:
            raise InvalidParameter(f"symbol size must be a positive even integer, got {self.symbol_size!r}")
        if not isinstance(self.data, bytes):
            raise InvalidParameter(f"sliver data must be bytes, got {type(self.data).__name__}")
        if len(self.data) % self.symbol_size:
            raise InvalidParameter(
                f"sliver of {len(self.data)} bytes is not a whole number of {self.symbol_size}-byte symbols"
            )

    @property
    def n_symbols(self) -> int:
        """Number of source symbols in this sliver."""
        return len(self.data) // self.symbol_size

    def symbols(self) -> list[bytes]:
        """The sliver's symbols as separate byte strings."""
        return _split(self.data, self.symbol_size, self.n_symbols)


@dataclass(frozen=True)
class SliverPair:
    """What one shard stores for a blob: primary sliver i and secondary sliver n-1-i."""

    index: int
    primary: Sliver
    secondary: Sliver


@dataclass(frozen=True)
class EncodedBlob:
    """A blob encoded for n shards: its metadata, blob ID and n sliver pairs."""

    metadata: BlobMetadata
    blob_id: BlobId
    pairs: tuple[SliverPair, ...]


def _split(data: bytes, size: int, count: int) -> list[bytes]:
    return [data[k : k + size] for k in range(0, size * count, size)]


def _expand(symbols: list[bytes], n: int) -> list[bytes]:
    """Extend source symbols with Reed-Solomon recovery symbols to n in all."""
    return symbols + _rs.encode(symbols, n - len(symbols))


def _expected_length(config: EncodingConfig, axis: Axis, symbol_size: int) -> int:
    count = config.secondary_source_symbols if axis is Axis.PRIMARY else config.primary_source_symbols
    return count * symbol_size


def expanded_sliver(config: EncodingConfig, sliver: Sliver) -> list[bytes]:
    """All n symbols of the row or column a sliver starts."""
    expected = _expected_length(config, sliver.axis, sliver.symbol_size)
    if len(sliver.data) != expected:
        raise InvalidParameter(
            f"{sliver.axis.value} sliver has {len(sliver.data)} bytes, expected {expected} "
            f"for symbol size {sliver.symbol_size} and {config.n_shards} shards"
        )
    config.check_index(sliver.index, f"{sliver.axis.value} sliver")
    return _expand(sliver.symbols(), config.n_shards)


def sliver_root(config: EncodingConfig, sliver: Sliver) -> bytes:
    """Merkle root over the sliver's expansion to n symbols: what the metadata commits to."""
    if sliver.symbol_size >= _LARGE_SYMBOL:
        expected = _expected_length(config, sliver.axis, sliver.symbol_size)
        if len(sliver.data) != expected:
            expanded_sliver(config, sliver)  # raises its InvalidParameter
        config.check_index(sliver.index, f"{sliver.axis.value} sliver")
        return _windowed_root(config, _Parts([sliver.data]), sliver.symbol_size, sliver.n_symbols)
    return merkle.root_of_level(merkle.leaf_hashes(expanded_sliver(config, sliver)))


#: Symbols at least this large are cut out of received buffers one by one; smaller ones are
#: cut from one joined copy (a Python step per tiny symbol would cost more than the copy).
#: Slivers of such symbols are also expanded and hashed in windows (``_windowed_root``).
_LARGE_SYMBOL = 64 << 10
#: Bytes of each symbol expanded at a time. Leopard codes every 64-byte chunk of a shard on
#: its own (a shorter tail is laid out by its own length), so the recovery symbols of one
#: window of the source symbols are that window of the recovery symbols, as long as
#: windows start at multiples of 64 and the last ends at the symbol's end.
_WINDOW = 256 << 10


class _Parts:
    """Byte ranges of buffers held back to back (a sliver as it arrived), copied only as taken."""

    def __init__(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        self.views = [memoryview(part).cast("B") for part in parts if len(part)]
        self.starts = []
        position = 0
        for view in self.views:
            self.starts.append(position)
            position += len(view)
        self.length = position

    def take(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) as one ``bytes`` (one copy)."""
        k = bisect.bisect_right(self.starts, start) - 1
        pieces = []
        while start < stop:
            view, base = self.views[k], self.starts[k]
            end = min(len(view), stop - base)
            pieces.append(view[start - base : end])
            start = base + end
            k += 1
        return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)


def _windowed_root(config: EncodingConfig, parts: _Parts, symbol_size: int, count: int) -> bytes:
    """Merkle root of a sliver's expansion, computed ``_WINDOW`` bytes of each symbol at a time.

    Each of the n leaves is hashed as its symbol's windows come (a leaf hash is H(0x00 ||
    symbol), fed piecewise); the n - count recovery symbols are never held whole. Beyond
    the sliver itself this holds about (n + count) windows, not a copy of the sliver plus
    its recovery symbols and the codec's work buffers.
    """
    n = config.n_shards
    hashers = [merkle.leaf_hasher() for _ in range(n)]
    for start in range(0, symbol_size, _WINDOW):
        stop = min(start + _WINDOW, symbol_size)
        window = [parts.take(k * symbol_size + start, k * symbol_size + stop) for k in range(count)]
        for hasher, piece in zip(hashers, window):
            hasher.update(piece)
        for hasher, piece in zip(hashers[count:], _rs.encode(window, n - count)):
            hasher.update(piece)
    return merkle.root_of_level(b"".join(hasher.digest() for hasher in hashers))


def symbols_from_parts(parts: Sequence[bytes | bytearray | memoryview], symbol_size: int, count: int) -> list[bytes]:
    """``count`` symbols of ``symbol_size`` bytes from buffers holding them back to back, copied once.

    A received sliver arrives as the transport's chunks, whose bounds have nothing to do
    with symbols; the Reed-Solomon binding takes only ``bytes`` symbols, so each symbol
    is assembled from slices of the chunks (no joined copy of the whole sliver first).
    """
    if symbol_size <= 0 or count < 0:
        raise InvalidParameter(f"cannot cut {count} symbols of {symbol_size} bytes")
    total = sum(len(part) for part in parts)
    if total != symbol_size * count:
        raise InvalidParameter(f"{total} bytes are not {count} symbols of {symbol_size} bytes")
    if symbol_size < _LARGE_SYMBOL:
        return _split(b"".join(parts), symbol_size, count)
    out: list[bytes] = []
    pieces: list[memoryview] = []
    need = symbol_size
    for part in parts:
        view = memoryview(part)
        while len(view):
            take = view[:need]
            view = view[len(take):]
            need -= len(take)
            if need:
                pieces.append(take)
                continue
            if not pieces and isinstance(part, bytes) and len(part) == symbol_size:
                out.append(part)  # a chunk that is exactly one symbol needs no copy
            else:
                pieces.append(take)
                out.append(b"".join(pieces))
            pieces, need = [], symbol_size
    return out


def _check_symbols(config: EncodingConfig, axis: Axis, index: int, symbols: Sequence[bytes], symbol_size: int) -> None:
    count = config.secondary_source_symbols if axis is Axis.PRIMARY else config.primary_source_symbols
    if len(symbols) != count or any(len(symbol) != symbol_size for symbol in symbols):
        raise InvalidParameter(
            f"{axis.value} sliver has {len(symbols)} symbols of {sorted({len(x) for x in symbols})} bytes, "
            f"expected {count} of {symbol_size} for {config.n_shards} shards"
        )
    config.check_index(index, f"{axis.value} sliver")


def verify_symbols(metadata: BlobMetadata, axis: Axis, index: int, symbols: list[bytes]) -> None:
    """``verify_sliver`` for a sliver given as its symbols (``symbols_from_parts``): no joined copy needed."""
    config = metadata.config
    _check_symbols(config, axis, index, symbols, metadata.symbol_size)
    root = merkle.root_of_level(merkle.leaf_hashes(_expand(symbols, config.n_shards)))
    if root != commitment(metadata, axis, index):
        raise VerificationError(f"{axis.value} sliver {index} does not match its commitment")


def verify_parts(metadata: BlobMetadata, axis: Axis, index: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """``verify_sliver`` for a sliver given as the buffers it arrived in (any chunking), never joined.

    A sliver of large symbols is expanded and hashed in windows (``_windowed_root``), so
    verifying it costs a few windows of memory besides the buffers; smaller symbols are cut
    from one joined copy (``symbols_from_parts``), which is then small.
    """
    config = metadata.config
    symbol_size = metadata.symbol_size
    count = config.secondary_source_symbols if axis is Axis.PRIMARY else config.primary_source_symbols
    total = sum(memoryview(part).nbytes for part in parts)
    if total != count * symbol_size:
        raise InvalidParameter(
            f"{axis.value} sliver has {total} bytes, expected {count * symbol_size} "
            f"for symbol size {symbol_size} and {config.n_shards} shards"
        )
    config.check_index(index, f"{axis.value} sliver")
    if symbol_size < _LARGE_SYMBOL:
        verify_symbols(metadata, axis, index, symbols_from_parts(parts, symbol_size, count))
        return
    if _windowed_root(config, _Parts(parts), symbol_size, count) != commitment(metadata, axis, index):
        raise VerificationError(f"{axis.value} sliver {index} does not match its commitment")


def _message_rows(data: bytes, config: EncodingConfig, symbol_size: int) -> list[bytes]:
    """The p rows of the message matrix; only rows past the blob's end get zero padding."""
    row_len = config.primary_sliver_size(len(data))
    rows = [data[r * row_len : (r + 1) * row_len] for r in range(config.primary_source_symbols)]
    return [row if len(row) == row_len else row + bytes(row_len - len(row)) for row in rows]


def _source_rows(data: bytes, config: EncodingConfig, symbol_size: int, parallel: bool) -> list[bytes]:
    """The s source symbols of all n expanded rows, one contiguous ``bytes`` per row.

    Parity rows are assembled column by column into preallocated buffers: holding every
    parity symbol as its own object until the rows could be joined would cost ~50 bytes of
    object header per symbol, doubling peak memory when symbols are small (large n).
    """
    n, p, s = config.n_shards, config.primary_source_symbols, config.secondary_source_symbols
    rows = _message_rows(data, config, symbol_size)
    parity = [bytearray(s * symbol_size) for _ in range(n - p)]

    def encode_columns(columns: range) -> None:
        for c in columns:
            lo, hi = c * symbol_size, (c + 1) * symbol_size
            for buffer, symbol in zip(parity, _rs.encode([row[lo:hi] for row in rows], n - p)):
                buffer[lo:hi] = symbol

    _map(encode_columns, _chunks(s, 2 * _workers()), parallel)
    for k in range(n - p):
        rows.append(bytes(parity[k]))
        parity[k] = bytearray()  # release each buffer once copied
    return rows


@dataclass
class _Rows:
    """Expanded rows: the primary slivers, per-row leaf hashes and roots, kept parity."""

    slivers: list[bytes]
    leaves: list[bytes]
    roots: list[bytes]
    #: Recovery symbols of rows r < p, joined: what secondary slivers n - s.. are made of.
    parity: list[bytes]


def _expand_rows(data: bytes, config: EncodingConfig, symbol_size: int, keep_parity: bool, parallel: bool) -> _Rows:
    n, p, s = config.n_shards, config.primary_source_symbols, config.secondary_source_symbols
    slivers = _source_rows(data, config, symbol_size, parallel)
    leaves: list[bytes] = [b""] * n
    roots: list[bytes] = [b""] * n
    parity: list[bytes] = [b""] * p if keep_parity else []

    def expand(rows: range) -> None:
        for r in rows:
            source = _split(slivers[r], symbol_size, s)
            recovery = _rs.encode(source, n - s)
            leaves[r] = merkle.leaf_hashes(source) + merkle.leaf_hashes(recovery)
            roots[r] = merkle.root_of_level(leaves[r])
            if keep_parity and r < p:
                parity[r] = b"".join(recovery)

    _map(expand, _chunks(n, 2 * _workers()), parallel)
    return _Rows(slivers, leaves, roots, parity)


def _column_roots(leaves: list[bytes], n: int, parallel: bool) -> list[bytes]:
    def roots(columns: range) -> list[bytes]:
        out = []
        for c in columns:
            lo = c * merkle.DIGEST_SIZE
            hi = lo + merkle.DIGEST_SIZE
            out.append(merkle.root_of_level(b"".join([row[lo:hi] for row in leaves])))
        return out

    return [root for part in _map(roots, _chunks(n, 2 * _workers()), parallel) for root in part]


def _metadata(length: int, row_roots: list[bytes], column_roots: list[bytes]) -> BlobMetadata:
    n = len(row_roots)
    hashes = tuple(SliverPairHashes(row_roots[i], column_roots[n - 1 - i]) for i in range(n))
    return BlobMetadata(RS2, length, hashes)


def _check_data(data: bytes) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if not isinstance(data, bytes):
        raise InvalidParameter(f"blob data must be bytes, got {type(data).__name__}")
    return data


def compute_metadata(data: bytes, config: EncodingConfig) -> BlobMetadata:
    """Metadata of a blob without keeping its slivers (what ``walrusfs blob-id`` needs)."""
    data = _check_data(data)
    symbol_size = config.symbol_size(len(data))
    parallel = symbol_size >= _PARALLEL_MIN_SYMBOL
    rows = _expand_rows(data, config, symbol_size, False, parallel)
    return _metadata(len(data), rows.roots, _column_roots(rows.leaves, config.n_shards, parallel))


def encode_blob(data: bytes, config: EncodingConfig) -> EncodedBlob:
    """Encode a blob into n sliver pairs, their metadata and the blob ID."""
    data = _check_data(data)
    n, p = config.n_shards, config.primary_source_symbols
    symbol_size = config.symbol_size(len(data))
    parallel = symbol_size >= _PARALLEL_MIN_SYMBOL
    rows = _expand_rows(data, config, symbol_size, True, parallel)
    metadata = _metadata(len(data), rows.roots, _column_roots(rows.leaves, n, parallel))
    del rows.leaves[:]
    s = config.secondary_source_symbols
    pairs = []
    for i in range(n):
        column = n - 1 - i
        held = rows.slivers[:p] if column < s else rows.parity
        lo = (column if column < s else column - s) * symbol_size
        secondary = b"".join([row[lo : lo + symbol_size] for row in held])
        pairs.append(
            SliverPair(
                i,
                Sliver(Axis.PRIMARY, i, symbol_size, rows.slivers[i]),
                Sliver(Axis.SECONDARY, column, symbol_size, secondary),
            )
        )
    return EncodedBlob(metadata, metadata.blob_id(), tuple(pairs))


def blob_id_of(data: bytes, n_shards: int) -> BlobId:
    """Blob ID of ``data`` encoded for ``n_shards`` shards."""
    return compute_metadata(data, EncodingConfig(n_shards)).blob_id()


def commitment(metadata: BlobMetadata, axis: Axis, index: int) -> bytes:
    """The Merkle root the metadata holds for sliver ``index`` on ``axis``."""
    if axis is Axis.PRIMARY:
        return metadata.primary_hash(index)
    return metadata.secondary_hash(index)


def verify_sliver(metadata: BlobMetadata, sliver: Sliver) -> None:
    """Raise ``VerificationError`` (or ``InvalidParameter``) unless the sliver matches its commitment."""
    config = metadata.config
    if sliver.symbol_size != metadata.symbol_size:
        raise VerificationError(
            f"{sliver.axis.value} sliver {sliver.index} has symbol size {sliver.symbol_size}, "
            f"the metadata implies {metadata.symbol_size}"
        )
    if sliver_root(config, sliver) != commitment(metadata, sliver.axis, sliver.index):
        raise VerificationError(
            f"{sliver.axis.value} sliver {sliver.index} does not match its commitment"
        )


def _distinct(slivers: Iterable[Sliver], axis: Axis, config: EncodingConfig, symbol_size: int) -> dict[int, Sliver]:
    by_index: dict[int, Sliver] = {}
    expected = _expected_length(config, axis, symbol_size)
    for sliver in slivers:
        if sliver.axis is not axis:
            raise InvalidParameter(f"expected {axis.value} slivers, got a {sliver.axis.value} sliver")
        config.check_index(sliver.index, f"{axis.value} sliver")
        if sliver.symbol_size != symbol_size or len(sliver.data) != expected:
            raise InvalidParameter(
                f"{axis.value} sliver {sliver.index} has {len(sliver.data)} bytes of "
                f"{sliver.symbol_size}-byte symbols, expected {expected} bytes of {symbol_size}"
            )
        by_index.setdefault(sliver.index, sliver)
    return by_index


def _choose(by_index: dict[int, Sliver], needed: int, axis: Axis) -> list[Sliver]:
    if len(by_index) < needed:
        raise NotEnoughSymbols(
            f"decoding needs {needed} distinct {axis.value} slivers, got {len(by_index)}"
        )
    # Lowest indices first: the systematic ones need no decoding at all.
    return [by_index[k] for k in sorted(by_index)[:needed]]


def _decode_symbols(
    known: dict[int, bytes], source_count: int, n: int
) -> list[bytes]:
    """The ``source_count`` source symbols of a codeword from any ``source_count`` known ones."""
    originals = {k: v for k, v in known.items() if k < source_count}
    if len(originals) == source_count:
        return [originals[k] for k in range(source_count)]
    recoveries = {k - source_count: v for k, v in known.items() if k >= source_count}
    originals.update(_rs.decode(source_count, n - source_count, originals, recoveries))
    return [originals[k] for k in range(source_count)]


def _check_range(length: int, offset: int, size: int) -> None:
    if not isinstance(offset, int) or not isinstance(size, int) or offset < 0 or size < 0:
        raise InvalidParameter(f"byte range must be non-negative integers, got offset={offset!r} size={size!r}")
    if offset + size > length:
        raise InvalidParameter(f"byte range {offset}+{size} exceeds the blob length {length}")


def rows_for_range(config: EncodingConfig, length: int, offset: int, size: int) -> range:
    """Systematic primary slivers (rows) that hold bytes [offset, offset + size) of a blob."""
    _check_range(length, offset, size)
    if size == 0:
        return range(0)
    row_len = config.primary_sliver_size(length)
    return range(offset // row_len, (offset + size - 1) // row_len + 1)


def decode_primary(
    config: EncodingConfig, length: int, slivers: Iterable[Sliver], offset: int = 0, size: int | None = None
) -> bytes:
    """Bytes [offset, offset+size) of a blob from any p primary slivers (no verification here).

    Rows the range needs that are present are copied as they are; otherwise only the columns
    the range touches are decoded.
    """
    size = length - offset if size is None else size
    _check_range(length, offset, size)
    symbol_size = config.symbol_size(length)
    n, p, s = config.n_shards, config.primary_source_symbols, config.secondary_source_symbols
    by_index = _distinct(slivers, Axis.PRIMARY, config, symbol_size)
    if size == 0:
        return b""
    rows = rows_for_range(config, length, offset, size)
    row_len = s * symbol_size
    if all(r in by_index for r in rows):
        joined = b"".join(by_index[r].data for r in rows)
        start = offset - rows.start * row_len
        return joined[start : start + size]
    chosen = _choose(by_index, p, Axis.PRIMARY)
    first, last = offset // symbol_size, (offset + size - 1) // symbol_size
    columns = range(s) if last - first + 1 >= s else sorted({k % s for k in range(first, last + 1)})
    cells: dict[tuple[int, int], bytes] = {}
    for c in columns:
        lo = c * symbol_size
        known = {sl.index: sl.data[lo : lo + symbol_size] for sl in chosen}
        for r, symbol in enumerate(_decode_symbols(known, p, n)):
            cells[r, c] = symbol
    joined = b"".join(cells[divmod(k, s)] for k in range(first, last + 1))
    start = offset - first * symbol_size
    return joined[start : start + size]


def decode_secondary(config: EncodingConfig, length: int, slivers: Iterable[Sliver]) -> bytes:
    """The whole blob from any s secondary slivers (no verification here)."""
    symbol_size = config.symbol_size(length)
    n, p, s = config.n_shards, config.primary_source_symbols, config.secondary_source_symbols
    chosen = _choose(_distinct(slivers, Axis.SECONDARY, config, symbol_size), s, Axis.SECONDARY)
    rows = []
    for r in range(p):
        lo = r * symbol_size
        known = {sl.index: sl.data[lo : lo + symbol_size] for sl in chosen}
        rows.append(b"".join(_decode_symbols(known, s, n)))
    return b"".join(rows)[:length]


def primary_slivers_of(data: bytes, config: EncodingConfig, rows: Iterable[int]) -> list[Sliver]:
    """Primary slivers ``rows`` of ``data`` (re-encoding only the columns when a row is parity)."""
    data = _check_data(data)
    symbol_size = config.symbol_size(len(data))
    wanted = list(rows)
    for r in wanted:
        config.check_index(r, "primary sliver")
    if all(r < config.primary_source_symbols for r in wanted):
        rows = _message_rows(data, config, symbol_size)
    else:
        rows = _source_rows(data, config, symbol_size, symbol_size >= _PARALLEL_MIN_SYMBOL)
    return [Sliver(Axis.PRIMARY, r, symbol_size, rows[r]) for r in wanted]


def check_consistency(
    metadata: BlobMetadata, data: bytes, verified_rows: Iterable[int] = (), strict: bool = False
) -> None:
    """Raise ``InconsistentBlob`` if decoded ``data`` contradicts the metadata.

    Default mode re-encodes the systematic primary slivers that were not among the verified
    slivers used to decode and checks their commitments; strict mode recomputes the blob ID.
    """
    if len(data) != metadata.unencoded_length:
        raise InconsistentBlob(
            f"decoded {len(data)} bytes, the metadata says {metadata.unencoded_length}"
        )
    config = metadata.config
    if strict:
        actual = compute_metadata(data, config).blob_id()
        if actual != metadata.blob_id():
            raise InconsistentBlob(f"decoded data has blob ID {actual}, not {metadata.blob_id()}")
        return
    done = set(verified_rows)
    missing = [r for r in range(config.primary_source_symbols) if r not in done]
    for sliver in primary_slivers_of(data, config, missing):
        if sliver_root(config, sliver) != metadata.primary_hash(sliver.index):
            raise InconsistentBlob(
                f"decoded primary sliver {sliver.index} does not match its commitment: "
                "the writer encoded this blob inconsistently"
            )


def _valid(metadata: BlobMetadata, slivers: Iterable[Sliver]) -> Iterator[Sliver]:
    for sliver in slivers:
        try:
            verify_sliver(metadata, sliver)
        except (VerificationError, InvalidParameter):
            continue
        yield sliver


def read_blob(
    metadata: BlobMetadata, slivers: Iterable[Sliver], *, strict: bool = False
) -> bytes:
    """Verify slivers, skip bad ones, decode from p primary or s secondary valid ones, check consistency.

    Raises ``NotEnoughSymbols`` when too few valid slivers were given and ``InconsistentBlob``
    when the decoded bytes contradict the metadata; never returns unverified bytes.
    """
    config = metadata.config
    valid = list(_valid(metadata, slivers))
    primary = {s.index: s for s in valid if s.axis is Axis.PRIMARY}
    secondary = {s.index: s for s in valid if s.axis is Axis.SECONDARY}
    if len(primary) >= config.primary_source_symbols:
        chosen = _choose(primary, config.primary_source_symbols, Axis.PRIMARY)
        data = decode_primary(config, metadata.unencoded_length, chosen)
        check_consistency(metadata, data, [s.index for s in chosen], strict)
        return data
    if len(secondary) >= config.secondary_source_symbols:
        data = decode_secondary(config, metadata.unencoded_length, secondary.values())
        check_consistency(metadata, data, (), strict)
        return data
    raise NotEnoughSymbols(
        f"need {config.primary_source_symbols} valid primary or {config.secondary_source_symbols} "
        f"valid secondary slivers, got {len(primary)} and {len(secondary)}"
    )
