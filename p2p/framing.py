"""Request/response framing over libp2p streams.

One frame is ``u32 header length | header | u64 body length | body``. The header is opaque
here (walrusfs puts canonical CBOR in it); the body is raw bytes that may be large, so it
is delivered in chunks as they arrive and never buffered whole by this layer. Both lengths
are checked against the caller's limits before anything is read, so an oversized or
truncated frame costs the reader nothing but an error.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

from libp2p.network.stream.exceptions import StreamEOF

#: Yamux and Noise both move big writes far faster than small ones (70-90 MB/s at 1 MiB
#: writes, 16-21 MB/s at 8 KiB).
CHUNK = 1 << 20
_HEADER_PREFIX = struct.Struct(">I")
_BODY_PREFIX = struct.Struct(">Q")


class FrameError(Exception):
    """The peer sent a frame that is truncated or exceeds the agreed limits."""


class EndOfStream(FrameError):
    """The stream ended cleanly between frames."""


class FrameReader:
    """Reads frames from a stream in large reads.

    A server passes a ``watch`` (``p2p.limits.StreamWatch``): the reader tells it which
    part of a frame it is waiting for and how much it holds, so the stream can be held to
    its deadlines, minimum rate and byte caps. The buffer grows only as bytes arrive,
    never to a declared length, so a header announced as 1 MiB and never sent costs nothing.
    """

    def __init__(self, stream: object, watch: Any = None) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._watch = watch
        self._in_header = False
        #: Bytes read from the stream so far (for byte counters; read-ahead included).
        self.received = 0

    async def _read(self) -> bytes:
        """The stream's next chunk (b"" at its end), reported to the watch."""
        watch = self._watch
        if watch is not None:
            watch.read_starts()
        try:
            chunk = await self._stream.read(CHUNK)  # type: ignore[attr-defined]
        except StreamEOF:
            return b""
        finally:
            if watch is not None:
                watch.read_ends()
        if chunk:
            self.received += len(chunk)
            if watch is not None:
                watch.arrived(len(chunk))
        return chunk or b""

    async def _more(self) -> bool:
        chunk = await self._read()
        if not chunk:
            return False
        self._buffer += chunk
        watch = self._watch
        if watch is not None and self._in_header:
            watch.header_arriving()
            watch.hold_header(len(self._buffer))  # raises Overloaded past the peer's cap
        return True

    async def _exactly(self, count: int, what: str) -> bytes:
        while len(self._buffer) < count:
            if not await self._more():
                raise FrameError(f"stream ended inside the {what} ({len(self._buffer)} of {count} bytes)")
        out = bytes(self._buffer[:count])
        del self._buffer[:count]
        return out

    async def read_header(self, max_size: int) -> bytes:
        """The next frame's header, at most ``max_size`` bytes; ``EndOfStream`` if none follows."""
        watch = self._watch
        self._in_header = True
        try:
            if watch is not None:
                if self._buffer:
                    watch.header_arriving()
                else:
                    watch.waiting_for_frame()
            if not self._buffer and not await self._more():
                raise EndOfStream("stream ended between frames")
            (size,) = _HEADER_PREFIX.unpack(await self._exactly(_HEADER_PREFIX.size, "header length"))
            if size > max_size:
                raise FrameError(f"header of {size} bytes exceeds the limit of {max_size}")
            header = await self._exactly(size, "header")
        finally:
            self._in_header = False
        if watch is not None:
            watch.hold_header(0)
            watch.handling()  # until the handler asks for the body, waiting is not the sender's doing
        return header

    def admit(self) -> None:
        """Tell the watch the current request passed the handler's authorization checks."""
        if self._watch is not None:
            self._watch.admit()

    async def body_length(self, max_size: int) -> int:
        """The length of the body that follows the header, checked against ``max_size`` (and the watch's caps)."""
        (size,) = _BODY_PREFIX.unpack(await self._exactly(_BODY_PREFIX.size, "body length"))
        if size > max_size:
            raise FrameError(f"body of {size} bytes exceeds the limit of {max_size}")
        if self._watch is not None:
            self._watch.body_starts(size)  # reserves it whole: raises Overloaded past a cap
        return size

    async def body_chunks(self, length: int) -> AsyncIterator[bytes]:
        """Yield the body's ``length`` bytes as they arrive (the stream's own chunks, uncopied, where possible)."""
        left = length
        while left:
            buffer = self._buffer
            if buffer:
                if len(buffer) <= left:
                    piece = bytes(buffer)
                    buffer.clear()
                else:
                    with memoryview(buffer) as view, view[:left] as head:
                        piece = bytes(head)
                    del buffer[:left]
            else:
                piece = await self._read()
                if not piece:
                    raise FrameError(f"stream ended inside the body ({length - left} of {length} bytes)")
                if len(piece) > left:
                    # The next frame's first bytes came with this one's last: keep them.
                    with memoryview(piece) as view, view[left:] as rest:
                        buffer += rest
                    piece = piece[:left]
            left -= len(piece)
            if not left and self._watch is not None:
                self._watch.handling()
            yield piece

    async def read_body(self, max_size: int) -> bytes:
        """The whole body, for bodies small enough to hold in memory."""
        length = await self.body_length(max_size)
        return b"".join([chunk async for chunk in self.body_chunks(length)])

    async def read_body_parts(self, max_size: int) -> list[bytes]:
        """The whole body as the chunks it arrived in: no joined second copy of a large body."""
        length = await self.body_length(max_size)
        return [chunk async for chunk in self.body_chunks(length)]


Body = bytes | memoryview | Sequence[bytes]


async def write_frame(stream: object, header: bytes, body: Body = b"") -> None:
    """Write one frame, the body (one buffer, or parts sent back to back) in large writes."""
    parts = [body] if isinstance(body, (bytes, bytearray, memoryview)) else list(body)
    total = sum(len(part) for part in parts)
    await stream.write(_HEADER_PREFIX.pack(len(header)) + header + _BODY_PREFIX.pack(total))  # type: ignore[attr-defined]
    for part in parts:
        # Slices of a view: the muxer copies each into its frames anyway, so no copy here.
        view = memoryview(part)
        for start in range(0, len(view), CHUNK):
            await stream.write(view[start : start + CHUNK])  # type: ignore[attr-defined]
