"""Registrations, certificates and certified payloads for tests that build log entries by hand.

Since issue 16 a blob-certified entry carries the registration its certificate was
gathered for: every confirmation names the registration's ID (its object ID, permanent
or deletable), and the registration signs the blob's length, which must be the entry's.
So a test makes the registration first and signs the certificate for it: ``certified``
returns such a pair, ``certified_payload`` the entry payload (``registered_payload`` for a
registration the test made itself). Registrations are signed
with one fixed test key and a nonce derived from the blob, so the same blob always gets
the same registration (and a payload built twice is the same payload, as tests of
duplicates and equivocation need).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from walrusfs.client.writer import load_key
from walrusfs.core import merkle
from walrusfs.core.certificates import Certificate, sign_confirmation
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


def registration(blob_id: BlobId | bytes, end_epoch: int = MAX_EPOCHS_AHEAD, deletable: bool = False, *,
                 length: int, authority: Authority = WRITER) -> Registration:
    """A registration of ``blob_id`` (``length`` unencoded bytes) by ``authority``, the same one every call."""
    blob = blob_id if isinstance(blob_id, BlobId) else BlobId(blob_id)
    nonce = merkle.blake2b256(b"test-registration" + blob.raw + bytes([deletable]) + end_epoch.to_bytes(8, "big")
                              + length.to_bytes(8, "big"))
    return register(authority.key, authority.writer, blob, end_epoch, deletable, nonce[:NONCE_SIZE], length)


def certificate_for(registration_: Registration, keys: Sequence[SigningKey] | Mapping[int, SigningKey],
                    signers: Iterable[int] | None = None, epoch: int = 0) -> Certificate:
    """A certificate of ``registration_``'s blob gathered for it: member ``i`` of ``signers`` signs with ``keys[i]``.

    ``signers`` (default: every key) is taken as given, unchecked, so tests can build
    certificates with too few or repeated signers too.
    """
    order = tuple(signers) if signers is not None else tuple(range(len(keys)))
    object_id = registration_.object_id
    return Certificate(registration_.blob_id, epoch, order,
                       tuple(sign_confirmation(keys[i], epoch, registration_.blob_id, object_id) for i in order),
                       False, object_id)


def registered_payload(registration_: Registration, keys: Sequence[SigningKey] | Mapping[int, SigningKey],
                       signers: Iterable[int] | None = None, epoch: int = 0) -> dict[str, Any]:
    """A blob-certified payload for ``registration_``: a certificate gathered for it, with its length."""
    return certificate_payload(certificate_for(registration_, keys, signers, epoch), registration_.length, registration_)


def certified(blob_id: BlobId | bytes, length: int, keys: Sequence[SigningKey] | Mapping[int, SigningKey],
              signers: Iterable[int] | None = None, *, epoch: int = 0, end_epoch: int = MAX_EPOCHS_AHEAD,
              deletable: bool = False, authority: Authority = WRITER) -> tuple[Registration, Certificate]:
    """A registration of ``blob_id`` (``length`` bytes) by ``authority`` and a certificate gathered for it."""
    registered = registration(blob_id, end_epoch, deletable, length=length, authority=authority)
    return registered, certificate_for(registered, keys, signers, epoch)


def certified_payload(blob_id: BlobId | bytes, length: int, keys: Sequence[SigningKey] | Mapping[int, SigningKey],
                      signers: Iterable[int] | None = None, **options: Any) -> dict[str, Any]:
    """A blob-certified payload for ``blob_id``: ``certified``'s registration and certificate (same options)."""
    registered, certificate = certified(blob_id, length, keys, signers, **options)
    return certificate_payload(certificate, length, registered)


def devnet_authority(directory: Path) -> Authority:
    """The writer key a devnet in ``directory`` made and granted storage, as a client's authority."""
    return own_authority(load_key(directory / "writer.key"))
