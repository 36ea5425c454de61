"""Volume snapshots in a mount: made by writers, loaded by fresh mounts, and the history below them.

* **Making one** (a mount that holds the volume key): once the tree took in
  ``SNAPSHOT_OPS`` more namespace entries than the newest snapshot of the volume, and the
  mount is quiet with its own entries published, it encodes the tree and its position
  (``core.snapshot``), signs them with a fresh key that the volume key delegates like a
  device, seals the whole for a private volume, stores it as a blob of the volume, and
  publishes one ``volume-snapshot`` entry naming the blob: the first and only entry of that
  key's chain, so it is always a chain's head, and a push that fails is retried with the
  same entry, never re-signed (no chain of snapshots can fork). The lifecycle keeps the
  blobs of the newest snapshots alive like a file's chunks.
* **Loading one** (a mount with no local copy): from one peer, the heads of every author
  that is not a member, then each head entry (one request per 1,024 authors); among them
  the volume's snapshot entries, newest first. A snapshot is used only if its blob
  verifies (``open_snapshot``: the signer is the entry's author and delegated by the
  volume key, the header and tree check) and its position is consistent with the log: for
  every author it names, the peer serves that author's entry at that seq, validly signed,
  with that ID. Anything else, the next one is tried, then the whole log is replayed.
* **The history below it** is fetched in the background, a window at a time from the top
  down: each window's last entry must be the one the next window up starts from (its
  ``prev``), so the chain vouches for every entry down to seq 1 without a signature check
  each; then the ops are stored, and refolds and the lifecycle fold can run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio
from nacl.signing import SigningKey

from p2p.rpc import PeerUnavailable

from ..client.blob import ReadError, StoreError
from ..client.logpages import RoundBudget, heads_pages, range_pages
from ..core.errors import CodecError
from ..core.log import (
    GENESIS,
    NAMESPACE,
    SNAPSHOT,
    Entry,
    LogError,
    check_entry,
    delegate_device,
    namespace_account,
    next_hlc,
    sign_entry,
)
from ..core.metadata import BlobId
from ..core.sealing import SealError, open_sealed_snapshot, seal_snapshot
from ..core.snapshot import (
    MAX_SNAPSHOT_BYTES,
    Snapshot,
    SnapshotError,
    encode_tree,
    open_snapshot,
    sign_snapshot,
)
from .logstore import Position
from .volumelog import BACKFILL_WINDOW, PublishError

if TYPE_CHECKING:
    from .volumelog import VolumeLog

log = logging.getLogger("walrusfs.snapshots")

SNAPSHOT_ENV = "WALRUSFS_SNAPSHOT_OPS"
#: A writer snapshots once the tree holds this many more namespace entries than the newest snapshot.
SNAPSHOT_OPS = 20_000
#: Seconds between looks (a comparison of two counters), and how long the mount must have
#: signed nothing before one.
SNAPSHOT_CHECK = 2.0
QUIET = 3.0
#: Candidates a fresh mount tries before it replays the whole log.
TRIES = 3
#: Sealing adds a nonce and a tag to the snapshot bytes.
SEAL_OVERHEAD = 64
#: How many of the newest snapshots the lifecycle keeps alive.
KEEP = 2
#: Attempts at publishing a snapshot's entry before it is left for the next snapshot.
PUBLISH_TRIES = 10


#: ``off`` here: this mount neither makes nor uses snapshots (it replays the whole log).
SNAPSHOTS_ENV = "WALRUSFS_SNAPSHOTS"


def snapshot_ops() -> int:
    """How many new namespace entries make a writer snapshot ($WALRUSFS_SNAPSHOT_OPS; 0: never)."""
    if not snapshots_on():
        return 0
    try:
        return int(os.environ.get(SNAPSHOT_ENV, SNAPSHOT_OPS))
    except ValueError:
        return SNAPSHOT_OPS


def snapshots_on() -> bool:
    """Whether snapshots are made and used ($WALRUSFS_SNAPSHOTS=off turns both off)."""
    return os.environ.get(SNAPSHOTS_ENV, "on").lower() not in ("off", "0", "no")


def can_snapshot(vlog: VolumeLog) -> bool:
    """Whether this mount makes snapshots (it holds the volume key, a local copy and a writer)."""
    return (vlog.volume.key is not None and vlog.local is not None and snapshot_ops() > 0
            and getattr(vlog.client, "authority", None) is not None)


# ---------------------------------------------------------------------------- making one


async def snapshotter(vlog: VolumeLog) -> None:
    """Snapshot the volume whenever enough has changed since the newest snapshot, until cancelled."""
    await vlog.synced_once.wait()
    while True:
        await trio.sleep(SNAPSHOT_CHECK)
        if not due(vlog):
            continue
        try:
            await make_snapshot(vlog)
        except (StoreError, PublishError, LogError) as exc:
            log.warning("volume snapshot not made (trying again later): %s", exc)


def newest_ops(vlog: VolumeLog) -> int:
    """How many namespace entries the newest known snapshot of the volume holds."""
    return max((int(e.payload.get("folded", 0)) for e in vlog.snapshot_records.values()), default=0)


def due(vlog: VolumeLog) -> bool:
    """Whether a snapshot is due now: enough new entries, a tree that is not late, nothing unpublished, quiet."""
    return (vlog.op_count - newest_ops(vlog) >= snapshot_ops() and not vlog._late and not vlog._replaying
            and vlog._batch is None and not vlog.starting and vlog.published >= vlog.head and time.monotonic() - vlog._last_append > QUIET)


async def make_snapshot(vlog: VolumeLog) -> Entry | None:
    """Encode, sign, (seal,) store and announce a snapshot of the tree as it is; its entry, or None if the tree kept changing."""
    assert vlog.volume.key is not None
    # A key of its own, used once: its one entry heads its chain, and nothing can fork it.
    key = SigningKey(os.urandom(32))
    author = bytes(key.verify_key)
    delegation = delegate_device(vlog.volume.key, author)
    volume = vlog.volume.public_key
    data = None
    for _ in range(5):
        mark = vlog._mutations
        if mark % 2 or vlog._late or vlog._replaying or vlog._batch is not None:
            await trio.sleep(0.5)  # an open batch's ops are in the tree, in no entry yet
            continue
        namespace = vlog.namespace
        heads = {a: vlog.position[a] for a in vlog.volume_authors if a in vlog.position and a not in vlog._members}
        last, ops = namespace.last, vlog.op_count

        def build() -> bytes | None:
            tree = encode_tree(namespace)
            if vlog._mutations != mark:
                return None
            signed = sign_snapshot(key, delegation, volume, heads, last, ops, tree, len(namespace.nodes))
            return seal_snapshot(vlog.volume.read_key, volume, signed) if vlog.volume.read_key else signed

        data = await trio.to_thread.run_sync(build)
        if data is not None and vlog._mutations == mark:
            break
        data = None
    if data is None:
        return None
    result = await vlog.client.store(data, wait_logged=False)
    if result.entry is not None:
        vlog.note_certified(result.entry)
    payload = {"volume": volume, "delegation": delegation, **vlog.sponsor, "blob": result.blob_id.raw,
               "length": len(data), "folded": ops}
    entry = sign_entry(key, 1, GENESIS, next_hlc(0, int(time.time() * 1000), vlog.max_seen), SNAPSHOT, payload)
    for attempt in range(PUBLISH_TRIES):
        try:
            await vlog._push([entry])
            break
        except PublishError:
            if attempt == PUBLISH_TRIES - 1:
                raise
            await trio.sleep(2.0)
    await vlog._accept([entry], {})
    vlog.snapshots_made += 1
    log.info("volume snapshot of %d namespace entries (%d nodes, %d bytes) stored as blob %s", ops,
             len(namespace.nodes), len(data), result.blob_id)
    return entry


# ---------------------------------------------------------------------------- loading one


class _Rejected(Exception):
    """A snapshot candidate is not usable (the message says why)."""


async def load_snapshot(vlog: VolumeLog) -> bool:
    """Start a mount with no local copy from the newest usable snapshot of its volume; whether one was used.

    Candidates are gathered from f + 1 peers (one of them honest: a member that hides
    snapshot entries only costs a replay if all of them do), and a snapshot's position is
    checked against every peer before it is refused for entries the log lacks.
    """
    if vlog.local is None or vlog.state.chains or vlog.op_count or not snapshots_on():
        return False
    order = sorted(range(len(vlog.committee.peers)), key=lambda p: p not in vlog.client.answered)
    wanted = len(vlog.committee.peers) // 3 + 1
    candidates: dict[bytes, Entry] = {}
    asked = 0
    for peer in order:
        if asked >= wanted:
            break
        try:
            for entry in await _candidates(vlog, peer):
                candidates.setdefault(entry.id, entry)
            asked += 1
        except (PeerUnavailable, CodecError, ValueError) as exc:
            log.info("no snapshot list from peer %d: %s", peer, exc)
    ranked = sorted(candidates.values(), key=lambda e: (int(e.payload.get("folded", 0)), e.hlc), reverse=True)
    for record in ranked[:TRIES]:
        try:
            snapshot, bases = await _verified(vlog, order, record)
        except (_Rejected, PeerUnavailable, CodecError, ValueError) as exc:
            log.warning("volume snapshot %s of %s rejected: %s", record.payload["blob"].hex()[:12],
                        record.author.hex()[:12], exc)
            vlog.snapshots_rejected += 1
            continue
        await _adopt(vlog, record, snapshot, bases)
        return True
    return False


async def _candidates(vlog: VolumeLog, peer: int) -> list[Entry]:
    """The volume's snapshot entries at the heads of ``peer``'s chains, checked, newest (most entries) first."""

    async def call(protocol: str, **fields: Any) -> dict[str, Any]:
        return await vlog._ask(peer, protocol, **fields)

    heads: list[tuple[bytes, int, int]] = []
    async for page in heads_pages(call):
        heads += [(a, seq, seq) for a, (seq, _) in page.heads.items() if a not in vlog._members]
    found: list[Entry] = []
    async for batch in range_pages(call, heads, RoundBudget(64 << 20)):
        found += [e for e in batch if e.kind == SNAPSHOT and e.payload.get("volume") == vlog.volume.public_key]

    def check(entries: list[Entry]) -> list[Entry]:
        good = []
        for entry in entries:
            try:
                check_entry(entry, vlog.committee)
                good.append(entry)
            except LogError as exc:
                log.info("snapshot entry of %s skipped: %s", entry.author.hex()[:12], exc)
        return good

    good = await trio.to_thread.run_sync(check, found)
    return sorted(good, key=lambda e: (int(e.payload.get("folded", 0)), e.hlc), reverse=True)


async def _verified(vlog: VolumeLog, order: list[int], record: Entry) -> tuple[Snapshot, dict[bytes, Entry]]:
    """The snapshot ``record`` names, checked, and the base entries its position names (from any peer)."""
    blob = BlobId(record.payload["blob"])
    try:
        metadata = await vlog.client.get_metadata(blob)
        if metadata.unencoded_length > MAX_SNAPSHOT_BYTES + SEAL_OVERHEAD:
            raise _Rejected(f"blob of {metadata.unencoded_length} bytes is larger than any snapshot")
        data = await vlog.client.read(blob, metadata=metadata)
    except ReadError as exc:
        raise _Rejected(f"blob does not read: {exc}") from None
    volume = vlog.volume

    def decode() -> Snapshot:
        raw = data
        if volume.read_key is not None:
            raw = open_sealed_snapshot(volume.read_key, volume.public_key, raw)
        return open_snapshot(raw, volume.public_key)

    try:
        snapshot = await trio.to_thread.run_sync(decode)
    except (SealError, SnapshotError) as exc:
        raise _Rejected(str(exc)) from None
    if snapshot.signer != record.author or snapshot.folded != record.payload.get("folded"):
        raise _Rejected("the blob is not the snapshot its entry announces")
    if any(author in vlog._members for author in snapshot.heads):
        raise _Rejected("its position names a committee member's chain")
    bases: dict[bytes, Entry] = {}
    for peer in order:
        wants = [(a, seq, seq) for a, (seq, _) in snapshot.heads.items() if a not in bases]
        if not wants:
            break

        async def call(protocol: str, **fields: Any) -> dict[str, Any]:
            return await vlog._ask(peer, protocol, **fields)

        try:
            async for batch in range_pages(call, wants):
                for entry in batch:
                    bases[entry.author] = entry
        except (PeerUnavailable, CodecError, ValueError) as exc:
            log.info("peer %d served no base entries of snapshot %s: %s", peer, record.id.hex()[:12], exc)
    missing = [a for a in snapshot.heads if a not in bases]
    if missing:
        raise _Rejected(f"no peer holds {len(missing)} of the entries its position names")

    def check_bases() -> None:
        for author, entry in bases.items():
            check_entry(entry, vlog.committee)
            if entry.id != snapshot.heads[author][1] or entry.kind not in (NAMESPACE, SNAPSHOT):
                raise _Rejected(f"its position names entry {entry.seq} of {author.hex()[:12]}, which the log "
                                "does not hold")

    try:
        await trio.to_thread.run_sync(check_bases)
    except LogError as exc:
        raise _Rejected(f"a base entry is invalid: {exc}") from None
    return snapshot, bases


async def _adopt(vlog: VolumeLog, record: Entry, snapshot: Snapshot, bases: dict[bytes, Entry]) -> None:
    """Make a verified snapshot the mount's tree and position; its history is fetched in the background."""
    assert vlog.local is not None
    keyed = {}
    for author, entry in bases.items():
        keys = (author, entry.payload["volume"], namespace_account(entry.payload))
        seq, entry_id = snapshot.heads[author]
        keyed[author] = (seq, entry_id, keys)
    local = vlog.local
    # Checkpointed at once, with the bases: a restart finds the snapshot's tree where it stands.
    position = Position(keyed, set(snapshot.heads), snapshot.folded, last=snapshot.last)

    def store() -> None:
        local.set_bases(keyed)
        local.add(list(bases.values()))
        local.save_checkpoint(position, snapshot.tree)

    with trio.CancelScope(shield=True):  # stored and taken up together, or neither
        await trio.to_thread.run_sync(store)
    for author, (seq, entry_id, keys) in keyed.items():
        vlog.state.rebase(author, seq, entry_id, keys)
    vlog._mutations += 1
    vlog.namespace = snapshot.namespace
    vlog.position = {a: (s, i) for a, (s, i, _) in keyed.items()}
    vlog.volume_authors = set(snapshot.heads)
    vlog.op_count = snapshot.folded
    vlog._history, vlog._history_loading = None, None
    vlog.history_complete = trio.Event()
    vlog._mutations += 1
    vlog.snapshot_records[record.author] = record
    vlog.restored = "snapshot"
    vlog._checkpointed = (vlog.op_count, vlog._mutations)
    log.info("started from volume snapshot %s: %d namespace entries, %d nodes, %d chains", record.id.hex()[:12],
             snapshot.folded, len(snapshot.namespace.nodes), len(snapshot.heads))


