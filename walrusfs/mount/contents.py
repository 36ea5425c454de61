"""File contents for a mount: staged writes, verified chunk reads, background uploads.

A file's bytes are fixed-size chunks, each a blob. Writing stages the touched chunks in a
local sparse file (fetching a chunk first only when a write covers part of bytes it
already had); ``flush`` makes the staged record durable and queues an upload; uploads
encode each dirty chunk, skip chunks whose blob is already certified (identical chunks are
stored once), store the rest, then sign a namespace ``write`` naming every chunk's blob.
Reads take staged chunks from the staging file and the others from the verified chunk
cache or the peers, reading only the rows a small random read needs and one chunk ahead
on sequential reads. Nothing unverified is ever returned: a failed read raises
``ReadError``.

Small files closed in a burst (an untar, ``cp -r``) are packed: files of at most
``pack_below`` bytes (one chunk) that become ready for upload within ``PACK_LINGER`` of
each other are stored as one blob, each file's (sealed, in a private volume) bytes a range
of it, and each file's ``write`` names the pack and where its bytes start (``offsets``).
One blob, one certificate and one batched namespace entry for up to ``PACK_FILES`` files,
instead of one of each per file. When the pack is small enough to be a quilt on this
committee (``core.quilt``: each file on rows of its own, p - 1 files at most, so only on
committees of many shards) it is laid out as one, else the files follow each other. A
packed file reads back with a range read of the rows (primary slivers) its bytes lie on,
verified like any read; those rows are kept for a while, since a neighbour is often read
next. A lone file is stored as a blob of its own as before.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..client.blob import AccessDenied, Client, InvalidBlobError, ReadError, StoreError
from ..core import quilt
from ..core.config import EncodingConfig
from ..core.metadata import BlobId, BlobMetadata
from ..core.namespace import ROOT, Node
from ..core.redstuff import EncodedBlob, encode_blob
from ..core.sealing import TAG_BYTES, SealError, open_chunk, seal_chunk
from .metrics import MountMetrics
from .staging import ChunkCache, MountState, StagedFile
from .volumelog import PublishRefused, VolumeLog

log = logging.getLogger("walrusfs.contents")

#: Reads at most this large, not continuing the previous read, fetch only their rows.
SMALL_READ = 64 << 10
MEMORY_CHUNKS = 16
UPLOAD_WORKERS = 24
STORE_CONCURRENCY = 3
SMALL_CHUNK = 256 << 10
SMALL_STORE_CONCURRENCY = 16
#: A failed upload is retried after RETRY_DELAY, doubling per failure up to MAX_RETRY_DELAY:
#: peers that are down cost little, and the upload resumes soon after they return.
RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 20.0
#: ``walrusfs status`` names at most this many incomplete files (the count is always whole).
SHOWN_INCOMPLETE = 100
#: Uploads wait until file operations paused this long, or were queued this long ago.
IDLE_BEFORE_UPLOAD = 0.3
MAX_UPLOAD_DELAY = 30.0  # like the kernel's dirty_expire_centisecs
#: Files at most this large (and one chunk at most) are packed when several are ready at once
#: (the mount's ``--pack-below``; 0 packs nothing).
PACK_BELOW = 256 << 10
#: A pack is stored once it holds PACK_FILES files or PACK_BYTES bytes, or PACK_LINGER
#: seconds after its first file (an fsync waits at most that much longer).
PACK_FILES = 256
PACK_BYTES = 1 << 20
PACK_LINGER = 0.1
#: Packs stored at once.
PACK_CONCURRENCY = 4
#: Bytes of packs' rows kept in memory after a packed file's read (its neighbours follow).
ROW_CACHE_BYTES = 16 << 20


@dataclass
class UploadProgress:
    """What one upload has done so far, for ``walrusfs status``."""

    node: bytes
    total: int
    done: int = 0
    error: str | None = None
    #: chunk index -> why its store failed in the last attempt
    failed_chunks: dict[int, str] = field(default_factory=dict)
    #: a chunk's store the peers refused for want of a grant or quota (the file fails with EDQUOT)
    denied: AccessDenied | None = None


@dataclass
class _Packing:
    """A file on its way into a pack: the generation and bytes read for it."""

    node: bytes
    staged: StagedFile
    generation: int
    data: bytes


@dataclass(frozen=True)
class PackLayout:
    """A pack's bytes and where each file's stored bytes start in it."""

    data: bytes
    offsets: tuple[int, ...]
    #: Whether it is laid out as a quilt (``core.quilt``), each file on rows of its own.
    quilt: bool


def lay_out_pack(parts: list[bytes], config: EncodingConfig) -> PackLayout:
    """The bytes of a pack of ``parts`` (each file's stored bytes, in order), as a quilt when one fits (pure).

    Identical parts (equal files sealed convergently, or equal plaintext) share one range.
    """
    unique: dict[bytes, int] = {}
    for part in parts:
        unique.setdefault(part, len(unique))
    distinct = list(unique)
    if 1 < len(distinct) <= quilt.max_patches(config):
        try:
            # Identifiers say nothing about the files (names stay in the sealed namespace).
            built = quilt.build_quilt([quilt.Patch(str(k), part) for k, part in enumerate(distinct)], config)
            starts = [offset for offset, _ in built.data_ranges]
            return PackLayout(built.data, tuple(starts[unique[part]] for part in parts), True)
        except quilt.QuiltError:
            pass  # larger than one quilt's symbols allow: plain layout
    starts, position = [], 0
    for part in distinct:
        starts.append(position)
        position += len(part)
    return PackLayout(b"".join(distinct), tuple(starts[unique[part]] for part in parts), False)


class QuotaRefused(Exception):
    """Peers refuse a file's upload for want of a grant or quota; the mount fails fsync and close with EDQUOT."""


def cache_key(blob: bytes, key_hash: bytes | None) -> tuple[bytes, str]:
    """Memory and disk cache keys of a chunk's plaintext: the blob, and for a sealed chunk its hash too."""
    if key_hash is None:
        return blob, str(BlobId(blob))
    return blob + key_hash, f"{BlobId(blob)}.{key_hash.hex()[:32]}"


class Contents:
    """Staged and stored file contents of one mount."""

    def __init__(self, client: Client, vlog: VolumeLog, state: MountState, cache: ChunkCache, chunk_size: int,
                 pack_below: int = PACK_BELOW, metrics: MountMetrics | None = None) -> None:
        self.client = client
        #: Counted whether or not they are served (``--metrics``).
        self.metrics = metrics or MountMetrics()
        self.pack_below = pack_below
        #: Files handed to the packer (until their pack's writes are signed or it failed),
        #: the queue of the pack being gathered, and files closed again meanwhile.
        self._packing: dict[bytes, _Packing] = {}
        self._pack_queue: list[_Packing] = []
        self._pack_again: set[bytes] = set()
        self._pack_added = trio.Event()
        self._pack_limit = trio.Semaphore(PACK_CONCURRENCY)  # released by the pack's own task
        self.packs_stored = 0
        self.files_packed = 0
        #: (blob, row) -> bytes of a pack's row a packed file's read fetched, least recent first.
        self._rows: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._row_bytes = 0
        #: Rows of packs fetched for packed files' reads (each one primary sliver).
        self.pack_rows_fetched = 0
        self.vlog = vlog
        self.state = state
        self.cache = cache
        self.chunk_size = chunk_size
        #: How chunks are encoded; the tests swap in an inconsistent writer here.
        self.encode: Callable[[bytes, EncodingConfig], EncodedBlob] = encode_blob
        self.staged: dict[bytes, StagedFile] = {}
        self.opens: Counter[bytes] = Counter()
        self.writers: Counter[bytes] = Counter()
        # One counter for every staging of every file: a node staged again after its last
        # upload must never look already published.
        self._generations = itertools.count(1)
        self.saved_generation: dict[bytes, int] = {}
        self.published_generation: dict[bytes, int] = {}
        self.progress: dict[bytes, UploadProgress] = {}
        self._attempts: Counter[bytes] = Counter()
        self._retry_at: dict[bytes, float] = {}
        self._last_error: dict[bytes, str] = {}
        #: Files whose last upload the peers refused for a grant or quota (kept staged, retried
        #: with backoff: a new grant lets them through), and how many refusals each had.
        self.denied: dict[bytes, str] = {}
        self._denials: Counter[bytes] = Counter()
        self._memory: OrderedDict[bytes, bytes] = OrderedDict()
        #: Chunk blobs a read here found invalid (the log certifies it soon after), with why.
        self._invalid: dict[bytes, str] = {}
        self._metadata: OrderedDict[bytes, BlobMetadata] = OrderedDict()
        self._fetching: dict[bytes, trio.Event] = {}
        # Per file: one lock orders staging changes, the other keeps one upload at a time.
        self._locks: defaultdict[bytes, trio.Lock] = defaultdict(trio.Lock)
        self._upload_locks: defaultdict[bytes, trio.Lock] = defaultdict(trio.Lock)
        # Orders a staged record's saves against its drop, so a save that finishes late
        # never brings back the record of a published or removed file.
        self._save_locks: defaultdict[bytes, trio.Lock] = defaultdict(trio.Lock)
        self._storing: dict[bytes, trio.Event] = {}
        self._certified_here: set[bytes] = set()
        self._fds: dict[bytes, int] = {}
        self._staging_length: dict[bytes, int] = {}
        self._queue: list[bytes] = []
        self._queued: set[bytes] = set()
        self._queued_at: dict[bytes, float] = {}
        self._urgent: set[bytes] = set()
        self._busy_until = 0.0
        self._work = trio.Condition()
        self._published = trio.Condition()
        self._store_limit = trio.CapacityLimiter(STORE_CONCURRENCY)
        self._small_store_limit = trio.CapacityLimiter(SMALL_STORE_CONCURRENCY)
        self._nursery: trio.Nursery | None = None
        self.uploaded_chunks = 0
        self.deduplicated_chunks = 0
        #: Files a stopped mount left in the middle of being written (node -> note), until
        #: written again, removed, or the user removes their user.walrus.incomplete.
        self.incomplete: dict[bytes, dict[str, Any]] = {}
        #: Staging files whose saved record says a writer has them open.
        self._open_saved: set[str] = set()
        #: A staged file's generation when it was staged or loaded: a later one means it was changed here.
        self._first_generation: dict[bytes, int] = {}
        self.metrics.watch(self)

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Pick up files staged before a crash or unmount; they upload once running.

        A record saved while a writer had the file open means the mount stopped in the middle
        of writing it: the bytes that reached the staging file are kept (not only those of
        the last close) and the file is marked incomplete instead of looking whole.
        """
        staged_files = await trio.to_thread.run_sync(self.state.staged_files)
        files, size = await trio.to_thread.run_sync(self.state.remove_orphans, staged_files)
        if files:
            log.warning("removed %d staging files (%d bytes) of writes a crash cut off before close", files, size)
        self.incomplete = await trio.to_thread.run_sync(self.state.incomplete_files)
        for staged in staged_files:
            self.staged[staged.node] = staged
            path = self.state.staging_path(staged)
            self._staging_length[staged.file] = path.stat().st_size if path.exists() else 0
            staged.generation = next(self._generations)
            self._first_generation[staged.node] = staged.generation
            if staged.open:
                await self._recover_open(staged)
            self.saved_generation[staged.node] = staged.generation
            self._enqueue(staged.node)

    async def _recover_open(self, staged: StagedFile) -> None:
        """Keep what a writer cut off by the stop had written, and mark the file incomplete."""
        # Writes past the last saved size only ever went to chunks the record already names
        # dirty (a write saves the record before it touches a new chunk).
        kept = max(staged.size, self._staging_length[staged.file])
        note = {"name": staged.last_name, "parent": staged.last_parent, "size": kept, "noticed": time.time()}
        log.warning("%s (%s) was open for writing when the mount stopped: keeping its %d bytes, marked incomplete",
                    staged.last_name, staged.node.hex()[:16], kept)
        staged.size, staged.open = kept, False
        await trio.to_thread.run_sync(self.state.save_staged, staged)
        await trio.to_thread.run_sync(self.state.mark_incomplete, staged.node, note)
        self.incomplete[staged.node] = note

    async def run(self) -> None:
        """Upload queued files until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(UPLOAD_WORKERS):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._packer)

    def close(self) -> None:
        """Close staging file descriptors."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # ------------------------------------------------------------------ reading

    def size_of(self, node: Node) -> int:
        """A file's current size, staged or stored."""
        staged = self.staged.get(node.node_id)
        return staged.size if staged is not None else node.content.size

    def mtime_of(self, node: Node) -> int:
        """A file's current modification time in nanoseconds."""
        staged = self.staged.get(node.node_id)
        return staged.mtime_ns if staged is not None else node.mtime_ns

    def invalid_reason(self, blob: bytes) -> str | None:
        """Why chunk blob ``blob`` can never be read (certified or found invalid), or None."""
        entry = self.vlog.state.invalid_entry(BlobId(blob))
        if entry is not None:
            return (f"blob {BlobId(blob)} is invalid: its writer encoded it inconsistently "
                    f"(log entry {entry.id.hex()})")
        return self._invalid.get(blob)

    def invalid_chunks(self, node: Node) -> dict[int, str]:
        """Chunk index -> reason, for the chunks of a file that can never be read."""
        out = {}
        for index, blob in enumerate(node.content.chunks):
            reason = self.invalid_reason(blob) if blob else None
            if reason is not None:
                out[index] = reason
        return out

    async def read(self, node: Node, offset: int, size: int, sequential: bool) -> bytes:
        """Bytes [offset, offset + size) of a file, verified or staged; short at end of file."""
        started = time.perf_counter()
        try:
            data = await self._read(node, offset, size, sequential)
        except Exception:
            self.metrics.read_errors.inc()
            raise
        self.metrics.read_seconds.observe(time.perf_counter() - started)
        self.metrics.read_bytes.inc(len(data))
        return data

    async def _read(self, node: Node, offset: int, size: int, sequential: bool) -> bytes:
        staged = self.staged.get(node.node_id)
        if staged is not None:
            length, chunk_size, chunks, dirty = staged.size, staged.chunk_size, staged.chunks, staged.dirty
            hashes, offsets = staged.hashes, staged.offsets
        else:
            content = node.content
            length, chunk_size, chunks, dirty = content.size, content.chunk_size, list(content.chunks), set()
            hashes, offsets = list(content.hashes), list(content.offsets)
        end = min(offset + size, length)
        if offset >= end:
            return b""
        parts = []
        last = (end - 1) // chunk_size
        for index in range(offset // chunk_size, last + 1):
            start = index * chunk_size
            low, high = max(offset, start) - start, min(end, start + chunk_size) - start
            blob = chunks[index] if index < len(chunks) else None
            reason = self.invalid_reason(blob) if blob is not None and index not in dirty else None
            if reason is not None:
                # Even a cached copy is withheld: every reader gets the same outcome.
                raise InvalidBlobError(reason)
            packed = offsets[index] if index < len(offsets) else None
            if index in dirty:
                data = await trio.to_thread.run_sync(self._pread, staged, high - low, start + low)
            elif blob is None:
                data = b""
            elif packed is not None:
                chunk = await self.packed(blob, packed, min(chunk_size, length - start),
                                          hashes[index] if index < len(hashes) else None)
                data = chunk[low:high]
            elif (high - low) <= SMALL_READ and not sequential and index >= len(hashes) and not self._cached(blob):
                # Only plaintext chunks: a sealed one opens whole (its tag covers all of it).
                data = await self._read_range(blob, low, high - low)
            else:
                chunk = await self.chunk(blob, hashes[index] if index < len(hashes) else None)
                data = chunk[low:high]
            parts.append(data.ljust(high - low, b"\0"))
        if sequential and self._nursery is not None:
            following = last + 1
            if (following < len(chunks) and following not in dirty and chunks[following] is not None
                    and (following >= len(offsets) or offsets[following] is None)):
                self._nursery.start_soon(self._read_ahead, chunks[following],
                                         hashes[following] if following < len(hashes) else None)
        return b"".join(parts)

    def _cached(self, blob: bytes) -> bool:
        return blob in self._memory or (self.cache.directory / str(BlobId(blob))).exists()

    async def _read_ahead(self, blob: bytes, key_hash: bytes | None) -> None:
        try:
            await self.chunk(blob, key_hash)
        except ReadError as exc:
            log.info("read-ahead of %s failed: %s", BlobId(blob), exc)

    async def _metadata_of(self, blob: bytes) -> BlobMetadata:
        metadata = self._metadata.get(blob)
        if metadata is None:
            metadata = await self.client.get_metadata(BlobId(blob))
            self._metadata[blob] = metadata
            while len(self._metadata) > 1024:
                self._metadata.popitem(last=False)
        return metadata

    async def _read_range(self, blob: bytes, offset: int, size: int) -> bytes:
        self.metrics.cache_misses.inc()
        try:
            metadata = await self._metadata_of(blob)
            return await self._fetch(BlobId(blob), offset, size, metadata=metadata)
        except InvalidBlobError as exc:
            self._invalid[blob] = str(exc)
            raise

    async def _fetch(self, blob_id: BlobId, *args: Any, metadata: BlobMetadata) -> bytes:
        """``client.read``, timed and counted in the metrics."""
        started = time.perf_counter()
        data = await self.client.read(blob_id, *args, metadata=metadata)
        self.metrics.fetch_seconds.observe(time.perf_counter() - started)
        self.metrics.fetched_bytes.inc(len(data))
        return data

    async def chunk(self, blob: bytes, key_hash: bytes | None = None) -> bytes:
        """A whole chunk's plaintext, verified (and opened, if sealed), from memory, the disk cache or the peers.

        ``key_hash`` is a sealed chunk's plaintext hash. Cached plaintext is keyed by blob
        and hash together, so one blob named with two hashes is never confused.
        """
        ref, name = cache_key(blob, key_hash)
        while True:
            data = self._memory.get(ref)
            if data is not None:
                self._memory.move_to_end(ref)
                self.metrics.cache_hits.labels("memory").inc()
                return data
            data = await trio.to_thread.run_sync(self.cache.get, name)
            if data is not None:
                self._remember(ref, data)
                self.metrics.cache_hits.labels("disk").inc()
                return data
            waiting = self._fetching.get(ref)
            if waiting is None:
                break
            await waiting.wait()
        self.metrics.cache_misses.inc()
        done = self._fetching[ref] = trio.Event()
        try:
            try:
                data = await self._fetch(BlobId(blob), metadata=await self._metadata_of(blob))
            except InvalidBlobError as exc:
                self._invalid[blob] = str(exc)
                raise
            if key_hash is not None:
                data = await trio.to_thread.run_sync(self._open, blob, key_hash, data)
            await trio.to_thread.run_sync(self.cache.put, name, data)
            self._remember(ref, data)
            return data
        finally:
            del self._fetching[ref]
            done.set()

    async def packed(self, blob: bytes, offset: int, length: int, key_hash: bytes | None = None) -> bytes:
        """A packed chunk's plaintext: ``length`` bytes (sealed: and the tag) at ``offset`` of pack ``blob``, verified.

        Fetches only the rows (primary slivers) those bytes lie on, unless they were
        fetched already for a neighbour. A range outside the blob is a ``ReadError`` of
        this file alone (a writer named it; nothing else is touched).
        """
        name = f"{BlobId(blob)}.p{offset}-{length}" + (f".{key_hash.hex()[:32]}" if key_hash is not None else "")
        ref = name.encode()
        data = self._memory.get(ref)
        if data is not None:
            self._memory.move_to_end(ref)
            self.metrics.cache_hits.labels("memory").inc()
            return data
        data = await trio.to_thread.run_sync(self.cache.get, name)
        if data is not None:
            self.metrics.cache_hits.labels("disk").inc()
        else:
            self.metrics.cache_misses.inc()
            stored = await self._pack_range(blob, offset, length + (TAG_BYTES if key_hash is not None else 0))
            data = stored if key_hash is None else await trio.to_thread.run_sync(self._open, blob, key_hash, stored)
            await trio.to_thread.run_sync(self.cache.put, name, data)
        self._remember(ref, data)
        return data

    async def _pack_range(self, blob: bytes, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of a blob, from whole rows (kept for the neighbours' reads)."""
        try:
            metadata = await self._metadata_of(blob)
        except InvalidBlobError as exc:
            self._invalid[blob] = str(exc)
            raise
        length = metadata.unencoded_length
        if offset + size > length:
            raise ReadError(f"this file's bytes {offset}..{offset + size} lie outside blob {BlobId(blob)} of "
                            f"{length} bytes: the version that named them is broken")
        row_length = self.client.config.primary_sliver_size(length)
        first, last = offset // row_length, (offset + size - 1) // row_length
        rows: dict[int, bytes] = {}
        while len(rows) <= last - first:
            missing = [r for r in range(first, last + 1) if r not in rows and (blob, r) not in self._rows]
            for r in range(first, last + 1):
                if (blob, r) in self._rows:
                    self._rows.move_to_end((blob, r))
                    rows[r] = self._rows[(blob, r)]
            if not missing:
                break
            key = blob + missing[0].to_bytes(4, "big")
            waiting = self._fetching.get(key)
            if waiting is not None:  # a neighbour's read is fetching these rows
                await waiting.wait()
                continue
            done = self._fetching[key] = trio.Event()
            try:
                start, end = missing[0] * row_length, min((missing[-1] + 1) * row_length, length)
                data = await self._fetch(BlobId(blob), start, end - start, metadata=metadata)
                self.pack_rows_fetched += missing[-1] - missing[0] + 1
            except InvalidBlobError as exc:
                self._invalid[blob] = str(exc)
                raise
            finally:
                del self._fetching[key]
                done.set()
            for r in range(missing[0], missing[-1] + 1):
                rows[r] = data[(r - missing[0]) * row_length:(r - missing[0] + 1) * row_length]
                self._keep_row(blob, r, rows[r])
        joined = b"".join(rows[r] for r in range(first, last + 1))
        return joined[offset - first * row_length:offset - first * row_length + size]

    def _keep_row(self, blob: bytes, row: int, data: bytes) -> None:
        old = self._rows.pop((blob, row), None)
        self._row_bytes += len(data) - (len(old) if old is not None else 0)
        self._rows[(blob, row)] = data
        while self._row_bytes > ROW_CACHE_BYTES and self._rows:
            _, dropped = self._rows.popitem(last=False)
            self._row_bytes -= len(dropped)

    def _open(self, blob: bytes, key_hash: bytes, ciphertext: bytes) -> bytes:
        volume = self.vlog.volume
        if volume.read_key is None:
            raise ReadError(f"chunk {BlobId(blob)} is sealed and this mount holds no read key")
        try:
            return open_chunk(volume.read_key, volume.public_key, key_hash, ciphertext)
        except SealError as exc:
            # The blob itself verified: whoever wrote this version sealed it wrongly.
            raise ReadError(f"chunk {BlobId(blob)} does not open: {exc}") from None

    def _remember(self, blob: bytes, data: bytes) -> None:
        self._memory[blob] = data
        self._memory.move_to_end(blob)
        while len(self._memory) > MEMORY_CHUNKS:
            self._memory.popitem(last=False)

    # ------------------------------------------------------------------ staging

    def _fd(self, staged: StagedFile) -> int:
        fd = self._fds.get(staged.file)
        if fd is None:
            fd = self._fds[staged.file] = os.open(self.state.staging_path(staged), os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    def _pread(self, staged: StagedFile, size: int, offset: int) -> bytes:
        return os.pread(self._fd(staged), size, offset)

    def _pwrite(self, staged: StagedFile, data: bytes, offset: int) -> None:
        os.pwrite(self._fd(staged), data, offset)
        self._staging_length[staged.file] = max(self._staging_length.get(staged.file, 0), offset + len(data))

    def _truncate(self, staged: StagedFile, size: int) -> None:
        os.ftruncate(self._fd(staged), size)
        self._staging_length[staged.file] = size

    async def _forget(self, staged: StagedFile) -> None:
        """Drop a staging (published or removed): its record, file and descriptor."""
        if self.staged.get(staged.node) is staged:
            del self.staged[staged.node]
        fd = self._fds.pop(staged.file, None)
        if fd is not None:
            os.close(fd)
        self._staging_length.pop(staged.file, None)
        self._open_saved.discard(staged.file)
        for retries in (self._attempts, self._retry_at, self._last_error):
            retries.pop(staged.node, None)
        async with self._save_locks[staged.node]:
            await trio.to_thread.run_sync(self.state.drop_staged, staged)

    async def _save(self, staged: StagedFile, sync_data: bool = True) -> bool:
        """Save a staged record unless it was dropped meanwhile; whether it was saved."""
        async with self._save_locks[staged.node]:
            if self.staged.get(staged.node) is not staged:
                return False
            await trio.to_thread.run_sync(self.state.save_staged, staged, sync_data)
            return True

    def stage(self, node: Node) -> StagedFile:
        """The staged state of a file about to change (created from its stored content if needed)."""
        staged = self.staged.get(node.node_id)
        if staged is None:
            content = node.content
            staged = StagedFile(
                node.node_id, content.size, content.chunk_size if content.chunks else self.chunk_size,
                list(content.chunks), set(), node.version, node.mtime_ns, node.parent, node.name or "",
                hashes=list(content.hashes), offsets=list(content.offsets),
            )
            staged.generation = next(self._generations)
            self._first_generation[node.node_id] = staged.generation
            self.staged[node.node_id] = staged
            self._staging_length[staged.file] = 0
            self.saved_generation[node.node_id] = -1
        return staged

    async def _materialize(self, staged: StagedFile, index: int) -> None:
        """Copy a stored chunk into the staging file so a partial write can change it."""
        blob = staged.chunks[index] if index < len(staged.chunks) else None
        if blob is not None and index not in staged.dirty:
            start = index * staged.chunk_size
            packed = staged.offset_of(index)
            if packed is not None:
                data = await self.packed(blob, packed, min(staged.chunk_size, staged.size - start),
                                         staged.hash_of(index))
            else:
                data = await self.chunk(blob, staged.hash_of(index))
            data = data[: max(0, min(staged.size - start, staged.chunk_size))]
            await trio.to_thread.run_sync(self._pwrite, staged, data, start)
        staged.dirty.add(index)

    async def _grow(self, staged: StagedFile, new_size: int) -> None:
        """Prepare for the file to grow: its old last chunk changes length, old garbage goes."""
        if new_size <= staged.size:
            return
        if staged.size % staged.chunk_size:
            await self._materialize(staged, staged.size // staged.chunk_size)
        if self._staging_length.get(staged.file, 0) > staged.size:
            await trio.to_thread.run_sync(self._truncate, staged, staged.size)

    async def write(self, node: Node, offset: int, data: bytes) -> int:
        """Stage a write; return the bytes written."""
        # The kernel sends writes to one file concurrently; growing the file and filling a
        # chunk must not interleave with another write's.
        async with self._locks[node.node_id]:
            return await self._write(node, offset, data)

    async def _write(self, node: Node, offset: int, data: bytes) -> int:
        staged = self.stage(node)
        end = offset + len(data)
        cs = staged.chunk_size
        await self._grow(staged, end)
        dirty_before = len(staged.dirty)
        for index in range(offset // cs, (end - 1) // cs + 1 if data else offset // cs):
            if index in staged.dirty:
                continue
            start = index * cs
            old_end = min(start + cs, staged.size)
            covered = offset <= start and end >= old_end
            if old_end > start and not covered:
                await self._materialize(staged, index)
            else:
                staged.dirty.add(index)
        if self.writers[node.node_id] and (len(staged.dirty) != dirty_before or staged.file not in self._open_saved):
            # Before the bytes land: should the mount stop now, the record names every chunk
            # the staging file may hold new bytes for (see ``_recover_open``).
            await self._save_open(staged)
        await trio.to_thread.run_sync(self._pwrite, staged, data, offset)
        staged.size = max(staged.size, end)
        # No stamp of our own: with the writeback cache the kernel keeps a regular file's mtime
        # (at its coarse clock's granularity, so a write in the same tick as the last change
        # leaves it as it was) and sends every change in a setattr before the close. A stamp here
        # would publish a time the writer never saw (a few ms later, after a remount).
        staged.generation = next(self._generations)
        return len(data)

    async def truncate(self, node: Node, size: int, stamp: bool = True) -> None:
        """Change a file's length; new bytes read as zeros (``stamp``: the mtime becomes now)."""
        async with self._locks[node.node_id]:
            await self._truncate_locked(node, size, stamp)

    async def _truncate_locked(self, node: Node, size: int, stamp: bool = True) -> None:
        staged = self.stage(node)
        cs = staged.chunk_size
        if size < staged.size:
            if size % cs:
                await self._materialize(staged, size // cs)
            keep = -(-size // cs)
            staged.chunks = staged.chunks[:keep]
            staged.hashes = staged.hashes[:keep]
            staged.offsets = staged.offsets[:keep]
            staged.dirty = {i for i in staged.dirty if i < keep}
            await trio.to_thread.run_sync(self._truncate, staged, size)
        else:
            await self._grow(staged, size)
        staged.size = size
        if stamp:
            staged.mtime_ns = time.time_ns()
        staged.generation = next(self._generations)
        if self.writers[node.node_id]:
            await self._save_open(staged)  # a record with the old, longer size would outlive a stop

    async def commit(self, node: bytes, upload_now: bool = False) -> None:
        """Make a file's staged bytes durable (close); queue the upload once no writer has it open."""
        staged = self.staged.get(node)
        if staged is None:
            return
        generation = staged.generation
        # A close (flush) of one descriptor leaves the file open for writing: a duplicate of it
        # (a forked child's, a shell's) may still write; only the release says nobody does.
        writing = bool(self.writers[node])
        changed = self.saved_generation.get(node) != generation
        if changed or (staged.file in self._open_saved) != writing:
            staged.open = writing
            # The data needs no second fsync when only the open flag changes.
            if not await self._save(staged, changed):
                return
            self.saved_generation[node] = generation
            if writing:
                self._open_saved.add(staged.file)
            else:
                self._open_saved.discard(staged.file)
        if node in self.incomplete and not writing and generation != self._first_generation.get(node):
            await self.clear_incomplete(node)  # written again after the stop, and closed
        # Uploading while a writer still has the file open would publish versions nobody
        # asked for (every close of a dup'ed descriptor flushes); fsync asks explicitly.
        if (upload_now or not self.writers[node]) and self.published_generation.get(node, -1) < generation:
            self._enqueue(node, urgent=upload_now)

    async def opened_for_writing(self, node: bytes) -> None:
        """A writer opened the file: record it, so a stop before close leaves the file marked incomplete."""
        staged = self.staged.get(node)
        if staged is not None and staged.file not in self._open_saved:
            await self._save_open(staged)

    async def _save_open(self, staged: StagedFile) -> None:
        """Save the record as open for writing (no data fsync: this guards against the process stopping)."""
        staged.open = True
        if await self._save(staged, False):
            self._open_saved.add(staged.file)

    async def clear_incomplete(self, node: bytes) -> None:
        """Drop a file's incomplete mark."""
        if self.incomplete.pop(node, None) is not None:
            await trio.to_thread.run_sync(self.state.clear_incomplete, node)

    async def discard(self, node: bytes) -> None:
        """Forget a removed file's staged bytes (once nobody has it open)."""
        staged = self.staged.get(node)
        if not self.opens[node]:
            await self.clear_incomplete(node)
        if self.opens[node] or staged is None:
            return
        self.saved_generation.pop(node, None)
        self._queued.discard(node)
        await self._forget(staged)
        async with self._published:
            self._published.notify_all()

    async def sync(self, node: bytes, publish: bool = True) -> None:
        """fsync: return once the file's chunks are certified and its namespace entry is in the log.

        Raises ``QuotaRefused`` if the peers refuse the upload started for it (no grant, or
        over quota): waiting would never end, and the file stays staged. Without
        ``publish``, return once its namespace write is signed (the caller waits for the log).
        """
        refusals = self._denials[node]
        await self.commit(node, upload_now=True)
        staged = self.staged.get(node)
        if staged is not None:
            generation = staged.generation
            async with self._published:
                while node in self.staged and self.published_generation.get(node, -1) < generation:
                    if self._denials[node] != refusals:
                        raise QuotaRefused(self.denied.get(node) or "refused by the peers")
                    await self._published.wait()
        if not publish:
            return
        try:
            await self.vlog.wait_published(fail_refused=True)
        except PublishRefused as exc:
            raise QuotaRefused(str(exc)) from None

    async def sync_all(self) -> None:
        """Wait until every staged file is uploaded and every namespace entry published (``QuotaRefused`` after all others)."""
        refused: QuotaRefused | None = None
        for node in list(self.staged):
            try:
                # Published together below: one batch, not one per file.
                await self.sync(node, publish=False)
            except QuotaRefused as exc:
                refused = refused or exc
        try:
            await self.vlog.wait_published(fail_refused=True)
        except PublishRefused as exc:
            refused = refused or QuotaRefused(str(exc))
        if refused is not None:
            raise refused

    def quota_problem(self, node: bytes) -> str | None:
        """Why the peers will refuse (or last refused) this file's staged bytes for a grant or quota, or None.

        Checked at close against the grants and usage in the log this mount follows (what
        every peer checks), so `cp` past the quota fails at once instead of after the upload.
        Chunks that turn out to be holes or already held count here, so near the limit it
        may refuse a little early; the file stays staged either way.
        """
        staged = self.staged.get(node)
        if staged is None or self.published_generation.get(node, -1) >= staged.generation:
            return None
        authority = self.client.authority
        cs, config = staged.chunk_size, self.client.config
        extra = sum(config.encoded_blob_length(min(cs, staged.size - i * cs)) for i in staged.dirty
                    if i * cs < staged.size)
        if authority is not None and extra:
            refused = self.vlog.state.ledger.authorize(authority.writer, extra)
            if refused is not None:
                return f"{refused[0]}: {refused[1]}"
        return self.denied.get(node)

    # ------------------------------------------------------------------ uploading

    def _enqueue(self, node: bytes, urgent: bool = False) -> None:
        if urgent:
            self._urgent.add(node)
        if node not in self._queued:
            self._queued.add(node)
            self._queued_at.setdefault(node, trio.current_time())
            self._queue.append(node)
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._work:
                self._work.notify_all()
        if self._nursery is not None:
            self._nursery.start_soon(notify)

    def touch(self) -> None:
        """A file operation happened: uploads hold back while a burst of them is running."""
        self._busy_until = trio.current_time() + IDLE_BEFORE_UPLOAD

    async def _quiet(self, node: bytes) -> None:
        """Write-back delay: let a burst (an untar, a build) finish before uploads take the CPU."""
        deadline = self._queued_at.get(node, trio.current_time()) + MAX_UPLOAD_DELAY
        while node not in self._urgent and trio.current_time() < min(self._busy_until, deadline):
            await trio.sleep(min(self._busy_until, deadline) - trio.current_time())

    async def _worker(self) -> None:
        while True:
            async with self._work:
                while not self._queue:
                    await self._work.wait()
                node = next((n for n in self._queue if n in self._urgent), self._queue[0])
            await self._quiet(node)
            async with self._work:
                if node not in self._queue:
                    continue  # another worker took it
                self._queue.remove(node)
                self._queued_at.pop(node, None)
                self._urgent.discard(node)
                # A close during the upload queues the file again; the lock below makes
                # that second upload wait for this one instead of racing it.
                self._queued.discard(node)
            try:
                async with self._upload_locks[node]:
                    done = await self._upload(node)
            except (StoreError, ReadError, OSError) as exc:
                self._failed(node, exc)
            except Exception as exc:  # noqa: BLE001 - a mount never exits because an upload failed
                log.exception("upload of %s failed unexpectedly (will retry)", node.hex()[:16])
                self._failed(node, exc)
            else:
                if done:  # else the packer finishes it
                    self._succeeded(node)

    def _succeeded(self, node: bytes) -> None:
        self._attempts.pop(node, None)
        self._retry_at.pop(node, None)
        self._last_error.pop(node, None)
        self.denied.pop(node, None)

    def _failed(self, node: bytes, exc: Exception) -> None:
        """Record why an upload failed and queue it again after a backoff (never give up: the data is staged)."""
        self.metrics.upload_failures.inc()
        self._attempts[node] += 1
        delay = min(MAX_RETRY_DELAY, RETRY_DELAY * 2 ** (self._attempts[node] - 1))
        progress = self.progress.get(node)
        if progress is not None:
            progress.error = str(exc)
        self._last_error[node] = str(exc)
        if isinstance(exc, AccessDenied):
            self.denied[node] = str(exc)
            self._denials[node] += 1
            self._wake_published()  # a waiting fsync fails now (EDQUOT) rather than forever
        log.warning("upload of %s failed (attempt %d, retry in %.0f s): %s",
                    node.hex()[:16], self._attempts[node], delay, exc)
        self._retry_at[node] = trio.current_time() + delay
        if self._nursery is not None:
            self._nursery.start_soon(self._retry_later, node, delay)

    def _wake_published(self) -> None:
        async def notify() -> None:
            async with self._published:
                self._published.notify_all()
        if self._nursery is not None:
            self._nursery.start_soon(notify)

    async def _retry_later(self, node: bytes, delay: float) -> None:
        await trio.sleep(delay)
        if node in self.staged:
            self._enqueue(node)

    def _packable(self, staged: StagedFile) -> bool:
        """Whether a file's upload may join a pack: small, one chunk, and that chunk changed."""
        return 0 < staged.size <= min(self.pack_below, staged.chunk_size) and 0 in staged.dirty

    async def _upload(self, node: bytes) -> bool:
        """Upload a file's staged version and sign its write; False if it went to the packer instead."""
        staged = self.staged.get(node)
        if staged is None:
            return True
        if node in self._packing:
            # An earlier version is in a pack on its way: this one follows once it is published.
            self._pack_again.add(node)
            return False
        if not self.vlog.synced_once.is_set():
            # Without the log this mount cannot tell a file another device created from
            # one that was removed: wait rather than discard staged bytes.
            raise StoreError(f"waiting for the log: {self.vlog.sync_error or 'no peer has served it yet'}")
        current = self.vlog.namespace.nodes.get(self.vlog.namespace.resolve(node))
        if current is None or (current.parent is None and not self.opens[node]):
            await self.discard(node)  # removed before it was uploaded
            return True
        if self._packable(staged) and await self._to_pack(staged):
            return False
        generation = staged.generation
        size, cs = staged.size, staged.chunk_size
        log.debug("upload %s gen %d size %d dirty %s", node.hex()[:8], generation, size, sorted(staged.dirty))
        count = -(-size // cs)
        dirty = sorted(i for i in staged.dirty if i < count)
        progress = self.progress[node] = UploadProgress(node, sum(min(cs, size - i * cs) for i in dirty))
        chunks: list[bytes | None] = [staged.chunks[i] if i < len(staged.chunks) else None for i in range(count)]
        hashes: list[bytes | None] = [staged.hash_of(i) for i in range(count)]
        offsets: list[int | None] = [staged.offset_of(i) for i in range(count)]

        async def upload_chunk(index: int) -> None:
            # Errors are collected, not raised: a nursery would wrap them in an exception
            # group that no caller expects, and one failed chunk must not cancel the others.
            length = min(cs, size - index * cs)
            try:
                async with self._locks[node]:  # not torn by a concurrent write
                    data = await trio.to_thread.run_sync(self._pread, staged, length, index * cs)
                data = data.ljust(length, b"\0")
                offsets[index] = None  # stored whole from here on, if at all
                if data.count(0) == length:
                    chunks[index] = hashes[index] = None  # all zeros: a hole, stored as nothing
                else:
                    # Small chunks are latency-bound, large ones CPU- and memory-bound.
                    limit = self._small_store_limit if length <= SMALL_CHUNK else self._store_limit
                    async with limit:
                        chunks[index], hashes[index] = await self._store_chunk(data)
            except AccessDenied as exc:
                progress.failed_chunks[index] = str(exc)
                progress.denied = exc
                return
            except (StoreError, ReadError, OSError) as exc:
                progress.failed_chunks[index] = str(exc)
                return
            progress.done += length

        async with trio.open_nursery() as nursery:
            for index in dirty:
                nursery.start_soon(upload_chunk, index)
        if progress.denied is not None:
            raise AccessDenied(progress.denied.code, f"{len(progress.failed_chunks)} of {len(dirty)} chunks "
                                                     f"refused: {progress.denied}")
        if progress.failed_chunks:
            first = min(progress.failed_chunks)
            raise StoreError(f"{len(progress.failed_chunks)} of {len(dirty)} chunks not certified "
                             f"(chunk {first}: {progress.failed_chunks[first]})")
        if self.staged.get(node) is not staged:
            return True  # discarded while uploading
        await self._publish(staged, generation, size, chunks, hashes, offsets)
        return True

    async def _publish(self, staged: StagedFile, generation: int, size: int, chunks: list[bytes | None],
                       hashes: list[bytes | None], offsets: list[int | None]) -> None:
        """Sign the write of an uploaded version (``generation``) and drop what it made redundant."""
        node, count = staged.node, len(chunks)
        content: dict[str, Any] = {"size": size, "chunk_size": staged.chunk_size, "chunks": chunks}
        if any(h is not None for h in hashes):
            content["hashes"] = hashes
        if any(o is not None for o in offsets):
            content["offsets"] = offsets
        args: dict[str, Any] = {
            "node": node, "content": content,
            "mtime_ns": staged.mtime_ns, "last_name": staged.last_name or "file",
        }
        if staged.base is not None:
            args["base"] = staged.base
        if staged.last_parent is not None:
            args["last_parent"] = staged.last_parent
        op = await self.vlog.append("write", args)
        staged.base = op.op_id
        self.metrics.uploads.inc()
        if staged.generation == generation:
            await self._forget(staged)
        else:
            # Written again while uploading: this version is published, the next one follows.
            staged.chunks = [*chunks, *staged.chunks[count:]]
            staged.hashes = [*hashes, *[staged.hash_of(i) for i in range(count, len(staged.chunks))]]
            staged.offsets = [*offsets, *[staged.offset_of(i) for i in range(count, len(staged.chunks))]]
            await self._save(staged, False)
        self.progress.pop(node, None)
        async with self._published:
            self.published_generation[node] = generation
            self._published.notify_all()

    # ------------------------------------------------------------------ packing

    async def _to_pack(self, staged: StagedFile) -> bool:
        """Hand a small file's staged version to the packer; False if it is all zeros (a hole, no pack needed)."""
        node, size = staged.node, staged.size
        async with self._locks[node]:  # not torn by a concurrent write
            generation = staged.generation
            data = (await trio.to_thread.run_sync(self._pread, staged, size, 0)).ljust(size, b"\0")
        if data.count(0) == size:
            return False
        item = self._packing[node] = _Packing(node, staged, generation, data)
        self.progress[node] = UploadProgress(node, size)
        self._pack_queue.append(item)
        self._pack_added.set()
        return True

    async def _packer(self) -> None:
        """Gather files handed over within PACK_LINGER of the first (or until a pack is full) and store them as one blob."""
        async with trio.open_nursery() as nursery:
            while True:
                await self._pack_added.wait()
                self._pack_added = trio.Event()
                if not self._pack_queue:
                    continue
                deadline = trio.current_time() + PACK_LINGER
                while (len(self._pack_queue) < PACK_FILES and sum(len(i.data) for i in self._pack_queue) < PACK_BYTES
                       and trio.current_time() < deadline):
                    with trio.move_on_at(deadline):
                        await self._pack_added.wait()
                    self._pack_added = trio.Event()
                items, total = [], 0
                while self._pack_queue and len(items) < PACK_FILES and total < PACK_BYTES:
                    items.append(self._pack_queue.pop(0))
                    total += len(items[-1].data)
                if self._pack_queue:
                    self._pack_added.set()  # the rest make the next pack
                await self._pack_limit.acquire()
                nursery.start_soon(self._store_pack, items)

    async def _store_pack(self, items: list[_Packing]) -> None:
        """Store one pack and sign each file's write; a failure sends every file back for a retry."""
        try:
            try:
                if len(items) == 1:  # nothing to share the blob with: stored whole, as ever
                    blob, key_hash = await self._store_chunk(items[0].data)
                    placed = [(blob, key_hash, None)]
                else:
                    placed = await self._store_packed(items)
            except Exception as exc:  # noqa: BLE001 - a mount never exits because an upload failed
                if not isinstance(exc, (StoreError, ReadError, OSError)):
                    log.exception("storing a pack of %d files failed unexpectedly (will retry)", len(items))
                for item in items:
                    self._packing.pop(item.node, None)
                    self._pack_again.discard(item.node)  # the retry below uploads its latest version
                    self._failed(item.node, exc)
                return
            for item, (blob, key_hash, offset) in zip(items, placed):
                try:
                    if self.staged.get(item.node) is item.staged:  # else discarded meanwhile
                        await self._publish(item.staged, item.generation, len(item.data), [blob], [key_hash],
                                            [offset])
                        self._succeeded(item.node)
                except Exception as exc:  # noqa: BLE001 - as for any upload: the file stays staged and is retried
                    log.exception("signing the write of packed file %s failed (will retry)", item.node.hex()[:16])
                    self._failed(item.node, exc)
                finally:
                    self._packing.pop(item.node, None)
                    if item.node in self._pack_again:
                        self._pack_again.discard(item.node)
                        self._enqueue(item.node)
        finally:
            self._pack_limit.release()

    async def _store_packed(self, items: list[_Packing]) -> list[tuple[bytes, bytes | None, int]]:
        """Store the files as one pack; per file its pack's blob ID, plaintext hash (private) and offset."""
        volume, config = self.vlog.volume, self.client.config

        def prepare() -> tuple[EncodedBlob, list[bytes | None], PackLayout]:
            if volume.read_key is None:
                parts, hashes = [item.data for item in items], [None] * len(items)
            else:
                # Sealed as chunks are (convergent within the volume): peers see ciphertext only.
                sealed = [seal_chunk(volume.read_key, volume.public_key, item.data) for item in items]
                parts, hashes = [c.ciphertext for c in sealed], [c.plaintext_hash for c in sealed]
            layout = lay_out_pack(parts, config)
            return self.encode(layout.data, config), hashes, layout

        encoded, hashes, layout = await trio.to_thread.run_sync(prepare)
        blob_id = await self._store_blob(encoded)
        self.packs_stored += 1
        self.files_packed += len(items)
        for item, key_hash, offset in zip(items, hashes, layout.offsets):
            # The plaintext is at hand: later reads here need not fetch it.
            name = f"{blob_id}.p{offset}-{len(item.data)}" + (f".{key_hash.hex()[:32]}" if key_hash else "")
            await trio.to_thread.run_sync(self.cache.put, name, item.data)
        return [(blob_id.raw, key_hash, offset) for key_hash, offset in zip(hashes, layout.offsets)]

    def _held_by_volume(self, blob_id: BlobId) -> bool:
        """Whether a live registration of this volume holds ``blob_id`` (another volume's does not count)."""
        ledger = self.vlog.state.ledger
        owner = self.vlog.volume.public_key
        return any(h.registration.writer.owner == owner and h.live(ledger.epoch) for h in ledger.registrations(blob_id))

    def _prepare(self, data: bytes) -> tuple[EncodedBlob, bytes | None]:
        """Seal (in a private volume) and encode one chunk; runs in a worker thread."""
        volume = self.vlog.volume
        if volume.read_key is None:
            return self.encode(data, self.client.config), None
        sealed = seal_chunk(volume.read_key, volume.public_key, data)
        return self.encode(sealed.ciphertext, self.client.config), sealed.plaintext_hash

    async def _store_chunk(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Store one chunk (once per volume); its blob ID and, if sealed, the plaintext hash that opens it."""
        encoded, key_hash = await trio.to_thread.run_sync(self._prepare, data)
        blob_id = await self._store_blob(encoded)
        ref, name = cache_key(blob_id.raw, key_hash)
        await trio.to_thread.run_sync(self.cache.put, name, data)
        self._remember(ref, data)
        return blob_id.raw, key_hash

    async def _store_blob(self, encoded: EncodedBlob) -> BlobId:
        """Store an encoded blob unless a live registration of the volume holds it already; its ID."""
        blob_id = encoded.blob_id
        while blob_id.raw in self._storing:  # the same chunk is on its way already
            await self._storing[blob_id.raw].wait()
        # Held by a live registration of the volume (this mount's own stores are applied to
        # the ledger at once): one released or expired since must be stored again.
        if not self._held_by_volume(blob_id):
            done = self._storing[blob_id.raw] = trio.Event()
            started = time.perf_counter()
            try:
                result = await self.client.store_encoded(encoded, encoded.metadata.unencoded_length, publish=True,
                                                         wait_logged=False, background=self._nursery)
            finally:
                del self._storing[blob_id.raw]
                done.set()
            self.metrics.upload_seconds.observe(time.perf_counter() - started)
            self.metrics.stored_blobs.inc()
            self.metrics.stored_bytes.inc(encoded.metadata.unencoded_length)
            if result.entry is not None:
                self.vlog.note_certified(result.entry)
            self._certified_here.add(blob_id.raw)
            self.uploaded_chunks += 1
        else:
            self.deduplicated_chunks += 1
            self.metrics.deduplicated_blobs.inc()
        self._metadata[blob_id.raw] = encoded.metadata
        return blob_id

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Pending uploads and their progress."""
        pending = []
        for node, staged in self.staged.items():
            cs = staged.chunk_size
            dirty_bytes = sum(min(cs, staged.size - i * cs) for i in staged.dirty if i * cs < staged.size)
            progress = self.progress.get(node)
            retry_at = self._retry_at.get(node)
            pending.append({
                "node": node.hex(), "name": staged.last_name, "size": staged.size, "staged_bytes": dirty_bytes,
                "uploaded_bytes": progress.done if progress else 0,
                "state": ("uploading" if progress and not progress.error
                          else "retrying" if node in self._retry_at else "queued"),
                "error": (progress.error if progress else None) or self._last_error.get(node),
                "attempts": self._attempts.get(node, 0),
                "retry_in": round(max(0.0, retry_at - trio.current_time()), 1) if retry_at is not None else None,
                "failed_chunks": {str(i): why for i, why in sorted(progress.failed_chunks.items())} if progress else {},
                "refused": self.denied.get(node),
            })
        refused = next((why for node, why in self.denied.items() if node in self.staged), None) or self.vlog.refused
        incomplete = []
        for node, note in self.incomplete.items():
            path = self.path_of(node)
            if path is not None:  # removed by another mount meanwhile: nothing left to check
                incomplete.append({"node": node.hex(), "path": path, "kept_bytes": note.get("size"),
                                   "noticed": note.get("noticed")})
        return {"pending": pending, "storage_refused": refused, "uploaded_chunks": self.uploaded_chunks,
                "deduplicated_chunks": self.deduplicated_chunks, "packs": self.packs_stored,
                "packed_files": self.files_packed, "pack_rows_fetched": self.pack_rows_fetched, "cache_bytes": self.cache.total,
                "incomplete": incomplete[:SHOWN_INCOMPLETE], "incomplete_count": len(incomplete)}

    def path_of(self, node_id: bytes) -> str | None:
        """A node's path in the current tree, or None if it is not in it."""
        ns = self.vlog.namespace
        parts: list[str] = []
        current = ns.nodes.get(ns.resolve(node_id))
        for _ in range(4096):  # the fold keeps the tree acyclic; this bounds the walk regardless
            if current is None:
                return None
            if current.node_id == ROOT:
                return "/" + "/".join(reversed(parts))
            if current.parent is None:
                return None
            parts.append(current.name or "")
            current = ns.nodes.get(ns.resolve(current.parent))
        return None

