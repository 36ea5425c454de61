"""Signed storage confirmations, invalid-blob attestations and the certificates they form.

A peer signs a confirmation only after it durably stored verified slivers. The signed
bytes are Walrus's: an intent prefix (type 1 = storage confirmation, version 0, app 3),
the epoch as u32 little-endian, the blob ID, and the blob type: 0 for a permanent blob, or
1 and a 32-byte object ID for a deletable one (the registration's ID; see ``lifecycle``),
so a certificate binds the one registration it was gathered for. A peer
signs an invalid-blob attestation only after it verified an inconsistency proof; its bytes
are Walrus's too: intent type 2, the epoch and the blob ID. The intent prefix keeps each
kind of signed bytes from ever meaning anything else walrusfs signs.

An availability certificate is the confirmations of peers holding at least 2f + 1 shards;
an invalid-blob certificate is the attestations of peers holding at least f + 1 (so at
least one honest peer checked the proof). Anyone with the committee file can check either.
Checks here are pure; PyNaCl does the Ed25519 arithmetic.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .committee import Committee
from .errors import VerificationError
from .metadata import BlobId

INTENT_STORAGE_CONFIRMATION = 1
INTENT_INVALID_BLOB = 2
INTENT_VERSION = 0
APP_ID_STORAGE = 3
BLOB_TYPE_PERMANENT = 0
BLOB_TYPE_DELETABLE = 1
SIGNATURE_SIZE = 64


def confirmation_bytes(epoch: int, blob_id: BlobId, object_id: bytes | None = None) -> bytes:
    """The exact bytes a peer signs to confirm it stores its slivers of ``blob_id`` (deletable: for ``object_id``)."""
    kind = bytes([BLOB_TYPE_PERMANENT]) if object_id is None else bytes([BLOB_TYPE_DELETABLE]) + object_id
    if object_id is not None and len(object_id) != 32:
        raise VerificationError("a deletable blob's object ID is 32 bytes")
    return (
        bytes([INTENT_STORAGE_CONFIRMATION, INTENT_VERSION, APP_ID_STORAGE])
        + struct.pack("<I", epoch)
        + blob_id.raw
        + kind
    )


def invalid_blob_bytes(epoch: int, blob_id: BlobId) -> bytes:
    """The exact bytes a peer signs to attest that ``blob_id`` was encoded inconsistently."""
    return bytes([INTENT_INVALID_BLOB, INTENT_VERSION, APP_ID_STORAGE]) + struct.pack("<I", epoch) + blob_id.raw


def sign_invalid_blob(key: SigningKey, epoch: int, blob_id: BlobId) -> bytes:
    """A 64-byte Ed25519 attestation that ``blob_id`` is invalid."""
    return key.sign(invalid_blob_bytes(epoch, blob_id)).signature


def _check_signature(public_key: bytes, message: bytes, signature: bytes, what: str) -> None:
    if len(signature) != SIGNATURE_SIZE:
        raise VerificationError(f"a signature is {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        VerifyKey(public_key).verify(message, signature)
    except BadSignatureError as exc:
        raise VerificationError(f"{what} signature is invalid") from exc


def verify_invalid_blob(public_key: bytes, epoch: int, blob_id: BlobId, signature: bytes) -> None:
    """Raise ``VerificationError`` unless ``signature`` attests ``blob_id`` invalid for ``epoch``."""
    _check_signature(public_key, invalid_blob_bytes(epoch, blob_id), signature, "invalid-blob attestation")


def sign_confirmation(key: SigningKey, epoch: int, blob_id: BlobId, object_id: bytes | None = None) -> bytes:
    """A 64-byte Ed25519 signature over the confirmation bytes."""
    return key.sign(confirmation_bytes(epoch, blob_id, object_id)).signature


def verify_confirmation(public_key: bytes, epoch: int, blob_id: BlobId, signature: bytes,
                        object_id: bytes | None = None) -> None:
    """Raise ``VerificationError`` unless ``signature`` confirms ``blob_id`` for ``epoch`` (and ``object_id``)."""
    _check_signature(public_key, confirmation_bytes(epoch, blob_id, object_id), signature, "storage confirmation")


@dataclass(frozen=True)
class Certificate:
    """Confirmations (or, with ``invalid``, invalid-blob attestations) of ``blob_id`` by the listed members."""

    blob_id: BlobId
    epoch: int
    signers: tuple[int, ...]  # indices into the committee's peer list, ascending
    signatures: tuple[bytes, ...]
    invalid: bool = False
    #: The object ID the confirmations name: the registration's ID (deletable or permanent).
    #: None only in Walrus's permanent form, which no walrusfs peer signs any more.
    object_id: bytes | None = None

    def to_wire(self) -> dict[str, object]:
        """The certificate as a wire/JSON-friendly map."""
        out: dict[str, object] = {
            "blob_id": self.blob_id.raw,
            "epoch": self.epoch,
            "signers": list(self.signers),
            "signatures": list(self.signatures),
        }
        if self.object_id is not None:
            out["object_id"] = self.object_id
        return out


def _verifier(invalid: bool, object_id: bytes | None = None) -> Callable[[bytes, int, BlobId, bytes], None]:
    if invalid:
        return verify_invalid_blob
    return lambda key, epoch, blob_id, signature: verify_confirmation(key, epoch, blob_id, signature, object_id)


def assemble_certificate(
    committee: Committee, blob_id: BlobId, confirmations: Iterable[tuple[int, bytes]], invalid: bool = False,
    object_id: bytes | None = None,
) -> Certificate:
    """Certificate from (peer index, signature) pairs; invalid or duplicate ones are dropped.

    Raises ``VerificationError`` when the valid ones hold fewer shards than the certificate
    needs (2f + 1 for availability, f + 1 with ``invalid``).
    """
    verify = _verifier(invalid, object_id)
    valid: dict[int, bytes] = {}
    for index, signature in confirmations:
        if index in valid or not 0 <= index < len(committee.peers):
            continue
        try:
            verify(committee.peers[index].public_key, committee.epoch, blob_id, signature)
        except VerificationError:
            continue
        valid[index] = signature
    certificate = Certificate(
        blob_id, committee.epoch, tuple(sorted(valid)), tuple(valid[i] for i in sorted(valid)), invalid, object_id
    )
    verify_certificate(committee, certificate)
    return certificate


def verify_certificate(committee: Committee, certificate: Certificate) -> None:
    """Raise ``VerificationError`` unless enough shards' worth of distinct members signed.

    An availability certificate needs 2f + 1 shards, an invalid-blob certificate f + 1.
    """
    if certificate.epoch != committee.epoch:
        raise VerificationError(
            f"certificate is for epoch {certificate.epoch}, the committee is at epoch {committee.epoch}"
        )
    if len(certificate.signers) != len(certificate.signatures):
        raise VerificationError("certificate has a different number of signers and signatures")
    if len(set(certificate.signers)) != len(certificate.signers):
        raise VerificationError("certificate lists a signer twice")
    for index, signature in zip(certificate.signers, certificate.signatures):
        if not 0 <= index < len(committee.peers):
            raise VerificationError(f"certificate signer {index} is not a committee member")
        _verifier(certificate.invalid, certificate.object_id)(committee.peers[index].public_key, certificate.epoch, certificate.blob_id,
                                       signature)
    weight = committee.weight(certificate.signers)
    needed, rule = ((committee.validity_threshold, "f + 1") if certificate.invalid else (committee.quorum, "2f + 1"))
    if weight < needed:
        raise VerificationError(
            f"certificate signers hold {weight} shards, {'an invalid-blob' if certificate.invalid else 'a'} "
            f"certificate needs {needed} ({rule} of {committee.n_shards})"
        )