# ---------------------------------------------------------------------------- the history below


async def backfill(vlog: VolumeLog) -> None:
    """Fetch every chain's history below a snapshot's base (then refolds can run); retried until done."""
    if vlog.local is None:
        return
    while not vlog.history_complete.is_set():
        if vlog._replaying:
            await trio.sleep(1.0)  # a rebuild fetches everything anyway
            continue
        # After the start-up sync, so the first listing is not slowed by it.
        await vlog.synced_once.wait()
        pending = await trio.to_thread.run_sync(vlog.local.bases)
        if not pending:
            if not vlog._replaying:
                vlog.history_complete.set()
                # The snapshot was a writer's word for the tree: now that every op is here,
                # the tree is folded from them (and replaces the snapshot's).
                vlog._mark_late()
                vlog._refold_wanted.set()
            return
        for author, (seq, entry_id, _) in sorted(pending.items()):
            try:
                await _backfill_chain(vlog, author, seq, entry_id)
            except (PeerUnavailable, CodecError, ValueError, _Rejected) as exc:
                log.info("history of %s: %s (trying again)", author.hex()[:12], exc)
                await trio.sleep(1.0)
                break


async def _backfill_chain(vlog: VolumeLog, author: bytes, base: int, base_id: bytes) -> None:
    """Fetch ``author``'s entries 1..``base`` window by window from the top, each vouched for by the one above."""
    assert vlog.local is not None
    local = vlog.local
    expected, top = base_id, base
    while top >= 1:
        low = max(1, top - BACKFILL_WINDOW + 1)
        window = await _fetch_window(vlog, author, low, top)
        for entry in reversed(window):
            if entry.id != expected:
                raise _Rejected(f"entry {entry.seq} of {author.hex()[:12]} is not the one the chain above names")
            expected = entry.prev
        entries = window

        def check_and_open(entries: Iterable[Entry] = entries) -> list[tuple[Entry, Any]]:
            out = []
            for entry in entries:
                # Authentic by the chain above; still valid for its kind like any other entry.
                check_entry(entry, vlog.committee, None, signature=False)
                out.append((entry, vlog._open(entry) if vlog._ours(entry) else None))
            return out

        try:
            opened = await trio.to_thread.run_sync(check_and_open)
        except LogError as exc:
            raise _Rejected(f"an entry below the snapshot is invalid: {exc}") from None
        cutoff = vlog.state.cutoff(author)
        ops = [(e, found[0]) for e, found in opened if found is not None and e.seq < cutoff]
        await trio.to_thread.run_sync(local.add, window, ops)
        vlog.backfilled += len(window)
        top = low - 1
    if expected != GENESIS:  # pragma: no cover - decode_entry allows GENESIS only at seq 1
        raise _Rejected("the chain does not start at its first entry")
    await trio.to_thread.run_sync(local.drop_base, author)


