"""A mount's view of the log: follows the peers, authors the device's namespace entries.

The mount keeps its own ``LogState``: it pulls every author's chain from the peers (any
peer will do, since entries are signed; it rotates through them so a peer withholding
entries only delays them) and checks every entry itself. The volume's tree is the
namespace fold over the counted entries, updated in place while operations arrive in
order; one that lands earlier in the total order than the tree's last makes the tree
*late*, and a refold from the volume's whole history (in a worker thread, at most one at
a time, never on the trio loop) replaces it. Until then the tree is the fold of all ops
but the late ones: what a mount that had not received them yet would show.

A mount with a state directory keeps a local copy of the log (``logstore``): every
accepted entry, the volume's opened ops and checkpoints of the tree. A restart loads the
latest checkpoint and the entries stored after it and asks the peers only for what is
newer; chains held from a checkpoint on are ``LogState`` bases, so the history below them
stays on disk until a refold or the lifecycle fold reads it. What peers serve is compared
with the copy as it arrives: a heads page naming another entry at a position the copy
holds, or a next entry that does not link to the copy's head, is checked (the peer must
serve the signed entry), and a real fork becomes an equivocation proof where the copy
holds both entries, else the copy is dropped and rebuilt from the peers. A copy that fails
its own checks (``LocalCopyError``) is rebuilt the same way.

A fresh mount can start from a writer's signed snapshot instead of the whole log
(``snapshots``): the tree at a position, whose history it then fetches in the background.

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
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import trio

from p2p.rpc import PeerUnavailable

from ..client.blob import Client
from ..client.logpages import RoundBudget, check_ranges, heads_pages, range_pages
from ..client.members import member_fault
from ..core import wire
from ..core.errors import CodecError
from ..core.lifecycle import Writer
from ..core.log import (
    GENESIS,
    MAX_BATCH_OPS,
    NAMESPACE,
    SNAPSHOT,
    Entry,
    LogError,
    LogState,
    Outcome,
    TooEarly,
    batch_key,
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
from ..core.messages import (
    LOG_PUSH,
    LOG_RANGE,
    check_push_reply,
    entries_within,
    reply_budget,
)
from ..core.namespace import Namespace, Op, build
from ..core.sealing import SealError, open_ops, open_payload, seal_ops
from ..core.snapshot import SnapshotError, decode_tree, encode_tree
from .logstore import LocalCopyError, LogStore, Position
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
#: A checkpoint of the tree is written after this many new ops (and at unmount), looked
#: at every CHECKPOINT_INTERVAL seconds: a crash costs at most that much re-reading.
CHECKPOINT_OPS = 5000
CHECKPOINT_INTERVAL = 20.0
#: A chain's history below a snapshot's position is fetched this many entries at a time.
BACKFILL_WINDOW = 500


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


class _Loaded:
    """What a local copy held, read in a worker thread: handed to the trio side in one piece."""

    def __init__(self, state: LogState, namespace: Namespace, position: Position | None,
                 positions: dict[bytes, tuple[int, bytes]], tail: list[Entry], opened: dict[bytes, Any],
                 history_complete: bool, snapshots: list[Entry]) -> None:
        self.state, self.namespace, self.checkpoint = state, namespace, position
        self.positions, self.tail, self.opened, self.history_complete = positions, tail, opened, history_complete
        self.snapshots = snapshots


class VolumeLog:
    """The log as one mount sees it, and the mount's own namespace chain."""

    def __init__(self, client: Client, volume: Volume, state: MountState,
                 on_change: Callable[[set[bytes]], None] | None = None, writer: Writer | None = None,
                 local: LogStore | None = None) -> None:
        self.client = client
        self.committee = client.committee
        self.volume = volume
        self.store = state
        self.local = local
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
        self._outbox: list[Entry] = []  # own entries after ``published``, in chain order
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
        self._members = {p.public_key for p in self.committee.peers} | set(self.committee.operators)
        #: Volume authors (not members or operators) -> (seq, ID) up to which their entries
        #: are stored and folded: where the tree stands in the log.
        self.position: dict[bytes, tuple[int, bytes]] = {}
        #: Authors whose namespace entries of this volume the tree took in.
        self.volume_authors: set[bytes] = set()
        #: Counted namespace entries of this volume folded into the tree (readable or not).
        self.op_count = 0
        #: The newest snapshot entry of this volume per snapshot author.
        self.snapshot_records: dict[bytes, Entry] = {}
        #: Every counted op of the volume as (seq, op): in memory, or (None) in the local copy.
        self._history: list[tuple[int, Op]] | None = []
        self._history_loading: list[tuple[int, Op]] | None = None
        self._history_lock = trio.Lock()
        #: Set while every op of the volume is here (memory or local copy); clear while the
        #: history below a snapshot's position is being fetched, or the copy is rebuilt.
        self.history_complete = trio.Event()
        self.history_complete.set()
        self._late = False  # the tree lacks ops ordered before its last: a refold follows
        self._late_rewritten: set[bytes] = set()
        self._refold_wanted = trio.Event()
        self._refold_lock = trio.Lock()
        self._mutations = 0  # odd while the tree changes (a checkpoint being encoded retries)
        self.starting = True  # refolds wait for the end of the start-up sync
        #: A first mount replaying the whole log folds it once at the end, not op by op:
        #: with more than one device most ops arrive out of order anyway.
        self.deferring = False
        self._replaying = False  # the copy is being rebuilt from peers: the tree waits for the end
        self._cutoff_key: tuple[int, int] = (0, 0)
        self._checkpointed = (0, 0)  # (op_count, mutations) at the last checkpoint
        self._last_append = 0.0
        #: How this mount's tree started: "local copy", "snapshot", or None (the whole log).
        self.restored: str | None = None
        self.rebuilds = 0
        self.local_problem: str | None = None
        #: Entries peers served this mount (a restart asks only for what is new).
        self.fetched = 0
        self.backfilled = 0
        self._generation = 0  # bumped by a rebuild: a walk begun before it stops
        self.snapshots_rejected = 0
        self.snapshots_made = 0

    # ------------------------------------------------------------------ the local copy

    async def load(self) -> None:
        """Take up the local copy (checkpoint and stored entries), then this device's own chain."""
        if self.local is not None:
            try:
                loaded = await trio.to_thread.run_sync(self._read_local)
            except LocalCopyError as exc:
                await self._drop_local(str(exc))
                loaded = None
            if loaded is not None:
                self._adopt(loaded)
        await self._load_own_chain()

    async def _drop_local(self, reason: str) -> None:
        self.rebuilds += 1
        self.local_problem = reason
        log.warning("the local copy of the log is not usable (%s): it is rebuilt from the peers", reason)
        if self.local is not None:
            await trio.to_thread.run_sync(self.local.wipe)

    def _read_local(self) -> _Loaded | None:
        """Read and check the local copy (in a worker thread); None if there is none for this volume."""
        local = self.local
        assert local is not None
        if not local.claim(self.volume.public_key, self.committee, self.volume.read_key):
            log.warning("the local copy of the log was made for another volume, committee or read key: dropped")
            return None
        checkpoint = local.checkpoint()
        bases = local.bases()
        stored = local.heads()
        if checkpoint is None and not stored and not bases:
            return None
        if bases and checkpoint is None:
            # A snapshot's tree is checkpointed before anything is stored after it.
            raise LocalCopyError("chains held from a snapshot on, but no checkpoint of its tree")
        state = LogState(self.committee)
        namespace = Namespace()
        positions: dict[bytes, tuple[int, bytes]] = {}
        if checkpoint is not None:
            try:
                namespace = decode_tree(checkpoint.tree)
            except SnapshotError as exc:
                raise LocalCopyError(f"the checkpoint's tree does not decode: {exc}") from None
            for author, (seq, entry_id, keys) in checkpoint.position.heads.items():
                if author not in bases:
                    # The entry the checkpoint stands on must be the stored one.
                    if local.entry_id(author, seq) != entry_id:
                        raise LocalCopyError(f"entry {seq} of {author.hex()[:12]} the checkpoint stands on is missing")
                state.rebase(author, seq, entry_id, keys)
                positions[author] = (seq, entry_id)
        for author, (seq, entry_id, keys) in bases.items():
            if author not in state.bases:
                state.rebase(author, seq, entry_id, keys)
                positions[author] = (seq, entry_id)
            elif state.bases[author][0] < seq:
                raise LocalCopyError(f"the checkpoint stands below the snapshot base of {author.hex()[:12]}")
        tail: list[Entry] = []
        for author, top in stored.items():
            after = state.head(author)
            if top <= after:
                continue
            for entry in local.chain(author, after):
                outcome, newly = state.apply(entry, checked=True)
                if outcome is not Outcome.ACCEPTED:
                    raise LocalCopyError(f"stored chain of {author.hex()[:12]} does not link at seq {entry.seq}")
                tail.extend(newly)
        opened = {e.id: self._open(e) for e in tail if self._ours(e)}
        if checkpoint is not None:
            namespace.last = checkpoint.position.last
        snapshots = [e for e in local.of_kind(SNAPSHOT) if e.payload.get("volume") == self.volume.public_key]
        return _Loaded(state, namespace, checkpoint.position if checkpoint is not None else None, positions,
                       tail, opened, not bases, snapshots)

    def _adopt(self, loaded: _Loaded) -> None:
        """Make a local copy read by ``_read_local`` this mount's view, and fold what was stored after its checkpoint."""
        self.state = loaded.state
        self.namespace = loaded.namespace
        self.position = dict(loaded.positions)
        if loaded.checkpoint is not None:
            self.volume_authors = set(loaded.checkpoint.volume_authors)
            self.op_count = loaded.checkpoint.ops
            self.sealed_seen, self.unreadable = loaded.checkpoint.sealed_seen, loaded.checkpoint.unreadable
            # The ops below the checkpoint stay in the local copy until something needs them.
            self._history = None
        if not loaded.history_complete:
            self._history = None
            self.history_complete = trio.Event()
        self.restored = "local copy"
        for entry in loaded.snapshots:
            self.snapshot_records[entry.author] = entry
        self._fold(loaded.tail, self._count_opened(loaded.tail, loaded.opened))
        self._checkpointed = (self.op_count, self._mutations)
        log.info("local copy: %d chains held from a checkpoint on, %d stored entries read (%d of members)",
                 len(loaded.positions), len(loaded.tail), sum(e.author in self._members for e in loaded.tail))

    async def _load_own_chain(self) -> None:
        """This device's entries the state lacks (a crash before they were stored, a rebuilt copy), and those to publish."""
        own_published = getattr(self.store, "own_published", None)
        published = await trio.to_thread.run_sync(own_published) if own_published is not None else 0
        head = self.state.head(self.device_id)
        after = max(min(published, head - 1), 0)
        rows = await trio.to_thread.run_sync(self.store.own_entries, after)
        fresh: list[Entry] = []
        self.published = published
        for encoded, is_published in rows:
            entry = decode_entry(encoded)
            self.last_hlc = max(self.last_hlc, entry.hlc)
            if entry.seq > self.state.head(self.device_id):
                outcome, newly = self.state.apply(entry, checked=True)
                if outcome is not Outcome.ACCEPTED:  # pragma: no cover - our own chain
                    raise LogError(f"own entry {entry.seq} does not continue the chain: {outcome.value}")
                fresh.extend(newly)
            if not is_published and entry.seq > self.published:
                self._outbox.append(entry)
        if fresh:
            opened = {e.id: self._open(e) for e in fresh if self._ours(e)}
            await self._store_rows(fresh, opened)
            self._fold(fresh, self._count_opened(fresh, opened))
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
        if self._outbox:
            self._unpublished.set()

    async def _store_rows(self, entries: Sequence[Entry], opened: Mapping[bytes, Any]) -> None:
        """Record accepted entries and their ops in the local copy (before the tree takes them in)."""
        if self.local is None or not entries:
            return
        ops = [(e, opened[e.id][0]) for e in entries if e.id in opened]
        # Shielded: the entries are in the state already, so a cancellation here (the
        # start-up's time limit) must not keep them from the tree, which follows at once.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.local.add, entries, ops)

    def _checkpoint_position(self) -> Position:
        heads = {a: (s, i, tuple(sorted(self.state.keys_of(a)))) for a, (s, i) in self.position.items()}
        return Position(heads, set(self.volume_authors), self.op_count, self.sealed_seen, self.unreadable,
                        self.namespace.last)

    async def checkpoint(self, force: bool = False, every: int = 0) -> bool:
        """Write the tree and its position to the local copy (unless nothing changed, or fewer than ``every`` ops); whether it was written.

        The tree is encoded in a worker thread while the loop goes on; a change of the
        tree meanwhile (the counter is odd during one, and moves) makes it try again.
        """
        if self.local is None or self._late or self._replaying or self.deferring or self._batch is not None:
            return False  # the tree is not the fold of what its position names (an open batch is in no entry)
        if not force and (self._checkpointed == (self.op_count, self._mutations)
                          or self.op_count - self._checkpointed[0] < every):
            return False
        for _ in range(5):
            mark = self._mutations
            if mark % 2:
                await trio.sleep(0.05)
                continue
            namespace, position = self.namespace, self._checkpoint_position()

            def encode() -> bytes | None:
                tree = encode_tree(namespace)
                return tree if self._mutations == mark else None

            tree = await trio.to_thread.run_sync(encode)
            if tree is None or self._mutations != mark:
                await trio.sleep(0.2)
                continue
            await trio.to_thread.run_sync(self.local.save_checkpoint, position, tree)
            self._checkpointed = (position.ops, mark)
            return True
        return False

    async def _checkpointer(self) -> None:
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            if self.op_count - self._checkpointed[0] >= CHECKPOINT_OPS:
                try:
                    await self.checkpoint(every=CHECKPOINT_OPS)
                except LocalCopyError as exc:  # pragma: no cover - a disk that fails under us
                    log.warning("could not write a checkpoint: %s", exc)

    # ------------------------------------------------------------------ own chain

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
                    or batch.foreign_hlc < self._foreign_hlc >= batch.hlc
                    # The tree holds an op ordered after this batch's next place (a refold or a
                    # checkpoint brought it in): the next op goes into an entry stamped later.
                    or not self._fits(batch)):
                await self._sign_batch()
                batch = None
            if batch is None:
                # After every op the tree holds, too: a checkpoint's or snapshot's tree may
                # hold stamps later than any entry this mount took in since it started.
                seen = max(self.max_seen, self.namespace.last[0] if self.namespace.last is not None else 0)
                self.last_hlc = next_hlc(self.last_hlc, int(time.time() * 1000), seen)
                batch = self._batch = _Batch(self.head + 1, self.last_hlc, trio.current_time(), self._foreign_hlc)
                self._batch_opened.set()
            await trio.to_thread.run_sync(self.store.add_pending_op, batch.seq, len(batch.ops), batch.hlc, encoded)
            self._last_append = time.monotonic()
            return self._add(batch, raw, len(encoded))

    def _fits(self, batch: _Batch) -> bool:
        """Whether the batch's next op would come after every op the tree holds."""
        last = self.namespace.last
        return last is None or (batch.hlc, self.device_id, batch_key(self.device_id, batch.seq), len(batch.ops)) > last

    def _add(self, batch: _Batch, raw: dict[str, Any], size: int) -> Op:
        """Put an op in the open batch, in the history, and in the tree."""
        op = batch_op(self.device_id, batch.seq, batch.hlc, len(batch.ops), raw)
        batch.raws.append(raw)
        batch.ops.append(op)
        batch.size += size
        # In the history from now on (a refold must keep it), and in the tree; ``_fold``
        # takes the signed entry in later without applying these again.
        self._own_applied.add(op.op_id)
        for history in (self._history, self._history_loading):
            if history is not None:
                history.append((batch.seq, op))
        self._mutations += 1
        try:
            if self.namespace.last is None or op.order > self.namespace.last:
                self.namespace.apply(op)
            elif self._history is not None and self.history_complete.is_set() and not self._replaying:
                # Another device's op stamped later than ours is applied already (a batch a
                # stop left open, signed at the next start): refold now, the op is shown at once.
                self.namespace = build(self._counted(self._history))
                self._late = False
            else:
                self._mark_late()
                if not self.starting:
                    self._refold_wanted.set()  # this op shows after the refold: not after the next walk
        finally:
            self._mutations += 1
        return op

    async def _sign_batch(self) -> None:
        """Sign the open batch as the device's next entry, record it and take it into the view (the caller holds the author lock)."""
        batch = self._batch
        if batch is None:
            return
        assert batch.seq == self.head + 1, "only _sign_batch signs this device's entries"
        prev = self.state.head_id(self.device_id)
        payload: dict[str, Any] = {"volume": self.volume.public_key, "delegation": self.delegation, **self.sponsor}
        if self.volume.read_key is not None:
            payload["sealed_ops"] = seal_ops(self.volume.read_key, self.volume.public_key, batch.raws,
                                             entry_context(self.device_id, batch.seq))
        else:
            payload["ops"] = batch.raws
        entry = sign_entry(self.device, batch.seq, prev, batch.hlc, NAMESPACE, payload)
        ops = list(batch.ops)
        local = self.local

        def record() -> None:
            self.store.add_own_entry(entry.seq, entry.encode())
            if local is not None:
                local.add([entry], [(entry, ops)])

        with trio.CancelScope(shield=True):  # signed and recorded: it must reach the state and the tree
            await trio.to_thread.run_sync(record)
        outcome, _ = self.state.apply(entry, checked=True)
        if outcome is not Outcome.ACCEPTED:  # pragma: no cover - our own chain
            raise LogError(f"own entry not accepted locally: {outcome.value}")
        self._batch = None
        self._outbox.append(entry)
        self._fold([entry], {entry.id: ops})  # its ops are in the tree already: nothing changes
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
            while self._outbox:
                batch = self._outbox[:BATCH]
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
                del self._outbox[: len(batch)]
                async with self._published_changed:
                    self.published = batch[-1].seq
                    self._published_changed.notify_all()

    async def _ask(self, peer: int, protocol: str, **fields: Any) -> dict[str, Any]:
        """One call to ``peer``; silent for CALL_LIMIT seconds counts as unavailable (liveness only)."""
        with trio.move_on_after(CALL_LIMIT):
            reply, _ = await self.client._call(peer, protocol, **fields)
            return reply
        self.client.silent(peer)
        raise PeerUnavailable(self.committee.peers[peer].peer_id, f"no answer within {CALL_LIMIT:.0f} s")

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

    async def sync_from(self, peer: int) -> tuple[int, bool]:
        """Fetch entries ``peer`` has that this view lacks, within one round's budget; (how many were new, whether the walk reached the end).

        The walk resumes at ``_cursor`` (the last author finished in an earlier round, with
        any peer), and entries are checked and applied every HOLD_BYTES, so what the mount
        holds per round is bounded however many authors or entries the log has. A head the
        peer lists at a position this view holds must be the entry held there.
        """

        async def call(protocol: str, **fields: Any) -> dict[str, Any]:
            return await self._ask(peer, protocol, **fields)

        budget = RoundBudget(FOLLOW_BYTES)
        generation = self._generation
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
                    await self._compare_heads(peer, page.heads)
                    if generation != self._generation:
                        break  # rebuilt: the next walk starts from the first author
                    wants = [(a, self.state.head(a) + 1, head) for a, (head, _) in page.heads.items()]
                    async with aclosing(range_pages(call, wants, budget)) as ranges:
                        async for batch in ranges:
                            self.fetched += len(batch)
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
        if generation != self._generation:
            self._cursor, complete = None, False
            return accepted, False
        self._cursor = None if complete else finished
        if complete and self._late and not self.starting:
            self._refold_wanted.set()
        if complete and self._replaying:
            self._replaying = False
            self._late = True
            self.history_complete.set()
            self._refold_wanted.set()
        return accepted, complete

    async def _take(self, peer: int, fresh: list[Entry]) -> int:
        """Check ``fresh`` entries and open their ops (in a thread), then apply the valid ones; return how many became accepted."""

        now = int(time.time() * 1000)

        def check(entries: list[Entry]) -> tuple[list[Entry], dict[bytes, Any]]:
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
            return good, {e.id: self._open(e) for e in good if self._ours(e)}

        good, opened = await trio.to_thread.run_sync(check, fresh)
        return await self._accept(good, opened, peer)

    async def _accept(self, entries: Sequence[Entry], opened: dict[bytes, Any], peer: int | None = None) -> int:
        """Apply checked entries, store what became accepted, then fold it; how many were accepted."""
        accepted: list[Entry] = []
        unlinked: list[Entry] = []
        for entry in entries:
            outcome, newly = self.state.apply(entry, checked=True)
            if (outcome is Outcome.REJECTED and entry.seq == self.state.head(entry.author) + 1
                    and entry.prev != self.state.head_id(entry.author)):
                unlinked.append(entry)  # signed, next in its chain, yet not after what this side holds
            accepted.extend(newly)
            self.max_seen = max(self.max_seen, entry.hlc)
        for entry in accepted:
            if entry.id not in opened and self._ours(entry):
                opened[entry.id] = self._open(entry)  # waited for an entry of an earlier batch
        counted = self._count_opened(accepted, opened)
        await self._store_rows(accepted, opened)
        self._fold(accepted, counted)
        self._check_cutoffs()
        if peer is not None:
            for entry in unlinked[:1]:
                await self._fork_at(peer, entry.author, self.state.head(entry.author))
        return len(accepted)

    def _check_cutoffs(self) -> None:
        """An equivocation or revocation changes which entries count: the tree is refolded."""
        key = (len(self.state.equivocations), len(self.state.ledger.revoked))
        if key != self._cutoff_key:
            self._cutoff_key = key
            if self.op_count:
                self._mark_late()

    async def _compare_heads(self, peer: int, heads: Mapping[bytes, tuple[int, bytes]]) -> None:
        """Each head ``peer`` lists at a position this view holds must be the entry held there."""
        suspects: list[tuple[bytes, int]] = []
        below: list[tuple[bytes, int, bytes]] = []
        for author, (seq, head_id) in heads.items():
            if not 0 < seq <= self.state.head(author):
                continue
            if seq == self.state.head(author):
                ours = self.state.head_id(author)
            else:
                held = self.state.entry_at(author, seq)
                if held is None:
                    below.append((author, seq, head_id))
                    continue
                ours = held.id
            if ours != head_id:
                suspects.append((author, seq))
        if below and self.local is not None:
            local = self.local

            def stored() -> list[tuple[bytes, int]]:
                return [(a, s) for a, s, i in below if local.entry_id(a, s) not in (None, i)]

            try:
                suspects += await trio.to_thread.run_sync(stored)
            except LocalCopyError as exc:
                await self._rebuild(str(exc))
                return
        for author, seq in suspects[:1]:  # one per round: a peer that lies costs it one request
            await self._fork_at(peer, author, seq)

    async def _fork_at(self, peer: int, author: bytes, seq: int) -> None:
        """``peer`` names another entry than this view's at ``author``'s ``seq``: believe it only signed.

        The peer must serve that entry, validly signed; then the author signed two entries
        for one position (or this side's copy is wrong). Held here, both make an
        equivocation proof, as on the peers; below what is held, the copy is rebuilt.
        """
        try:
            reply = await self._ask(peer, LOG_RANGE, wants=[[author, seq, 1]])
            [[theirs]] = check_ranges(reply, [(author, seq, seq)])
            await trio.to_thread.run_sync(check_entry, theirs, self.committee, None)
        except (PeerUnavailable, CodecError, ValueError) as exc:
            log.info("peer %d named a head it does not back (%s): ignored", peer, exc)
            return
        ours = self.state.entry_at(author, seq)
        if ours is not None:
            if ours.id != theirs.id:
                log.warning("author %s signed two entries for seq %d: its entries from there on stop counting",
                            author.hex()[:12], seq)
                self.state.apply(theirs, checked=True)
                self._check_cutoffs()
            return
        base_seq, base_id = self.state.bases.get(author, (0, GENESIS))
        if seq > self.state.head(author) or seq > base_seq:
            return  # nothing held there to compare with
        ours_id: bytes | None = base_id
        if seq < base_seq:
            ours_id = None
            if self.local is not None:
                try:
                    ours_id = await trio.to_thread.run_sync(self.local.entry_id, author, seq)
                except LocalCopyError as exc:
                    await self._rebuild(str(exc))
                    return
        if ours_id is None or ours_id == theirs.id:
            return  # below a snapshot's base and not fetched yet: the history fetch checks the chain
        await self._rebuild(f"peer {peer} serves another signed entry {seq} of {author.hex()[:12]} "
                            "than the one this mount holds (a forked or rolled back chain)")

    async def _rebuild(self, reason: str) -> None:
        """Drop the local copy and this view, and fetch the whole log again from the peers.

        The tree shown meanwhile is the old one; the first complete walk of the log ends
        with a refold of everything, which replaces it.
        """
        if self._replaying:
            return
        async with self._author_lock:  # a batch being signed lands in the old state or the new one, whole
            await self._rebuild_locked(reason)

    async def _rebuild_locked(self, reason: str) -> None:
        await self._drop_local(reason)
        self._generation += 1
        self.state = LogState(self.committee)
        self.position, self.volume_authors, self.snapshot_records = {}, set(), {}
        self.op_count = self.sealed_seen = self.unreadable = 0
        # The open batch's ops are written and shown, in no entry yet: they stay in the history.
        batch = self._batch
        self._history = [(batch.seq, op) for op in batch.ops] if batch is not None else []
        self._history_loading = None
        self.history_complete = trio.Event()
        self._replaying = True
        self._cursor = None
        self._cutoff_key = (0, 0)
        self._outbox = []
        self.restored = None
        await self._load_own_chain_all()

    async def _load_own_chain_all(self) -> None:
        """Every entry this device signed, into a state that holds none of them (a rebuilt copy)."""
        rows = await trio.to_thread.run_sync(self.store.own_entries, 0)
        entries = [decode_entry(encoded) for encoded, _ in rows]
        published = 0
        accepted: list[Entry] = []
        for (_, is_published), entry in zip(rows, entries):
            accepted.extend(self.state.apply(entry, checked=True)[1])
            if is_published:
                published = entry.seq
            elif entry.seq > published:
                self._outbox.append(entry)
        self.published = max(self.published, published)
        opened = {e.id: self._open(e) for e in accepted if self._ours(e)}
        await self._store_rows(accepted, opened)
        self._fold(accepted, self._count_opened(accepted, opened))
        if self._outbox:
            self._unpublished.set()

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
        """Follow the log and publish own entries until cancelled (refolds, checkpoints, history and snapshots alongside)."""
        from . import snapshots

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._batcher)
            nursery.start_soon(self._refolder)
            if self.local is not None:
                nursery.start_soon(self._checkpointer)
                nursery.start_soon(snapshots.backfill, self)
                if snapshots.can_snapshot(self):
                    nursery.start_soon(snapshots.snapshotter, self)
            while True:
                try:
                    if not await self.sync_any():
                        await trio.sleep(0)  # cut short by its budget: the next round follows at once
                        continue
                except LogUnavailable as exc:
                    log.warning("log sync: %s", exc)
                await trio.sleep(POLL_INTERVAL)

    async def startup_done(self) -> None:
        """The start-up sync is over: refold if ops came out of order.

        Before the mount serves when the whole history is in memory (it was all just
        fetched); in the background when it is on disk or still coming (a restart, a
        snapshot): meanwhile the tree is the fold of all but the late ops.
        """
        self.starting = False
        if self.deferring:
            self.deferring = False
            self._late = self._late or self.op_count > 0
        if not self._late:
            return
        if self._history is not None and self.history_complete.is_set():
            await self.refold()
        else:
            self._refold_wanted.set()

    # ------------------------------------------------------------------ namespace

    def _ours(self, entry: Entry) -> bool:
        return entry.kind == NAMESPACE and entry.payload.get("volume") == self.volume.public_key

    def _open(self, entry: Entry) -> tuple[list[Op] | None, bool, str | None]:
        """The ops a namespace entry of this volume carries, opened if sealed: (ops or None, sealed, why not).

        Pure (any thread): the counters are updated by ``_count_opened`` on the loop.
        """
        if "op" in entry.payload or "ops" in entry.payload:
            return entry_ops(entry), False, None
        read_key = self.volume.read_key
        try:
            if read_key is None:
                raise SealError("no read key")
            context = entry_context(entry.author, entry.seq)
            if "sealed" in entry.payload:
                raw = open_payload(read_key, self.volume.public_key, entry.payload["sealed"], context)
                check_op(raw)  # what peers check for plaintext ops, now that it can be read
                return entry_ops(entry, [raw]), True, None
            raws = open_ops(read_key, self.volume.public_key, entry.payload["sealed_ops"], context)
            check_ops(raws)  # one bad op: the entry is skipped whole, as peers reject a plaintext one
            return entry_ops(entry, raws), True, None
        except (SealError, LogError) as exc:
            return None, True, str(exc)

    def _count_opened(self, entries: Sequence[Entry], opened: Mapping[bytes, Any]) -> dict[bytes, list[Op] | None]:
        """Count sealed and unreadable entries among ``entries`` (warning about the first few); entry ID -> ops."""
        out: dict[bytes, list[Op] | None] = {}
        for entry in entries:
            found = opened.get(entry.id)
            if found is None:
                continue
            ops, sealed, problem = found
            out[entry.id] = ops
            if sealed:
                self.sealed_seen += 1
            if ops is None:
                self.unreadable += 1
                if self.volume.read_key is not None and self.unreadable <= UNREADABLE_WARNINGS:
                    log.warning("namespace entry %s of device %s skipped: %s%s", entry.id.hex()[:12],
                                entry.author.hex()[:12], problem,
                                "; further ones are only counted (walrusfs status MOUNT)"
                                if self.unreadable == UNREADABLE_WARNINGS else "")
        return out

    def ops_of(self, entry: Entry) -> list[Op] | None:
        """The namespace ops an entry of this volume carries, opened if sealed; None if this side cannot read them."""
        return self._open(entry)[0]

    def _fold(self, accepted: Sequence[Entry], opened: Mapping[bytes, list[Op] | None]) -> None:
        """Take accepted (and stored) entries into the tree: in place when they come in order, else later by a refold.

        This device's ops are in the history and the tree from when they were written
        (``_add``): their signed entry only counts here.
        """
        self._mutations += 1
        try:
            ops: list[Op] = []
            for entry in accepted:
                author = entry.author
                if author not in self._members:
                    self.position[author] = (entry.seq, entry.id)
                if entry.payload.get("volume") != self.volume.public_key:
                    continue
                if entry.kind == SNAPSHOT:
                    self.snapshot_records[author] = entry
                    continue
                if entry.kind != NAMESPACE:
                    continue
                if entry.seq >= self.state.cutoff(author):
                    # Not counted (a revocation's heads, an equivocation). This device's own
                    # op still shows here, like a staged write, until its publishing is
                    # refused (EDQUOT at fsync): the operation that made it expects its node.
                    if author == self.device_id:
                        for op in opened.get(entry.id) or ():
                            if op.op_id in self._own_applied:
                                self._own_applied.discard(op.op_id)  # shown since it was written
                            else:
                                ops.append(op)
                    continue
                self.volume_authors.add(author)
                self.op_count += 1
                for op in opened.get(entry.id) or ():
                    if op.op_id in self._own_applied:
                        self._own_applied.discard(op.op_id)
                        if self._history_loading is not None:
                            self._history_loading.append((entry.seq, op))  # merged without duplicates
                        continue
                    if author != self.device_id:
                        self._foreign_hlc = max(self._foreign_hlc, op.hlc)
                    ops.append(op)
                    for history in (self._history, self._history_loading):
                        if history is not None:
                            history.append((entry.seq, op))
            if not ops:
                return
            # Files another device rewrote: the mount gives them fresh inodes, since a kernel
            # with the writeback cache keeps trusting its own size and pages for old ones.
            # (A read's atime alone is no rewrite: the kernel takes atime from every getattr.)
            rewritten = {o.args["node"] for o in ops if o.author != self.device_id and o.kind in ("write", "setattr")
                         and set(o.args) != {"node", "atime_ns"}}
            ops.sort(key=lambda o: o.order)
            if self._replaying or self.deferring:
                self._late_rewritten |= rewritten
                return
            last = self.namespace.last
            for op in ops:
                if last is None or op.order > last:
                    self.namespace.apply(op)
                    last = op.order
                else:
                    self._late_rewritten |= rewritten
                    self._mark_late()
        finally:
            self._mutations += 1
        if self.on_change is not None:
            self.on_change(rewritten)

    def _mark_late(self) -> None:
        # The refold waits for the end of the walk in progress: a log still arriving late
        # (a mount that serves before its first sync ended) costs one refold, not one a round.
        self._late = True

    async def history(self) -> list[Op]:
        """Every counted op of the volume (read back from the local copy the first time); waits for history a snapshot left out."""
        while True:
            complete = self.history_complete
            await complete.wait()
            if complete is self.history_complete:
                break
        if self._history is None:
            async with self._history_lock:
                if self._history is None:
                    assert self.local is not None
                    self._history_loading = []
                    cutoffs = {a: self.state.cutoff(a) for a in self.volume_authors}
                    try:
                        loaded = await trio.to_thread.run_sync(self.local.ops, cutoffs)
                    except LocalCopyError as exc:
                        self._history_loading = None
                        await self._rebuild(str(exc))
                        return await self.history()
                    # Folded while reading: they may or may not be in what was read.
                    merged = {op.op_id: (seq, op) for seq, op in loaded}
                    merged.update((op.op_id, (seq, op)) for seq, op in self._history_loading)
                    if self._batch is not None:  # written, not signed yet: in no stored entry
                        merged.update((op.op_id, (self._batch.seq, op)) for op in self._batch.ops)
                    self._history, self._history_loading = list(merged.values()), None
        return self._counted(self._history)

    def _counted(self, history: Sequence[tuple[int, Op]]) -> list[Op]:
        """The ops of ``history`` that count (below their author's cutoff)."""
        cutoffs: dict[bytes, int] = {}
        out = []
        for seq, op in history:
            cutoff = cutoffs.get(op.author)
            if cutoff is None:
                cutoff = cutoffs[op.author] = self.state.cutoff(op.author)
            if seq < cutoff:
                out.append(op)
        return out

    def ops(self) -> list[Op]:
        """The counted ops of the volume held in memory (``history`` has them all)."""
        return [op for _, op in self._history or ()]

    async def _refolder(self) -> None:
        while True:
            await self._refold_wanted.wait()
            self._refold_wanted = trio.Event()
            try:
                await self.refold()
            except LocalCopyError as exc:  # pragma: no cover - rebuilt by history()
                log.warning("refold: %s", exc)

    async def refold(self) -> None:
        """Replace a late tree with the fold of the whole history (built in a worker thread)."""
        async with self._refold_lock:
            while self._late and not self._replaying:
                ops = await self.history()
                history = self._history
                taken = len(history) if history is not None else 0
                namespace = await trio.to_thread.run_sync(build, ops)
                if self._replaying or history is not self._history:
                    continue  # rebuilt or reread meanwhile: again
                newer = sorted((op for seq, op in history[taken:] if seq < self.state.cutoff(op.author)),
                               key=lambda o: o.order)
                if newer and namespace.last is not None and newer[0].order <= namespace.last:
                    continue  # one landed out of order meanwhile: again
                self._mutations += 1
                try:
                    for op in newer:
                        namespace.apply(op)
                    self.namespace = namespace
                    self._late = False
                finally:
                    self._mutations += 1
                rewritten, self._late_rewritten = self._late_rewritten, set()
                log.info("refolded %d ops of the volume", len(ops) + len(newer))
                if self.on_change is not None:
                    self.on_change(rewritten)

    def note_certified(self, entry: Entry) -> None:
        """Apply a blob-certified entry a store just produced (already checked by the client)."""
        _, accepted = self.state.apply(entry, checked=True)
        self.max_seen = max(self.max_seen, entry.hlc)
        if accepted and self.local is not None:
            # Stored so the copy's chain of that member has no gap (in the background: it is
            # fetched again from peers if this is lost).
            local = self.local

            async def store() -> None:
                try:
                    await trio.to_thread.run_sync(local.add, accepted, ())
                except Exception as exc:  # noqa: BLE001 - a system task must not raise; the peers hold it anyway
                    log.warning("could not store a certified entry in the local copy: %s", exc)

            try:
                trio.lowlevel.spawn_system_task(store)
            except RuntimeError:  # pragma: no cover - no trio loop (a test)
                pass

    def local_status(self) -> dict[str, Any]:
        """How the tree started and the local copy, for ``walrusfs status``."""
        return {"restored": self.restored, "rebuilds": self.rebuilds, "local_problem": self.local_problem,
                "fetched_entries": self.fetched, "history_complete": self.history_complete.is_set(),
                "late": self._late, "ops": self.op_count, "backfilled": self.backfilled,
                "snapshots_made": self.snapshots_made, "snapshots_rejected": self.snapshots_rejected}
