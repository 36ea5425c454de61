"""HTTP byte ranges for the gateway (pure): the ``Range`` header and the ``byte-range`` query.

One range per request, as Walrus's aggregator serves them, but in all three forms of
RFC 9110 section 14.1.2: ``bytes=a-b`` (b past the end is cut to the end), ``bytes=a-``
and ``bytes=-n`` (the last n bytes; all of a shorter blob). Anything else, and a range
that starts at or past the end, raises ``RangeError``: the gateway answers 416 with
``Content-Range: bytes */LENGTH``. Parsing reads at most ``MAX_HEADER`` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Longer Range headers are refused unread (two 20-digit numbers fit many times over).
MAX_HEADER = 200
_SPEC = re.compile(r"bytes=(\d{0,20})-(\d{0,20})", re.ASCII | re.IGNORECASE)


class RangeError(ValueError):
    """A range the gateway cannot satisfy, or a malformed one; the message says which."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, start + length) of a blob of ``total`` bytes."""

    start: int
    length: int
    total: int

    @property
    def end(self) -> int:
        """The last byte's offset (inclusive, as Content-Range writes it)."""
        return self.start + self.length - 1

    def content_range(self) -> str:
        """The Content-Range header value of a 206 answer."""
        return f"bytes {self.start}-{self.end}/{self.total}"


def parse_range(header: str, total: int) -> ByteRange:
    """The single range a ``Range`` header asks of a blob of ``total`` bytes; ``RangeError`` if it cannot be served."""
    if len(header) > MAX_HEADER:
        raise RangeError(f"a Range header of {len(header)} characters is too long (at most {MAX_HEADER})")
    text = header.strip()
    if "," in text:
        raise RangeError("only one range per request is served (no multipart/byteranges)")
    match = _SPEC.fullmatch(text.replace(" ", ""))
    if match is None or (not match[1] and not match[2]):
        raise RangeError(f"malformed Range header {text[:60]!r}: expected bytes=START-END, bytes=START- or bytes=-COUNT")
    first, last = match[1], match[2]
    if not first:  # bytes=-n: the last n bytes
        count = int(last)
        if count == 0 or total == 0:
            raise RangeError(f"range {text!r} selects no byte of a blob of {total} bytes")
        count = min(count, total)
        return ByteRange(total - count, count, total)
    start = int(first)
    if start >= total:
        raise RangeError(f"range {text!r} starts at or past the end of a blob of {total} bytes")
    end = total - 1 if not last else int(last)
    if end < start:
        raise RangeError(f"range {text!r} ends before it starts")
    end = min(end, total - 1)
    return ByteRange(start, end - start + 1, total)


def byte_range(start: int, length: int, total: int) -> ByteRange:
    """The ``byte-range?start=&length=`` query as a range; ``RangeError`` unless it lies within the blob."""
    if start < 0 or length <= 0:
        raise RangeError(f"start must be >= 0 and length > 0, got start={start} length={length}")
    if start + length > total:
        raise RangeError(f"range {start}+{length} is outside the blob of {total} bytes")
    return ByteRange(start, length, total)
