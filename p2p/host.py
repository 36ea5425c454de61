"""libp2p host setup, as ../shared/spec/libp2p-notes.md advises.

Noise only (a default host would also accept an unauthenticated /plaintext/2.0.0 dialer),
Yamux only (mplex measured 3-4x slower), one connection per peer (without it every connect
waits ~250 ms), no auto-connector, mDNS or UPnP, and ``host.close()`` before leaving
``host.run()`` (leaving without it leaks the listener and background tasks).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity_utils import create_identity_from_seed
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from . import fastpath
from .limits import Guard, Limits, Overloaded

__all__ = ["ID", "IHost", "PeerInfo", "configure_logging", "guard_of", "key_pair", "make_host", "peer_info",
           "running_host"]

#: py-libp2p's own connection caps sit far above ``Limits``' (which members bypass), so
#: only those decide; the swarm's inbound limiter is max_connections - min_connections.
_SWARM_MAX_CONNECTIONS = 4096
_SWARM_MIN_CONNECTIONS = 50


def configure_logging(level: int = logging.WARNING) -> None:
    """Route libp2p's logs to stderr at ``level``.

    Importing libp2p clears the ``libp2p`` logger's handlers and stops propagation, so
    without this its warnings reach stderr only through Python's last-resort handler.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger = logging.getLogger("libp2p")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    logging.getLogger("libp2p.network.auto_connector").setLevel(max(level, logging.WARNING))
    # A refused dial is logged as ERROR here although callers handle it; they report it.
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)


def key_pair(seed: bytes) -> KeyPair:
    """The Ed25519 libp2p key pair for a 32-byte seed (the same key PyNaCl derives)."""
    return create_identity_from_seed(seed)


def guard_of(host: IHost) -> Guard:
    """The resource guard of a host made by ``make_host`` (a default one for any other host)."""
    guard = getattr(host, "_walrusfs_guard", None)
    if guard is None:
        guard = Guard()
        host._walrusfs_guard = guard  # type: ignore[attr-defined]
    return guard


def make_host(seed: bytes, members: Collection[str] = (), limits: Limits | None = None) -> IHost:
    """A host with a Noise-only, Yamux-only, one-connection-per-peer configuration.

    ``members`` are the peer IDs whose connections and streams have reserved room (the
    committee); everyone else shares the outsider limits of ``limits``.
    """
    keys = key_pair(seed)
    noise = NoiseTransport(keys, noise_privkey=_x25519_key_pair().private_key)
    guard = Guard(limits, members)
    host = new_host(
        key_pair=keys,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            max_connections=_SWARM_MAX_CONNECTIONS,
            high_watermark=_SWARM_MAX_CONNECTIONS,
            min_connections=_SWARM_MIN_CONNECTIONS,
            low_watermark=_SWARM_MIN_CONNECTIONS,
            # A connection silent through its handshake, or a stream through protocol
            # negotiation, is an outsider holding a slot: end it within seconds.
            inbound_upgrade_timeout=guard.limits.handshake_deadline,
            inbound_stream_protocol_negotiation_timeout=guard.limits.header_deadline,
        ),
        enable_mDNS=False,
        enable_upnp=False,
    )
    host._walrusfs_guard = guard  # type: ignore[attr-defined]
    # The default (3 retries, 0.1 s doubling) spends 0.7 s on every call to a stopped peer
    # before it fails; callers already route around unavailable peers and redial once
    # themselves, so a refused dial should fail fast. new_host does not pass this through.
    host.get_network().retry_config = RetryConfig(max_retries=1, initial_delay=0.05)  # type: ignore[attr-defined]
    _guard_inbound_connections(host.get_network(), guard)
    fastpath.apply()  # before the atomic wrapper, which wraps whatever write_msg is then
    _make_noise_writes_atomic()
    return host


#: A Noise message not written within this many seconds (the peer stopped reading) ends its connection.
NOISE_WRITE_LIMIT = 10.0


