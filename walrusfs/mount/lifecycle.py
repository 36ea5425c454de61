"""A volume keeps what its tree uses, and only that: renewal, trash and release of its chunks.

Every chunk a mount stores is a registration owned by the volume (deletable, for a few
storage epochs). From the log alone, every mount of a volume (and the ``walrusfs volume``
commands) derives the same picture:

* the chunks the current tree references;
* for each chunk nothing references any more, *when* it stopped being referenced: the
  stamp of the namespace operation that removed its last reference (an unlink, a rename
  over it, a write that replaced it), found by folding the volume's operations in their
  total order; a chunk registered but never referenced counts from its certification;
* the trash: the file versions those operations removed, with their path and content.

A file with several names (hard links) is referenced until its last name goes: removing
one of its names releases nothing.

A mount then extends, in batches, the registration of every chunk that the tree or the
trash still needs before it ends; re-stores a needed chunk no live registration holds if
its verified copy is still in the cache (else reports it); and deletes the registrations of
chunks unreferenced for longer than the trash time. A chunk this mount's own unpublished
staged writes reference is never released. Two mounts may issue the same extension or
deletion: the fold makes the second a no-op.

The trash time is the mount's ``--trash-time`` (or ``$WALRUSFS_TRASH_SECONDS``), else the
volume's own setting (root xattr ``user.walrusfs.trash-seconds``, in the log like any
xattr), else 7 days.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from ..client.blob import AccessDenied, Client, StoreError
from ..core.lifecycle import MAX_TARGETS
from ..core.log import hlc_millis
from ..core.metadata import BlobId
from ..core.namespace import FILE, ROOT, Content, Namespace, Op
from .contents import cache_key

log = logging.getLogger("walrusfs.lifecycle")

DEFAULT_TRASH_SECONDS = 7 * 24 * 3600
TRASH_ENV = "WALRUSFS_TRASH_SECONDS"
#: The volume's own trash time, a root xattr any writer of the volume sets (``setfattr``).
TRASH_XATTR = "user.walrusfs.trash-seconds"
#: A registration ending within this many storage epochs is extended ...
RENEW_MARGIN = 2
#: ... to this many epochs after the current one.
RENEW_EPOCHS = 10
#: A chunk certified but not referenced yet is an upload whose namespace write may still be
#: on its way: even ``gc --now`` leaves it this long.
UPLOAD_GRACE_MS = 120_000
#: Longest pause between passes (a pass also follows every new storage epoch).
MAX_PASS_INTERVAL = 60.0
MIN_PASS_INTERVAL = 1.0
#: Seconds after a pass before a change of the tree brings the next one, at least; and at
#: least this many times the last pass's duration (a large volume's fold takes seconds).
CHANGE_DELAY = 5.0
PASS_SHARE = 4.0
#: The first pass of a mount waits a second per this many namespace entries, at most MAX_FIRST_PASS_DELAY.
FIRST_PASS_OPS_PER_SECOND = 10_000
MAX_FIRST_PASS_DELAY = 30.0


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 30, 30s, 15m, 2h or 7d; ``ValueError`` if it is none."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 15m, 2h, 7d)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def env_trash_seconds() -> float | None:
    """The trash time ``$WALRUSFS_TRASH_SECONDS`` sets, if any (ignored when malformed)."""
    text = os.environ.get(TRASH_ENV)
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        log.warning("ignoring %s=%r: not a duration", TRASH_ENV, text)
        return None


def volume_trash_seconds(namespace: Namespace) -> float | None:
    """The trash time the volume's root xattr sets, if it holds a duration."""
    raw = namespace.nodes[ROOT].xattrs.get(TRASH_XATTR)
    if raw is None:
        return None
    try:
        return parse_duration(raw.decode("ascii", "replace"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------- the fold (pure)


@dataclass(frozen=True)
class TrashItem:
    """A file version an operation removed from the tree: deleted, or replaced by a newer one."""

    node: bytes
    path: str
    content: Content
    removed_hlc: int  # stamp of the removing operation
    kind: str  # "deleted" or "overwritten"
    mode: int = 0o644

    @property
    def removed_ms(self) -> int:
        """When it was removed (milliseconds since the epoch, the writer's clock)."""
        return hlc_millis(self.removed_hlc)

    @property
    def chunks(self) -> set[bytes]:
        """The blob IDs it needs."""
        return {c for c in self.content.chunks if c is not None}


@dataclass
class Usage:
    """What a volume's operations say about its chunks (the same on every mount holding them)."""

    referenced: set[bytes] = field(default_factory=set)
    #: chunk -> stamp of the operation that removed its last reference (only unreferenced chunks)
    unreferenced_since: dict[bytes, int] = field(default_factory=dict)
    trash: list[TrashItem] = field(default_factory=list)
    files: int = 0
    logical_bytes: int = 0
    #: the tree the operations fold to
    namespace: Namespace = field(default_factory=Namespace)


def _linked_file(namespace: Namespace, node_id: bytes) -> bool:
    node = namespace.nodes.get(node_id)
    # Directories are removed only when empty, so a file with a parent is in the tree. A
    # hard-linked file has a parent while any of its names is left: its chunks stay
    # referenced (and nothing goes to the trash) until the last name goes.
    return node is not None and node.kind == FILE and node.parent is not None


def path_of(namespace: Namespace, node_id: bytes) -> str:
    """A node's path in the tree (its last known place if it was removed)."""
    parts: list[str] = []
    current: bytes | None = node_id
    for _ in range(4096):  # the fold keeps the tree acyclic; bounded all the same
        if current is None or current == ROOT:
            break
        node = namespace.nodes.get(current)
        if node is None or node.name is None:
            break
        parts.append(node.name)
        current = node.parent
    return "/" + "/".join(reversed(parts))


def _touched(namespace: Namespace, op: Op) -> set[bytes]:
    """Nodes whose place or content ``op`` may change (looked up before it is applied)."""
    touched = {op.op_id}  # a write's conflict copy takes the op's ID
    args = op.args
    try:
        if isinstance(args.get("node"), bytes):
            touched.add(namespace.resolve(args["node"]))
        if op.kind == "rename":
            target = namespace.resolve(args.get("new_parent", ROOT))
            replaced = namespace.children.get(target, {}).get(str(args.get("new_name")))
            if replaced is not None:
                touched.add(replaced)
    except (TypeError, KeyError, ValueError, AttributeError):
        pass  # an odd op the fold ignores anyway
    return touched


def fold_usage(ops: Iterable[Op]) -> Usage:
    """Fold a volume's operations, following each chunk's references (pure; run it off the loop)."""
    namespace = Namespace()
    refs: Counter[bytes] = Counter()
    since: dict[bytes, int] = {}
    trash: list[TrashItem] = []
    seen: set[bytes] = set()

    def chunks(content: Content) -> list[bytes]:
        return [c for c in content.chunks if c is not None]

    for op in sorted(ops, key=lambda o: o.order):
        if op.op_id in seen:
            continue
        seen.add(op.op_id)
        touched = _touched(namespace, op)
        before = {}
        for node_id in touched:
            if _linked_file(namespace, node_id):
                node = namespace.nodes[node_id]
                before[node_id] = (node.content, node.version, path_of(namespace, node_id), node.mode)
        namespace.apply(op)
        for node_id in touched:
            old = before.get(node_id)
            now_linked = _linked_file(namespace, node_id)
            new = namespace.nodes[node_id].content if now_linked else None
            if old is not None:
                refs.subtract(chunks(old[0]))
            if new is not None:
                refs.update(chunks(new))
            if old is not None and old[0].chunks:
                if not now_linked:
                    trash.append(TrashItem(node_id, old[2], old[0], op.hlc, "deleted", old[3]))
                elif namespace.nodes[node_id].version != old[1]:
                    trash.append(TrashItem(node_id, old[2], old[0], op.hlc, "overwritten", old[3]))
            for chunk in set(chunks(old[0]) if old is not None else ()) | set(chunks(new) if new else ()):
                if refs[chunk] <= 0:
                    del refs[chunk]
                    since[chunk] = op.hlc
                else:
                    since.pop(chunk, None)

    usage = Usage(namespace=namespace)
    for node in namespace.nodes.values():
        if node.kind == FILE and node.parent is not None:
            usage.files += 1
            usage.logical_bytes += node.content.size
            usage.referenced.update(chunks(node.content))
    # The tree is the authority on what is referenced; the stamps only say since when not.
    last = namespace.last[0] if namespace.last is not None else 0
    usage.unreferenced_since = {c: s for c, s in since.items() if c not in usage.referenced}
    for chunk in set(refs) - usage.referenced:
        usage.unreferenced_since.setdefault(chunk, last)
    usage.trash = trash
    return usage


@dataclass(frozen=True)
class HeldChunk:
    """One of the volume's registrations, as the ledger has it."""

    registration: bytes
    blob: bytes
    end_epoch: int
    live: bool
    deletable: bool
    length: int
    certified_hlc: int


@dataclass
class Plan:
    """What one pass does: extensions, deletions, chunks to store again, and what waits in the trash."""

    epoch: int
    extend: list[bytes] = field(default_factory=list)
    delete: list[bytes] = field(default_factory=list)
    missing: list[bytes] = field(default_factory=list)  # needed chunks no live registration of ours holds
    #: chunk -> (encoded bytes held, when it may be released in ms)
    pending: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    live_encoded: int = 0
    live_chunks: int = 0
    restorable: list[TrashItem] = field(default_factory=list)


def plan(usage: Usage, held: Sequence[HeldChunk], epoch: int, now_ms: int, trash_ms: int,
         own_refs: set[bytes], encoded: Callable[[int], int], ignore_trash: bool = False) -> Plan:
    """Decide one pass (pure): renew what the tree, the trash and ``own_refs`` need; release the rest when due."""
    out = Plan(epoch)
    by_blob: dict[bytes, list[HeldChunk]] = {}
    for h in held:
        by_blob.setdefault(h.blob, []).append(h)
    live = {b for b, hs in by_blob.items() if any(h.live for h in hs)}
    in_trash: set[bytes] = set()
    for item in usage.trash:
        if ignore_trash or now_ms - item.removed_ms >= trash_ms:
            continue
        chunks = item.chunks
        if chunks <= live and not (item.kind == "deleted" and _restored(usage, item)):
            out.restorable.append(item)
        in_trash |= chunks
    needed = usage.referenced | own_refs
    for blob, hs in by_blob.items():
        alive = [h for h in hs if h.live]
        if not alive:
            continue
        out.live_chunks += 1
        out.live_encoded += sum(encoded(h.length) for h in alive)
        if blob in needed:
            keeper = max(alive, key=lambda h: (h.end_epoch, h.registration))
            if keeper.end_epoch - epoch <= RENEW_MARGIN:
                out.extend.append(keeper.registration)
            continue
        since_hlc = usage.unreferenced_since.get(blob)
        if since_hlc is None:
            # Never referenced: an upload whose write may be on its way, or one a crash cut off.
            start = hlc_millis(max(h.certified_hlc for h in alive))
            release_at = start + (UPLOAD_GRACE_MS if ignore_trash else max(trash_ms, UPLOAD_GRACE_MS))
        else:
            release_at = hlc_millis(since_hlc) + (0 if ignore_trash else trash_ms)
        deletable = [h for h in alive if h.deletable]
        if now_ms >= release_at and blob not in (in_trash if not ignore_trash else set()):
            out.delete.extend(h.registration for h in deletable)
        else:
            out.pending[blob] = (sum(encoded(h.length) for h in deletable), release_at)
            keeper = max(alive, key=lambda h: (h.end_epoch, h.registration))
            # Kept until its release: a trash chunk must not expire before it may be restored.
            if keeper.end_epoch - epoch <= RENEW_MARGIN:
                out.extend.append(keeper.registration)
    out.missing = sorted(b for b in needed if b not in live)
    return out


def _restored(usage: Usage, item: TrashItem) -> bool:
    """Whether a deleted version is back in the tree (written again after the unlink)."""
    node = usage.namespace.nodes.get(item.node)
    return node is not None and node.parent is not None and node.content == item.content


# ---------------------------------------------------------------------------- the mount's side


def volume_holdings(vlog: Any) -> list[HeldChunk]:
    """Every registration the volume owns, from the followed ledger (on the trio thread: it reads live state)."""
    ledger = vlog.state.ledger
    owner = vlog.volume.public_key
    out = []
    for blob_id, regs in ledger.held.items():
        for rid, h in regs.items():
            if h.registration.writer.owner != owner:
                continue
            entry = vlog.state.registration_entry(rid)
            out.append(HeldChunk(rid, blob_id.raw, h.end_epoch, h.live(ledger.epoch), h.registration.deletable,
                                 h.length, entry.hlc if entry is not None else 0))
    return out


@dataclass
class PassReport:
    """What the last pass did, for ``walrusfs status`` and the commands."""

    at: float = 0.0
    epoch: int = 0
    extended: int = 0
    deleted: int = 0
    restored: int = 0
    missing: list[str] = field(default_factory=list)
    pending_bytes: int = 0
    pending_chunks: int = 0
    next_release_ms: int | None = None
    error: str | None = None


class Keeper:
    """Renews, restores and releases one volume's chunk registrations (a mount's or a command's)."""

    def __init__(self, client: Client, vlog: Any, contents: Any = None, trash_seconds: float | None = None) -> None:
        self.client = client
        self.vlog = vlog
        self.contents = contents
        self.trash_override = trash_seconds if trash_seconds is not None else env_trash_seconds()
        self.report = PassReport()
        self._usage_key: tuple[Any, int] | None = None
        self._usage: Usage | None = None
        self._lock = trio.Lock()
        self.passes = 0
        #: Since start: registrations extended, deleted, chunks stored again.
        self.totals: Counter[str] = Counter()

    @property
    def can_write(self) -> bool:
        """Whether this side may sign lifetime operations (it holds the volume key and a writer)."""
        return self.client.authority is not None and self.vlog.delegation is not None

    def trash_seconds(self, namespace: Namespace | None = None) -> float:
        """The trash time in force: this mount's override, else the volume's setting, else the default."""
        if self.trash_override is not None:
            return self.trash_override
        found = volume_trash_seconds(namespace if namespace is not None else self.vlog.namespace)
        return found if found is not None else DEFAULT_TRASH_SECONDS

    async def usage(self) -> Usage:
        """The fold of the volume's operations, recomputed in a thread when the log brought new ones."""
        ops = await self.vlog.history()
        key = (self.vlog.namespace.last, len(ops))
        if self._usage is None or key != self._usage_key:
            self._usage = await trio.to_thread.run_sync(fold_usage, ops)
            self._usage_key = key
        return self._usage

    def own_refs(self, held: Sequence[HeldChunk] = ()) -> set[bytes]:
        """Chunks this mount's staged (unpublished) versions still reference, and the newest snapshots' blobs the volume holds."""
        from .snapshots import kept_blobs

        # The newest snapshots, which fresh mounts start from (one the volume does not hold
        # is nobody's to keep: it is not reported missing).
        kept = kept_blobs(self.vlog) & {h.blob for h in held}
        if self.contents is None:
            return kept
        return kept | {c for staged in self.contents.staged.values() for c in staged.chunks if c is not None}

    async def survey(self, ignore_trash: bool = False) -> tuple[Usage, Plan]:
        """The fold and the plan for a pass now."""
        usage = await self.usage()
        held = volume_holdings(self.vlog)
        config = self.client.committee.config
        trash_ms = int(self.trash_seconds(usage.namespace) * 1000)
        own = self.own_refs(held)
        decided = await trio.to_thread.run_sync(
            lambda: plan(usage, held, self.vlog.state.ledger.epoch, int(time.time() * 1000), trash_ms,
                         own, config.encoded_blob_length, ignore_trash))
        return usage, decided

    async def run_pass(self, ignore_trash: bool = False) -> PassReport:
        """Renew, re-store and release once; what was done."""
        async with self._lock:
            usage, decided = await self.survey(ignore_trash)
            report = PassReport(at=time.time(), epoch=decided.epoch)
            report.pending_bytes = sum(b for b, _ in decided.pending.values())
            report.pending_chunks = len(decided.pending)
            report.next_release_ms = min((at for _, at in decided.pending.values()), default=None)
            errors: list[str] = []
            if self.can_write:
                report.extended = await self._lifetime("extend", decided.extend, errors)
                report.deleted = await self._lifetime("delete", decided.delete, errors)
                for blob in decided.missing:
                    if await self._restore_chunk(blob, errors):
                        report.restored += 1
                    else:
                        report.missing.append(str(BlobId(blob)))
            else:
                report.missing = [str(BlobId(b)) for b in decided.missing]
            if report.missing:
                errors.append(f"{len(report.missing)} chunks the volume needs are held by no live registration "
                              f"and not cached here, e.g. {report.missing[0]}")
            report.error = "; ".join(errors) or None
            if report.extended or report.deleted or report.restored:
                log.info("volume pass at epoch %d: extended %d, deleted %d, stored again %d registrations",
                         decided.epoch, report.extended, report.deleted, report.restored)
            if report.error:
                log.warning("volume pass: %s", report.error)
            self.report = report
            self.passes += 1
            self.totals.update(extended=report.extended, deleted=report.deleted, stored_again=report.restored)
            return report

    async def _lifetime(self, op: str, targets: list[bytes], errors: list[str]) -> int:
        """Extend or delete ``targets`` in batches of at most MAX_TARGETS; how many were recorded."""
        done = 0
        queue = sorted(set(targets))
        while queue:
            batch, queue = queue[:MAX_TARGETS], queue[MAX_TARGETS:]
            for _ in range(len(batch)):  # each refusal naming a target drops it: bounded by the batch
                try:
                    await self.client.lifetime(op, batch, RENEW_EPOCHS if op == "extend" else 0)
                    done += len(batch)
                    break
                except AccessDenied as exc:
                    errors.append(f"{op}: {exc}")
                    return done
                except StoreError as exc:
                    # A member's log may be ahead of ours: a registration that ended or was
                    # deleted meanwhile (another mount released it) is dropped and the rest sent again.
                    named = [t for t in batch if t.hex() in str(exc)]
                    if not named:
                        errors.append(f"{op} of {len(batch)} registrations: {exc}")
                        break
                    batch = [t for t in batch if t not in named]
                    if not batch:
                        break
        return done

    async def _restore_chunk(self, blob: bytes, errors: list[str]) -> bool:
        """Store a needed chunk again from the verified cache (its registrations all ended); whether it worked."""
        if self.contents is None:
            return False
        # A private volume's cache keeps plaintext under blob and plaintext hash: find the hash
        # a file (or a staged version) names the blob with; sealing again gives the same blob.
        key_hash = self._chunk_hashes().get(blob)
        ref, name = cache_key(blob, key_hash)
        data = self.contents._memory.get(ref)
        if data is None:
            data = await trio.to_thread.run_sync(self.contents.cache.get, name)
        if data is None:
            return False
        try:
            stored, _ = await self.contents._store_chunk(data)
        except StoreError as exc:
            errors.append(f"storing chunk {BlobId(blob)} again: {exc}")
            return False
        return stored == blob

    def _chunk_hashes(self) -> dict[bytes, bytes]:
        """Blob -> plaintext hash of every sealed chunk the tree or this mount's staged files name."""
        out: dict[bytes, bytes] = {}
        contents = [node.content for node in self.vlog.namespace.nodes.values()]
        # A packed chunk is a range of its pack, not the blob: the cache never holds a pack whole.
        for content in contents:
            for index, (blob, key_hash) in enumerate(zip(content.chunks, content.hashes)):
                if blob is not None and key_hash is not None and content.offset_of(index) is None:
                    out[blob] = key_hash
        for staged in (self.contents.staged.values() if self.contents is not None else ()):
            for index, (blob, key_hash) in enumerate(zip(staged.chunks, staged.hashes)):
                if blob is not None and key_hash is not None and staged.offset_of(index) is None:
                    out[blob] = key_hash
        return out

    async def run(self) -> None:
        """Pass after every new storage epoch and at least every few seconds, until cancelled."""
        epoch_seconds = self.client.committee.epoch_ms / 1000
        interval = min(max(epoch_seconds / 3, MIN_PASS_INTERVAL), MAX_PASS_INTERVAL)
        await self.vlog.synced_once.wait()
        # A pass folds the volume's whole history: on a large volume the first one waits a
        # little (a mount's first listing comes first; renewals have epochs of margin).
        await trio.sleep(min(getattr(self.vlog, "op_count", 0) / FIRST_PASS_OPS_PER_SECOND, MAX_FIRST_PASS_DELAY))
        last_epoch = -1
        last_tree: Any = None
        next_pass = last_pass = 0.0
        took = 0.0
        while True:
            epoch = self.vlog.state.ledger.epoch
            tree = self.vlog.namespace.last
            # A changed tree (a delete starts a release clock) is looked at soon, not at once:
            # a burst of changes costs one refold; and never more often than the passes'
            # own cost allows (at most a fifth of the time folding).
            changed = tree != last_tree and trio.current_time() >= last_pass + max(CHANGE_DELAY, PASS_SHARE * took)
            if epoch != last_epoch or changed or trio.current_time() >= next_pass:
                began = trio.current_time()
                try:
                    await self.run_pass()
                except Exception as exc:  # noqa: BLE001 - a mount never exits because a pass failed
                    log.exception("volume pass failed (next one soon)")
                    self.report.error = f"{type(exc).__name__}: {exc}"
                last_epoch, last_tree, last_pass = epoch, tree, trio.current_time()
                took = last_pass - began
                wait = interval
                if self.report.next_release_ms is not None:
                    # Release on time rather than up to a whole interval late.
                    wait = min(wait, max(self.report.next_release_ms / 1000 - time.time() + 0.5, MIN_PASS_INTERVAL))
                next_pass = trio.current_time() + wait
            await trio.sleep(MIN_PASS_INTERVAL)

    def status(self) -> dict[str, Any]:
        """The last pass, for the mount's status."""
        r = self.report
        return {"lifecycle": {"passes": self.passes, "epoch": r.epoch, "extended": self.totals["extended"],
                              "deleted": self.totals["deleted"], "stored_again": self.totals["stored_again"],
                              "missing": r.missing[:10],
                              "pending_release_bytes": r.pending_bytes, "pending_release_chunks": r.pending_chunks,
                              "next_release_ms": r.next_release_ms, "trash_seconds": self.trash_seconds(),
                              "error": r.error}}


def restore_ops(usage: Usage, item: TrashItem, target: str, mtime_ns: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The namespace operations (kind, args) that bring a trash item back at path ``target``; ``ValueError`` if they cannot."""
    namespace = usage.namespace
    parent_path, _, name = target.rstrip("/").rpartition("/")
    parent = namespace.lookup(parent_path or "/")
    if parent is None or parent.kind != "dir":
        raise ValueError(f"{parent_path or '/'} is not a directory of the volume")
    if not name or namespace.children.get(parent.node_id, {}).get(name) is not None:
        raise ValueError(f"{target} exists; restore it under another name with --as")
    node = os.urandom(32)
    stamp = mtime_ns if mtime_ns is not None else time.time_ns()
    content: dict[str, Any] = {"size": item.content.size, "chunk_size": item.content.chunk_size,
                               "chunks": list(item.content.chunks)}
    if item.content.hashes:
        content["hashes"] = list(item.content.hashes)  # a private volume's chunks open with these
    if any(o is not None for o in item.content.offsets):
        content["offsets"] = list(item.content.offsets)  # packed chunks: where each starts in its pack
    return [("create", {"parent": parent.node_id, "name": name, "node": node, "mode": item.mode & 0o7777,
                        "uid": os.getuid(), "gid": os.getgid(), "mtime_ns": stamp}),
            ("write", {"node": node, "content": content, "mtime_ns": stamp, "last_name": name,
                       "last_parent": parent.node_id})]


def find_trash(items: Sequence[TrashItem], path: str) -> TrashItem | None:
    """The most recently removed restorable version at ``path``."""
    wanted = "/" + path.strip("/")
    found = [i for i in items if i.path == wanted]
    return max(found, key=lambda i: i.removed_hlc) if found else None


def summary(usage: Usage, decided: Plan, trash_seconds: float) -> dict[str, Any]:
    """What ``walrusfs volume du`` shows."""
    next_release = min((at for _, at in decided.pending.values()), default=None)
    return {"files": usage.files, "logicalBytes": usage.logical_bytes, "chunks": len(usage.referenced),
            "epoch": decided.epoch, "liveRegistrationChunks": decided.live_chunks,
            "encodedBytes": decided.live_encoded,
            "pendingReleaseBytes": sum(b for b, _ in decided.pending.values()),
            "pendingReleaseChunks": len(decided.pending), "nextReleaseMs": next_release,
            "trashSeconds": trash_seconds, "missingChunks": [str(BlobId(b)) for b in decided.missing]}


def trash_rows(decided: Plan) -> list[dict[str, Any]]:
    """What ``walrusfs volume trash`` lists: restorable versions, newest first."""
    rows = []
    for item in sorted(decided.restorable, key=lambda i: -i.removed_hlc):
        rows.append({"path": item.path, "size": item.content.size, "kind": item.kind, "removedMs": item.removed_ms,
                     "chunks": len(item.chunks)})
    return rows


__all__ = ["Keeper", "Plan", "TrashItem", "Usage", "find_trash", "fold_usage", "parse_duration", "plan",
           "restore_ops", "summary", "trash_rows"]


# ---------------------------------------------------------------------------- commands without a mount


def command_state_dir(volume: Any) -> Any:
    """Where the volume commands keep their own device key and chain ($WALRUSFS_STATE_DIR/commands/VOLUME)."""
    from .serve import default_state_dir

    return default_state_dir(volume).parent.parent / "commands" / volume.volume_id


@dataclass
class VolumeView:
    """A volume's log as a command sees it: followed to the end, with a keeper to act on it."""

    client: Client
    vlog: Any
    keeper: Keeper
    nursery: trio.Nursery

    async def append_published(self, ops: Sequence[tuple[str, dict[str, Any]]], limit: float = 60.0) -> None:
        """Sign ``ops`` as this command's device and return once peers hold them; ``StoreError`` if they do not in time."""
        for kind, args in ops:
            await self.vlog.append(kind, args)
        with trio.move_on_after(limit):
            await self.vlog.wait_published()
            return
        raise StoreError(f"the namespace entries were not accepted by enough peers within {limit:.0f} s: "
                         f"{self.vlog.last_error or 'no answer'}")


@asynccontextmanager
async def volume_view(host: Any, committee: Any, volume: Any, account: Any, state: Any,
                      limit: float = 60.0) -> AsyncIterator[VolumeView]:
    """The volume's log followed to its end (within ``limit`` s) by a command, signing (if it holds the key) as the device of ``state``.

    ``state`` is a ``MountState`` of the command's own directory, so its namespace chain
    continues across runs instead of starting a new author each time.
    """
    from ..core.lifecycle import device_authority
    from .volumelog import LogUnavailable, VolumeLog

    authority = device_authority(account, volume.key, state.device) if volume.key is not None else None
    client = Client(host, committee, reuse_streams=True, authority=authority)
    vlog = VolumeLog(client, volume, state, writer=authority.writer if authority else None)
    await vlog.load()
    problem = "no peer answered"
    with trio.move_on_after(limit):
        while True:
            try:
                if await vlog.sync_any():
                    break
            except LogUnavailable as exc:
                problem = str(exc)
                await trio.sleep(1.0)
    if not vlog.synced_once.is_set():
        raise StoreError(f"could not read the volume's log within {limit:.0f} s: {problem[:300]}")
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(vlog._publisher)  # own entries of earlier runs too
        try:
            yield VolumeView(client, vlog, Keeper(client, vlog), nursery)
        except Exception as exc:  # re-raised below as itself, not inside the nursery's group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
