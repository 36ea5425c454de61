"""A strict ``multipart/form-data`` parser (RFC 7578) for bodies already held in memory.

``PUT /v1/quilts`` takes its files as a form, as Walrus's publisher does (``curl -F
name=@file``). The gateway holds the whole body anyway (at most ``--max-body-size``), so
this parses a ``bytes`` in one pass: every search moves forward from where the last one
stopped, so the time is linear in the body, and every failure is a ``MultipartError``
saying what is wrong. Each part's content is a ``memoryview`` of the body (no copy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 2046: a boundary is 1 to 70 characters of this set, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
#: A part's header block is refused past this many bytes (form fields have short headers).
MAX_PART_HEADERS = 16 << 10
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class MultipartError(ValueError):
    """The body is not a well-formed multipart/form-data body (or has more parts than allowed)."""


class TooManyParts(MultipartError):
    """The form has more parts than the caller takes."""


@dataclass(frozen=True)
class FormPart:
    """One field of a form: its name, the file name it was sent with (if any), its content type and content."""

    name: str
    filename: str | None
    content_type: str | None
    content: memoryview


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header; ``MultipartError`` for any other."""
    if not content_type:
        raise MultipartError("the body must be multipart/form-data (no Content-Type given)")
    kind, params = _parse_header_value(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"the body must be multipart/form-data, not {kind[:60]!r}")
    boundary = params.get("boundary")
    if boundary is None or not _BOUNDARY.match(boundary):
        raise MultipartError("the multipart/form-data Content-Type needs a boundary of 1-70 characters (RFC 2046)")
    return boundary.encode("ascii")


def parse_form(body: bytes, boundary: bytes, max_parts: int) -> list[FormPart]:
    """The parts of a form body, in order; ``MultipartError`` if malformed, ``TooManyParts`` past ``max_parts``."""
    view = memoryview(body)
    dash = b"--" + boundary
    delimiter = b"\r\n" + dash
    # The first boundary line opens the body, or follows a preamble (ignored, as RFC 2046 says).
    if body.startswith(dash):
        position = len(dash)
    else:
        found = body.find(delimiter)
        if found < 0:
            raise MultipartError("the body holds no boundary line")
        position = found + len(delimiter)
    parts: list[FormPart] = []
    while True:
        if body.startswith(b"--", position):
            return parts  # the close delimiter; an epilogue after it is ignored
        # Transport padding (spaces, tabs) may follow a boundary before its CRLF.
        while position < len(body) and body[position] in b" \t":
            position += 1
        if not body.startswith(b"\r\n", position):
            raise MultipartError(f"a boundary line at byte {position} does not end in CRLF")
        position += 2
        end_headers = body.find(b"\r\n\r\n", position, position + MAX_PART_HEADERS + 4)
        if end_headers < 0:
            if body.startswith(b"\r\n", position):  # a part with no header lines at all
                raise MultipartError(f"a part at byte {position} has no Content-Disposition")
            raise MultipartError(f"a part's headers at byte {position} do not end within {MAX_PART_HEADERS} bytes")
        headers = _part_headers(body[position:end_headers])
        start = end_headers + 4
        stop = body.find(delimiter, start)
        if stop < 0:
            raise MultipartError("the body ends inside a part (no closing boundary)")
        if len(parts) == max_parts:
            raise TooManyParts(f"the form has more than {max_parts} parts")
        parts.append(_part(headers, view[start:stop]))
        position = stop + len(delimiter)


def _part(headers: dict[str, str], content: memoryview) -> FormPart:
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise MultipartError("a part has no Content-Disposition")
    kind, params = _parse_header_value(disposition)
    if kind != "form-data" or "name" not in params:
        raise MultipartError(f"a part's Content-Disposition must be form-data with a name, got {disposition[:80]!r}")
    return FormPart(params["name"], params.get("filename"), headers.get("content-type"), content)


def _part_headers(block: bytes) -> dict[str, str]:
    try:
        text = block.decode("utf-8")  # RFC 7578: field names may be UTF-8 as they are
    except UnicodeDecodeError:
        raise MultipartError("a part's headers are not valid UTF-8") from None
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        key = name.lower()
        if key in headers:
            raise MultipartError(f"a part repeats its {name} header")
        headers[key] = value.strip()
    return headers


def _parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """``type; a=b; c="d"`` as (lowercased type, parameters); names lowercased, quoted strings unescaped."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    position, length = 0, len(rest)
    while position < length:
        while position < length and rest[position] in " \t;":
            position += 1
        if position >= length:
            break
        equals = rest.find("=", position)
        if equals < 0:
            raise MultipartError(f"malformed header parameter in {value[:80]!r}")
        name = rest[position:equals].strip().lower()
        position = equals + 1
        if position < length and rest[position] == '"':
            chars = []
            position += 1
            while position < length and rest[position] != '"':
                if rest[position] == "\\" and position + 1 < length:
                    position += 1
                chars.append(rest[position])
                position += 1
            if position >= length:
                raise MultipartError(f"unterminated quoted string in {value[:80]!r}")
            position += 1
            text = "".join(chars)
        else:
            end = rest.find(";", position)
            end = length if end < 0 else end
            text = rest[position:end].strip()
            position = end
        if not _TOKEN.fullmatch(name):
            raise MultipartError(f"malformed header parameter name {name[:40]!r}")
        if name in params:
            raise MultipartError(f"header parameter {name!r} is given twice")
        params[name] = text
    return kind.strip().lower(), params
