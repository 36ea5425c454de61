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


#: Containers nested deeper than this are refused before anything is built from them.
MAX_DEPTH = 32


def _scan(data: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Check, in one linear pass, that ``data`` is one CBOR item in the subset walrusfs uses.

    Refused before any value is built: tags, indefinite lengths, containers deeper than
    ``max_depth``, map keys that are not integers or strings (a map or array used as a
    key made the decode-and-re-encode check exponential in the nesting), counts larger
    than the bytes left, and trailing bytes. What passes decodes and re-encodes in time
    linear in its size (up to sorting each map's keys).
    """
    view = memoryview(data)
    end = len(view)
    pos = 0
    # Each open container: items still expected, and whether it is a map (keys at even counts).
    stack: list[list[int]] = []
    while True:
        if pos >= end:
            raise MessageError("message is truncated")
        is_key = bool(stack) and stack[-1][1] == 1 and stack[-1][0] % 2 == 0
        initial = view[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            argument = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > end:
                raise MessageError("message is truncated")
            argument = int.from_bytes(view[pos:pos + width], "big")
            pos += width
        else:
            raise MessageError("indefinite lengths and reserved encodings are not allowed")
        if is_key and major not in (0, 1, 2, 3):
            raise MessageError("map keys must be integers or strings")
        if major in (2, 3):
            if argument > end - pos:
                raise MessageError("string longer than the message")
            pos += argument
        elif major in (4, 5):
            count = argument * (2 if major == 5 else 1)
            if count > end - pos:
                raise MessageError("container declares more items than the message holds")
            if len(stack) >= max_depth:
                raise MessageError(f"containers nested deeper than {max_depth}")
            if count:
                stack.append([count, 1 if major == 5 else 0])
                continue
        elif major == 6:
            raise MessageError("CBOR tags are not allowed")
        elif major == 7 and (info == 24 or (info < 24 and argument not in (20, 21, 22))):
            raise MessageError("only false, true, null and floats are allowed as simple values")
        # One item finished: close every container it completes.
        while stack:
            stack[-1][0] -= 1
            if stack[-1][0]:
                break
            stack.pop()
        if not stack:
            break
    if pos != end:
        raise MessageError("message has trailing bytes")


def decode(data: bytes, max_size: int) -> dict[str, Any]:
    """Parse one canonical CBOR message map of at most ``max_size`` bytes."""
    if len(data) > max_size:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    _scan(data)
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
