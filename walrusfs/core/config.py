"""RS2 encoding parameters derived from the number of shards."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BlobTooLarge, InvalidParameter

#: Encoding type byte of RedStuff over Reed-Solomon, as in Walrus.
RS2 = 1
#: Walrus's largest symbol size: it keeps symbol sizes in a u16, and shards must be even.
WALRUS_MAX_SYMBOL_SIZE = 65534
#: walrusfs's default largest symbol size. Walrus's cap limits a blob to p*s*65534 bytes,
#: 983,010 bytes for a 7-peer committee, too small for the multi-MiB chunks a filesystem on
#: a small committee wants. Symbol sizes follow the same formula either way, so every blob
#: Walrus accepts has the same blob ID here; larger blobs are a walrusfs extension.
MAX_SYMBOL_SIZE = 32 << 20
#: reed-solomon-simd supports up to 65535 shards in total; n x n expansion bounds us far lower.
MAX_SHARDS = 65535
MIN_SHARDS = 4


@dataclass(frozen=True)
class EncodingConfig:
    """RedStuff parameters for a committee of ``n_shards`` shards."""

    n_shards: int
    max_symbol_size: int = MAX_SYMBOL_SIZE

    def __post_init__(self) -> None:
        n = self.n_shards
        if not isinstance(n, int) or isinstance(n, bool):
            raise InvalidParameter(f"shard count must be an integer, got {n!r}")
        if not MIN_SHARDS <= n <= MAX_SHARDS:
            raise InvalidParameter(
                f"shard count must be between {MIN_SHARDS} and {MAX_SHARDS}, got {n}"
            )
        cap = self.max_symbol_size
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 2 or cap % 2:
            raise InvalidParameter(f"maximum symbol size must be a positive even integer, got {cap!r}")

    @property
    def n(self) -> int:
        """Number of shards (and of sliver pairs)."""
        return self.n_shards

    @property
    def f(self) -> int:
        """Largest number of faulty shards tolerated: (n - 1) // 3."""
        return (self.n_shards - 1) // 3

    @property
    def primary_source_symbols(self) -> int:
        """Rows of the message matrix, p = n - 2f (f + 1 when n = 3f + 1)."""
        return self.n_shards - 2 * self.f

    @property
    def secondary_source_symbols(self) -> int:
        """Columns of the message matrix, s = n - f (2f + 1 when n = 3f + 1)."""
        return self.n_shards - self.f

    @property
    def quorum(self) -> int:
        """Shards needed for a certificate: 2f + 1."""
        return 2 * self.f + 1

    @property
    def validity_threshold(self) -> int:
        """Shards that guarantee at least one honest one: f + 1."""
        return self.f + 1

    @property
    def source_symbols(self) -> int:
        """Symbols in the message matrix, p * s."""
        return self.primary_source_symbols * self.secondary_source_symbols

    @property
    def max_blob_size(self) -> int:
        """Largest blob this config can encode, in bytes."""
        return self.source_symbols * self.max_symbol_size

    @property
    def walrus_max_blob_size(self) -> int:
        """Largest blob Walrus itself encodes for this many shards (symbols of at most 65534 bytes)."""
        return self.source_symbols * WALRUS_MAX_SYMBOL_SIZE

    def check_blob_size(self, length: int) -> None:
        """Raise ``BlobTooLarge`` or ``InvalidParameter`` unless ``length`` is encodable."""
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise InvalidParameter(f"blob length must be a non-negative integer, got {length!r}")
        if length > self.max_blob_size:
            raise BlobTooLarge(
                f"blob of {length} bytes exceeds the maximum of {self.max_blob_size} bytes "
                f"for {self.n_shards} shards (symbol size is capped at {self.max_symbol_size})"
            )

    def symbol_size(self, length: int) -> int:
        """Symbol size for a blob of ``length`` bytes: ceil(max(len, 1) / (p*s)), made even."""
        self.check_blob_size(length)
        size = -(-max(length, 1) // self.source_symbols)
        return size + (size & 1)

    def primary_sliver_size(self, length: int) -> int:
        """Bytes in one primary sliver (s symbols)."""
        return self.secondary_source_symbols * self.symbol_size(length)

    def secondary_sliver_size(self, length: int) -> int:
        """Bytes in one secondary sliver (p symbols)."""
        return self.primary_source_symbols * self.symbol_size(length)

    def encoded_slivers_length(self, length: int) -> int:
        """Bytes of all n sliver pairs together: n * (p + s) * symbol size."""
        p, s = self.primary_source_symbols, self.secondary_source_symbols
        return self.n_shards * (p + s) * self.symbol_size(length)

    def metadata_length(self) -> int:
        """Bytes of one copy of the metadata, as Walrus counts it: n * 64 + 32."""
        return self.n_shards * 2 * 32 + 32

    def encoded_blob_length(self, length: int) -> int:
        """Bytes stored across the committee: all sliver pairs plus a metadata copy per shard."""
        return self.encoded_slivers_length(length) + self.n_shards * self.metadata_length()

    def check_index(self, index: int, what: str = "sliver") -> None:
        """Raise ``InvalidParameter`` unless 0 <= index < n."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.n_shards:
            raise InvalidParameter(
                f"{what} index must be in 0..{self.n_shards - 1}, got {index!r}"
            )
