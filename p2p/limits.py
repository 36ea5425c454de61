"""Resource limits on what remote parties can make a host hold: bounded by construction.

Anyone can open a libp2p connection with a fresh key, so nothing an outsider sends may
pin memory, disk, descriptors or tasks for longer or in larger amounts than a limit here
allows (see ../shared/spec/fault-model.md, "outsider"):

- connections: a TCP connection that has not finished its Noise and Yamux handshake
  within ``handshake_deadline`` is closed, and at most ``pending_connections`` may be in
  that state (a new one pushes out the oldest that has not sent a byte, so a flood of
  silent sockets cannot keep an honest dialer, which speaks at once, from getting through). Committee
  members' connections are never counted against ``outsider_connections``; an outsider
  connection with no open request stream is closed after ``connection_idle`` seconds, or sooner
  when a new outsider needs its slot;
- streams: each remote peer may have ``streams_per_peer`` inbound streams open (members
  ``member_streams``), outsiders ``outsider_streams`` together; past a cap the stream
  that has waited longest between requests gives way, or the new one is refused (and
  before protocol negotiation, a connection may hold twice that many streams of any
  protocol);
- time: a request's header must arrive whole within ``header_deadline`` seconds (of the
  stream opening for the first request, of its first byte for later ones); a body must
  arrive at ``min_rate`` bytes/s or more, averaged over the last ``rate_window`` seconds
  the reader spent waiting for it (time the reader spends on its own work does not
  count, so a slow disk here never blames the sender, and a legitimately slow upload of
  any size never hits a total timeout); a stream idle between requests is closed after
  ``stream_idle`` seconds;
- bytes: buffered header bytes and declared body lengths (a body is reserved whole
  before it is read, since a sliver pair is verified whole) are charged to the remote
  peer and, for outsiders, to their common account; past a cap the request is refused.

Timers here only end connections and streams (liveness); nothing signed or decided
depends on them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, fields, replace
from typing import Any

import trio

from .framing import FrameError

log = logging.getLogger("p2p.limits")


@dataclass(frozen=True)
class Limits:
    """The numbers; the defaults suit a storage peer whose largest body is a 160 MiB sliver pair."""

    handshake_deadline: float = 5.0
    pending_connections: int = 256
    outsider_connections: int = 192
    connection_idle: float = 60.0
    header_deadline: float = 5.0
    stream_idle: float = 60.0
    #: Far below the 1 MB/s the fault model's slow peers must still manage.
    min_rate: int = 16 << 10
    rate_window: float = 8.0
    streams_per_peer: int = 64
    member_streams: int = 256
    outsider_streams: int = 512
    header_bytes_per_peer: int = 8 << 20
    member_header_bytes: int = 32 << 20
    outsider_header_bytes: int = 64 << 20
    #: One pair of the largest size (160 MiB) plus room for small bodies beside it.
    body_bytes_per_peer: int = 192 << 20
    member_body_bytes: int = 192 << 20
    outsider_body_bytes: int = 384 << 20

    @classmethod
    def parse(cls, text: str) -> Limits:
        """Defaults with ``name=value,name=value`` overrides (an operator's tuning, or a test's smaller caps)."""
        kinds = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name.strip() not in kinds:
                raise ValueError(f"unknown limit {name.strip()!r} (known: {', '.join(kinds)})")
            changes[name.strip()] = float(value) if kinds[name.strip()] in (float, "float") else int(value)
        return replace(cls(), **changes)


class Overloaded(FrameError):
    """A request refused because it would exceed a resource limit; the stream is reset after the answer."""


class _Account:
    """What one remote peer (or all outsiders together) holds now, against its caps."""

    def __init__(self, streams: int, header_bytes: int, body_bytes: int) -> None:
        self.caps = {"streams": streams, "header bytes": header_bytes, "body bytes": body_bytes}
        self.held = {"streams": 0, "header bytes": 0, "body bytes": 0}
        self.watches: set[StreamWatch] = set()

    def room(self, kind: str, amount: int) -> bool:
        return self.held[kind] + amount <= self.caps[kind]


# Phases of a served stream, as the watchdog sees them.
IDLE, HEADER, BODY, HANDLING = "idle", "header", "body", "handling"


class StreamWatch:
    """One inbound stream's phase, deadlines and charges; its ``run`` resets the stream when a limit is broken."""

    def __init__(self, guard: Guard, remote: str, stream: Any, accounts: list[_Account]) -> None:
        self.guard = guard
        self.remote = remote
        self.stream = stream
        self.accounts = accounts
        now = trio.current_time()
        self.phase = IDLE
        self.first = True
        self.since = now  # start of the current phase
        self.header_held = 0
        self.body_held = 0
        self.peak = 0  # most bytes held at once by the current request
        # Body rate: bytes received and seconds spent waiting for them, sampled once a second.
        self.received = 0
        self.waited = 0.0
        self.read_since: float | None = None
        self.samples: deque[tuple[float, int]] = deque()
        self.reason: str | None = None
        #: The serving task's scope, cancelled after a reset (which does not wake a pending read).
        self.scope: trio.CancelScope | None = None
        #: The handler admitted the current request (an authorized upload): see ``Guard.freed_big_buffer``.
        self.admitted = False

    # -- called by FrameReader -------------------------------------------------------------

    def waiting_for_frame(self) -> None:
        """The reader waits for the next request (nothing of it has arrived)."""
        self._enter(IDLE)

    def header_arriving(self) -> None:
        """Bytes of a request header have arrived."""
        if self.phase is IDLE:
            # The first request's deadline runs from the stream's opening, not its first byte.
            self.phase, self.since = HEADER, self.since if self.first else trio.current_time()

    def hold_header(self, size: int) -> None:
        """``size`` header bytes are buffered now (0 once the header is parsed); raise ``Overloaded`` past a cap."""
        self.guard._charge(self, "header bytes", size - self.header_held)
        self.header_held = size
        self.peak = max(self.peak, size)

    def body_starts(self, length: int) -> None:
        """A body of ``length`` bytes follows: reserve it whole; raise ``Overloaded`` past a cap."""
        self.first = False
        if length:
            self.guard._charge(self, "body bytes", length)
            self.body_held += length
            self.peak = max(self.peak, self.body_held)
            self.received, self.waited, self.samples = 0, 0.0, deque()
            self._enter(BODY)
        else:
            self._enter(HANDLING)

    def read_starts(self) -> None:
        """The reader waits on the network."""
        self.read_since = trio.current_time()

    def read_ends(self) -> None:
        """The reader stopped waiting on the network."""
        if self.read_since is not None:
            self.waited += trio.current_time() - self.read_since
            self.read_since = None

    def arrived(self, count: int) -> None:
        """``count`` bytes arrived."""
        self.received += count

    def admit(self) -> None:
        """The handler checked the current request's authorization: the memory it holds is for real work."""
        self.admitted = True

    def handling(self) -> None:
        """The reader is not waiting for the sender: the handler works (on a header, or a whole body)."""
        self._enter(HANDLING)

    def request_done(self) -> None:
        """The request has been answered: release what it held."""
        self.first = False
        self.hold_header(0)
        if self.body_held:
            self.guard._charge(self, "body bytes", -self.body_held)
            self.body_held = 0
        if self.peak >= 256 << 10:
            self.guard.freed_big_buffer(admitted=self.admitted or self.guard.is_member(self.remote))
        self.admitted = False
        self.peak = 0

    # -- the watchdog ------------------------------------------------------------------------

    def _enter(self, phase: str) -> None:
        self.phase, self.since = phase, trio.current_time()

    def _waited_now(self, now: float) -> float:
        return self.waited + (now - self.read_since if self.read_since is not None else 0.0)

    def problem(self, now: float) -> str | None:
        """Which limit this stream breaks at ``now``, if any."""
        limits = self.guard.limits
        if self.phase is IDLE and not self.first and now - self.since > limits.stream_idle:
            return f"idle for {limits.stream_idle:.0f} s between requests"
        if (self.phase is HEADER or (self.phase is IDLE and self.first)) and now - self.since > limits.header_deadline:
            return f"request header not complete within {limits.header_deadline:.0f} s"
        if self.phase is BODY:
            waited = self._waited_now(now)
            self.samples.append((waited, self.received))
            # Keep the newest sample at least a window old as the reference point.
            while len(self.samples) > 1 and self.samples[1][0] <= waited - limits.rate_window:
                self.samples.popleft()
            then, received_then = self.samples[0]
            span = waited - then
            if span >= limits.rate_window and self.received - received_then < limits.min_rate * span:
                return (f"body arriving at {(self.received - received_then) / span / 1024:.1f} KiB/s over "
                        f"{span:.0f} s, below the minimum of {limits.min_rate / 1024:.0f} KiB/s")
        return None

    async def reset(self, reason: str) -> None:
        """Reset the stream (its reader then fails at once) for ``reason``."""
        self.reason = reason
        self.guard.resets += 1
        log.info("resetting a stream from %s: %s", self.remote, reason)
        self.guard.freed_big_buffer()  # its buffers (and Yamux's) are freed with it
        with trio.CancelScope(shield=True):
            try:
                await self.stream.reset()
            except Exception:  # already gone
                pass
        if self.scope is not None:
            self.scope.cancel()


