"""Request/response over libp2p streams: one frame each way per request.

A stream may carry several requests in turn: ``request`` opens a stream per call, while a
``Session`` keeps one stream open for many (opening a stream costs a few ms of CPU in
py-libp2p, which dominates small, frequent messages). A handler exception escaping a
libp2p stream handler takes the whole host down, so every handler is wrapped: framing
errors are answered with an error header built by the caller's ``on_error`` and anything
else resets just that stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError
from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError

from .framing import Body, EndOfStream, FrameError, FrameReader, write_frame
from .host import guard_of
from .limits import Guard, Overloaded

log = logging.getLogger("p2p.rpc")

#: handler(reader, remote peer ID) -> (response header, response body)
Handler = Callable[[FrameReader, str], Awaitable[tuple[bytes, bytes]]]


class PeerUnavailable(Exception):
    """A peer could not be reached, refused the protocol or broke off the exchange."""

    def __init__(self, peer_id: str, reason: str) -> None:
        super().__init__(f"peer {peer_id}: {reason}")
        self.peer_id = peer_id
        self.reason = reason

    def __reduce__(self) -> tuple[type[PeerUnavailable], tuple[str, str]]:
        # copy and pickle rebuild an exception from ``args``, which holds only the message:
        # without this they would raise TypeError (one argument of two) on an error path.
        return type(self), (self.peer_id, self.reason)


async def _quietly(action: Callable[[], Awaitable[object]]) -> None:
    """Close or reset a stream even while being cancelled, ignoring one that is already gone."""
    with trio.CancelScope(shield=True):
        try:
            await action()
        except Exception:
            pass


#: An answer refusing a stream past a limit must not wait on a requester that does not read.
_REFUSAL_WRITE_LIMIT = 2.0


async def _refuse(stream: object, answer: bytes, guard: Guard) -> None:
    """Answer a request refused past a resource limit, then reset the stream (its body is never read)."""
    with trio.move_on_after(_REFUSAL_WRITE_LIMIT):
        try:
            await write_frame(stream, answer, b"")
        except Exception:
            pass
    await _quietly(stream.reset)  # type: ignore[attr-defined]
    guard.freed_big_buffer()  # what the refused stream had buffered is freed now


def serve(host: IHost, protocol: str, handler: Handler, on_error: Callable[[Exception], bytes]) -> None:
    """Answer requests on ``protocol`` with ``handler``, never letting an error reach the host.

    Every stream is held to the host's limits (``p2p.limits``): caps on streams and bytes
    per remote peer, a header deadline, a minimum body rate and an idle limit.
    """
    guard = guard_of(host)

    async def on_stream(stream: object) -> None:
        remote = str(stream.muxed_conn.peer_id)  # type: ignore[attr-defined]
        try:
            watch = await guard.open_stream(remote, stream)
        except Overloaded as exc:
            log.info("refusing a stream on %s from %s: %s", protocol, remote, exc)
            await _refuse(stream, on_error(exc), guard)
            return
        reader = FrameReader(stream, watch)
        # A read pending on a stream that is reset from this side is not woken by py-libp2p
        # 0.8.1; the watch cancels this scope after resetting the stream.
        with trio.CancelScope() as watch.scope:
            try:
                while True:
                    try:
                        header, body = await handler(reader, remote)
                    except EndOfStream:
                        break
                    except Overloaded as exc:
                        log.info("refusing a request on %s from %s: %s", protocol, remote, exc)
                        await _refuse(stream, on_error(exc), guard)
                        return
                    except FrameError as exc:
                        # After a framing error the stream's position is unknown: answer, then end it.
                        await write_frame(stream, on_error(exc), b"")
                        break
                    finally:
                        watch.request_done()
                    await write_frame(stream, header, body)
                await stream.close()  # type: ignore[attr-defined]
            except (StreamEOF, StreamReset, MuxedStreamError) as exc:
                # The requester went away (it cancels requests it no longer needs), or the
                # stream broke a limit and was reset (``watch.reason`` says which).
                log.debug("request on %s from %s ended early: %r %s", protocol, remote, exc, watch.reason or "")
            except Exception:
                log.warning("request on %s from %s failed", protocol, remote, exc_info=True)
                await _quietly(stream.reset)  # type: ignore[attr-defined]
            finally:
                guard.close_stream(watch)

    host.set_stream_handler(TProtocol(protocol), on_stream)


def _connection_failed(exc: BaseException) -> bool:
    """Whether opening a stream failed because its connection is dead (not because the peer is slow or refused)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if "connections available" in str(link) or isinstance(
                link, (IOException, MuxedConnError, MuxedStreamError, MultiselectCommunicatorError)):
            return True
        link = link.__cause__ or link.__context__
    return False


