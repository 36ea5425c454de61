"""Blob metadata (the per-sliver commitments) and blob IDs."""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from . import merkle
from .config import RS2, EncodingConfig
from .errors import InvalidBlobId, InvalidParameter, VerificationError

BLOB_ID_LENGTH = 32
_BLOB_ID_TEXT_LENGTH = 43  # 32 bytes in unpadded base64


@dataclass(frozen=True, order=True)
class BlobId:
    """A 32-byte blob ID; prints as URL-safe base64 without padding, as Walrus does."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != BLOB_ID_LENGTH:
            got = len(self.raw) if isinstance(self.raw, (bytes, bytearray)) else type(self.raw).__name__
            raise InvalidBlobId(f"a blob ID is {BLOB_ID_LENGTH} bytes, got {got}")

    def __str__(self) -> str:
        return base64.urlsafe_b64encode(self.raw).rstrip(b"=").decode("ascii")

    def __repr__(self) -> str:
        return f"BlobId({str(self)!r})"

    @classmethod
    def parse(cls, text: str) -> BlobId:
        """Parse the printed form; raise ``InvalidBlobId`` saying what is wrong."""
        if not isinstance(text, str):
            raise InvalidBlobId(f"a blob ID is a string, got {type(text).__name__}")
        stripped = text.strip()
        if len(stripped) != _BLOB_ID_TEXT_LENGTH:
            raise InvalidBlobId(
                f"a blob ID is {_BLOB_ID_TEXT_LENGTH} characters of URL-safe base64 without "
                f"padding, got {len(stripped)} characters: {text!r}"
            )
        if stripped.strip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"):
            raise InvalidBlobId(f"a blob ID uses only A-Z a-z 0-9 - _, got {text!r}")
        try:
            raw = base64.b64decode(stripped + "=", altchars=b"-_", validate=True)
        except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
            raise InvalidBlobId(f"not URL-safe base64: {text!r}") from exc
        blob_id = cls(raw)
        # The last character carries 2 unused bits; only one spelling is canonical.
        if str(blob_id) != stripped:
            raise InvalidBlobId(f"non-canonical blob ID encoding: {text!r}")
        return blob_id

    def rotation(self, n_shards: int) -> int:
        """Offset of pair 0 among the shards: the ID as a big-endian integer mod n."""
        return int.from_bytes(self.raw, "big") % n_shards

    def shard_for_pair(self, pair_index: int, n_shards: int) -> int:
        """Shard that stores sliver pair ``pair_index`` of this blob."""
        EncodingConfig(n_shards).check_index(pair_index, "sliver pair")
        return (pair_index + self.rotation(n_shards)) % n_shards

    def pair_for_shard(self, shard: int, n_shards: int) -> int:
        """Sliver pair that shard ``shard`` stores for this blob."""
        EncodingConfig(n_shards).check_index(shard, "shard")
        return (shard - self.rotation(n_shards)) % n_shards


@dataclass(frozen=True)
class SliverPairHashes:
    """Merkle roots of one sliver pair's primary and secondary slivers, each expanded to n."""

    primary: bytes
    secondary: bytes

    def __post_init__(self) -> None:
        for name in ("primary", "secondary"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != merkle.DIGEST_SIZE:
                raise InvalidParameter(f"{name} sliver hash must be 32 bytes")


@dataclass(frozen=True)
class BlobMetadata:
    """What every peer keeps about a blob: encoding, length and n sliver-pair commitments."""

    encoding_type: int
    unencoded_length: int
    hashes: tuple[SliverPairHashes, ...]

    def __post_init__(self) -> None:
        if self.encoding_type != RS2:
            raise InvalidParameter(
                f"unsupported encoding type {self.encoding_type!r} (only RS2 = {RS2})"
            )
        self.config.check_blob_size(self.unencoded_length)

    @property
    def config(self) -> EncodingConfig:
        """Encoding config implied by the number of hash pairs."""
        return EncodingConfig(len(self.hashes))

    @property
    def n_shards(self) -> int:
        """Number of shards the blob was encoded for."""
        return len(self.hashes)

    @property
    def symbol_size(self) -> int:
        """Symbol size of every sliver of this blob."""
        return self.config.symbol_size(self.unencoded_length)

    def primary_hash(self, row: int) -> bytes:
        """Commitment to primary sliver ``row`` (pair ``row``)."""
        self.config.check_index(row, "primary sliver")
        return self.hashes[row].primary

    def secondary_hash(self, column: int) -> bytes:
        """Commitment to secondary sliver ``column``, which pair n-1-column carries."""
        self.config.check_index(column, "secondary sliver")
        return self.hashes[self.n_shards - 1 - column].secondary

    def blob_root(self) -> bytes:
        """Merkle root over the n leaves primary_hash[i] || secondary_hash[i]."""
        return merkle.root(h.primary + h.secondary for h in self.hashes)

    def blob_id(self) -> BlobId:
        """Blob ID: H(encoding type || length as u64 LE || blob root)."""
        header = struct.pack("<BQ", self.encoding_type, self.unencoded_length)
        return BlobId(merkle.blake2b256(header + self.blob_root()))

    def verify(self, blob_id: BlobId) -> None:
        """Raise ``VerificationError`` unless this metadata belongs to ``blob_id``."""
        actual = self.blob_id()
        if actual != blob_id:
            raise VerificationError(
                f"metadata does not match blob ID {blob_id}: it commits to {actual}"
            )
