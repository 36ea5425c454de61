"""Capabilities: the strings a person copies to grant write, read or verify access (pure).

As in Tahoe-LAFS, each capability can be reduced to the next weaker one, never back:

    walrusfs-write:v1:<signing seed>:<read key>:<check>   write the namespace, read everything
    walrusfs-read:v1:<volume ID>:<read key>:<check>       mount read-only, read everything
    walrusfs-verify:v1:<volume ID>:<check>                list blobs, check availability; no names, no bytes
    walrusfs-blob:v1:<blob ID>:<blob key>:<check>         read one blob stored with ``store --encrypt``

Every value is 32 bytes in unpadded URL-safe base64 (43 characters, like blob and volume
IDs). A public volume's read key is the word ``public``. ``<check>`` is 6 characters of a
BLAKE2b hash of everything before it: lengths catch a cut capability, the check catches a
changed character (a mistyped volume ID would otherwise name another, valid volume).
Parsing raises only ``CapabilityError``, whose message names the part that is wrong and
never repeats secret material; it looks at no more than ``MAX_LENGTH`` characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from .errors import CodecError, InvalidBlobId
from .metadata import BlobId

VERSION = "v1"
PUBLIC = "public"
#: Longer input is refused unread: the longest capability is 129 characters.
MAX_LENGTH = 256
_B64_LENGTH = 43
_CHECK_LENGTH = 6
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_PERSON_CHECK = b"wfs1-cap-check"

WRITE = "walrusfs-write"
READ = "walrusfs-read"
VERIFY = "walrusfs-verify"
BLOB = "walrusfs-blob"
#: Kind -> names of its value parts, in order (each 43 base64url characters).
_PARTS: dict[str, tuple[str, ...]] = {
    WRITE: ("signing key", "read key"),
    READ: ("volume ID", "read key"),
    VERIFY: ("volume ID",),
    BLOB: ("blob ID", "blob key"),
}
_KINDS_TEXT = ", ".join(f"{kind}:" for kind in _PARTS)


class CapabilityError(CodecError, ValueError):
    """A capability string is malformed, cut, mistyped, or of an unknown kind or version."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check(body: str) -> str:
    digest = hashlib.blake2b(body.encode("ascii"), digest_size=6, person=_PERSON_CHECK).digest()
    return _b64(digest)[:_CHECK_LENGTH]


def _need_32(what: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise CapabilityError(f"a capability's {what} is 32 bytes")


@dataclass(frozen=True)
class VerifyCap:
    """Lets anyone list a volume's blobs and check they are available, reading nothing."""

    volume: bytes

    def __post_init__(self) -> None:
        _need_32("volume ID", self.volume)

    def __str__(self) -> str:
        return _assemble(VERIFY, [_b64(self.volume)])


@dataclass(frozen=True)
class ReadCap:
    """Mounts a volume read-only; ``read_key`` is None for a public volume."""

    volume: bytes
    read_key: bytes | None = field(repr=False)

    def __post_init__(self) -> None:
        _need_32("volume ID", self.volume)
        if self.read_key is not None:
            _need_32("read key", self.read_key)

    @property
    def public(self) -> bool:
        """Whether the volume stores plaintext."""
        return self.read_key is None

    def verify_cap(self) -> VerifyCap:
        """The weaker capability that reads nothing."""
        return VerifyCap(self.volume)

    def __str__(self) -> str:
        return _assemble(READ, [_b64(self.volume), PUBLIC if self.read_key is None else _b64(self.read_key)])


@dataclass(frozen=True)
class WriteCap:
    """Owns a volume: its Ed25519 signing seed and its read key (None for a public volume)."""

    signing_seed: bytes = field(repr=False)
    read_key: bytes | None = field(repr=False)

    def __post_init__(self) -> None:
        _need_32("signing key", self.signing_seed)
        if self.read_key is not None:
            _need_32("read key", self.read_key)

    @property
    def volume(self) -> bytes:
        """The volume ID: the signing key's public half."""
        return bytes(SigningKey(self.signing_seed).verify_key)

    def read_cap(self) -> ReadCap:
        """The weaker capability that cannot write."""
        return ReadCap(self.volume, self.read_key)

    def verify_cap(self) -> VerifyCap:
        """The weakest capability."""
        return VerifyCap(self.volume)

    def __repr__(self) -> str:
        return f"WriteCap(volume={_b64(self.volume)!r})"

    def __str__(self) -> str:
        return _assemble(WRITE, [_b64(self.signing_seed),
                                 PUBLIC if self.read_key is None else _b64(self.read_key)])


@dataclass(frozen=True)
class BlobCap:
    """Reads one blob stored encrypted: its (ciphertext) blob ID and its key."""

    blob_id: BlobId
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.blob_id, BlobId):
            raise CapabilityError("a blob capability's blob ID must be a BlobId")
        _need_32("blob key", self.key)

    def __str__(self) -> str:
        return _assemble(BLOB, [str(self.blob_id), _b64(self.key)])


