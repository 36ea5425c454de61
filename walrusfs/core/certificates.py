"""Signed storage confirmations and availability certificates (the Point of Availability).

A peer signs a confirmation only after it durably stored verified slivers. The signed
bytes are Walrus's: an intent prefix (type 1 = storage confirmation, version 0, app 3),
the epoch as u32 little-endian, the blob ID, and the blob type (0 = permanent). The intent
prefix keeps these bytes from ever meaning anything else walrusfs signs.

A certificate is the confirmations of peers holding at least 2f + 1 shards; anyone with the
committee file can check it. Checks here are pure; PyNaCl does the Ed25519 arithmetic.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .committee import Committee
from .errors import VerificationError
from .metadata import BlobId

INTENT_STORAGE_CONFIRMATION = 1
INTENT_VERSION = 0
APP_ID_STORAGE = 3
BLOB_TYPE_PERMANENT = 0
SIGNATURE_SIZE = 64


def confirmation_bytes(epoch: int, blob_id: BlobId) -> bytes:
    """The exact bytes a peer signs to confirm it stores its slivers of ``blob_id``."""
    return (
        bytes([INTENT_STORAGE_CONFIRMATION, INTENT_VERSION, APP_ID_STORAGE])
        + struct.pack("<I", epoch)
        + blob_id.raw
        + bytes([BLOB_TYPE_PERMANENT])
    )


def sign_confirmation(key: SigningKey, epoch: int, blob_id: BlobId) -> bytes:
    """A 64-byte Ed25519 signature over the confirmation bytes."""
    return key.sign(confirmation_bytes(epoch, blob_id)).signature


def verify_confirmation(public_key: bytes, epoch: int, blob_id: BlobId, signature: bytes) -> None:
    """Raise ``VerificationError`` unless ``signature`` confirms ``blob_id`` for ``epoch``."""
    if len(signature) != SIGNATURE_SIZE:
        raise VerificationError(f"a signature is {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        VerifyKey(public_key).verify(confirmation_bytes(epoch, blob_id), signature)
    except BadSignatureError as exc:
        raise VerificationError("storage confirmation signature is invalid") from exc


@dataclass(frozen=True)
class Certificate:
    """Availability certificate: confirmations of ``blob_id`` by the listed committee members."""

    blob_id: BlobId
    epoch: int
    signers: tuple[int, ...]  # indices into the committee's peer list, ascending
    signatures: tuple[bytes, ...]

    def to_wire(self) -> dict[str, object]:
        """The certificate as a wire/JSON-friendly map."""
        return {
            "blob_id": self.blob_id.raw,
            "epoch": self.epoch,
            "signers": list(self.signers),
            "signatures": list(self.signatures),
        }


def assemble_certificate(
    committee: Committee, blob_id: BlobId, confirmations: Iterable[tuple[int, bytes]]
) -> Certificate:
    """Certificate from (peer index, signature) pairs; invalid or duplicate ones are dropped.

    Raises ``VerificationError`` when the valid ones hold fewer than 2f + 1 shards.
    """
    valid: dict[int, bytes] = {}
    for index, signature in confirmations:
        if index in valid or not 0 <= index < len(committee.peers):
            continue
        try:
            verify_confirmation(committee.peers[index].public_key, committee.epoch, blob_id, signature)
        except VerificationError:
            continue
        valid[index] = signature
    certificate = Certificate(
        blob_id, committee.epoch, tuple(sorted(valid)), tuple(valid[i] for i in sorted(valid))
    )
    verify_certificate(committee, certificate)
    return certificate


def verify_certificate(committee: Committee, certificate: Certificate) -> None:
    """Raise ``VerificationError`` unless 2f + 1 shards' worth of distinct members signed."""
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
        verify_confirmation(committee.peers[index].public_key, certificate.epoch, certificate.blob_id, signature)
    weight = committee.weight(certificate.signers)
    if weight < committee.quorum:
        raise VerificationError(
            f"certificate signers hold {weight} shards, a certificate needs {committee.quorum} "
            f"(2f + 1 of {committee.n_shards})"
        )
