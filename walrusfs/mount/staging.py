"""A mount's durable local state: device key, its own log entries, staged file contents.

Everything here blocks; the mount calls it from worker threads. The state directory holds:

* ``device.key``: this mount's Ed25519 device key (its own log chain, delegated by the
  volume key), so a restarted mount continues its chain instead of equivocating;
* ``mount.sqlite`` (WAL): the device's signed entries with a published flag, the ops of
  the batch it has not signed yet (signed on the next start should the mount stop), one row per
  staged file (which chunks live in the staging file, which are blobs already, and whether
  a writer had it open), and the files a crash left incomplete;
* ``log.sqlite`` (WAL): the local copy of the log and the folded tree (``logstore``);
* ``staging/NODE``: sparse files holding the staged bytes of dirty chunks;
* ``cache/BLOB``: verified chunks, evicted least recently used beyond a byte budget;
* ``mount.log``: what a ``--background`` mount says.

A lock file keeps two mounts from sharing one state directory. With private volumes the
cache and staging hold plaintext, so every directory here is 0700 and every file 0600
(an existing directory of this user that others can enter is fixed, another user's refused).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import sqlite3
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
from nacl.signing import SigningKey

from ..identity import SeedFileError, read_seed_file, write_seed_file

log = logging.getLogger("walrusfs.mount")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS own_entries (seq INTEGER PRIMARY KEY, encoded BLOB NOT NULL, published INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS own_pending (seq INTEGER NOT NULL, idx INTEGER NOT NULL, hlc INTEGER NOT NULL,
                                        op BLOB NOT NULL, PRIMARY KEY (seq, idx));
CREATE TABLE IF NOT EXISTS staged (node BLOB PRIMARY KEY, file TEXT NOT NULL, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS incomplete (node BLOB PRIMARY KEY, record BLOB NOT NULL);
"""


class StateError(Exception):
    """The state directory is unusable (in use by another mount, another user's, unreadable key)."""


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _refuse_foreign(path: Path, uid: int, what: str = "") -> None:
    if uid != os.geteuid():
        raise StateError(f"{what}{path} belongs to {_owner(uid)}, not to this user ({_owner(os.geteuid())}); "
                         "a mount keeps plaintext in its state directory, so it will not use it: "
                         "give this mount its own with --state DIR")


#: The state directory's own files; its other entries (a user's --state may hold more) are left alone.
_STATE_FILES = frozenset({"lock", "device.key", "mount.sqlite", "mount.sqlite-wal", "mount.sqlite-shm",
                          "mount.sqlite-journal", "mount.log", "log.sqlite", "log.sqlite-wal", "log.sqlite-shm",
                          "log.sqlite-journal"})


def private_directory(directory: Path, only: frozenset[str] | None = None) -> tuple[int, int]:
    """Create ``directory`` 0700 (parents too) or make this user's existing one private; return (dirs, files) fixed.

    The files fixed (group and other bits dropped) are those directly in it, or only those named
    in ``only``. A directory of another user or a shared (sticky) one is refused with ``StateError``
    and left as it is; so is one of those files owned by another user (once the directory is 0700).
    """
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # made meanwhile (another process): checked below like any existing directory
        else:
            os.chmod(path, 0o700)  # whatever the umask
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"state directory {directory} is not a directory")
    _refuse_foreign(directory, st.st_uid, "state directory ")
    if st.st_mode & stat.S_ISVTX:
        raise StateError(f"state directory {directory} is a shared directory (mode {oct(stat.S_IMODE(st.st_mode))}); "
                         "give this mount its own with --state DIR")
    dirs = 0
    if stat.S_IMODE(st.st_mode) & 0o077:
        # First, so nobody else can swap an entry between the checks below and their chmod.
        os.chmod(directory, 0o700)
        dirs += 1
    loose = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if only is not None and entry.name not in only:
                continue
            est = entry.stat(follow_symlinks=False)
            _refuse_foreign(Path(entry.path), est.st_uid)
            if stat.S_ISREG(est.st_mode) and stat.S_IMODE(est.st_mode) & 0o077:
                loose.append((entry.path, stat.S_IMODE(est.st_mode) & 0o700))
    for path, mode in loose:  # symlinks are never followed, so never chmodded
        os.chmod(path, mode)
    return dirs, len(loose)


def _report_fixed(directory: Path, fixed: list[tuple[int, int]]) -> None:
    dirs, files = sum(d for d, _ in fixed), sum(f for _, f in fixed)
    if dirs or files:
        log.warning("state directory %s was accessible by other users: made %d directories 0700 and %d files "
                    "private (0600)", directory, dirs, files)


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (sqlite would make it 0644, and its -wal/-shm alike)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


