"""Quilts: many small files packed into one blob, each on whole rows of the RedStuff matrix (pure).

A quilt is an ordinary blob whose bytes fill the whole p x s message matrix. Its rows
(primary slivers) are split into runs: the first run holds the index, and every file
(a *patch*: identifier, optional tags, data) gets a run of whole rows of its own. Reading
one patch is then a range read of exactly its rows, verified against their commitments,
and nothing of any other patch is fetched.

Why rows, when Walrus's quilts use columns (secondary slivers): walrusfs fills the matrix
row-major, so a run of rows is a contiguous byte range of the blob. The client's ordinary
range read (``rows_for_range`` -> fetch those primary slivers -> ``decode_primary``) already
fetches exactly those slivers, falls back to decoding from any p primary or s secondary
slivers when one is bad or missing, and runs the consistency check on that path; the row
commitments bind the systematic rows, so both paths return the same bytes or fail.
Columns would need a second read path and, as Walrus notes, the strict consistency check
to get that guarantee. The price: there are p = n - 2f rows but s = n - f columns, so a
quilt holds at most p - 1 patches (``max_patches``): 1 at n = 4, 2 at n = 7, 53 at n = 160.

Byte layout (all integers little-endian, as Walrus's QuiltV1):

    rows [0, k)      u8 version (1) | u32 L | index (L bytes) | zeros to the end of row k-1
    index            u16 count | count x (u16 start | u16 end | u16 id length | identifier
                     | u16 tags length | tags)
    tags             (u16 key length | key | u16 value length | value)*, keys strictly
                     increasing (UTF-8 byte order, as a BTreeMap), keys non-empty
    rows [a, b)      u8 version (1) | u32 data length | u8 mask (bit 0: has tags; the rest 0)
    of one patch     | u16 id length | identifier | [u16 tags length | tags] | data
                     | zeros to the end of row b-1
    rows [m, p)      zeros (after the last patch)

Patches follow the index and each other with no gap, each on the fewest rows it fits, and
the symbol size is the smallest (even) one that fits everything: so a set of patches has
exactly one quilt, and ``decode_quilt`` refuses any other byte form. Each patch carries
its identifier and tags, so one read by patch ID needs no index.

A patch ID is the quilt's blob ID followed by Walrus's 5-byte internal ID (u8 version,
u16 start row, u16 end row), printed as URL-safe base64 without padding (50 characters).
Like Walrus's, it names rows, not content: the same file in another quilt has another ID.

Every decoder (``PatchId.parse``, ``index_length``, ``decode_index``, ``decode_patch``,
``decode_quilt``) raises only ``QuiltError``, and runs in time linear in its input. So do
the builder's checks of limits (``MAX_PATCHES``, ``MAX_IDENTIFIER_BYTES``,
``MAX_TAGS_BYTES``, ``MAX_INDEX_BYTES``, ``MAX_DATA_BYTES``, the committee's ``max_patches``).
"""

from __future__ import annotations

import base64
import binascii
import struct
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import EncodingConfig
from .errors import CodecError
from .metadata import BLOB_ID_LENGTH, BlobId

QUILT_VERSION = 1
#: Walrus's QuiltV1 holds at most 666 patches (a 1000-shard committee's columns less one).
MAX_PATCHES = 666
#: An identifier is a path-like name: PATH_MAX bytes of UTF-8 at most (Walrus allows 65535).
MAX_IDENTIFIER_BYTES = 4096
#: One patch's tags, encoded: a u16 length, Walrus's 64 KiB.
MAX_TAGS_BYTES = 0xFFFF
#: The index (identifiers and tags of every patch) is read before any patch; bound it.
MAX_INDEX_BYTES = 4 << 20
#: A patch's data length is a u32, as in Walrus's 6-byte blob header.
MAX_DATA_BYTES = 0xFFFFFFFF
#: Bytes of the quilt header (version, index length) before the index.
QUILT_HEADER_BYTES = 5
#: Bytes of a patch header before its identifier: version, data length, mask, id length.
PATCH_HEADER_BYTES = 8
HAS_TAGS = 0x01
#: The longest a patch header can be (fixed fields, a 4096-byte identifier, 64 KiB of tags):
#: a reader that fetches this much of a patch's first rows can always decode its header.
MAX_PATCH_HEADER_BYTES = PATCH_HEADER_BYTES + MAX_IDENTIFIER_BYTES + 2 + MAX_TAGS_BYTES
INTERNAL_ID_BYTES = 5
PATCH_ID_BYTES = BLOB_ID_LENGTH + INTERNAL_ID_BYTES
PATCH_ID_TEXT_LENGTH = 50  # 37 bytes in unpadded base64
_ROW_LIMIT = 0xFFFF  # rows are u16 in the index and in patch IDs
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

