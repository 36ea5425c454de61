"""Calling committee members: one walrusfs request to one peer, its reply parsed."""

from __future__ import annotations

from typing import Any

from p2p.framing import Body
from p2p.host import IHost, peer_info
from p2p.rpc import request

from .core import messages as m
from .core.committee import Committee


async def call_member(
    host: IHost, committee: Committee, peer: int, protocol: str, body: Body = b"", *,
    max_body: int = m.MAX_BODY, **fields: Any,
) -> tuple[dict[str, Any], bytes]:
    """Send ``fields`` (and ``body``) to committee member ``peer``; return its reply and body.

    Raises ``PeerUnavailable`` when the peer cannot be reached and ``RemoteError`` when it
    answers with an error.
    """
    info = committee.peers[peer]
    header, response_body = await request(
        host, peer_info(info.peer_id, info.addrs), protocol, m.request(**fields), body,
        max_header=m.MAX_HEADER, max_body=max_body,
    )
    return m.parse_response(header), response_body