async def _open_stream(host: IHost, peer: PeerInfo, protocol: str) -> object:
    network = host.get_network()
    for attempt in range(2):
        if not network.get_connections(peer.peer_id):
            # A failed dial blocks the peer for 60 s; a peer that restarted must be reachable
            # at once, and callers already decide how often to retry.
            unblock = getattr(network, "unblock_peer", None)
            if unblock is not None:
                unblock(peer.peer_id)
            await host.connect(peer)
        try:
            return await host.new_stream(peer.peer_id, [TProtocol(protocol)])
        except Exception as exc:
            # py-libp2p keeps closed connections in its table and then refuses to open a
            # stream ("No valid connections available") instead of dialing, and a
            # connection the peer reset stays there until its reader notices (the SYN or
            # the protocol handshake cannot be written): drop them and dial once more.
            # A negotiation that timed out (a stalled peer) is not redialed.
            if attempt or not _connection_failed(exc):
                raise
            await network.close_peer(peer.peer_id)
    raise AssertionError("unreachable")


async def request(
    host: IHost,
    peer: PeerInfo,
    protocol: str,
    header: bytes,
    body: Body = b"",
    *,
    max_header: int,
    max_body: int,
    parts: bool = False,
) -> tuple[bytes, bytes | list[bytes]]:
    """Send one request frame to ``peer`` and return its response (header, body; ``parts``: the body's chunks)."""
    peer_id = str(peer.peer_id)
    try:
        stream = await _open_stream(host, peer, protocol)
    except Exception as first:
        # A connection can die under us (the peer restarted, or the connection was torn
        # down); drop it and dial once more before calling the peer unavailable.
        try:
            await host.get_network().close_peer(peer.peer_id)
            stream = await _open_stream(host, peer, protocol)
        except Exception as exc:
            raise PeerUnavailable(peer_id, f"cannot open {protocol}: {exc or type(exc).__name__}") from first
    try:
        await write_frame(stream, header, body)
        reader = FrameReader(stream)
        response = await reader.read_header(max_header)
        response_body = await (reader.read_body_parts if parts else reader.read_body)(max_body)
    except BaseException as exc:
        await _quietly(stream.reset)
        if isinstance(exc, Exception):
            raise PeerUnavailable(peer_id, f"{protocol} exchange failed: {exc or type(exc).__name__}") from exc
        raise
    await stream.close()
    return response, response_body


class Session:
    """Sequential requests to one peer over one long-lived stream, reopened when it breaks."""

    def __init__(self, host: IHost, peer: PeerInfo, protocol: str, *, max_header: int, max_body: int) -> None:
        self._host = host
        self._peer = peer
        self._protocol = protocol
        self._limits = (max_header, max_body)
        self._stream: object | None = None
        self._reader: FrameReader | None = None
        self._lock = trio.Lock()

    async def request(self, header: bytes, body: Body = b"", *, parts: bool = False,
                      max_body: int | None = None) -> tuple[bytes, bytes | list[bytes]]:
        """Send one request on the session's stream and return the response (header, body).

        ``parts``: the body as the chunks it arrived in; ``max_body``: a tighter limit than
        the session's for this response (the reply's length is refused before it is read).
        """
        async with self._lock:
            for attempt in range(2):
                try:
                    if self._stream is None:
                        self._stream = await _open_stream(self._host, self._peer, self._protocol)
                        self._reader = FrameReader(self._stream)
                    assert self._reader is not None
                    await write_frame(self._stream, header, body)
                    response = await self._reader.read_header(self._limits[0])
                    limit = self._limits[1] if max_body is None else min(max_body, self._limits[1])
                    read = self._reader.read_body_parts if parts else self._reader.read_body
                    return response, await read(limit)
                except Exception as exc:
                    await self.reset()
                    if attempt:
                        raise PeerUnavailable(str(self._peer.peer_id), f"{self._protocol} session failed: {exc}") from exc
            raise AssertionError("unreachable")

    async def reset(self) -> None:
        """Abandon the stream (it may hold half an exchange); the next request opens another."""
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await _quietly(stream.reset)  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        """Close the stream."""
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await _quietly(stream.close)  # type: ignore[attr-defined]
