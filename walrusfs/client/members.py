"""Calling committee members: one walrusfs request to one peer, its reply parsed."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2p.framing import Body
from p2p.host import IHost, peer_info
from p2p.rpc import Session, request

from ..core import messages as m
from ..core.committee import Committee

log = logging.getLogger("walrusfs.members")


def member_fault(peer: int | str, exc: BaseException) -> str:
    """Describe an error a member's reply made our handling of it raise: that member's failure, never our crash.

    Replies are parsed and validated where they arrive, but a hostile value can still
    trip code further in (a proof made of integers, a list where a map belongs); the
    traceback is logged, since an unexpected one may also be our own bug.
    """
    log.warning("peer %s sent a reply that could not be handled", peer, exc_info=exc)
    return f"unusable reply: {type(exc).__name__}: {exc}"


#: Idle streams kept per (peer, protocol); more are opened while calls overlap.
IDLE_SESSIONS = 8


class SessionPool:
    """Long-lived streams to committee members, reused across calls.

    Opening a py-libp2p stream (Yamux open plus multistream negotiation) costs
    milliseconds of CPU on both ends; a mount making thousands of small calls reuses
    streams instead. A call that fails or is cancelled mid-exchange never returns its
    stream to the pool, since the stream may hold half a frame.
    """

    def __init__(self, host: IHost, committee: Committee) -> None:
        self.host = host
        self.committee = committee
        self._idle: dict[tuple[int, str, int], list[Session]] = {}

    async def call(self, peer: int, protocol: str, header: bytes, body: Body, max_body: int, *,
                   parts: bool = False, reply_limit: int | None = None) -> tuple[bytes, bytes | list[bytes]]:
        """One request on a pooled stream (``parts``, ``reply_limit``: as ``Session.request``'s)."""
        key = (peer, protocol, max_body)
        idle = self._idle.setdefault(key, [])
        if idle:
            session = idle.pop()
        else:
            info = self.committee.peers[peer]
            session = Session(self.host, peer_info(info.peer_id, info.addrs), protocol,
                              max_header=m.MAX_HEADER, max_body=max_body)
        try:
            result = await session.request(header, body, parts=parts, max_body=reply_limit)
        except BaseException:
            with trio.CancelScope(shield=True):
                await session.reset()
            raise
        if len(idle) < IDLE_SESSIONS:
            idle.append(session)
        else:
            with trio.CancelScope(shield=True):
                await session.aclose()
        return result

    async def aclose(self) -> None:
        """Close every idle stream (a walk that used its own pool is over)."""
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        with trio.CancelScope(shield=True):
            for session in sessions:
                await session.aclose()


async def call_member(
    host: IHost, committee: Committee, peer: int, protocol: str, body: Body = b"", *,
    max_body: int = m.MAX_BODY, pool: SessionPool | None = None, parts: bool = False,
    reply_limit: int | None = None, **fields: Any,
) -> tuple[dict[str, Any], Any]:
    """Send ``fields`` (and ``body``) to committee member ``peer``; return its reply and body.

    ``parts``: the reply's body as the chunks it arrived in (a list), not joined;
    ``reply_limit``: this reply's body may be at most so long (a sliver's known length),
    checked on its length prefix. Raises ``PeerUnavailable`` when the peer cannot be
    reached or its reply is malformed or too long, and ``RemoteError`` when it answers
    with an error.
    """
    if pool is not None:
        header, response_body = await pool.call(peer, protocol, m.request(**fields), body, max_body,
                                                parts=parts, reply_limit=reply_limit)
        return m.parse_response(header), response_body
    info = committee.peers[peer]
    header, response_body = await request(
        host, peer_info(info.peer_id, info.addrs), protocol, m.request(**fields), body,
        max_header=m.MAX_HEADER, max_body=max_body if reply_limit is None else min(max_body, reply_limit),
        parts=parts,
    )
    return m.parse_response(header), response_body


async def ask_others(
    committee: Committee, me: int, ask: Callable[[int], Awaitable[None]], enough: trio.Event | None = None,
) -> None:
    """Run ``ask(peer)`` for every member but ``me`` at once (in random order); return when all returned or ``enough`` is set.

    Returning once every ask is done matters as much as stopping early: a caller that only
    waits for ``enough`` hangs for good when too few members agree.
    """
    others = [k for k in range(len(committee.peers)) if k != me]
    random.shuffle(others)
    async with trio.open_nursery() as nursery:

        async def stop_when_enough(enough: trio.Event) -> None:
            await enough.wait()
            nursery.cancel_scope.cancel()

        if enough is not None:
            nursery.start_soon(stop_when_enough, enough)
        async with trio.open_nursery() as asks:
            for peer in others:
                asks.start_soon(ask, peer)
        nursery.cancel_scope.cancel()