#: Seconds without admitted requests before the memory they held is given back, and the longest wait.
ADMITTED_TRIM_DELAY = 10.0
ADMITTED_TRIM_FORCE = 60.0


class Guard:
    """The limits of one host and what each remote party holds against them."""

    def __init__(self, limits: Limits | None = None, members: Collection[str] = ()) -> None:
        self.limits = limits or Limits()
        self.members = frozenset(members)
        lim = self.limits
        self._peers: dict[str, _Account] = {}
        self._outsiders = _Account(lim.outsider_streams, lim.outsider_header_bytes, lim.outsider_body_bytes)
        self.resets = 0
        self.refusals = 0
        #: Inbound connections still in their handshake, oldest first: key -> [sent a byte yet, raw stream].
        self.pending: dict[int, list[Any]] = {}
        self._pending_keys = 0
        #: Inbound streams of any protocol per connection, and of all outsiders.
        self._conn_streams: dict[Any, int] = {}
        self._outsider_inbound = 0
        #: Established inbound outsider connections: muxed connection -> [peer ID, when it last had a stream open].
        self.outsider_connections: dict[Any, list[Any]] = {}
        #: Closes a connection (set by ``p2p.host``, which knows the swarm).
        self.close_connection: Callable[[Any, str], Awaitable[None]] | None = None
        #: More numbers for ``status`` (set by ``p2p.host``: what py-libp2p itself counts).
        self.more_status: Callable[[], dict[str, Any]] = dict
        self._trim_after: float | None = None
        self._trim_first: float | None = None
        self._admitted_trim_after: float | None = None
        self._admitted_trim_first: float | None = None
        self._sweeping = False
        self._closed = False

    def is_member(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is a committee member (members have reserved room)."""
        return peer_id in self.members

    def _accounts(self, remote: str) -> list[_Account]:
        account = self._peers.get(remote)
        if account is None:
            lim = self.limits
            if self.is_member(remote):
                account = _Account(lim.member_streams, lim.member_header_bytes, lim.member_body_bytes)
            else:
                account = _Account(lim.streams_per_peer, lim.header_bytes_per_peer, lim.body_bytes_per_peer)
            self._peers[remote] = account
        return [account] if self.is_member(remote) else [account, self._outsiders]

    def _charge(self, watch: StreamWatch, kind: str, amount: int) -> None:
        if amount > 0:
            for account in watch.accounts:
                if not account.room(kind, amount):
                    self.refusals += 1
                    whose = "all outsiders" if account is self._outsiders else f"peer {watch.remote}"
                    raise Overloaded(f"busy: {whose} would hold {account.held[kind] + amount} {kind}, "
                                     f"over the limit of {account.caps[kind]}")
        for account in watch.accounts:
            account.held[kind] += amount

    async def open_stream(self, remote: str, stream: Any) -> StreamWatch:
        """Admit an inbound stream, making room by closing an idle one if needed; raise ``Overloaded`` if full."""
        self.start()
        accounts = self._accounts(remote)
        for account in accounts:
            if not account.room("streams", 1):
                idle = [w for w in account.watches if w.phase is IDLE and not w.first]
                if not idle:
                    self.refusals += 1
                    if not accounts[0].watches:  # an account per refused (fresh) key would pile up
                        self._peers.pop(remote, None)
                    whose = "all outsiders" if account is self._outsiders else f"peer {remote}"
                    raise Overloaded(f"busy: {whose} already hold {account.held['streams']} streams, the limit")
                # The stream that has waited longest between requests makes room (its
                # owner reopens one when it needs it again).
                oldest = min(idle, key=lambda w: w.since)
                self.close_stream(oldest)
                await oldest.reset("closed to make room for a new stream")
        watch = StreamWatch(self, remote, stream, accounts)
        for account in accounts:
            account.held["streams"] += 1
            account.watches.add(watch)
        return watch

    def close_stream(self, watch: StreamWatch) -> None:
        """Release everything ``watch``'s stream held (idempotent)."""
        if watch not in watch.accounts[0].watches:
            return
        watch.request_done()
        for account in watch.accounts:
            account.held["streams"] -= 1
            account.watches.discard(watch)
        if not watch.accounts[0].watches and watch.accounts[0].held["streams"] == 0:
            self._peers.pop(watch.remote, None)

    # -- connections ---------------------------------------------------------------------------

    def handshake_started(self, raw: Any) -> tuple[int, list[Any]]:
        """Track an inbound connection (its raw stream) in its handshake; its key, and raw streams to close for room.

        Past the cap the oldest that has not sent a byte goes first (an honest dialer
        speaks at once), then the oldest of all, so silent sockets never push out a
        dialer mid-handshake. Closing the socket (not cancelling the task) lets
        py-libp2p's own cleanup run, which releases its resource manager's slot.
        """
        self._pending_keys += 1
        key = self._pending_keys
        self.pending[key] = [False, raw]
        victims = []
        while len(self.pending) > self.limits.pending_connections:
            victim = next((k for k, (spoke, _) in self.pending.items() if not spoke), next(iter(self.pending)))
            victims.append(self.pending.pop(victim)[1])
            self.refusals += 1
        return key, victims

    def handshake_spoke(self, key: int) -> None:
        """The connection in its handshake has sent its first bytes."""
        entry = self.pending.get(key)
        if entry is not None:
            entry[0] = True

    def handshake_ended(self, key: int) -> None:
        """The connection finished (or failed) its handshake."""
        self.pending.pop(key, None)

    def admit_connection(self, muxed_conn: Any, peer_id: str) -> list[tuple[Any, str]]:
        """Admit an upgraded inbound connection; return idle outsider connections to close for room.

        Raises ``Overloaded`` when an outsider finds every outsider slot busy. Members are
        always admitted: their slots are reserved (there are as many as members).
        """
        self.start()
        if self.is_member(peer_id):
            return []
        now = trio.current_time()
        evict: list[tuple[Any, str]] = []
        if len(self.outsider_connections) >= self.limits.outsider_connections:
            idle = sorted((entry[1], id(conn), conn) for conn, entry in self.outsider_connections.items()
                          if not self._serving(entry[0]))
            if not idle:
                self.refusals += 1
                raise Overloaded(f"busy: {len(self.outsider_connections)} outsider connections, all in use")
            _, _, conn = idle[0]
            evict.append((conn, self.outsider_connections.pop(conn)[0]))
        self.outsider_connections[muxed_conn] = [peer_id, now]
        return evict

    def stream_arrives(self, conn: Any, peer_id: str) -> bool:
        """Whether a new inbound stream of any protocol may start its negotiation on ``conn``.

        Twice the request-stream caps, leaving room for py-libp2p's own protocols and for
        streams still negotiating: without it a connection could open streams without
        bound (py-libp2p caps them only at 10,000 for the whole host), each buffering up
        to a Yamux window before anything reads it.
        """
        member = self.is_member(peer_id)
        lim = self.limits
        count = self._conn_streams.get(conn, 0)
        if count >= 2 * (lim.member_streams if member else lim.streams_per_peer) or (
                not member and self._outsider_inbound >= 2 * lim.outsider_streams):
            self.refusals += 1
            return False
        self._conn_streams[conn] = count + 1
        if not member:
            self._outsider_inbound += 1
        return True

    def stream_leaves(self, conn: Any, peer_id: str) -> None:
        """An inbound stream admitted by ``stream_arrives`` has ended."""
        count = self._conn_streams.pop(conn, 1) - 1
        if count:
            self._conn_streams[conn] = count
        if not self.is_member(peer_id):
            self._outsider_inbound -= 1

    def _serving(self, peer_id: str) -> bool:
        """Whether a request stream from ``peer_id`` is open (py-libp2p's own streams, identify and the like, do not count)."""
        account = self._peers.get(peer_id)
        return account is not None and bool(account.watches)

    def connection_closed(self, muxed_conn: Any) -> None:
        """An inbound connection has closed."""
        self.outsider_connections.pop(muxed_conn, None)

    # -- the sweep -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the once-a-second sweep that enforces the timers (ends with ``close`` or the trio run)."""
        if not self._sweeping:
            self._sweeping = True
            trio.lowlevel.spawn_system_task(self._sweep, name="p2p.limits sweep")

    def close(self) -> None:
        """Stop the sweep."""
        self._closed = True

    async def _sweep(self) -> None:
        while not self._closed:
            await trio.sleep(1.0)
            try:
                await self._sweep_once(trio.current_time())
            except Exception:  # a system task must never raise: it would end the whole run
                log.exception("resource sweep failed")

    async def _sweep_once(self, now: float) -> None:
        broken = []
        for account in list(self._peers.values()):
            for watch in list(account.watches):
                reason = watch.problem(now)
                if reason is not None:
                    broken.append((watch, reason))
        idle = []
        for conn, entry in list(self.outsider_connections.items()):
            if self._serving(entry[0]):
                entry[1] = now
            elif now - entry[1] > self.limits.connection_idle:
                idle.append((conn, entry[0]))
                del self.outsider_connections[conn]
        due = self._trim_after is not None and (now >= self._trim_after or now - (self._trim_first or now) > 5.0)
        due = due or self._admitted_trim_after is not None and (
            now >= self._admitted_trim_after or now - (self._admitted_trim_first or now) > ADMITTED_TRIM_FORCE)
        if due and _malloc_trim is not None:
            # Without it, freed large buffers stay in the heap (glibc raises its mmap
            # threshold after such frees), and RSS stays at its peak. In a thread: it can
            # take milliseconds on a large heap.
            self._trim_after = self._trim_first = self._admitted_trim_after = self._admitted_trim_first = None
            await trio.to_thread.run_sync(_malloc_trim, 0)
        if not broken and not idle:
            return
        async with trio.open_nursery() as nursery:
            for watch, reason in broken:
                nursery.start_soon(watch.reset, reason)
            for conn, peer_id in idle:
                log.info("closing an outsider connection from %s: no stream for %.0f s", peer_id,
                         self.limits.connection_idle)
                nursery.start_soon(self.close_quietly, conn, peer_id)

    async def close_quietly(self, conn: Any, peer_id: str) -> None:
        """Close a connection, ignoring one that is already gone."""
        with trio.CancelScope(shield=True):
            try:
                if self.close_connection is not None:
                    await self.close_connection(conn, peer_id)
                else:
                    await conn.close()
            except Exception:
                pass

    def status(self) -> dict[str, Any]:
        """What outsiders hold now and how often limits struck, for a status reply."""
        return {"outsiders": {k.replace(" ", "_"): v for k, v in self._outsiders.held.items()},
                "outsider_connections": len(self.outsider_connections), "handshakes": len(self.pending),
                "resets": self.resets, "refusals": self.refusals, **self.more_status()}

    def freed_big_buffer(self, admitted: bool = False) -> None:
        """A request that held a large buffer (or a stream that broke a limit) ended: give memory back to the OS soon.

        Half a second after the last such end, so the tasks that held the buffers have
        unwound; under a sustained attack at most every 5 s. After an ``admitted`` request
        (a committee member's, or an upload the handler found authorized), only once such
        requests have stopped for ADMITTED_TRIM_DELAY s (at most ADMITTED_TRIM_FORCE s after
        the first): the next pair reuses those pages, where trimming would have it
        page-faulted in afresh (a fifth of the peers' CPU in a stream of 64 MiB stores). What
        such requests hold is capped like any other; only its return to the OS waits.
        """
        now = trio.current_time()
        if admitted:
            self._admitted_trim_after = now + ADMITTED_TRIM_DELAY
            if self._admitted_trim_first is None:
                self._admitted_trim_first = now
            return
        self._trim_after = now + 0.5
        if self._trim_first is None:
            self._trim_first = now


def _load_malloc_trim() -> Any:
    """glibc's ``malloc_trim``: freed large buffers otherwise stay in the heap and in RSS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()
