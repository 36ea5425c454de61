"""Cheaper bulk transfer through py-libp2p 0.8.1's Noise and Yamux, wire format unchanged.

Profiles of a sliver-pair upload showed most of a peer's CPU in the trio loop, not in
cryptography: every 64 KiB moved cost a Yamux frame (a dozen lock checkpoints and
formatted debug messages on each side), a Yamux frame just over the Noise limit became
two Noise messages (one of 17 bytes), and each Noise message was read with two socket
reads (the 2-byte length, then the body) behind a trio lock, each a trip through the
scheduler. These patches keep every byte on the wire as the protocols define it:

- Yamux DATA frames are sent up to ``FRAME_SIZE`` bytes (never past the send window the
  receiver granted, which is all the Yamux spec and go-yamux require; py-libp2p accepts
  up to its 16 MiB window);
- a Noise transport message batch (one Yamux frame) is encrypted whole and written in
  ``WRITE_PIECE`` socket writes;
- Noise transport messages are read from a receive buffer filled ``READ_SIZE`` bytes at
  a time, so most messages cost no socket call or checkpoint;
- a Yamux DATA body is taken straight from the secure session (py-libp2p's
  ``read_exactly`` copied it twice more);
- data a stream received before its reset is read before the reset is reported.

Each patch is applied once, only on the libp2p version it was written against; on any
other version nothing is patched and everything works as before, only slower.
"""

from __future__ import annotations

import struct
from contextvars import ContextVar
from importlib.metadata import version
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.utils import read_exactly
from libp2p.security.noise import io as noise_io
from libp2p.stream_muxer.yamux import yamux
from noise.exceptions import NoiseInvalidMessage

#: The libp2p release these patches replace internals of.
PATCHED_VERSION = "0.8.1"
#: Largest Yamux DATA frame sent (go-yamux sends 64 KiB by default; any frame within the window is valid).
#: CPU per MB moved (both ends, one process): 64 KiB 4.7 ms, 128 KiB 2.9, 256 KiB 2.3, 1 MiB 1.9.
FRAME_SIZE = 1 << 20
#: A frame is written to the socket in pieces this large; ``write_progress`` (set by
#: ``p2p.host``'s atomic write) gives each piece the write limit afresh, so a link must
#: move 256 KiB per NOISE_WRITE_LIMIT (26 KB/s at 10 s; 64 KiB frames needed 6.5 KB/s).
WRITE_PIECE = 256 << 10
#: (scope, seconds): the scope whose deadline a Noise write moves to now + seconds after each piece.
write_progress: ContextVar[tuple[trio.CancelScope, float] | None] = ContextVar("write_progress", default=None)
#: Bytes asked of the socket per read on a Noise connection.
READ_SIZE = 256 << 10

_PLAINTEXT = noise_io.MAX_PLAINTEXT_LENGTH
_LENGTH = struct.Struct(">H")
_applied = False


def apply() -> bool:
    """Install the patches (idempotent); False if this libp2p is not the version they were made for."""
    global _applied
    if _applied:
        return True
    if version("libp2p") != PATCHED_VERSION:
        return False
    _patch_noise()
    _patch_yamux()
    _applied = True
    return True


def _seal(rw: Any, plaintext: memoryview) -> bytes:
    """Encrypt one transport message; the cipher state's own step (nonce and all), minus a copy.

    ``NoiseConnection.encrypt`` accepts only ``bytes``, so a slice of a large buffer would
    be copied first; the cipher state below it takes any buffer.
    """
    return rw.noise_state.noise_protocol.cipher_state_encrypt.encrypt_with_ad(None, plaintext)


def _open(rw: Any, ciphertext: memoryview) -> bytes:
    """Decrypt one transport message, failing as ``NoiseConnection.decrypt`` does."""
    try:
        return rw.noise_state.noise_protocol.cipher_state_decrypt.decrypt_with_ad(None, ciphertext)
    except InvalidTag:
        raise NoiseInvalidMessage("Failed authentication of message") from None