@dataclass
class StagedFile:
    """A file whose latest content is (partly) local: chunk i is in the staging file if i in ``dirty``."""

    node: bytes
    size: int
    chunk_size: int
    chunks: list[bytes | None]  # blob ID per chunk of the version this one started from
    dirty: set[int] = field(default_factory=set)
    base: bytes | None = None  # version (op ID) the staged content started from
    mtime_ns: int = 0
    last_parent: bytes | None = None
    last_name: str = ""
    generation: int = 0  # bumped by every change; an upload publishes one generation
    # Each staging of a node gets its own file, so dropping a published one can never
    # remove bytes a newer staging of the same node already wrote.
    file: str = field(default_factory=lambda: os.urandom(12).hex())
    #: Plaintext hash per chunk of a private volume (what opens its sealed blob); empty if public.
    hashes: list[bytes | None] = field(default_factory=list)
    #: A writer had the file open when this record was saved: found so after a restart, the
    #: mount stopped in the middle of writing it (its staging file may hold bytes past ``size``).
    open: bool = False
    #: Per stored chunk, where it starts in its blob if it is packed (see ``Content.offsets``).
    offsets: list[int | None] = field(default_factory=list)

    def hash_of(self, index: int) -> bytes | None:
        """The plaintext hash that opens stored chunk ``index`` (None if public or not stored)."""
        return self.hashes[index] if index < len(self.hashes) else None

    def offset_of(self, index: int) -> int | None:
        """Where stored chunk ``index`` starts in its blob if it is packed, else None."""
        return self.offsets[index] if index < len(self.offsets) else None

    def encode(self) -> bytes:
        """Canonical bytes for the state database."""
        return cbor2.dumps({
            "size": self.size, "chunk_size": self.chunk_size, "chunks": list(self.chunks),
            "dirty": sorted(self.dirty), "base": self.base, "mtime_ns": self.mtime_ns,
            "last_parent": self.last_parent, "last_name": self.last_name, "hashes": list(self.hashes),
            **({"open": True} if self.open else {}),
            **({"offsets": list(self.offsets)} if any(o is not None for o in self.offsets) else {}),
        }, canonical=True)

    @classmethod
    def decode(cls, node: bytes, file: str, data: bytes) -> StagedFile:
        """Inverse of ``encode``."""
        record = cbor2.loads(data)
        return cls(node, record["size"], record["chunk_size"], list(record["chunks"]), set(record["dirty"]),
                   record["base"], record["mtime_ns"], record["last_parent"], record["last_name"], file=file,
                   hashes=list(record.get("hashes", [])), open=bool(record.get("open", False)),
                   offsets=list(record.get("offsets", [])))


