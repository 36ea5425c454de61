"""Sealing for private volumes and encrypted blobs: what peers store is ciphertext (pure).

The cipher is XChaCha20-Poly1305 (libsodium, through PyNaCl) rather than AES-GCM:

- its 24-byte nonces are safe to derive from content or to draw at random (AES-GCM's 12
  bytes are not safe to draw at random at volume scale, and a repeated GCM nonce leaks
  the authentication key);
- it runs in constant time in plain software, with no dependence on AES-NI;
- PyNaCl is already a dependency (Ed25519 signatures), so nothing new is installed.

Chunks are sealed convergently *within one volume*: the chunk key and nonce are derived
from the volume's read key and the chunk's plaintext hash, so identical chunks in one
volume give identical ciphertext (one blob, deduplicated) while two volumes never share
a key. The price is the one Tahoe's convergent encryption pays: someone holding the read
key can tell that two chunks are equal. Blob IDs are computed over the ciphertext, so
peers verify and heal sealed chunks exactly as any other blob.

Namespace payloads (an op map, or a batch: a list of op maps) are sealed under a key
derived from the read key with a fresh random nonce per entry; identical ops need not look
identical. A batch is sealed with associated data of its own, so a sealed op can never be
opened as a batch or the other way round.

Every failure to open (tampering, wrong key, wrong volume, truncation, a payload that is
not an op map) raises ``SealError`` and nothing else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES as TAG_BYTES,
)
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt as _aead_decrypt,
)
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_encrypt as _aead_encrypt,
)
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES as NONCE_BYTES,
)
from nacl.exceptions import CryptoError

from . import wire
from .errors import CodecError

#: Bumped whenever what is sealed, or how keys are derived, changes; bound into every AD.
SEAL_VERSION = 1
KEY_BYTES = 32
HASH_BYTES = 32
VOLUME_BYTES = 32
#: Sealed op maps larger than this are refused before decryption (a namespace entry is small).
MAX_PAYLOAD = 1 << 20
#: Bounds on a sealed op map's length (random nonce, ciphertext, tag), which peers check.
SEALED_PAYLOAD_MIN = NONCE_BYTES + TAG_BYTES
SEALED_PAYLOAD_MAX = MAX_PAYLOAD + NONCE_BYTES + TAG_BYTES
#: What ``seal_blob`` adds to a blob: its random nonce and the AEAD tag.
BLOB_OVERHEAD = NONCE_BYTES + TAG_BYTES

# BLAKE2b personalisations (at most 16 bytes each): one per derived value, so no derived
# key or nonce can ever equal another derived for a different purpose.
_PERSON_CHUNK_HASH = b"wfs1-chunk-hash"
_PERSON_CHUNK_KEY = b"wfs1-chunk-key"
_PERSON_CHUNK_NONCE = b"wfs1-chunk-nonce"
_PERSON_PAYLOAD_KEY = b"wfs1-ns-key"
_PERSON_SNAPSHOT_KEY = b"wfs1-snap-key"
_AD_CHUNK = b"walrusfs-chunk"
_AD_PAYLOAD = b"walrusfs-namespace"
_AD_OPS = b"walrusfs-namespace-ops"
_AD_BLOB = b"walrusfs-blob"
_AD_SNAPSHOT = b"walrusfs-snapshot"


class SealError(CodecError, ValueError):
    """Sealed data cannot be opened: tampered, truncated, wrong key, wrong volume or malformed."""


@dataclass(frozen=True)
class SealedChunk:
    """A chunk as peers store it, and the plaintext hash the (sealed) chunk list must keep to open it."""

    ciphertext: bytes
    plaintext_hash: bytes


def new_key() -> bytes:
    """A fresh random 32-byte read key (or blob key)."""
    return os.urandom(KEY_BYTES)


def chunk_hash(plaintext: bytes) -> bytes:
    """The 32-byte plaintext hash a chunk's key is derived from (domain-separated BLAKE2b-256)."""
    return hashlib.blake2b(plaintext, digest_size=HASH_BYTES, person=_PERSON_CHUNK_HASH).digest()