def _patch_noise() -> None:
    transport = noise_io.NoiseTransportReadWriter
    if getattr(transport.write_msg, "_walrusfs_atomic", False):
        raise RuntimeError("p2p.fastpath must be applied before the atomic Noise write wrapper")

    async def write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded:  # never used after the handshake; keep libp2p's own path for it
            await noise_io.BaseNoiseMsgReadWriter.write_msg(self, msg, prefix_encoded)
            return
        # Encrypting advances the send nonce: every message made here must be written.
        view = memoryview(msg)
        out = []
        for start in range(0, max(len(view), 1), _PLAINTEXT):
            sealed = _seal(self, view[start : start + _PLAINTEXT])
            out.append(_LENGTH.pack(len(sealed)))
            out.append(sealed)
        data = b"".join(out)
        raw = self.read_writer.read_write_closer
        progress = write_progress.get()
        if progress is None or len(data) <= WRITE_PIECE:
            await raw.write(data)
            return
        scope, limit = progress
        view = memoryview(data)
        for start in range(0, len(view), WRITE_PIECE):
            await raw.write(view[start : start + WRITE_PIECE])
            scope.deadline = trio.current_time() + limit

    async def read_msg(self: Any, prefix_encoded: bool = False) -> bytes:
        if prefix_encoded:
            return await noise_io.BaseNoiseMsgReadWriter.read_msg(self, prefix_encoded)
        state = self.__dict__
        buffer: bytes = state.get("_walrusfs_rbuf", b"")
        pos: int = state.get("_walrusfs_rpos", 0)
        while True:
            have = len(buffer) - pos
            if have >= 2:
                (size,) = _LENGTH.unpack_from(buffer, pos)
                if have >= 2 + size:
                    start = pos + 2
                    state["_walrusfs_rpos"] = start + size
                    return _open(self, memoryview(buffer)[start : start + size])
            else:
                size = 0
            chunk = await self.read_writer.read_write_closer.read(READ_SIZE)
            if not chunk:
                # libp2p's own reader raises this for a connection that ends (cleanly
                # when nothing of the next message had arrived).
                state["_walrusfs_rbuf"], state["_walrusfs_rpos"] = b"", 0
                expected = 2 if have < 2 else 2 + size
                raise IncompleteReadError(
                    f"Connection closed during read operation: expected {expected} bytes but received {have} bytes",
                    expected_bytes=expected, received_bytes=have,
                )
            buffer = buffer[pos:] + chunk if have else chunk
            pos = 0
            state["_walrusfs_rbuf"], state["_walrusfs_rpos"] = buffer, 0

    write_msg._walrusfs_fast = True  # type: ignore[attr-defined]
    transport.write_msg = write_msg  # type: ignore[method-assign]
    transport.read_msg = read_msg  # type: ignore[method-assign]


def _patch_yamux() -> None:
    yamux.MAX_MESSAGE_SIZE = FRAME_SIZE
    timeout = yamux._yamux_data_read_timeout

    async def _read_data_body(self: Any, length: int) -> bytes:
        with trio.fail_after(timeout()):
            data = await self.secured_conn.read(length)
            if len(data) < length:
                data += await read_exactly(self.secured_conn, length - len(data))
            return data

    yamux.Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]
    read_stream = yamux.Yamux.read_stream

    def take(buffer: bytearray, n: int | None) -> bytes:
        count = len(buffer) if n is None or n < 0 or n >= len(buffer) else n
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    async def read_stream_then_reset(self: Any, stream_id: int, n: int = -1) -> bytes:
        # Data that arrived before a stream's RST is delivered before the reset is reported.
        # py-libp2p keeps such data buffered ("preserving half-close read semantics") but
        # raised the reset first, so whether a reader saw an answer written just before a
        # reset (a peer's "busy" refusal) depended on whether it ran between the two
        # frames: with a buffered Noise reader both are usually handled in one go.
        stream = self.streams.get(stream_id)
        buffer = self.stream_buffers.get(stream_id)
        if stream is not None and stream.reset_received and buffer:
            return take(buffer, n)
        try:
            return await read_stream(self, stream_id, n)
        except yamux.MuxedStreamReset:
            # The reset arrived while this read waited, right behind data for it.
            buffer = self.stream_buffers.get(stream_id)
            if buffer:
                return take(buffer, n)
            raise

    yamux.Yamux.read_stream = read_stream_then_reset  # type: ignore[method-assign]
