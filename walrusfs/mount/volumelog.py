"""A mount's view of the log: follows the peers, authors the device's namespace entries.

The mount keeps its own ``LogState``: it pulls every author's chain from the peers (any
peer will do, since entries are signed; it rotates through them so a peer withholding
entries only delays them) and checks every entry itself. The volume's tree is the
namespace fold over the counted entries, updated in place while operations arrive in
order and rebuilt when one lands earlier in the total order.

Its own operations are applied locally and recorded in the state database at once, and
signed in batches: the ops of a burst (an untar, a copy) go into one entry, signed
``BATCH_LINGER`` after the first of them, when the batch is full, when an op of another
device arrives that a later op may depend on, or at once when someone waits for them to
be published (fsync). Each op's identity and place in the total order are fixed when it is
applied (its entry's author and seq, and its index; see ``log.batch_op``), so the tree this
mount shows before the batch is signed is the one every mount folds after. A publisher
pushes the entries, in chain order, to every peer and counts one as published once peers
holding f + 1 shards accepted it (they relay it to the rest).

In a private volume each entry's ops are sealed as one payload under the read key (bound
to its volume, author and sequence number), so peers see who wrote when, not what. Peers
cannot range-check sealed ops; this mount does, after opening them, with the same
``check_op`` peers apply to plaintext ops, so a writer's out-of-range value never reaches
the fold (an entry with one bad op is skipped whole, as peers reject a plaintext one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import trio

from p2p.rpc import PeerUnavailable

from ..client.blob import Client
from ..client.logpages import RoundBudget, heads_pages, range_pages
from ..client.members import member_fault
from ..core import wire
from ..core.errors import CodecError
from ..core.lifecycle import Writer
from ..core.log import (
    GENESIS,
    MAX_BATCH_OPS,
    NAMESPACE,
    Entry,
    LogError,
    LogState,
    Outcome,
    TooEarly,
    batch_op,
    check_entry,
    check_op,
    check_ops,
    decode_entry,
    delegate_device,
    entry_ops,
    next_hlc,
    sign_entry,
)
from ..core.messages import LOG_PUSH, check_push_reply, entries_within, reply_budget
from ..core.namespace import Namespace, Op, build
from ..core.sealing import SealError, open_ops, open_payload, seal_ops
from .staging import MountState
from .volumes import Volume

log = logging.getLogger("walrusfs.volumelog")

POLL_INTERVAL = 1.0
#: A peer that has not answered one log request within this many seconds is left for the
#: next one (the follower moves on; nothing about the entries depends on it).
CALL_LIMIT = 5.0
BATCH = 500
#: Bytes of heads and entries one sync round fetches at most, and fetched entries held
#: before they are checked and applied: an endless or huge log costs rounds, not memory.
FOLLOW_BYTES = 16 << 20
HOLD_BYTES = 4 << 20
#: Entries that do not open are logged one by one up to this many, then only counted (in
#: ``walrusfs status``): a wrong read key fails every entry of the volume, and a log line
#: per entry would bury the one error that says so.
UNREADABLE_WARNINGS = 3
#: Bytes of encoded ops one batch holds at most: with the delegation, sponsorship and
#: sealing around them the entry stays well below the log's 64 KiB.
BATCH_BYTES = 48 << 10
#: Seconds a batch stays open after its first op at most (fsync signs it at once): other
#: mounts see a burst's ops this much later, and peers check one signature for all of them.
BATCH_LINGER = 0.25


@dataclass
class _Batch:
    """The device's next entry while it is open: ops applied here and recorded, not yet signed."""

    seq: int
    hlc: int
    opened: float
    #: The largest stamp of another device's ops applied here when the batch opened.
    foreign_hlc: int
    raws: list[dict[str, Any]] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    size: int = 0


def entry_context(author: bytes, seq: int) -> bytes:
    """What a sealed op is bound to besides its volume: the entry's author and place in its chain."""
    return author + seq.to_bytes(8, "big")


class PublishError(Exception):
    """Too few peers accepted the device's entries."""


class PublishRefused(PublishError):
    """So many peers refused the device's entries as not authorized (no grant, or a key revoked) that none can count."""


