"""The quilt format (pure): round trips, each patch on its own whole rows, hostile bytes, limits."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import blob_bytes
from walrusfs.core import quilt as q
from walrusfs.core.config import EncodingConfig
from walrusfs.core.metadata import BlobId
from walrusfs.core.quilt import (
    Patch,
    PatchEntry,
    PatchId,
    QuiltError,
    build_quilt,
    check_patch_extent,
    decode_index,
    decode_patch,
    decode_patch_header,
    decode_quilt,
    index_length,
    max_patches,
    patch_range,
)
from walrusfs.core.redstuff import (
    encode_blob,
    primary_slivers_of,
    rows_for_range,
    verify_sliver,
)

quilt_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Committees from the smallest (one patch per quilt) to ones with room for many.
SHARDS = (4, 7, 10, 13, 31, 100)

identifiers = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12,
).filter(lambda s: s.rstrip() == s)
tag_maps = st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=10), max_size=3)


@st.composite
def quilts(draw: st.DrawFn, shards: tuple[int, ...] = SHARDS) -> tuple[EncodingConfig, list[Patch]]:
    """A committee and patches that fit one quilt on it (empty data, tags or not, sizes that differ)."""
    config = EncodingConfig(draw(st.sampled_from(shards)))
    names = draw(st.lists(identifiers, min_size=1, max_size=min(6, max_patches(config)), unique=True))
    patches = []
    for k, name in enumerate(names):
        size = draw(st.one_of(st.just(0), st.integers(0, 64), st.integers(0, 5000)))
        patches.append(Patch(name, blob_bytes(draw(st.integers(0, 2**16)) + k, size), draw(tag_maps)))
    return config, patches


@given(quilts())
@quilt_settings
def test_round_trip(case: tuple[EncodingConfig, list[Patch]]) -> None:
    config, patches = case
    built = build_quilt(patches, config)
    # An ordinary blob whose symbol size is the one the quilt was laid out for.
    assert config.symbol_size(len(built.data)) == built.symbol_size
    assert len(built.data) == config.primary_source_symbols * built.row_length
    decoded = decode_quilt(built.data, config)
    assert decoded.patches == tuple(patches)
    assert decoded.index == built.index
    assert [e.identifier for e in built.index.entries] == [p.identifier for p in patches]
    # The index alone, from its own rows.
    assert decode_index(built.data[:built.index.rows.stop * built.row_length], config, len(built.data)) == built.index
    assert index_length(built.data[:5]) <= built.index.rows.stop * built.row_length
    for patch, entry, (offset, size) in zip(patches, built.index.entries, built.data_ranges):
        assert built.data[offset:offset + size] == patch.data
        assert built.index.find(patch.identifier) == entry
        quilt_id = BlobId(blob_bytes(entry.start, 32))
        assert PatchId.parse(str(entry.patch_id(quilt_id))) == entry.patch_id(quilt_id)


@given(quilts(shards=(4, 7, 10, 13)), st.data())
@quilt_settings
def test_each_patch_is_exactly_its_own_rows(case: tuple[EncodingConfig, list[Patch]], data: st.DataObject) -> None:
    config, patches = case
    built = build_quilt(patches, config)
    encoded = encode_blob(built.data, config)
    covered: list[int] = list(built.index.rows)
    for patch, entry, (offset, size) in zip(patches, built.index.entries, built.data_ranges):
        start, length = patch_range(config, len(built.data), entry)
        # The range read of the patch fetches exactly its rows, and its data lies in them.
        assert list(rows_for_range(config, len(built.data), start, length)) == list(entry.rows)
        assert set(rows_for_range(config, len(built.data), offset, size)) <= set(entry.rows)
        # Its primary slivers, as peers store them, verify and decode to the patch alone.
        slivers = [encoded.pairs[r].primary for r in entry.rows]
        for sliver in slivers:
            verify_sliver(encoded.metadata, sliver)
        assert decode_patch(b"".join(s.data for s in slivers), built.row_length) == patch
        assert b"".join(s.data for s in primary_slivers_of(built.data, config, entry.rows)) == \
            built.data[start:start + length]
        covered += list(entry.rows)
    # Rows are the index's and the patches', each once, in order; the rest are zeros.
    assert covered == list(range(len(covered)))
    assert not any(built.data[len(covered) * built.row_length:])
    # Changing another patch (same size) leaves this patch's slivers as they were.
    if len(patches) > 1:
        k = data.draw(st.integers(0, len(patches) - 1))
        other = patches[k]
        changed = [*patches[:k], Patch(other.identifier, bytes(b ^ 0xFF for b in other.data), other.tags),
                   *patches[k + 1:]]
        rebuilt = build_quilt(changed, config)
        for j, entry in enumerate(built.index.entries):
            if j != k:
                start, length = patch_range(config, len(built.data), entry)
                assert rebuilt.data[start:start + length] == built.data[start:start + length]


@given(st.binary(max_size=600), st.sampled_from(SHARDS))
@settings(max_examples=800, deadline=None)
def test_decoders_raise_only_quilt_error_on_arbitrary_bytes(data: bytes, n: int) -> None:
    config = EncodingConfig(n)
    p, s = config.primary_source_symbols, config.secondary_source_symbols
    for call in (
        lambda: decode_quilt(data, config),
        lambda: decode_index(data, config, len(data)),
        lambda: decode_index(data, config, p * s * 2 * max(1, len(data) // (p * s * 2))),
        lambda: decode_patch(data, max(1, len(data) // 3)),
        lambda: decode_patch(data, max(1, len(data))),
        lambda: decode_patch_header(data),
        lambda: check_patch_extent(decode_patch_header(data), max(1, len(data)), max(1, len(data) // 2)),
        lambda: index_length(data),
        lambda: PatchId.from_bytes(data),
        lambda: PatchId.parse(data.decode("latin-1")),
        lambda: PatchId.parse(base64.urlsafe_b64encode(data[:37]).rstrip(b"=").decode()),
    ):
        try:
            call()
        except QuiltError:
            pass


@given(quilts(), st.data())
@quilt_settings
def test_mutated_quilts_raise_only_quilt_error_or_decode_canonically(
        case: tuple[EncodingConfig, list[Patch]], data: st.DataObject) -> None:
    config, patches = case
    built = build_quilt(patches, config)
    raw = bytearray(built.data)
    edit = data.draw(st.sampled_from(["flip", "truncate", "extend", "header"]))
    if edit == "flip":
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw[at] ^= data.draw(st.integers(1, 255))
    elif edit == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    elif edit == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    else:  # the index length, a count, a row number: the fields a liar would pick
        at = data.draw(st.integers(0, min(len(raw), 40) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    mutated = bytes(raw)
    try:
        decoded = decode_quilt(mutated, config)
    except QuiltError:
        pass
    else:  # Whatever decodes is the one canonical quilt of what it decoded to.
        assert build_quilt(decoded.patches, config).data == mutated
    for entry in built.index.entries:
        start, length = patch_range(config, len(built.data), entry)
        try:
            decode_patch(mutated[start:start + length], built.row_length)
        except QuiltError:
            pass
    try:
        decode_index(mutated, config, len(mutated))
    except QuiltError:
        pass


@given(quilts(), st.data())
@quilt_settings
def test_a_patch_read_in_pieces_is_judged_as_decode_patch_judges_it(
        case: tuple[EncodingConfig, list[Patch]], data: st.DataObject) -> None:
    """What a streaming reader checks (header from the first bytes, extent, zeros after the data) is decode_patch's verdict.

    The gateway decodes a patch's header from its first MAX_PATCH_HEADER_BYTES, checks the
    extent from the numbers alone and the padding as the last row passes; on intact and on
    tampered rows that must accept and refuse exactly what decode_patch does.
    """
    config, patches = case
    built = build_quilt(patches, config)
    entry = data.draw(st.sampled_from(built.index.entries))
    start, length = patch_range(config, len(built.data), entry)
    region = bytearray(built.data[start:start + length])
    if data.draw(st.booleans()):
        for at in data.draw(st.lists(st.integers(0, len(region) - 1), min_size=1, max_size=3)):
            region[at] ^= data.draw(st.integers(1, 255))
    region = bytes(region)
    try:
        whole: Patch | None = decode_patch(region, built.row_length)
    except QuiltError:
        whole = None
    try:
        header = decode_patch_header(region[:q.MAX_PATCH_HEADER_BYTES])
        check_patch_extent(header, len(region), built.row_length)
        end = header.size + header.data_length
        if any(region[end:]):
            raise QuiltError("padding")
        pieces: Patch | None = Patch(header.identifier, region[header.size:end], header.tags)
    except QuiltError:
        pieces = None
    assert pieces == whole


def test_quilt_is_canonical_symbol_size_and_trailing_rows() -> None:
    config = EncodingConfig(10)
    built = build_quilt([Patch("a", b"x" * 100), Patch("b", b"y" * 10)], config)
    assert decode_quilt(built.data, config).patches[0].data == b"x" * 100
    p = config.primary_source_symbols
    # The same layout with twice the symbol size (each row padded with zeros) is not canonical.
    rows = [built.data[r * built.row_length:(r + 1) * built.row_length] for r in range(p)]
    padded = b"".join(row + bytes(len(row)) for row in rows)
    with pytest.raises(QuiltError):
        decode_quilt(padded, config)
    # Junk after the last patch is refused too (tiny patches leave rows free at 2-byte symbols).
    config = EncodingConfig(31)
    built = build_quilt([Patch("a", b"x"), Patch("b", b"y")], config)
    end = built.index.entries[-1].end
    assert built.symbol_size == 2 and end < config.primary_source_symbols
    junk = bytearray(built.data)
    junk[end * built.row_length] = 1
    with pytest.raises(QuiltError, match="canonical"):
        decode_quilt(bytes(junk), config)


def test_patch_id_matches_walrus_layout_and_rejects_bad_text() -> None:
    quilt_id = BlobId(bytes(range(32)))
    pid = PatchId(quilt_id, 3, 7)
    assert pid.to_bytes() == quilt_id.raw + bytes([1, 3, 0, 7, 0])
    text = str(pid)
    assert len(text) == 50 and "=" not in text
    assert PatchId.parse(text) == pid
    assert PatchId.parse(f"  {text}\n") == pid
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(text[-1])
    for bad, why in [
        (text[:-1], "50 characters"),
        (text[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1], "non-canonical"),
        (text[:10] + "+" + text[11:], "A-Z"),
        (base64.urlsafe_b64encode(quilt_id.raw + bytes([2, 3, 0, 7, 0])).rstrip(b"=").decode(), "version"),
    ]:
        with pytest.raises(QuiltError, match=why):
            PatchId.parse(bad)
    for start, end in [(5, 5), (6, 5), (0, 0x10000)]:
        with pytest.raises(QuiltError, match="start < end"):
            PatchId(quilt_id, start, end)


@pytest.mark.parametrize(("patches", "n", "why"), [
    ([], 7, "at least one patch"),
    ([Patch(f"f{k}", b"") for k in range(3)], 7, "holds at most 2"),
    ([Patch("f", b"")] * 2, 10, "appears twice"),
    ([Patch("", b"")], 7, "empty"),
    ([Patch("x" * 4097, b"")], 7, "at most 4096"),
    ([Patch("trailing ", b"")], 7, "whitespace"),
    ([Patch("bell\x07", b"")], 7, "control"),
    ([Patch("\ud800", b"")], 7, "surrogate"),
    ([Patch("t", b"", {"": "v"})], 7, "must not be empty"),
    ([Patch("t", b"", {"k": "v" * 65536})], 7, "exceeds"),
    ([Patch("t", b"", {f"k{k}": "v" * 30000 for k in range(3)})], 7, "at most 65535"),
    ([Patch("t", b"", (("k", "a"), ("k", "b")))], 7, "repeated"),
])
def test_limits_are_enforced_with_clear_errors(patches: list[Patch], n: int, why: str) -> None:
    with pytest.raises(QuiltError, match=why):
        build_quilt(patches, EncodingConfig(n))


def test_index_and_symbol_size_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EncodingConfig(13)
    monkeypatch.setattr(q, "MAX_INDEX_BYTES", 100)
    with pytest.raises(QuiltError, match="index of these patches takes"):
        build_quilt([Patch(f"name-{k}" * 5, b"") for k in range(3)], config)
    # A reader refuses an index longer than the limit before fetching it.
    with pytest.raises(QuiltError, match="at most 100"):
        index_length(struct.pack("<BI", 1, 101))
    monkeypatch.undo()
    small = EncodingConfig(7, max_symbol_size=64)
    with pytest.raises(QuiltError, match="symbols"):
        build_quilt([Patch("big", bytes(10_000))], small)


def test_patches_and_index_that_lie_about_rows_are_refused() -> None:
    config = EncodingConfig(13)
    built = build_quilt([Patch("a", b"1" * 50), Patch("b", b"2" * 300), Patch("c", b"3")], config)
    a, b, _ = built.index.entries
    # A patch ID pointing into the middle of a patch, or at two patches, does not decode.
    with pytest.raises(QuiltError):
        decode_patch(built.data[(b.start + 1) * built.row_length:b.end * built.row_length], built.row_length)
    with pytest.raises(QuiltError, match="fewest rows"):
        decode_patch(built.data[a.start * built.row_length:b.end * built.row_length], built.row_length)
    with pytest.raises(QuiltError, match="past the"):
        patch_range(config, len(built.data), PatchEntry("z", (), 1, config.primary_source_symbols + 1))
    # A gap between patches in the index.
    raw = bytearray(built.data)
    at = 5 + 2 + 4 + 2 + 1 + 2  # second entry's start row
    struct.pack_into("<H", raw, at, b.start + 1)
    with pytest.raises(QuiltError, match="expected to start"):
        decode_index(bytes(raw), config, len(raw))
    # Not a quilt at all: wrong length for the matrix, wrong version.
    with pytest.raises(QuiltError, match="not a quilt"):
        decode_quilt(built.data[:-2], config)
    with pytest.raises(QuiltError, match="version"):
        index_length(b"\x02" + built.data[1:5])