def _make_noise_writes_atomic() -> None:
    """Never let a cancelled task leave a Noise connection out of step.

    py-libp2p 0.8.1's ``NoiseTransportReadWriter.write_msg`` encrypts (advancing the send
    nonce) and then awaits the socket's write lock and ``send_all``, both checkpoints. A
    task cancelled there (a call abandoned once enough peers answered; even a stream
    *read*, which sends a Yamux window update) drops or truncates that message, so the
    peer fails to authenticate every later one and resets the connection: other calls
    on it then fail with "Failed to send SYN ... Broken pipe". Here each message is
    written in a shielded scope; one the peer does not take within NOISE_WRITE_LIMIT
    (for a large one, a piece of it: ``p2p.fastpath.WRITE_PIECE``) closes the connection
    (it is unusable) instead of hanging the cancelled task.
    """
    if getattr(NoiseTransportReadWriter.write_msg, "_walrusfs_atomic", False):
        return
    write_msg = NoiseTransportReadWriter.write_msg

    async def atomic_write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + NOISE_WRITE_LIMIT) as scope:
            # A large write (a whole Yamux frame) gets the limit again after each piece it moves.
            token = fastpath.write_progress.set((scope, NOISE_WRITE_LIMIT))
            try:
                await write_msg(self, msg, prefix_encoded)
            finally:
                fastpath.write_progress.reset(token)
        if scope.cancelled_caught:
            with trio.CancelScope(shield=True):
                try:
                    await self.close()
                except Exception:
                    pass
            raise ConnectionClosedError(f"noise write not taken within {NOISE_WRITE_LIMIT:.0f} s", transport="tcp")

    atomic_write_msg._walrusfs_atomic = True  # type: ignore[attr-defined]
    NoiseTransportReadWriter.write_msg = atomic_write_msg  # type: ignore[method-assign]


#: The cancel scope around the inbound-connection handler running in the current task, and its pending key.
_inbound_handler: ContextVar[tuple[trio.CancelScope, int] | None] = ContextVar("_inbound_handler", default=None)