Tags = tuple[tuple[str, str], ...]


class QuiltError(CodecError, ValueError):
    """A quilt, index, patch or patch ID is malformed, or a quilt would exceed a limit."""


def _normal_tags(tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> Tags:
    items = list(tags.items()) if isinstance(tags, Mapping) else list(tags)
    try:
        return tuple(sorted((k, v) for k, v in items))
    except (TypeError, ValueError) as exc:
        raise QuiltError(f"tags must be text keys and values: {exc}") from None


@dataclass(frozen=True)
class Patch:
    """One file of a quilt: its identifier (unique in the quilt), optional tags and data."""

    identifier: str
    data: bytes
    #: Sorted (key, value) pairs; a mapping is accepted and sorted.
    tags: Tags = ()

    def __post_init__(self) -> None:
        if isinstance(self.data, (bytearray, memoryview)):
            object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "tags", _normal_tags(self.tags))

    @property
    def tag_dict(self) -> dict[str, str]:
        """The tags as a dict."""
        return dict(self.tags)


@dataclass(frozen=True)
class PatchId:
    """A patch's ID: its quilt's blob ID and rows [start, end) (Walrus's QuiltPatchId)."""

    quilt_id: BlobId
    start: int
    end: int
    version: int = QUILT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.quilt_id, BlobId):
            raise QuiltError(f"a patch ID's quilt ID must be a BlobId, got {type(self.quilt_id).__name__}")
        if self.version != QUILT_VERSION:
            raise QuiltError(f"unknown quilt version {self.version!r} in a patch ID (this build reads {QUILT_VERSION})")
        if not (type(self.start) is int and type(self.end) is int and 0 <= self.start < self.end <= _ROW_LIMIT):
            raise QuiltError(f"a patch ID names rows 0 <= start < end <= {_ROW_LIMIT}, got {self.start!r}..{self.end!r}")

    def internal_id(self) -> bytes:
        """Walrus's internal ID: u8 version, u16 start, u16 end (little-endian)."""
        return struct.pack("<BHH", self.version, self.start, self.end)

    def to_bytes(self) -> bytes:
        """The 37 bytes: blob ID then internal ID."""
        return self.quilt_id.raw + self.internal_id()

    def __str__(self) -> str:
        return base64.urlsafe_b64encode(self.to_bytes()).rstrip(b"=").decode("ascii")

    @classmethod
    def from_bytes(cls, raw: bytes) -> PatchId:
        """Parse the 37-byte form; raise ``QuiltError`` saying what is wrong."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != PATCH_ID_BYTES:
            got = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
            raise QuiltError(f"a patch ID is {PATCH_ID_BYTES} bytes, got {got}")
        version, start, end = struct.unpack("<BHH", bytes(raw[BLOB_ID_LENGTH:]))
        return cls(BlobId(bytes(raw[:BLOB_ID_LENGTH])), start, end, version)

    @classmethod
    def parse(cls, text: str) -> PatchId:
        """Parse the printed form; raise ``QuiltError`` saying what is wrong."""
        if not isinstance(text, str):
            raise QuiltError(f"a patch ID is a string, got {type(text).__name__}")
        stripped = text.strip()
        if len(stripped) != PATCH_ID_TEXT_LENGTH:
            raise QuiltError(f"a patch ID is {PATCH_ID_TEXT_LENGTH} characters of URL-safe base64 without "
                             f"padding, got {len(stripped)} characters: {text[:80]!r}")
        if not set(stripped) <= _ALPHABET:
            raise QuiltError(f"a patch ID uses only A-Z a-z 0-9 - _, got {text!r}")
        try:
            raw = base64.b64decode(stripped + "==", altchars=b"-_", validate=True)
        except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
            raise QuiltError(f"not URL-safe base64: {text!r}") from exc
        patch_id = cls.from_bytes(raw)
        if str(patch_id) != stripped:  # the last character carries unused bits
            raise QuiltError(f"non-canonical patch ID encoding: {text!r}")
        return patch_id


@dataclass(frozen=True)
class PatchEntry:
    """One index entry: a patch's identifier, tags and rows [start, end)."""

    identifier: str
    tags: Tags
    start: int
    end: int

    def patch_id(self, quilt_id: BlobId) -> PatchId:
        """This patch's ID in quilt ``quilt_id``."""
        return PatchId(quilt_id, self.start, self.end)

    @property
    def rows(self) -> range:
        """The primary slivers (rows) that hold this patch."""
        return range(self.start, self.end)