Capability = WriteCap | ReadCap | VerifyCap | BlobCap


def _assemble(kind: str, values: list[str]) -> str:
    body = ":".join([kind, VERSION, *values])
    return f"{body}:{_check(body)}"


def format_capability(cap: Capability) -> str:
    """The copyable string of a capability."""
    return str(cap)


def _decode_value(kind: str, name: str, text: str, public_allowed: bool) -> bytes | None:
    """32 bytes from 43 canonical base64url characters (or None for ``public``), naming the part if not."""
    noun = kind.removeprefix("walrusfs-")
    if public_allowed and text == PUBLIC:
        return None
    if len(text) != _B64_LENGTH:
        hint = "cut short" if len(text) < _B64_LENGTH else "has extra characters"
        raise CapabilityError(
            f"the {name} in this {noun} capability is {len(text)} characters, expected {_B64_LENGTH} "
            f"(it was {hint} or mistyped; copy the whole capability again)")
    if not set(text) <= _ALPHABET:
        raise CapabilityError(
            f"the {name} in this {noun} capability has characters other than A-Z a-z 0-9 - _ (mistyped?)")
    try:
        raw = base64.b64decode(text + "=", altchars=b"-_", validate=True)
    except binascii.Error:  # pragma: no cover - excluded by the checks above
        raise CapabilityError(f"the {name} in this {noun} capability is not base64url") from None
    if _b64(raw) != text:
        # The last character carries 2 unused bits; only one spelling is valid.
        raise CapabilityError(f"the {name} in this {noun} capability is mistyped (its last character)")
    return raw


def parse_capability(text: str) -> Capability:
    """The capability a string names; ``CapabilityError`` saying which part is wrong if it is not one."""
    if not isinstance(text, str):
        raise CapabilityError(f"a capability is text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise CapabilityError(f"{len(text)} characters is too long for a capability (at most {MAX_LENGTH})")
    text = text.strip()
    parts = text.split(":")
    kind = parts[0]
    if kind not in _PARTS:
        raise CapabilityError(f"not a walrusfs capability: it must start with one of {_KINDS_TEXT}")
    noun = kind.removeprefix("walrusfs-")
    if len(parts) < 2 or parts[1] != VERSION:
        raise CapabilityError(f"unsupported {noun} capability version (this walrusfs reads {VERSION})")
    names = _PARTS[kind]
    expected = 2 + len(names) + 1
    if len(parts) != expected:
        raise CapabilityError(
            f"this {noun} capability has {len(parts)} ':'-separated parts, expected {expected} "
            f"({kind}:{VERSION}:{':'.join('<' + n + '>' for n in names)}:<check>); it was cut or mistyped")
    values = [_decode_value(kind, name, part, name == "read key") for name, part in zip(names, parts[2:-1])]
    body, check = text.rsplit(":", 1)
    if len(check) != _CHECK_LENGTH:
        raise CapabilityError(
            f"this {noun} capability's check is {len(check)} characters, expected {_CHECK_LENGTH} "
            f"(it was cut or mistyped; copy the whole capability again)")
    if check != _check(body):
        raise CapabilityError(
            f"this {noun} capability's check does not match: a character was changed; copy it again")
    if kind == WRITE:
        return WriteCap(values[0], values[1])  # type: ignore[arg-type]
    if kind == READ:
        return ReadCap(values[0], values[1])  # type: ignore[arg-type]
    if kind == VERIFY:
        return VerifyCap(values[0])  # type: ignore[arg-type]
    try:
        return BlobCap(BlobId(values[0]), values[1])  # type: ignore[arg-type]
    except InvalidBlobId as exc:  # pragma: no cover - 32 bytes always make a blob ID
        raise CapabilityError(f"the blob ID in this blob capability is invalid: {exc}") from None