class MountState:
    """The state directory of one mount."""

    def __init__(self, directory: Path) -> None:
        fixed = [private_directory(directory, _STATE_FILES), private_directory(directory / "staging")]
        if (directory / "cache").exists():
            fixed.append(private_directory(directory / "cache"))
        _report_fixed(directory, fixed)
        self.directory = directory
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateError(
                f"state directory {directory} is in use by another mount; give this mount its own with --state DIR"
            ) from None
        self.staging = directory / "staging"
        self.device = self._device_key()
        self._lock = threading.Lock()
        _private_file(directory / "mount.sqlite")
        self._db = sqlite3.connect(directory / "mount.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the mount process; fsync() of a file is
        # the user's power-loss guarantee, and it waits for certification on the peers.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _device_key(self) -> SigningKey:
        path = self.directory / "device.key"
        try:
            return SigningKey(read_seed_file(path))
        except FileNotFoundError:
            return SigningKey(write_seed_file(path))
        except SeedFileError as exc:
            raise StateError(str(exc)) from None

    def close(self) -> None:
        """Close the database and release the lock."""
        with self._lock:
            self._db.close()
        os.close(self._lock_fd)

    # ------------------------------------------------------------------ own log entries

    def own_entries(self, after: int = 0) -> list[tuple[bytes, bool]]:
        """This device's entries after seq ``after`` in chain order, with whether peers hold each."""
        with self._lock:
            rows = self._db.execute("SELECT encoded, published FROM own_entries WHERE seq > ? ORDER BY seq",
                                    (after,)).fetchall()
        return [(bytes(e), bool(p)) for e, p in rows]

    def own_published(self) -> int:
        """The highest seq of this device's entries that peers hold (0: none)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM own_entries WHERE published = 1").fetchone()
        return row[0] or 0

    def add_own_entry(self, seq: int, encoded: bytes) -> None:
        """Record a newly signed entry before anyone sees it (so the chain survives a crash); its batch's pending ops go with it."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT INTO own_entries VALUES (?, ?, 0)", (seq, encoded))
                self._db.execute("DELETE FROM own_pending WHERE seq <= ?", (seq,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add_pending_op(self, seq: int, index: int, hlc: int, op: bytes) -> None:
        """Record an op of the batch not signed yet (entry ``seq``, place ``index``), before the kernel is answered."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO own_pending VALUES (?, ?, ?, ?)", (seq, index, hlc, op))

    def pending_ops(self) -> list[tuple[int, int, int, bytes]]:
        """The ops of unsigned batches: (seq, index, stamp, encoded op), in order."""
        with self._lock:
            rows = self._db.execute("SELECT seq, idx, hlc, op FROM own_pending ORDER BY seq, idx").fetchall()
        return [(seq, index, hlc, bytes(op)) for seq, index, hlc, op in rows]

    def mark_published(self, up_to: int) -> None:
        """Entries up to ``up_to`` are held by enough peers."""
        with self._lock:
            self._db.execute("UPDATE own_entries SET published = 1 WHERE seq <= ? AND published = 0", (up_to,))

    # ------------------------------------------------------------------ staged files

    def staging_path(self, staged: StagedFile) -> Path:
        """Where a staged file's bytes live."""
        return self.staging / f"{staged.node.hex()}.{staged.file}"

    def save_staged(self, staged: StagedFile, sync_data: bool = True) -> None:
        """Persist a staged file's record, after its bytes are on disk."""
        path = self.staging_path(staged)
        if sync_data and path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO staged VALUES (?, ?, ?)", (staged.node, staged.file, staged.encode()))

    def drop_staged(self, staged: StagedFile) -> None:
        """Forget a staged file (published, or its node is gone)."""
        with self._lock:
            self._db.execute("DELETE FROM staged WHERE node = ? AND file = ?", (staged.node, staged.file))
        self.staging_path(staged).unlink(missing_ok=True)

    def staged_files(self) -> list[StagedFile]:
        """Every staged file, as the last crash or shutdown left them."""
        with self._lock:
            rows = self._db.execute("SELECT node, file, record FROM staged").fetchall()
        return [StagedFile.decode(bytes(n), f, bytes(r)) for n, f, r in rows]

    def incomplete_files(self) -> dict[bytes, dict]:
        """Files a stopped mount left in the middle of being written (node -> what was noted)."""
        with self._lock:
            rows = self._db.execute("SELECT node, record FROM incomplete").fetchall()
        return {bytes(n): cbor2.loads(r) for n, r in rows}

    def mark_incomplete(self, node: bytes, note: dict) -> None:
        """Remember that ``node`` was open for writing when the mount stopped."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO incomplete VALUES (?, ?)", (node, cbor2.dumps(note, canonical=True)))

    def clear_incomplete(self, node: bytes) -> None:
        """Forget the mark (the file was written again, removed, or the user cleared it)."""
        with self._lock:
            self._db.execute("DELETE FROM incomplete WHERE node = ?", (node,))

    def remove_orphans(self, staged: list[StagedFile]) -> tuple[int, int]:
        """Delete staging files no record names (writes a crash cut off before close); return (files, bytes)."""
        known = {self.staging_path(s).name for s in staged}
        files = size = 0
        for path in self.staging.iterdir():
            if path.name not in known:
                size += path.stat().st_size
                path.unlink()
                files += 1
        return files, size


class ChunkCache:
    """Verified chunks on local disk, least recently used evicted beyond ``limit`` bytes."""

    def __init__(self, directory: Path, limit: int) -> None:
        _report_fixed(directory, [private_directory(directory)])  # a mount's MountState checked it already
        self.directory = directory
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()
        self.total = 0
        for path in sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime):
            if path.name.endswith(".tmp"):
                path.unlink()
                continue
            self._entries[path.name] = path.stat().st_size
            self.total += path.stat().st_size
        self._evict()

    def get(self, key: str) -> bytes | None:
        """The chunk, if cached."""
        try:
            data = (self.directory / key).read_bytes()
        except FileNotFoundError:
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Cache a verified chunk (written to a temporary name first, so a crash leaves no half chunk)."""
        if len(data) > self.limit:
            return
        with self._lock:
            if key in self._entries:  # keys are blob IDs: the cached bytes are these bytes
                self._entries.move_to_end(key)
                return
        path = self.directory / key
        # Two uploads of one deduplicated chunk may put it at once: each its own temporary.
        tmp = path.with_name(f"{key}.{os.urandom(6).hex()}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        with self._lock:
            if key in self._entries:
                self.total -= self._entries.pop(key)
            self._entries[key] = len(data)
            self.total += len(data)
            self._evict()

    def _evict(self) -> None:
        while self.total > self.limit and self._entries:
            key, size = self._entries.popitem(last=False)
            self.total -= size
            (self.directory / key).unlink(missing_ok=True)