def _check_len(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != size:
        got = len(value) if isinstance(value, (bytes, bytearray, memoryview)) else type(value).__name__
        raise SealError(f"{name} must be {size} bytes, got {got}")


def _derive(read_key: bytes, data: bytes, person: bytes, size: int) -> bytes:
    # Keyed BLAKE2b is a PRF: without the read key the outputs look random, and the
    # personalisation keeps keys, nonces and purposes apart.
    return hashlib.blake2b(data, digest_size=size, key=read_key, person=person).digest()


def _chunk_ad(volume: bytes) -> bytes:
    return _AD_CHUNK + bytes([SEAL_VERSION]) + bytes(volume)


def seal_chunk(read_key: bytes, volume: bytes, plaintext: bytes, plaintext_hash: bytes | None = None) -> SealedChunk:
    """Encrypt one chunk of ``volume``; identical plaintexts under one read key seal identically."""
    _check_len("read key", read_key, KEY_BYTES)
    _check_len("volume ID", volume, VOLUME_BYTES)
    digest = chunk_hash(plaintext) if plaintext_hash is None else bytes(plaintext_hash)
    _check_len("plaintext hash", digest, HASH_BYTES)
    key = _derive(read_key, digest, _PERSON_CHUNK_KEY, KEY_BYTES)
    # The key is already unique per plaintext, so the nonce needs only be fixed per key;
    # deriving it (rather than drawing it) is what makes equal chunks deduplicate.
    nonce = _derive(read_key, digest, _PERSON_CHUNK_NONCE, NONCE_BYTES)
    return SealedChunk(_aead_encrypt(bytes(plaintext), _chunk_ad(volume), nonce, key), digest)


def open_chunk(read_key: bytes, volume: bytes, plaintext_hash: bytes, ciphertext: bytes) -> bytes:
    """The plaintext of a chunk sealed by ``seal_chunk``; ``SealError`` on any mismatch."""
    _check_len("read key", read_key, KEY_BYTES)
    _check_len("volume ID", volume, VOLUME_BYTES)
    _check_len("plaintext hash", plaintext_hash, HASH_BYTES)
    if len(ciphertext) < TAG_BYTES:
        raise SealError(f"sealed chunk of {len(ciphertext)} bytes is shorter than its {TAG_BYTES}-byte tag")
    key = _derive(read_key, bytes(plaintext_hash), _PERSON_CHUNK_KEY, KEY_BYTES)
    nonce = _derive(read_key, bytes(plaintext_hash), _PERSON_CHUNK_NONCE, NONCE_BYTES)
    try:
        # No re-hash of the plaintext: the tag already proves a read-key holder sealed it
        # under this hash, and the chunk list (signed by a writer) pins the ciphertext.
        return _aead_decrypt(bytes(ciphertext), _chunk_ad(volume), nonce, key)
    except CryptoError:
        raise SealError("sealed chunk does not open: wrong read key or volume, or the data was altered") from None


def _payload_ad(volume: bytes, context: bytes, domain: bytes = _AD_PAYLOAD) -> bytes:
    # Length-prefixed so (volume, context) pairs can never collide.
    return domain + bytes([SEAL_VERSION]) + bytes(volume) + len(context).to_bytes(4, "big") + bytes(context)


def _seal_message(read_key: bytes, volume: bytes, message: Mapping[str, Any], context: bytes, domain: bytes) -> bytes:
    _check_len("read key", read_key, KEY_BYTES)
    _check_len("volume ID", volume, VOLUME_BYTES)
    # Wrapped in a versioned message so opening reuses the vetted canonical decoder.
    body = wire.encode({"v": wire.WIRE_VERSION, **message})
    if len(body) > MAX_PAYLOAD:
        raise SealError(f"namespace payload of {len(body)} bytes exceeds the limit of {MAX_PAYLOAD}")
    key = _derive(read_key, b"", _PERSON_PAYLOAD_KEY, KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead_encrypt(body, _payload_ad(volume, context, domain), nonce, key)


def _open_message(read_key: bytes, volume: bytes, sealed: bytes, context: bytes, domain: bytes) -> dict[str, Any]:
    _check_len("read key", read_key, KEY_BYTES)
    _check_len("volume ID", volume, VOLUME_BYTES)
    if not isinstance(sealed, (bytes, bytearray, memoryview)):
        raise SealError(f"sealed payload must be bytes, got {type(sealed).__name__}")
    if len(sealed) > MAX_PAYLOAD + NONCE_BYTES + TAG_BYTES:
        raise SealError(f"sealed payload of {len(sealed)} bytes exceeds the limit")
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SealError(f"sealed payload of {len(sealed)} bytes is truncated")
    sealed = bytes(sealed)
    key = _derive(read_key, b"", _PERSON_PAYLOAD_KEY, KEY_BYTES)
    try:
        body = _aead_decrypt(sealed[NONCE_BYTES:], _payload_ad(volume, context, domain), sealed[:NONCE_BYTES], key)
    except CryptoError:
        raise SealError("sealed payload does not open: wrong read key or volume, or the entry was altered") from None
    try:
        return wire.decode(body, MAX_PAYLOAD)
    except wire.MessageError as exc:
        # Only a read-key holder can get here: it sealed something that is not a message.
        raise SealError(f"sealed payload is not a namespace message: {exc}") from None


def _op_map(op: object) -> bool:
    return isinstance(op, dict) and all(isinstance(name, str) for name in op)


def seal_payload(read_key: bytes, volume: bytes, op: Mapping[str, Any], context: bytes = b"") -> bytes:
    """Encrypt a namespace op map: a random 24-byte nonce, then the AEAD of its canonical CBOR.

    ``context`` is bound but not stored: the entry fields peers see in the clear (device,
    sequence), so a sealed op cannot be moved to another entry.
    """
    return _seal_message(read_key, volume, {"op": dict(op)}, context, _AD_PAYLOAD)


def open_payload(read_key: bytes, volume: bytes, sealed: bytes, context: bytes = b"") -> dict[str, Any]:
    """The op map sealed by ``seal_payload``; ``SealError`` on tampering, wrong key or a non-map."""
    message = _open_message(read_key, volume, sealed, context, _AD_PAYLOAD)
    if set(message) != {"v", "op"} or not _op_map(message["op"]):
        raise SealError("sealed payload is not an op map with text keys")
    return message["op"]


def seal_ops(read_key: bytes, volume: bytes, ops: Sequence[Mapping[str, Any]], context: bytes = b"") -> bytes:
    """Encrypt a batch of namespace op maps as one payload, bound to ``context`` like ``seal_payload``."""
    return _seal_message(read_key, volume, {"ops": [dict(op) for op in ops]}, context, _AD_OPS)


def open_ops(read_key: bytes, volume: bytes, sealed: bytes, context: bytes = b"") -> list[dict[str, Any]]:
    """The op maps sealed by ``seal_ops`` (at least one); ``SealError`` on tampering, wrong key or anything else."""
    message = _open_message(read_key, volume, sealed, context, _AD_OPS)
    ops = message.get("ops")
    if set(message) != {"v", "ops"} or not isinstance(ops, list) or not ops or not all(map(_op_map, ops)):
        raise SealError("sealed payload is not a list of op maps with text keys")
    return ops


def seal_blob(key: bytes, plaintext: bytes) -> bytes:
    """Encrypt a whole blob for ``store --encrypt``: a random nonce, then the AEAD of the bytes."""
    _check_len("blob key", key, KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead_encrypt(bytes(plaintext), _AD_BLOB + bytes([SEAL_VERSION]), nonce, key)


def open_blob(key: bytes, sealed: bytes) -> bytes:
    """The plaintext of a blob sealed by ``seal_blob``; ``SealError`` on any mismatch."""
    _check_len("blob key", key, KEY_BYTES)
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SealError(f"sealed blob of {len(sealed)} bytes is truncated")
    sealed = bytes(sealed)
    try:
        return _aead_decrypt(sealed[NONCE_BYTES:], _AD_BLOB + bytes([SEAL_VERSION]), sealed[:NONCE_BYTES], key)
    except CryptoError:
        raise SealError("sealed blob does not open: wrong key, or the data was altered") from None


def seal_snapshot(read_key: bytes, volume: bytes, data: bytes) -> bytes:
    """Encrypt a volume snapshot (``core.snapshot``) under a key derived from the read key, bound to the volume."""
    _check_len("read key", read_key, KEY_BYTES)
    _check_len("volume ID", volume, VOLUME_BYTES)
    key = _derive(read_key, b"", _PERSON_SNAPSHOT_KEY, KEY_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead_encrypt(bytes(data), _AD_SNAPSHOT + bytes([SEAL_VERSION]) + bytes(volume), nonce, key)


def open_sealed_snapshot(read_key: bytes, volume: bytes, sealed: bytes) -> bytes:
    """The snapshot bytes ``seal_snapshot`` sealed; ``SealError`` on a wrong key or volume, or tampering."""
    _check_len("read key", read_key, KEY_BYTES)
    _check_len("volume ID", volume, VOLUME_BYTES)
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SealError(f"sealed snapshot of {len(sealed)} bytes is truncated")
    sealed = bytes(sealed)
    key = _derive(read_key, b"", _PERSON_SNAPSHOT_KEY, KEY_BYTES)
    try:
        return _aead_decrypt(sealed[NONCE_BYTES:], _AD_SNAPSHOT + bytes([SEAL_VERSION]) + bytes(volume),
                             sealed[:NONCE_BYTES], key)
    except CryptoError:
        raise SealError("sealed snapshot does not open: wrong read key or volume, or it was altered") from None