#: Seconds between attempts to publish entries the peers refuse as not authorized (a grant
#: may still arrive; until then, retrying every second only fills the log with warnings).
REFUSED_RETRY = 10.0


class LogUnavailable(Exception):
    """No peer served the log (all unreachable, or every answer was unusable)."""


class VolumeLog:
    """The log as one mount sees it, and the mount's own namespace chain."""

    def __init__(self, client: Client, volume: Volume, state: MountState,
                 on_change: Callable[[set[bytes]], None] | None = None, writer: Writer | None = None) -> None:
        self.client = client
        self.committee = client.committee
        self.volume = volume
        self.store = state
        self.device = state.device
        self.device_id = bytes(self.device.verify_key)
        self.delegation = delegate_device(volume.key, self.device_id) if volume.key is not None else None
        #: The account the volume writes on, when it is not the volume itself: every entry
        #: names it with its sponsorship, so peers admit the entry on that account's grant.
        self.sponsor: dict[str, bytes] = {}
        if writer is not None and writer.account != volume.public_key and writer.sponsorship is not None:
            self.sponsor = {"account": writer.account, "sponsorship": writer.sponsorship}
        self.state = LogState(self.committee)
        self.namespace = Namespace()
        self.on_change = on_change
        self.last_hlc = 0
        self.max_seen = 0
        self.published = 0  # highest own seq held by f + 1 shards' peers
        self._published_changed = trio.Condition()
        self._unpublished = trio.Event()
        self._author_lock = trio.Lock()
        self._next_peer = 0
        self._cursor: bytes | None = None  # where the next sync round resumes its walk of the heads
        self.synced_once = trio.Event()
        self.last_error: str | None = None
        #: Why the peers refuse this device's entries (no grant, a revoked key), while they do.
        self.refused: str | None = None
        self.sync_error: str | None = None
        self.sync_summary = ""
        #: Entry ID -> its ops (None: unreadable), so a refold opens no entry twice.
        self._ops: dict[bytes, list[Op] | None] = {}
        #: The device's next entry while it is open, and ops of it (or of one just signed)
        #: the tree holds already.
        self._batch: _Batch | None = None
        self._batch_opened = trio.Event()
        self._own_applied: set[bytes] = set()
        #: The largest stamp of another device's op this tree holds.
        self._foreign_hlc = 0
        #: Sealed entries this side cannot open (no read key, or a wrong one), and ones
        #: that open to an op the fold may not apply.
        self.unreadable = 0
        self.sealed_seen = 0

    # ------------------------------------------------------------------ own chain

    async def load(self) -> None:
        """Replay this device's stored chain, so it continues where it left off (signing a batch a stop left open)."""
        entries = []
        for encoded, published in await trio.to_thread.run_sync(self.store.own_entries):
            entry = decode_entry(encoded)
            self.state.apply(entry, checked=True)
            entries.append(entry)
            self.last_hlc = max(self.last_hlc, entry.hlc)
            if published:
                self.published = entry.seq
        self._refresh_namespace(entries)
        pending = [row for row in await trio.to_thread.run_sync(self.store.pending_ops) if row[0] == self.head + 1]
        if pending and self.delegation is not None:
            # Applied and recorded before the mount stopped, never signed: sign them now, with
            # the place and stamp they had, so they keep the identities they were shown with.
            batch = self._batch = _Batch(pending[0][0], pending[0][2], trio.current_time(), self._foreign_hlc)
            for _, index, _, encoded in pending:
                message = wire.decode(encoded, 1 << 20)
                raw = {"kind": message["kind"], "args": message["args"]}
                self._add(batch, raw, len(encoded))
            self.last_hlc = max(self.last_hlc, batch.hlc)
            async with self._author_lock:
                await self._sign_batch()
        elif pending:
            log.warning("%d namespace ops of an unsigned batch stay unsigned: this mount holds no volume key",
                        len(pending))
        if self.published < self.state.head(self.device_id):
            self._unpublished.set()

    @property
    def head(self) -> int:
        """Highest seq this device signed."""
        return self.state.head(self.device_id)

    async def append(self, kind: str, args: dict[str, Any]) -> Op:
        """Apply and record one namespace operation; it is signed with the rest of its batch, publishing follows."""
        if self.delegation is None:
            raise PermissionError("this mount holds no volume key")
        if self.volume.read_key is None and self.sealed_seen:
            # A key file without its read key must not write plaintext into a private volume.
            raise PermissionError("this volume is private and this mount holds no read key")
        raw = {"kind": kind, "args": args}
        check_op(raw)  # peers would refuse the whole batch for one bad op
        encoded = wire.encode({"v": wire.WIRE_VERSION, **raw})
        async with self._author_lock:
            batch = self._batch
            if batch is not None and (
                    len(batch.ops) >= MAX_BATCH_OPS or batch.size + len(encoded) > BATCH_BYTES
                    # Another device's op arrived after the batch opened, stamped at or after
                    # it: what is written now may depend on it, so it must come later.
                    or batch.foreign_hlc < self._foreign_hlc >= batch.hlc):
                await self._sign_batch()
                batch = None
            if batch is None:
                self.last_hlc = next_hlc(self.last_hlc, int(time.time() * 1000), self.max_seen)
                batch = self._batch = _Batch(self.head + 1, self.last_hlc, trio.current_time(), self._foreign_hlc)
                self._batch_opened.set()
            await trio.to_thread.run_sync(self.store.add_pending_op, batch.seq, len(batch.ops), batch.hlc, encoded)
            return self._add(batch, raw, len(encoded))

    def _add(self, batch: _Batch, raw: dict[str, Any], size: int) -> Op:
        """Put an op in the open batch and apply it to the tree."""
        op = batch_op(self.device_id, batch.seq, batch.hlc, len(batch.ops), raw)
        batch.raws.append(raw)
        batch.ops.append(op)
        batch.size += size
        self._own_applied.add(op.op_id)
        if self.namespace.last is None or op.order > self.namespace.last:
            self.namespace.apply(op)
        else:  # another device's op stamped later than ours is applied already
            self.namespace = build(self._all_ops())
        return op

    async def _sign_batch(self) -> None:
        """Sign the open batch as the device's next entry and record it (the caller holds the author lock)."""
        batch = self._batch
        if batch is None:
            return
        chain = self.state.chains.get(self.device_id, [])
        assert batch.seq == len(chain) + 1, "only _sign_batch signs this device's entries"
        prev = chain[-1].id if chain else GENESIS
        payload: dict[str, Any] = {"volume": self.volume.public_key, "delegation": self.delegation, **self.sponsor}
        if self.volume.read_key is not None:
            payload["sealed_ops"] = seal_ops(self.volume.read_key, self.volume.public_key, batch.raws,
                                             entry_context(self.device_id, batch.seq))
        else:
            payload["ops"] = batch.raws
        entry = sign_entry(self.device, batch.seq, prev, batch.hlc, NAMESPACE, payload)
        await trio.to_thread.run_sync(self.store.add_own_entry, entry.seq, entry.encode())
        outcome, _ = self.state.apply(entry, checked=True)
        if outcome is not Outcome.ACCEPTED:  # pragma: no cover - our own chain
            raise LogError(f"own entry not accepted locally: {outcome.value}")
        self._ops[entry.id] = list(batch.ops)
        self._batch = None
        self._refresh_namespace([entry])  # its ops are applied already: nothing changes
        self._unpublished.set()

    async def flush(self) -> None:
        """Sign the open batch now (someone waits for it to be published)."""
        if self._batch is not None:
            async with self._author_lock:
                await self._sign_batch()

    async def _batcher(self) -> None:
        """Sign each batch ``BATCH_LINGER`` after it opened, unless it was signed before."""
        while True:
            await self._batch_opened.wait()
            self._batch_opened = trio.Event()
            batch = self._batch
            if batch is None:
                continue
            await trio.sleep_until(batch.opened + BATCH_LINGER)
            async with self._author_lock:
                if self._batch is batch:
                    await self._sign_batch()

    async def wait_published(self, seq: int | None = None, fail_refused: bool = False) -> None:
        """Return once entries up to ``seq`` (default: every op applied so far) are held by f + 1 shards.

        An open batch those entries include is signed at once. With ``fail_refused``, raise
        ``PublishRefused`` instead of waiting while the peers refuse this device's entries
        as not authorized (fsync must not wait forever).
        """
        if self._batch is not None and (seq is None or seq >= self._batch.seq):
            await self.flush()
        target = self.head if seq is None else seq
        async with self._published_changed:
            while self.published < target:
                if fail_refused and self.refused is not None:
                    raise PublishRefused(self.refused)
                await self._published_changed.wait()

    async def _publisher(self) -> None:
        while True:
            await self._unpublished.wait()
            self._unpublished = trio.Event()
            while self.published < self.head:
                chain = self.state.chains[self.device_id]
                batch = chain[self.published : self.published + BATCH]
                # Bounded in bytes too: a push of 500 large entries would pass MAX_HEADER.
                batch = batch[: len(entries_within((e.encode() for e in batch), reply_budget(), BATCH))]
                try:
                    await self._push(batch)
                except PublishError as exc:
                    self.last_error = str(exc)
                    log.warning("%s; retrying", exc)
                    if isinstance(exc, PublishRefused):
                        async with self._published_changed:
                            self._published_changed.notify_all()  # a waiting fsync fails now
                    await trio.sleep(REFUSED_RETRY if isinstance(exc, PublishRefused) else 1.0)
                    continue
                self.last_error = None
                self.refused = None
                await trio.to_thread.run_sync(self.store.mark_published, batch[-1].seq)
                async with self._published_changed:
                    self.published = batch[-1].seq
                    self._published_changed.notify_all()

    async def _push(self, batch: Sequence[Entry]) -> None:
        encoded = [e.encode() for e in batch]
        holders: list[int] = []
        problems: dict[int, str] = {}
        refusals: dict[int, str] = {}  # peers that refused an entry as not authorized, and why
        settled = trio.Event()  # enough peers hold the entries, or every peer answered

        async def push(peer: int) -> None:
            try:
                reply, _ = await self.client._call(peer, LOG_PUSH, entries=encoded)
                # A reply of the wrong shape is that peer's failure (MessageError), never ours.
                outcomes = check_push_reply(reply, len(encoded))
                if all(o in (Outcome.ACCEPTED.value, Outcome.DUPLICATE.value, Outcome.PENDING.value)
                       for o in outcomes):
                    holders.append(peer)
                else:
                    results = wire.field(reply, 'results', list)
                    problems[peer] = f"rejected: {results[:1]}"
                    reason = next((r[1] for r in results if isinstance(r, list) and len(r) == 2
                                   and isinstance(r[1], str) and r[1].startswith("not-authorized")), None)
                    if reason is not None:
                        refusals[peer] = reason
            except (PeerUnavailable, CodecError) as exc:
                problems[peer] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one peer's odd answer is its own failure
                problems[peer] = member_fault(peer, exc)
            finally:
                if (self.committee.weight(holders) >= self.committee.validity_threshold
                        or len(holders) + len(problems) == len(self.committee.peers)):
                    settled.set()

        async with trio.open_nursery() as nursery:
            for peer in range(len(self.committee.peers)):
                nursery.start_soon(push, peer)
            # Published once f + 1 shards' peers hold the entries (they relay them, and
            # anti-entropy reaches the rest): a stalled peer is not waited for.
            await settled.wait()
            nursery.cancel_scope.cancel()
        if self.committee.weight(holders) < self.committee.validity_threshold:
            if self.committee.n_shards - self.committee.weight(refusals) < self.committee.validity_threshold:
                # Honest peers among them refused too: it will not count until a grant changes.
                self.refused = next(iter(refusals.values()))
                raise PublishRefused(f"namespace entries refused by peers holding {self.committee.weight(refusals)} "
                                     f"of {self.committee.n_shards} shards: {self.refused}")
            raise PublishError(f"only {len(holders)} peers accepted namespace entries: {problems}")

    # ------------------------------------------------------------------ following

    async def _ask(self, peer: int, protocol: str, **fields: Any) -> dict[str, Any]:
        """One call to ``peer``; silent for CALL_LIMIT seconds counts as unavailable (liveness only)."""
        with trio.move_on_after(CALL_LIMIT):
            reply, _ = await self.client._call(peer, protocol, **fields)
            return reply
        self.client.silent(peer)
        raise PeerUnavailable(self.committee.peers[peer].peer_id, f"no answer within {CALL_LIMIT:.0f} s")

    async def sync_from(self, peer: int) -> tuple[int, bool]:
        """Fetch entries ``peer`` has that this view lacks, within one round's budget; (how many were new, whether the walk reached the end).

        The walk resumes at ``_cursor`` (the last author finished in an earlier round, with
        any peer), and entries are checked and applied every HOLD_BYTES, so what the mount
        holds per round is bounded however many authors or entries the log has.
        """

        async def call(protocol: str, **fields: Any) -> dict[str, Any]:
            return await self._ask(peer, protocol, **fields)

        budget = RoundBudget(FOLLOW_BYTES)
        held: list[Entry] = []
        held_bytes = 0
        accepted = 0
        finished = self._cursor  # every entry up to this author is applied (once flushed)
        complete = False

        async def flush() -> None:
            nonlocal held, held_bytes, accepted
            if held:
                accepted += await self._take(peer, held)
            held, held_bytes = [], 0

        try:
            async with aclosing(heads_pages(call, self._cursor, budget)) as pages:
                async for page in pages:
                    wants = [(a, self.state.head(a) + 1, head) for a, (head, _) in page.heads.items()]
                    async with aclosing(range_pages(call, wants, budget)) as ranges:
                        async for batch in ranges:
                            fresh = [e for e in batch if e.id not in self.state.ids]
                            held += fresh
                            held_bytes += sum(len(e.encode()) for e in fresh)
                            if held_bytes >= HOLD_BYTES:
                                await flush()
                    if budget.spent:
                        break  # this page again next round
                    finished = page.last
                    complete = not page.more
        except Exception:
            # What earlier pages held is checked entry by entry, so a peer failing later
            # does not cost it; the next round resumes after the last author finished.
            await flush()
            self._cursor = finished
            raise
        await flush()
        self._cursor = None if complete else finished
        return accepted, complete

    async def _take(self, peer: int, fresh: list[Entry]) -> int:
        """Check ``fresh`` entries (in a thread) and apply the valid ones; return how many became accepted."""

        now = int(time.time() * 1000)

        def check(entries: list[Entry]) -> list[Entry]:
            good = []
            for entry in entries:
                try:
                    # Too far ahead of our clock: left out now, fetched again by a later sync.
                    check_entry(entry, self.committee, now)
                    good.append(entry)
                except TooEarly as exc:
                    # Not the peer's fault (it may hold it from before stamps were bounded).
                    log.debug("entry from peer %d left for later: %s", peer, exc)
                except LogError as exc:
                    log.warning("peer %d served an invalid entry: %s", peer, exc)
            return good

        accepted: list[Entry] = []
        for entry in await trio.to_thread.run_sync(check, fresh):
            _, newly = self.state.apply(entry, checked=True)
            accepted.extend(newly)
            self.max_seen = max(self.max_seen, entry.hlc)
        self._refresh_namespace(accepted)
        return len(accepted)

    async def sync_any(self) -> bool:
        """Sync from the first peer that answers, trying each in turn (those that answered before first); whether the walk reached the end."""
        problems: list[str] = []
        reasons: list[str] = []
        n = len(self.committee.peers)
        # Round robin spreads the load; peers that have answered this mount come first, so
        # a silent peer costs CALL_LIMIT only when nobody better is left.
        rotation = [(self._next_peer + k) % n for k in range(n)]
        order = sorted(rotation, key=lambda peer: peer not in self.client.answered)
        self._next_peer = (order[0] + 1) % n
        for peer in order:
            try:
                _, complete = await self.sync_from(peer)
                # Synced once a walk of every author's heads has reached the end (a round
                # cut short by its budget resumes at once and is not yet "synced").
                if complete:
                    self.synced_once.set()
                self.sync_error = None
                return complete
            except (PeerUnavailable, CodecError) as exc:
                problems.append(f"{peer}: {exc}")
                reasons.append(exc.reason if isinstance(exc, PeerUnavailable) else str(exc))
            except Exception as exc:  # noqa: BLE001 - whatever one peer's answer does is that peer's failure
                problems.append(f"{peer}: {member_fault(peer, exc)}")
                reasons.append(type(exc).__name__)
        self.sync_error = "no peer served the log: " + "; ".join(problems)
        self.sync_summary = f"{len(problems)} of {len(self.committee.peers)} peers failed, e.g. {reasons[0][:160]}"
        raise LogUnavailable(self.sync_error)

    async def run(self) -> None:
        """Follow the log and publish own entries until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._batcher)
            while True:
                try:
                    if not await self.sync_any():
                        await trio.sleep(0)  # cut short by its budget: the next round follows at once
                        continue
                except LogUnavailable as exc:
                    log.warning("log sync: %s", exc)
                await trio.sleep(POLL_INTERVAL)

    # ------------------------------------------------------------------ namespace

    def ops_of(self, entry: Entry) -> list[Op] | None:
        """The namespace ops an entry of this volume carries, opened if sealed; None if this side cannot read them."""
        if entry.id in self._ops:
            return self._ops[entry.id]
        ops: list[Op] | None = None
        if "op" in entry.payload or "ops" in entry.payload:
            ops = entry_ops(entry)
        else:
            self.sealed_seen += 1
            read_key = self.volume.read_key
            try:
                if read_key is None:
                    raise SealError("no read key")
                context = entry_context(entry.author, entry.seq)
                if "sealed" in entry.payload:
                    raw = open_payload(read_key, self.volume.public_key, entry.payload["sealed"], context)
                    check_op(raw)  # what peers check for plaintext ops, now that it can be read
                    ops = entry_ops(entry, [raw])
                else:
                    raws = open_ops(read_key, self.volume.public_key, entry.payload["sealed_ops"], context)
                    check_ops(raws)  # one bad op: the entry is skipped whole, as peers reject a plaintext one
                    ops = entry_ops(entry, raws)
            except (SealError, LogError) as exc:
                self.unreadable += 1
                if read_key is not None and self.unreadable <= UNREADABLE_WARNINGS:
                    log.warning("namespace entry %s of device %s skipped: %s%s", entry.id.hex()[:12],
                                entry.author.hex()[:12], exc,
                                "; further ones are only counted (walrusfs status MOUNT)"
                                if self.unreadable == UNREADABLE_WARNINGS else "")
        self._ops[entry.id] = ops
        return ops

    def ops(self) -> list[Op]:
        """The volume's counted namespace ops this side can read, ready for ``namespace.build``."""
        return [op for entry in self.state.namespace_entries(self.volume.public_key)
                for op in self.ops_of(entry) or ()]

    def _all_ops(self) -> list[Op]:
        """The counted ops and those of the open batch: what the tree shows."""
        return self.ops() + (list(self._batch.ops) if self._batch is not None else [])

    def _refresh_namespace(self, accepted: Sequence[Entry]) -> None:
        mine = [e for e in accepted if e.kind == NAMESPACE and e.payload.get("volume") == self.volume.public_key]
        ops = [op for entry in mine for op in self.ops_of(entry) or ()]
        # This device's ops were applied when they were written, before their batch was signed.
        fresh = [op for op in ops if op.op_id not in self._own_applied]
        self._own_applied.difference_update(op.op_id for op in ops)
        if not fresh:
            return
        ops = fresh
        for op in ops:
            if op.author != self.device_id:
                self._foreign_hlc = max(self._foreign_hlc, op.hlc)
        # Files another device rewrote: the mount gives them fresh inodes, since a kernel
        # with the writeback cache keeps trusting its own size and pages for old ones.
        # (A read's atime alone is no rewrite: the kernel takes atime from every getattr.)
        rewritten = {o.args["node"] for o in ops if o.author != self.device_id and o.kind in ("write", "setattr")
                     and set(o.args) != {"node", "atime_ns"}}
        ops.sort(key=lambda o: o.order)
        if self.namespace.last is None or ops[0].order > self.namespace.last:
            for op in ops:
                self.namespace.apply(op)
        else:
            # An operation landed earlier in the total order: refold from scratch.
            self.namespace = build(self._all_ops())
        if self.on_change is not None:
            self.on_change(rewritten)

    def note_certified(self, entry: Entry) -> None:
        """Apply a blob-certified entry a store just produced (already checked by the client)."""
        self.state.apply(entry, checked=True)
        self.max_seen = max(self.max_seen, entry.hlc)