@dataclass(frozen=True)
class QuiltIndex:
    """The index of a quilt: its patches in row order."""

    entries: tuple[PatchEntry, ...]
    _by_identifier: dict[str, PatchEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_identifier", {e.identifier: e for e in self.entries})

    def find(self, identifier: str) -> PatchEntry | None:
        """The entry named ``identifier``, or None."""
        return self._by_identifier.get(identifier)

    @property
    def rows(self) -> range:
        """The rows the index itself occupies."""
        return range(0, self.entries[0].start if self.entries else 0)


@dataclass(frozen=True)
class BuiltQuilt:
    """What ``build_quilt`` returns: the quilt's bytes (store them as one blob) and where everything is."""

    data: bytes
    index: QuiltIndex
    symbol_size: int
    row_length: int
    #: (offset, length) of each patch's data within ``data``, in index order: a range read
    #: of the quilt blob at these bytes fetches only that patch's rows.
    data_ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PatchHeader:
    """What precedes a patch's data on its rows: identifier, tags, data length, and the header's own size."""

    identifier: str
    tags: Tags
    data_length: int
    #: Bytes of the header: the data starts this far into the patch's first row.
    size: int


@dataclass(frozen=True)
class DecodedQuilt:
    """A whole quilt, decoded: its index and its patches in the same order."""

    index: QuiltIndex
    patches: tuple[Patch, ...]


# ---------------------------------------------------------------------------- encoding


def check_identifier(identifier: object) -> bytes:
    """The UTF-8 bytes of a valid identifier; raise ``QuiltError`` saying why it is not one.

    As Walrus: non-empty, no trailing whitespace, no control characters; here also at most
    ``MAX_IDENTIFIER_BYTES`` bytes.
    """
    if not isinstance(identifier, str):
        raise QuiltError(f"an identifier is text, got {type(identifier).__name__}")
    try:
        raw = identifier.encode("utf-8")
    except UnicodeEncodeError:
        raise QuiltError(f"identifier {identifier[:80]!r} is not valid Unicode (lone surrogate)") from None
    if not raw:
        raise QuiltError("an identifier must not be empty")
    if len(raw) > MAX_IDENTIFIER_BYTES:
        raise QuiltError(f"identifier {identifier[:40]!r}... is {len(raw)} bytes; at most {MAX_IDENTIFIER_BYTES}")
    if identifier.rstrip() != identifier:
        raise QuiltError(f"identifier {identifier[:80]!r} ends in whitespace")
    if any(unicodedata.category(c) == "Cc" for c in identifier):
        raise QuiltError(f"identifier {identifier[:80]!r} contains control characters")
    return raw


def _utf8(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise QuiltError(f"{what} must be text, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise QuiltError(f"{what} {text[:80]!r} is not valid Unicode (lone surrogate)") from None


def encode_tags(tags: Tags, identifier: str = "") -> bytes:
    """The canonical encoding of sorted tags (without their u16 length); raise ``QuiltError`` past the limits."""
    parts = []
    previous: str | None = None
    for key, value in tags:
        raw_key, raw_value = _utf8(key, "a tag key"), _utf8(value, "a tag value")
        if not raw_key:
            raise QuiltError(f"patch {identifier!r}: a tag key must not be empty")
        if previous is not None and key <= previous:
            raise QuiltError(f"patch {identifier!r}: tag key {key!r} is repeated or out of order")
        if len(raw_key) > 0xFFFF or len(raw_value) > 0xFFFF:
            raise QuiltError(f"patch {identifier!r}: tag {key[:40]!r} exceeds {MAX_TAGS_BYTES} bytes")
        previous = key
        parts += [struct.pack("<H", len(raw_key)), raw_key, struct.pack("<H", len(raw_value)), raw_value]
    encoded = b"".join(parts)
    if len(encoded) > MAX_TAGS_BYTES:
        raise QuiltError(f"patch {identifier!r}: tags take {len(encoded)} bytes encoded; at most {MAX_TAGS_BYTES}")
    return encoded


def _patch_content(patch: Patch) -> tuple[bytes, bytes, bytes]:
    """A patch's identifier and tags, encoded, and its header (through its tags), after checking the limits."""
    if not isinstance(patch, Patch):
        raise QuiltError(f"a quilt is built from Patch objects, got {type(patch).__name__}")
    raw_id = check_identifier(patch.identifier)
    if not isinstance(patch.data, bytes):
        raise QuiltError(f"patch {patch.identifier!r}: data must be bytes, got {type(patch.data).__name__}")
    if len(patch.data) > MAX_DATA_BYTES:
        raise QuiltError(f"patch {patch.identifier!r} is {len(patch.data)} bytes; a patch holds at most {MAX_DATA_BYTES}")
    tags = encode_tags(patch.tags, patch.identifier)
    header = struct.pack("<BIBH", QUILT_VERSION, len(patch.data), HAS_TAGS if patch.tags else 0, len(raw_id)) + raw_id
    if patch.tags:
        header += struct.pack("<H", len(tags)) + tags
    return raw_id, tags, header


def _encode_index(entries: Sequence[tuple[bytes, bytes]], rows: Sequence[tuple[int, int]]) -> bytes:
    parts = [struct.pack("<H", len(entries))]
    for (raw_id, tags), (start, end) in zip(entries, rows):
        parts += [struct.pack("<HHH", start, end, len(raw_id)), raw_id, struct.pack("<H", len(tags)), tags]
    return b"".join(parts)


def max_patches(config: EncodingConfig) -> int:
    """Most patches a quilt can hold on this committee: p - 1 rows (the index takes at least one), capped at MAX_PATCHES."""
    return min(MAX_PATCHES, config.primary_source_symbols - 1)


def _rows(size: int, row_length: int) -> int:
    return -(-size // row_length)


def _symbol_size(sizes: Sequence[int], config: EncodingConfig) -> int:
    """The smallest even symbol size at which every region (index first) fits on whole rows."""
    p, s = config.primary_source_symbols, config.secondary_source_symbols

    def fits(half: int) -> bool:
        row_length = s * 2 * half
        return sum(_rows(size, row_length) for size in sizes) <= p

    # At ``high`` every region fits one row, and len(sizes) <= p was checked.
    high = max(1, _rows(max(sizes), 2 * s))
    low = 1
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return 2 * low


def build_quilt(patches: Sequence[Patch], config: EncodingConfig) -> BuiltQuilt:
    """Lay ``patches`` out as one quilt for ``config``'s committee; raise ``QuiltError`` past a limit.

    The result's ``data`` is stored as an ordinary blob (its length fills the whole matrix,
    so its symbol size is the one chosen here); ``index`` gives each patch's rows and
    ``data_ranges`` each patch's data bytes inside the blob.
    """
    if not isinstance(config, EncodingConfig):
        raise QuiltError(f"config must be an EncodingConfig, got {type(config).__name__}")
    patches = list(patches)
    if not patches:
        raise QuiltError("a quilt needs at least one patch")
    limit = max_patches(config)
    if len(patches) > limit:
        raise QuiltError(
            f"{len(patches)} patches do not fit one quilt on {config.n_shards} shards: it holds at most {limit} "
            f"(each patch takes whole rows of the {config.primary_source_symbols}-row matrix, after the index's)")
    contents = [_patch_content(patch) for patch in patches]
    seen: set[str] = set()
    for patch in patches:
        if patch.identifier in seen:
            raise QuiltError(f"identifier {patch.identifier!r} appears twice; identifiers are unique in a quilt")
        seen.add(patch.identifier)
    index_length = 2 + sum(8 + len(raw_id) + len(tags) for raw_id, tags, _ in contents)
    if index_length > MAX_INDEX_BYTES:
        raise QuiltError(f"the index of these patches takes {index_length} bytes; at most {MAX_INDEX_BYTES} "
                         "(shorter identifiers and tags, or fewer patches)")
    sizes = [QUILT_HEADER_BYTES + index_length] + [len(c[2]) + len(p.data) for c, p in zip(contents, patches)]
    symbol_size = _symbol_size(sizes, config)
    if symbol_size > config.max_symbol_size:
        raise QuiltError(
            f"these patches need {symbol_size}-byte symbols on {config.n_shards} shards (one blob allows at most "
            f"{config.max_symbol_size}): store fewer or smaller files in this quilt")
    rows, row_bytes = config.primary_source_symbols, config.secondary_source_symbols * symbol_size
    spans = []
    row = _rows(sizes[0], row_bytes)
    for size in sizes[1:]:
        spans.append((row, row + _rows(size, row_bytes)))
        row = spans[-1][1]
    buffer = bytearray(rows * row_bytes)
    index = _encode_index([(raw_id, tags) for raw_id, tags, _ in contents], spans)
    assert len(index) == index_length
    buffer[:sizes[0]] = struct.pack("<BI", QUILT_VERSION, len(index)) + index
    ranges = []
    for (_, _, header), patch, (start, _) in zip(contents, patches, spans):
        offset = start * row_bytes + len(header)
        buffer[offset - len(header):offset] = header
        buffer[offset:offset + len(patch.data)] = patch.data
        ranges.append((offset, len(patch.data)))
    entries = tuple(PatchEntry(patch.identifier, patch.tags, start, end) for patch, (start, end) in zip(patches, spans))
    return BuiltQuilt(bytes(buffer), QuiltIndex(entries), symbol_size, row_bytes, tuple(ranges))


# ---------------------------------------------------------------------------- geometry


def row_length(config: EncodingConfig, quilt_length: int) -> int:
    """Bytes per row of a quilt of ``quilt_length`` bytes; ``QuiltError`` if no quilt has that length.

    A quilt fills its whole matrix: its length is p * s * an even symbol size.
    """
    p, s = config.primary_source_symbols, config.secondary_source_symbols
    if not isinstance(quilt_length, int) or quilt_length <= 0 or quilt_length % (p * s) \
            or (quilt_length // (p * s)) % 2:
        raise QuiltError(f"a blob of {quilt_length!r} bytes is not a quilt on {config.n_shards} shards: a quilt fills "
                         f"the whole {p} x {s} matrix with even-sized symbols")
    if quilt_length // (p * s) > config.max_symbol_size:
        raise QuiltError(f"a blob of {quilt_length} bytes is larger than any blob on {config.n_shards} shards")
    return quilt_length // p


def patch_range(config: EncodingConfig, quilt_length: int, patch: PatchEntry | PatchId) -> tuple[int, int]:
    """(offset, length) of the bytes of ``patch``'s rows in the quilt: what a range read fetches, and only that."""
    length = row_length(config, quilt_length)
    if patch.end > config.primary_source_symbols:
        raise QuiltError(f"rows {patch.start}..{patch.end} are past the {config.primary_source_symbols} rows of a "
                         f"quilt on {config.n_shards} shards")
    return patch.start * length, (patch.end - patch.start) * length


# ---------------------------------------------------------------------------- decoding


class _Reader:
    """Bounds-checked little-endian reads from a byte string (every failure is a QuiltError)."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.pos:
            raise QuiltError(f"{self.what} is truncated: {count} bytes wanted at {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def text(self, count: int, what: str) -> str:
        raw = self.take(count)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise QuiltError(f"{self.what}: {what} is not valid UTF-8") from None


def _bytes(data: object, what: str) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if not isinstance(data, bytes):
        raise QuiltError(f"{what} must be bytes, got {type(data).__name__}")
    return data


def _decode_tags(raw: bytes, what: str) -> Tags:
    reader = _Reader(raw, what)
    tags = []
    while reader.pos < len(raw):
        key = reader.text(reader.u16(), "a tag key")
        value = reader.text(reader.u16(), "a tag value")
        if not key:
            raise QuiltError(f"{what}: a tag key is empty")
        if tags and key <= tags[-1][0]:
            raise QuiltError(f"{what}: tag key {key[:40]!r} is repeated or out of order")
        tags.append((key, value))
    return tuple(tags)


def _identifier(raw: bytes, what: str) -> str:
    try:
        identifier = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QuiltError(f"{what}: identifier is not valid UTF-8") from None
    check_identifier(identifier)
    return identifier


def _zeros(data: bytes, start: int, what: str) -> None:
    if data.count(0, start) != len(data) - start:
        raise QuiltError(f"{what}: padding after byte {start} is not all zeros")


def index_length(prefix: bytes) -> int:
    """Bytes the header and index take at the start of a quilt, from its first 5 bytes or more.

    Tells a reader how many rows to fetch for the index.
    """
    prefix = _bytes(prefix, "a quilt's first bytes")
    if len(prefix) < QUILT_HEADER_BYTES:
        raise QuiltError(f"a quilt starts with {QUILT_HEADER_BYTES} header bytes, got {len(prefix)}")
    version, length = struct.unpack_from("<BI", prefix)
    if version != QUILT_VERSION:
        raise QuiltError(f"not a quilt, or a quilt of unknown version {version} (this build reads {QUILT_VERSION})")
    if length > MAX_INDEX_BYTES:
        raise QuiltError(f"the quilt index claims {length} bytes; an index holds at most {MAX_INDEX_BYTES}")
    return QUILT_HEADER_BYTES + length


def decode_index(prefix: bytes, config: EncodingConfig, quilt_length: int) -> QuiltIndex:
    """The index of a quilt of ``quilt_length`` bytes from its first rows (at least the index's rows).

    Checks the index against the quilt's geometry: patches start right after the index's
    rows, follow each other with no gap and end within the matrix.
    """
    prefix = _bytes(prefix, "a quilt's first rows")
    length = row_length(config, quilt_length)
    total = index_length(prefix)
    first_row = _rows(total, length)
    if len(prefix) < first_row * length:
        raise QuiltError(f"the quilt index takes {first_row} rows ({total} bytes); got {len(prefix)} bytes")
    region = prefix[:first_row * length]
    _zeros(region, total, "quilt index rows")
    reader = _Reader(region[QUILT_HEADER_BYTES:total], "quilt index")
    count = reader.u16()
    if not 1 <= count <= min(MAX_PATCHES, config.primary_source_symbols - 1):
        raise QuiltError(f"the quilt index lists {count} patches; a quilt on {config.n_shards} shards holds "
                         f"1..{max_patches(config)}")
    entries = []
    seen: set[str] = set()
    row = first_row
    for k in range(count):
        start, end = reader.u16(), reader.u16()
        identifier = _identifier(reader.take(reader.u16()), f"quilt index entry {k}")
        tags_length = reader.u16()
        tags = _decode_tags(reader.take(tags_length), f"tags of index entry {k}")
        if start != row or not start < end <= config.primary_source_symbols:
            raise QuiltError(f"quilt index entry {k} ({identifier[:40]!r}) has rows {start}..{end}; expected to start "
                             f"at row {row} and end by row {config.primary_source_symbols}")
        if identifier in seen:
            raise QuiltError(f"identifier {identifier[:40]!r} appears twice in the quilt index")
        seen.add(identifier)
        entries.append(PatchEntry(identifier, tags, start, end))
        row = end
    if reader.pos != len(reader.data):
        raise QuiltError(f"the quilt index has {len(reader.data) - reader.pos} bytes after its last entry")
    return QuiltIndex(tuple(entries))


def decode_patch_header(prefix: bytes) -> PatchHeader:
    """The header at the start of a patch's rows, from at least its first bytes (``MAX_PATCH_HEADER_BYTES`` always do).

    Lets a reader stream a large patch's data without holding its rows: the data is the
    ``data_length`` bytes after ``size``. ``check_patch_extent`` and a check that the bytes
    after the data are zeros make the remaining checks ``decode_patch`` makes.
    """
    prefix = _bytes(prefix, "a patch's first bytes")
    reader = _Reader(prefix, "patch")
    version, data_length, mask, id_length = reader.u8(), reader.u32(), reader.u8(), reader.u16()
    if version != QUILT_VERSION:
        raise QuiltError(f"patch has version {version}; this build reads {QUILT_VERSION}")
    if mask & ~HAS_TAGS:
        raise QuiltError(f"patch header has unknown flags {mask:#04x}")
    identifier = _identifier(reader.take(id_length), "patch header")
    tags: Tags = ()
    if mask & HAS_TAGS:
        tags = _decode_tags(reader.take(reader.u16()), f"tags of patch {identifier[:40]!r}")
        if not tags:
            raise QuiltError(f"patch {identifier[:40]!r} says it has tags and has none")
    return PatchHeader(identifier, tags, data_length, reader.pos)


def check_patch_extent(header: PatchHeader, region_length: int, row_length: int) -> None:
    """Raise ``QuiltError`` unless the patch fits its ``region_length`` bytes of rows, and on the fewest rows."""
    if not isinstance(row_length, int) or row_length <= 0 or region_length <= 0 or region_length % row_length:
        raise QuiltError(f"a patch is read from whole rows of {row_length!r} bytes, got {region_length} bytes")
    end = header.size + header.data_length
    if end > region_length:
        raise QuiltError(f"patch is truncated: {header.data_length} bytes of data wanted at {header.size} of "
                         f"{region_length}")
    if region_length - end >= row_length:
        raise QuiltError(f"patch {header.identifier[:40]!r} ends {region_length - end} bytes before its last row "
                         "ends: a patch takes the fewest rows it fits")


def decode_patch(region: bytes, row_length: int) -> Patch:
    """The patch held by ``region``, the bytes of its rows (a whole number of rows of ``row_length`` bytes)."""
    region = _bytes(region, "a patch's rows")
    if not isinstance(row_length, int) or row_length <= 0 or not region or len(region) % row_length:
        raise QuiltError(f"a patch is read from whole rows of {row_length!r} bytes, got {len(region)} bytes")
    header = decode_patch_header(region)
    check_patch_extent(header, len(region), row_length)
    end = header.size + header.data_length
    _zeros(region, end, f"patch {header.identifier[:40]!r}")
    return Patch(header.identifier, region[header.size:end], header.tags)


def decode_quilt(data: bytes, config: EncodingConfig) -> DecodedQuilt:
    """Every patch of a whole quilt, checked to be the one canonical quilt of those patches."""
    data = _bytes(data, "a quilt")
    length = row_length(config, len(data))
    index = decode_index(data, config, len(data))
    patches = []
    for entry in index.entries:
        patch = decode_patch(data[entry.start * length:entry.end * length], length)
        check_patch_matches(patch, entry)
        patches.append(patch)
    # Everything else (the symbol size is the smallest that fits, the rows after the last
    # patch are zeros) holds iff building these patches again gives these bytes.
    if build_quilt(patches, config).data != data:
        raise QuiltError("not the canonical quilt of its patches (a larger symbol size than needed, or bytes "
                         "after the last patch)")
    return DecodedQuilt(index, tuple(patches))


def check_patch_matches(patch: Patch, entry: PatchEntry) -> None:
    """Raise ``QuiltError`` unless a patch read from ``entry``'s rows is the one the index names there."""
    if (patch.identifier, patch.tags) != (entry.identifier, entry.tags):
        raise QuiltError(f"rows {entry.start}..{entry.end} hold patch {patch.identifier[:40]!r}, the index says "
                         f"{entry.identifier[:40]!r} (or other tags)")

