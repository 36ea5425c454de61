"""A peer's durable store: metadata and confirmations in SQLite (WAL), sliver pairs in files.

Every method blocks; the peer calls them from worker threads. A pair arrives in a file in
``tmp/`` as it streams in, is verified, fsynced, renamed to its final name and the
directory fsynced; only then is it recorded in SQLite and served. A crash leaves no pair
or a whole one; leftovers in ``tmp/`` are removed at start-up. Confirmations are signed and
recorded only after that.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from ..core.messages import MAX_HEADER, metadata_from_wire, metadata_to_wire
from ..core.metadata import BlobId, BlobMetadata
from ..core.redstuff import Axis
from ..core.wire import WIRE_VERSION, decode, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metadata (blob_id BLOB PRIMARY KEY, encoded BLOB NOT NULL, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (blob_id BLOB NOT NULL, pair INTEGER NOT NULL, bytes INTEGER NOT NULL,
                                  primary_length INTEGER NOT NULL, PRIMARY KEY (blob_id, pair));
CREATE TABLE IF NOT EXISTS confirmations (blob_id BLOB NOT NULL, epoch INTEGER NOT NULL, signature BLOB NOT NULL,
                                          PRIMARY KEY (blob_id, epoch));
CREATE TABLE IF NOT EXISTS log_entries (id BLOB PRIMARY KEY, author BLOB NOT NULL, seq INTEGER NOT NULL,
                                        encoded BLOB NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Free space a peer keeps for its database and log: uploads that would leave less are
#: refused with ``disk-full`` (so only something else filling the disk can exhaust it).
MIN_FREE = 64 << 20


class DiskFull(OSError):
    """The peer's disk has no room for a write; it refuses uploads until space returns."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn the ways a full disk shows (ENOSPC, EDQUOT, SQLite's "database or disk is full") into ``DiskFull``."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, sqlite3.OperationalError) as exc:
        if _is_full(exc):
            raise DiskFull(f"disk full while {what}: {exc}") from exc
        raise


