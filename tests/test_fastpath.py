"""p2p.fastpath: the patched Noise reader and writer speak the protocol byte for byte like py-libp2p's own.

In memory: two Noise transport states from a real XX handshake over a pipe that hands
reads back in arbitrary pieces, so message and buffer bounds fall anywhere.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p.io.exceptions import IncompleteReadError
from libp2p.security.noise.io import BaseNoiseMsgReadWriter, NoiseTransportReadWriter
from noise.connection import Keypair, NoiseConnection

from p2p import fastpath, host

assert fastpath.apply()
host._make_noise_writes_atomic()  # the wrapper make_host installs, around the patched writer


class Pipe:
    """A raw connection: writes are kept, reads return up to n bytes in pieces the test chooses."""

    def __init__(self, sizes: list[int] | None = None, delay: float = 0.0, stall_after: int | None = None) -> None:
        self.data = bytearray()
        self.sizes = sizes or []
        self.closed = False
        self.delay = delay
        self.stall_after = stall_after
        self.writes = 0

    async def write(self, data: Any) -> None:
        if self.stall_after is not None and self.writes >= self.stall_after:
            await trio.sleep_forever()
        await trio.sleep(self.delay)
        self.writes += 1
        self.data += bytes(data)

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = self.sizes.pop(0) if self.sizes else len(self.data)
        size = min(size, len(self.data), n if n is not None else len(self.data))
        out = bytes(self.data[:size])
        del self.data[:size]
        return out

    async def close(self) -> None:
        self.closed = True


def transport_pair() -> tuple[NoiseConnection, NoiseConnection]:
    """Initiator and responder states after a Noise XX handshake (what libp2p runs)."""
    name = b"Noise_XX_25519_ChaChaPoly_SHA256"
    ends = []
    for initiator in (True, False):
        conn = NoiseConnection.from_name(name)
        conn.set_as_initiator() if initiator else conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, random.Random(initiator).randbytes(32))
        conn.start_handshake()
        ends.append(conn)
    a, b = ends
    b.read_message(a.write_message())
    a.read_message(b.write_message())
    b.read_message(a.write_message())
    assert a.handshake_finished and b.handshake_finished
    return a, b


def rw(state: NoiseConnection, pipe: Pipe) -> NoiseTransportReadWriter:
    return NoiseTransportReadWriter(pipe, state)  # type: ignore[arg-type]


message_sizes = st.lists(st.sampled_from([0, 1, 17, 65519, 65520, 200_000, 1 << 20]), min_size=1, max_size=4)
read_sizes = st.lists(st.integers(1, 300_000), max_size=40)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=message_sizes, reads=read_sizes, patched_writer=st.booleans())
def test_patched_and_original_noise_interoperate(sizes: list[int], reads: list[int], patched_writer: bool) -> None:
    messages = [random.Random(k).randbytes(size) for k, size in enumerate(sizes)]

    async def main() -> None:
        a, b = transport_pair()
        pipe = Pipe(list(reads))
        writer, reader = rw(a, pipe), rw(b, pipe)
        for message in messages:
            if patched_writer:
                await writer.write_msg(message)
            else:
                await BaseNoiseMsgReadWriter.write_msg(writer, message)
        got = b""
        # Both writers cut a message into Noise messages of at most 65519 bytes (one if empty).
        for _ in range(sum(max(1, -(-size // 65519)) for size in sizes)):
            if patched_writer:
                got += await BaseNoiseMsgReadWriter.read_msg(reader)
            else:
                got += await reader.read_msg()
        assert got == b"".join(messages)
        assert not pipe.data

    trio.run(main)


async def test_a_connection_ending_inside_a_message_is_an_incomplete_read() -> None:
    a, b = transport_pair()
    pipe = Pipe([7])
    await rw(a, pipe).write_msg(b"x" * 100)
    del pipe.data[-5:]
    reader = rw(b, pipe)
    with pytest.raises(IncompleteReadError) as caught:
        await reader.read_msg()
    assert not caught.value.is_clean_close
    with pytest.raises(IncompleteReadError) as caught:  # nothing at all: a clean end
        await reader.read_msg()
    assert caught.value.is_clean_close


async def test_a_large_write_needs_progress_not_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 MiB in 5 pieces of 0.3 s each takes 1.5 s, past a 0.5 s limit, but moves all the time.
    monkeypatch.setattr(host, "NOISE_WRITE_LIMIT", 0.5)
    a, _ = transport_pair()
    slow = Pipe(delay=0.3)
    await rw(a, slow).write_msg(b"y" * (1 << 20))
    assert slow.writes == 5 and not slow.closed  # 1 MiB and 17 Noise headers, in 256 KiB pieces
    # A peer that stops taking bytes after the first piece: the connection is closed.
    stalled = Pipe(stall_after=1)
    started = trio.current_time()
    with pytest.raises(Exception, match="not taken within"):
        await rw(a, stalled).write_msg(b"z" * (1 << 20))
    assert stalled.closed and trio.current_time() - started < 2
