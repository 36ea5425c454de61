"""Registrations and certified payloads for tests that build log entries by hand.

Since issue 16 a blob-certified entry carries the registration its certificate was
gathered for: a permanent registration goes with a certificate that has no object ID, a
deletable one with a certificate whose object ID is the registration's ID. These helpers
sign registrations with one fixed test key and a nonce derived from the blob, so the same
blob always gets the same registration (and a payload built twice is the same payload, as
tests of duplicates and equivocation need).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from walrusfs.client.writer import load_key
from walrusfs.core import merkle
from walrusfs.core.certificates import Certificate
from walrusfs.core.lifecycle import (
    MAX_EPOCHS_AHEAD,
    NONCE_SIZE,
    Authority,
    Registration,
    own_authority,
    register,
)
from walrusfs.core.log import certificate_payload
from walrusfs.core.metadata import BlobId

#: The fixed key test registrations are signed with (account, owner and signer at once).
WRITER_KEY = SigningKey(b"\x5a" * 32)
WRITER: Authority = own_authority(WRITER_KEY)


def registration(blob_id: BlobId | bytes, end_epoch: int = MAX_EPOCHS_AHEAD, deletable: bool = False,
                 authority: Authority = WRITER) -> Registration:
    """A registration of ``blob_id`` by ``authority`` (the test writer), the same one every call."""
    blob = blob_id if isinstance(blob_id, BlobId) else BlobId(blob_id)
    nonce = merkle.blake2b256(b"test-registration" + blob.raw + bytes([deletable]) + end_epoch.to_bytes(8, "big"))
    return register(authority.key, authority.writer, blob, end_epoch, deletable, nonce[:NONCE_SIZE])


def certified_payload(certificate: Certificate, length: int, registration_: Registration | None = None) -> dict[str, Any]:
    """A blob-certified payload for ``certificate`` with a registration that matches it.

    Without ``registration_``: a permanent one by the test writer when the certificate has
    no object ID. A certificate for a deletable blob names its registration's ID, so pass
    that registration (``registration(blob, deletable=True)``, then sign with its ``id``).
    """
    if registration_ is None:
        if certificate.object_id is not None:
            raise ValueError("a deletable blob's certificate needs the registration it was gathered for")
        registration_ = registration(certificate.blob_id)
    return certificate_payload(certificate, length, registration_)


def devnet_authority(directory: Path) -> Authority:
    """The writer key a devnet in ``directory`` made and granted storage, as a client's authority."""
    return own_authority(load_key(directory / "writer.key"))