def _writes(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a store method that writes, so a full disk raises ``DiskFull``."""
    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with writing(what):
                return method(*args, **kwargs)
        return wrapper
    return decorate


#: writev takes at most this many buffers (IOV_MAX on Linux).
_IOV_MAX = 1024


def write_all(fd: int, parts: list[bytes]) -> None:
    """Write ``parts`` back to back to ``fd`` with as few system calls as the kernel allows (no joined copy)."""
    views = [memoryview(part) for part in parts if len(part)]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        if not written:
            raise OSError(errno.EIO, "a write to a sliver file made no progress")
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _drop_cached(fd: int) -> None:
    """Let the kernel drop a durable pair file's pages from the page cache.

    Every stored byte would otherwise need a page cache page of its own for as long as
    memory lasts, and on VMs a page the guest has not used lately costs a fault in the
    host: measured here, writing a 36 MB pair took 70-90 ms of CPU once a few hundred MB
    had been stored, against 7-11 ms (fsync included) when each pair's pages are given back
    and reused by the next. Pairs are read rarely and at random (a read, a heal, a
    challenge), so reading one from disk costs ~3 ms more CPU per 22 MB sliver.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PeerStore:
    """Durable storage of one peer's data directory."""

    def __init__(self, directory: Path, min_free: int = MIN_FREE) -> None:
        self.directory = directory
        self.min_free = min_free
        self.slivers = directory / "slivers"
        self.tmp = directory / "tmp"
        self.slivers.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(directory / "peer.sqlite", check_same_thread=False, isolation_level=None)
        with writing("opening the database"):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def free_bytes(self) -> int:
        """Free space on the disk holding this store."""
        return shutil.disk_usage(self.directory).free

    def check_room(self, incoming: int) -> None:
        """Raise ``DiskFull`` unless ``incoming`` bytes fit and leave ``min_free`` free."""
        free = self.free_bytes()
        if free < incoming + self.min_free:
            raise DiskFull(f"{free} bytes free; {incoming} more would leave less than the {self.min_free} "
                           "this peer keeps for its database and log")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _pair_path(self, blob_id: BlobId, pair: int) -> Path:
        text = str(blob_id)
        return self.slivers / text[:2] / f"{text}.{pair}"

    @_writes("recording metadata")
    def put_metadata(self, blob_id: BlobId, metadata: BlobMetadata) -> None:
        """Record a blob's (already verified) metadata; idempotent."""
        encoded = encode({"v": WIRE_VERSION, "metadata": metadata_to_wire(metadata)})
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO metadata (blob_id, encoded, length) VALUES (?, ?, ?)",
                (blob_id.raw, encoded, metadata.unencoded_length),
            )

    def get_metadata(self, blob_id: BlobId, n_shards: int) -> BlobMetadata | None:
        """A blob's metadata, if stored."""
        with self._lock:
            row = self._db.execute("SELECT encoded FROM metadata WHERE blob_id = ?", (blob_id.raw,)).fetchone()
        return metadata_from_wire(decode(row[0], MAX_HEADER)["metadata"], n_shards) if row else None

    def spool_path(self) -> Path:
        """A fresh temporary file name to receive a sliver pair into as it streams in."""
        return self.tmp / f"incoming.{threading.get_ident()}.{os.urandom(6).hex()}"

    @_writes("storing a sliver pair")
    def commit_pair(self, blob_id: BlobId, pair: int, spooled: Path, primary_length: int) -> None:
        """Durably store a verified, spooled pair (primary then secondary): fsync, rename, fsync dir."""
        final = self._pair_path(blob_id, pair)
        final.parent.mkdir(exist_ok=True)
        with open(spooled, "rb+") as f:
            os.fsync(f.fileno())
            size = os.fstat(f.fileno()).st_size
            _drop_cached(f.fileno())
        os.replace(spooled, final)
        _fsync_dir(final.parent)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pairs (blob_id, pair, bytes, primary_length) VALUES (?, ?, ?, ?)",
                (blob_id.raw, pair, size, primary_length),
            )

    @_writes("storing a healed sliver pair")
    def write_pair(self, blob_id: BlobId, pair: int, data: bytes, primary_length: int) -> None:
        """Durably store a verified pair held in memory (a healed one)."""
        path = self.spool_path()
        try:
            with open(path, "wb") as f:
                f.write(data)
            self.commit_pair(blob_id, pair, path, primary_length)
        finally:
            if path.exists():
                path.unlink()

    @_writes("dropping a damaged pair")
    def drop_pair(self, blob_id: BlobId, pair: int) -> None:
        """Forget a pair that failed verification, so it is neither served nor counted until healed."""
        with self._lock:
            self._db.execute("DELETE FROM pairs WHERE blob_id = ? AND pair = ?", (blob_id.raw, pair))
        self._pair_path(blob_id, pair).unlink(missing_ok=True)

    @_writes("deleting an invalid blob")
    def delete_blob(self, blob_id: BlobId) -> int:
        """Delete every stored pair of a blob (certified invalid); return how many there were."""
        pairs = self.stored_pairs(blob_id)
        with self._lock:
            self._db.execute("DELETE FROM pairs WHERE blob_id = ?", (blob_id.raw,))
            self._db.execute("DELETE FROM confirmations WHERE blob_id = ?", (blob_id.raw,))
        for pair in pairs:
            self._pair_path(blob_id, pair).unlink(missing_ok=True)
        return len(pairs)

    @_writes("releasing a blob")
    def release_blob(self, blob_id: BlobId) -> int:
        """Delete a blob no registration holds any more (pairs, confirmations, metadata); the bytes freed.

        The freed bytes are added to the ``reclaimed`` counter in the same transaction.
        """
        pairs = self.stored_pairs(blob_id)
        with self._lock:
            freed = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM pairs WHERE blob_id = ?",
                                     (blob_id.raw,)).fetchone()[0]
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM pairs WHERE blob_id = ?", (blob_id.raw,))
                self._db.execute("DELETE FROM confirmations WHERE blob_id = ?", (blob_id.raw,))
                self._db.execute("DELETE FROM metadata WHERE blob_id = ?", (blob_id.raw,))
                self._db.execute("INSERT INTO counters (name, value) VALUES ('reclaimed', ?) "
                                 "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (freed,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for pair in pairs:
            self._pair_path(blob_id, pair).unlink(missing_ok=True)
        return freed

    def counter(self, name: str) -> int:
        """A persistent counter (``reclaimed``: bytes freed by released blobs)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def blob_ids(self) -> list[BlobId]:
        """Every blob with stored metadata."""
        with self._lock:
            return [BlobId(bytes(row[0])) for row in self._db.execute("SELECT blob_id FROM metadata")]

    def all_pairs(self) -> set[tuple[bytes, int]]:
        """Every stored (blob ID bytes, pair) there is a record for."""
        with self._lock:
            return {(bytes(b), p) for b, p in self._db.execute("SELECT blob_id, pair FROM pairs")}

    def pairs_after(self, cursor: tuple[bytes, int], limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` stored (blob ID bytes, pair) in key order after ``cursor``; for the scrubber."""
        with self._lock:
            rows = self._db.execute(
                "SELECT blob_id, pair FROM pairs WHERE (blob_id, pair) > (?, ?) ORDER BY blob_id, pair LIMIT ?",
                (cursor[0], cursor[1], limit),
            )
            return [(bytes(b), p) for b, p in rows]

    def count_pairs(self) -> int:
        """Number of stored pairs."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])

    def _primary_length(self, blob_id: BlobId, pair: int) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT primary_length FROM pairs WHERE blob_id = ? AND pair = ?", (blob_id.raw, pair)
            ).fetchone()
        return None if row is None else int(row[0])

    def read_pair(self, blob_id: BlobId, pair: int) -> tuple[bytes, int] | None:
        """A stored pair's bytes and primary length (bytes empty if its file is gone), or None if not recorded."""
        primary_length = self._primary_length(blob_id, pair)
        if primary_length is None:
            return None
        try:
            return self._pair_path(blob_id, pair).read_bytes(), primary_length
        except FileNotFoundError:
            return b"", primary_length

    def pair_stamp(self, blob_id: BlobId, pair: int) -> tuple[int, int, int, int] | None:
        """(inode, size, mtime ns, ctime ns) of a stored pair's file, or None if it has none: any rewrite changes it."""
        try:
            st = os.stat(self._pair_path(blob_id, pair))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def read_sliver(self, blob_id: BlobId, pair: int, axis: Axis) -> bytes | None:
        """A stored sliver's bytes, or None."""
        primary_length = self._primary_length(blob_id, pair)
        if primary_length is None:
            return None
        try:
            with open(self._pair_path(blob_id, pair), "rb") as f:
                if axis is Axis.PRIMARY:
                    return f.read(primary_length)
                f.seek(primary_length)
                return f.read()
        except FileNotFoundError:
            return None

    def stored_pairs(self, blob_id: BlobId) -> list[int]:
        """Pair indices stored for a blob."""
        with self._lock:
            rows = self._db.execute("SELECT pair FROM pairs WHERE blob_id = ? ORDER BY pair", (blob_id.raw,))
            return [r[0] for r in rows]

    @_writes("recording a confirmation")
    def put_confirmation(self, blob_id: BlobId, epoch: int, signature: bytes) -> None:
        """Remember a signed confirmation so it can be handed out again."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO confirmations (blob_id, epoch, signature) VALUES (?, ?, ?)",
                (blob_id.raw, epoch, signature),
            )

    def get_confirmation(self, blob_id: BlobId, epoch: int) -> bytes | None:
        """A previously signed confirmation."""
        with self._lock:
            row = self._db.execute(
                "SELECT signature FROM confirmations WHERE blob_id = ? AND epoch = ?", (blob_id.raw, epoch)
            ).fetchone()
        return row[0] if row else None

    @_writes("recording log entries")
    def add_log_entries(self, rows: list[tuple[bytes, bytes, int, bytes, int]]) -> None:
        """Durably record (id, author, seq, encoded, received_ms) log entries in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO log_entries (id, author, seq, encoded, received_ms) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise

    def log_entries(self) -> list[bytes]:
        """Every stored log entry, each author's in seq order."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT encoded FROM log_entries ORDER BY author, seq")]

    def entry_times(self, ids: list[bytes]) -> dict[bytes, int]:
        """When each of the given entries was first stored here (ms since the epoch)."""
        out: dict[bytes, int] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                marks = ",".join("?" * len(batch))
                for entry_id, received in self._db.execute(
                    f"SELECT id, received_ms FROM log_entries WHERE id IN ({marks})", batch
                ):
                    out[entry_id] = received
        return out

    def stats(self) -> tuple[int, int]:
        """(blobs with metadata, bytes of stored sliver pairs)."""
        with self._lock:
            blobs = self._db.execute("SELECT COUNT(*) FROM metadata").fetchone()[0]
            stored = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM pairs").fetchone()[0]
        return blobs, stored