def _guard_inbound_connections(swarm: Any, guard: Guard) -> None:
    """Hold inbound connections to ``guard``'s limits, and end each handler task with its connection.

    py-libp2p 0.8.1's ``Swarm._handle_inbound_connection`` takes a slot of
    ``_inbound_limiter`` (max_connections - min_connections = 250 by default) and then
    parks on ``manager.wait_finished()`` until the whole swarm stops, so the slot (and the
    task) outlive the connection: after 250 inbound connections in its lifetime a host
    closes every new one before the security handshake. Here the handler runs in a
    cancel scope that is cancelled once the connection it upgraded has closed, so its
    ``finally`` releases the slot and the task ends.

    That limiter also let 250 silent TCP sockets lock everyone out. Instead: a connection
    in its handshake is one of ``pending_connections`` (the oldest silent one gives way to
    a new one) for at most ``handshake_deadline``; once its peer ID is known, a member is always
    admitted and an outsider takes one of ``outsider_connections`` slots (an idle
    outsider connection gives way, or the new one is closed).
    """
    handle, upgrade = swarm._handle_inbound_connection, swarm.upgrade_inbound_raw_conn

    async def close_connection(muxed_conn: Any, peer_id: str) -> None:
        # Through the swarm, so the connection also leaves its table (one per peer).
        try:
            await swarm.close_peer(ID.from_base58(peer_id))
        finally:
            await muxed_conn.close()

    guard.close_connection = close_connection

    def more_status() -> dict[str, Any]:
        manager = getattr(swarm, "_resource_manager", None)
        stats = manager.get_stats() if manager is not None else {}
        return {"connections": len(swarm.get_connections()), "rcmgr_connections": stats.get("connections")}

    guard.more_status = more_status

    async def handle_inbound(read_write_closer: Any, maddr: Any) -> None:
        with trio.CancelScope() as scope:
            key, victims = guard.handshake_started(read_write_closer)
            _inbound_handler.set((scope, key))  # a trio task's context is its own
            for victim in victims:
                with trio.CancelScope(shield=True):
                    try:
                        await victim.close()  # its handshake fails and cleans up after itself
                    except Exception:
                        pass
            read = read_write_closer.read

            async def note_first_bytes(n: int | None = None) -> bytes:
                # A dialer that has sent something is not a silent socket: those make room first.
                data = await read(n)
                if data:
                    guard.handshake_spoke(key)
                    read_write_closer.read = read
                return data

            read_write_closer.read = note_first_bytes
            try:
                await handle(read_write_closer, maddr)
            finally:
                guard.handshake_ended(key)

    upgrader, secure = swarm.upgrader, swarm.upgrader.upgrade_security

    async def upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
        secured = await secure(raw_conn, is_initiator, peer_id)
        handler = _inbound_handler.get()
        if not is_initiator and handler is not None:
            # The dialer proved its key: no longer a handshake a newcomer may push out.
            guard.handshake_ended(handler[1])
        return secured

    upgrader.upgrade_security = upgrade_security

    async def cancel_when_closed(muxed_conn: Any, scope: trio.CancelScope) -> None:
        await muxed_conn.event_closed.wait()
        guard.connection_closed(muxed_conn)
        scope.cancel()

    async def upgrade_inbound(raw_conn: Any, maddr: Any) -> Any:
        muxed_conn = await upgrade(raw_conn, maddr)
        handler = _inbound_handler.get()
        if handler is not None:
            guard.handshake_ended(handler[1])
        peer_id = str(getattr(muxed_conn, "peer_id", ""))
        try:
            evicted = guard.admit_connection(muxed_conn, peer_id)
        except Overloaded:
            await guard.close_quietly(muxed_conn, peer_id)
            raise
        for conn, other in evicted:
            await guard.close_quietly(conn, other)
        if handler is not None and hasattr(muxed_conn, "event_closed"):
            try:
                swarm.background_nursery.start_soon(cancel_when_closed, muxed_conn, handler[0])
            except RuntimeError:  # the swarm is stopping; its nursery cancels the handler
                pass
        return muxed_conn

    swarm._handle_inbound_connection = handle_inbound
    swarm.upgrade_inbound_raw_conn = upgrade_inbound

    handle_stream = swarm.common_stream_handler

    async def handle_inbound_stream(net_stream: Any) -> None:
        conn = net_stream.muxed_conn
        peer_id = str(getattr(conn, "peer_id", ""))
        if not guard.stream_arrives(conn, peer_id):
            with trio.CancelScope(shield=True):
                try:
                    await net_stream.reset()
                except Exception:
                    pass
            return
        try:
            await handle_stream(net_stream)
        finally:
            guard.stream_leaves(conn, peer_id)

    swarm.common_stream_handler = handle_inbound_stream


def peer_info(peer_id: str, addrs: Sequence[str]) -> PeerInfo:
    """PeerInfo for a base58 peer ID and its multiaddrs (without /p2p/ suffixes)."""
    return PeerInfo(ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in addrs])


async def close_connections(host: IHost) -> None:
    """Close every connection of ``host`` at once (libp2p's close does them one by one).

    Each close waits 0.2 s (yamux lets its GoAway go out, the swarm lets stream handlers
    see their resets): one after another that was 0.8 s at the end of every command on a
    4-peer committee and 1.4 s on 7. Together they take the 0.2 s once.
    """
    network = host.get_network()
    conns = [conn for group in list(getattr(network, "connections", {}).values()) for conn in list(group)]

    async def close(conn: Any) -> None:
        try:
            await conn.close()
        except Exception:  # noqa: BLE001 - already gone: host.close() finishes the rest
            pass

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(close, conn)


@asynccontextmanager
async def running_host(
    seed: bytes, listen: Sequence[str] = (), members: Collection[str] = (), limits: Limits | None = None,
) -> AsyncIterator[IHost]:
    """Run a host listening on ``listen`` until the block exits, then close it cleanly (``make_host`` for the rest)."""
    host = make_host(seed, members, limits)
    async with host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in listen]):
        try:
            # The auto-connector would dial every known peer in the background (aiming at
            # 150 connections); walrusfs connects on demand, and a second dialer racing
            # ours under a one-connection limit only adds failures. It has no off switch.
            auto_connector = getattr(host.get_network(), "auto_connector", None)
            if auto_connector is not None:
                await auto_connector.stop()
            yield host
        finally:
            guard_of(host).close()
            with trio.CancelScope(shield=True):
                await close_connections(host)
                await host.close()