def kept_blobs(vlog: VolumeLog) -> set[bytes]:
    """The blobs of the volume's newest snapshots (the lifecycle renews them like a file's chunks)."""
    records = sorted(getattr(vlog, "snapshot_records", {}).values(),
                     key=lambda e: (int(e.payload.get("folded", 0)), e.hlc), reverse=True)
    return {e.payload["blob"] for e in records[:KEEP]}


async def _fetch_window(vlog: VolumeLog, author: bytes, low: int, top: int) -> list[Entry]:
    """``author``'s entries ``low``..``top`` from any peer that serves them all."""
    problems = []
    order = sorted(range(len(vlog.committee.peers)), key=lambda p: p not in vlog.client.answered)
    for peer in order:
        async def call(protocol: str, **fields: Any) -> dict[str, Any]:
            return await vlog._ask(peer, protocol, **fields)

        try:
            got: list[Entry] = []
            async for batch in range_pages(call, [(author, low, top)]):
                got += batch
            if len(got) == top - low + 1:
                return got
            problems.append(f"{peer}: served {len(got)} of {top - low + 1}")
        except (PeerUnavailable, CodecError, ValueError) as exc:
            problems.append(f"{peer}: {exc}")
    raise _Rejected(f"no peer served entries {low}..{top}: {'; '.join(problems)[:300]}")
