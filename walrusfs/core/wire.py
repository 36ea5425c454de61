"""Canonical, versioned encoding of protocol messages (deterministic CBOR, RFC 8949 §4.2).

Every message is a CBOR map with an integer ``"v"`` (the message format version) and a
``"kind"``. Decoding checks the size before parsing, rejects trailing bytes and
non-canonical encodings (so a message has exactly one byte form), and field accessors
raise ``MessageError`` naming the field, so a peer can answer a malformed request with a
precise error instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import cbor2

from .errors import CodecError

WIRE_VERSION = 1
_T = TypeVar("_T")


class MessageError(CodecError, ValueError):
    """A protocol message is malformed, oversized, of the wrong version or kind."""


def encode(message: Mapping[str, Any]) -> bytes:
    """Canonical CBOR bytes of a message map."""
    return cbor2.dumps(dict(message), canonical=True)


def decode(data: bytes, max_size: int) -> dict[str, Any]:
    """Parse one canonical CBOR message map of at most ``max_size`` bytes."""
    if len(data) > max_size:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MessageError(f"message is not valid CBOR: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise MessageError("message must be a CBOR map with text keys")
    if encode(value) != bytes(data):
        raise MessageError("message is not canonically encoded (or has trailing bytes)")
    version = value.get("v")
    if version != WIRE_VERSION:
        raise MessageError(f"unsupported message version {version!r} (this peer speaks {WIRE_VERSION})")
    return value


def field(message: Mapping[str, Any], name: str, kind: type[_T], *, size: int | None = None) -> _T:
    """Field ``name`` of ``message``, checked to be a ``kind`` (and ``size`` bytes long, if given)."""
    if name not in message:
        raise MessageError(f"message lacks field {name!r}")
    value = message[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if size is not None and len(value) != size:  # type: ignore[arg-type]
        raise MessageError(f"field {name!r} must be {size} bytes, got {len(value)}")  # type: ignore[arg-type]
    return value


def uint(message: Mapping[str, Any], name: str, upper: int) -> int:
    """Integer field ``name`` in ``0 .. upper - 1``."""
    value = field(message, name, int)
    if not 0 <= value < upper:
        raise MessageError(f"field {name!r} must be in 0..{upper - 1}, got {value}")
    return value
