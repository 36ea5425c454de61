"""Blob IDs: the Walrus reference vector, printing and parsing, metadata verification."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walrusfs.core.config import EncodingConfig
from walrusfs.core.errors import InvalidBlobId, InvalidParameter, VerificationError
from walrusfs.core.metadata import BlobId, BlobMetadata
from walrusfs.core.redstuff import blob_id_of, compute_metadata

REFERENCE_BLOB = b"walrus blob id v1 regression test"
REFERENCE_ID = "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY"


def test_walrus_reference_vector() -> None:
    assert str(blob_id_of(REFERENCE_BLOB, 10)) == REFERENCE_ID
    assert EncodingConfig(10).symbol_size(len(REFERENCE_BLOB)) == 2


@given(st.binary(min_size=32, max_size=32))
def test_print_parse_round_trip(raw: bytes) -> None:
    blob_id = BlobId(raw)
    text = str(blob_id)
    assert len(text) == 43 and "=" not in text
    assert BlobId.parse(text) == blob_id


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "43 characters"),
        (REFERENCE_ID[:-1], "43 characters"),
        (REFERENCE_ID + "=", "43 characters"),
        (REFERENCE_ID[:-1] + "+", "only A-Z"),
        (REFERENCE_ID[:-1] + "/", "only A-Z"),
        (REFERENCE_ID[:20] + " " + REFERENCE_ID[21:], "only A-Z"),
        # Same bytes, different unused low bits in the last character.
        (REFERENCE_ID[:-1] + "l", "non-canonical"),
    ],
)
def test_garbage_blob_ids_are_rejected_with_reasons(text: str, reason: str) -> None:
    with pytest.raises(InvalidBlobId, match=reason):
        BlobId.parse(text)


def test_blob_id_type_errors() -> None:
    with pytest.raises(InvalidBlobId, match="32 bytes"):
        BlobId(b"\x00" * 31)
    with pytest.raises(InvalidBlobId, match="string"):
        BlobId.parse(b"abc")  # type: ignore[arg-type]


def test_pair_shard_rotation_round_trips() -> None:
    blob_id = blob_id_of(REFERENCE_BLOB, 10)
    rotation = int.from_bytes(blob_id.raw, "big") % 10
    assert [blob_id.shard_for_pair(i, 10) for i in range(10)] == [(i + rotation) % 10 for i in range(10)]
    assert all(blob_id.pair_for_shard(blob_id.shard_for_pair(i, 10), 10) == i for i in range(10))
    with pytest.raises(InvalidParameter):
        blob_id.shard_for_pair(10, 10)


@given(st.data())
def test_any_change_to_metadata_breaks_the_blob_id(data: st.DataObject) -> None:
    n = data.draw(st.sampled_from([4, 7, 10]))
    blob = data.draw(st.binary(max_size=3000))
    metadata = compute_metadata(blob, EncodingConfig(n))
    blob_id = metadata.blob_id()
    metadata.verify(blob_id)
    pair = data.draw(st.integers(0, n - 1))
    field = data.draw(st.sampled_from(["primary", "secondary"]))
    byte = data.draw(st.integers(0, 31))
    hashes = list(metadata.hashes)
    value = bytearray(getattr(hashes[pair], field))
    value[byte] ^= 1 << data.draw(st.integers(0, 7))
    hashes[pair] = dataclasses.replace(hashes[pair], **{field: bytes(value)})
    tampered = dataclasses.replace(metadata, hashes=tuple(hashes))
    with pytest.raises(VerificationError, match="does not match blob ID"):
        tampered.verify(blob_id)
    other_length = dataclasses.replace(metadata, unencoded_length=metadata.unencoded_length + 1)
    with pytest.raises(VerificationError):
        other_length.verify(blob_id)


def test_malformed_metadata_is_rejected() -> None:
    metadata = compute_metadata(b"abc", EncodingConfig(4))
    with pytest.raises(InvalidParameter, match="encoding type"):
        dataclasses.replace(metadata, encoding_type=2)
    with pytest.raises(InvalidParameter, match="shard count"):
        BlobMetadata(1, 3, metadata.hashes[:3])
    with pytest.raises(InvalidParameter, match="exceeds the maximum"):
        dataclasses.replace(metadata, unencoded_length=EncodingConfig(4).max_blob_size + 1)
    with pytest.raises(InvalidParameter, match="32 bytes"):
        dataclasses.replace(metadata.hashes[0], primary=b"short")
