"""A mount's local copy of the log: verified entries, its volume's opened ops and a checkpoint of the tree (SQLite).

``log.sqlite`` in the mount's state directory (0600 like everything there) lets a restarted
mount come up without fetching or folding what it already had:

* ``entries``: every entry the mount accepted after checking it, by author and seq;
* ``ops``: the volume's namespace ops as opened (one row per op of a batched entry; NULL
  where this side could not read an entry), keyed by their place in the fold's total order:
  what a refold and the lifecycle fold read back. A batched entry's op IDs and batch key
  are not stored but derived again (``log.batch_op``) from its author, seq and index, as
  the live fold derives them, and checked against the stored key;
* ``checkpoint``: the folded tree (``core.snapshot``'s encoding) and the position it was
  folded at (each author's seq and entry ID), so a restart loads the tree instead of
  folding, and holds other authors' chains in memory only from there on;
* ``bases``: chains held only from a snapshot's position on, whose history below it is
  still being fetched;
* ``meta``: the format, and what the copy belongs to (volume, committee, read key): a copy
  made for anything else is dropped, never used.

Nothing here is trusted blindly. Every row carries a MAC under a key derived from the
mount's device key, so a row that was changed, cut or copied from elsewhere fails
(``LocalCopyError``) and the mount rebuilds the copy from its peers; entries are decoded
with the full decoder and their chains must link. What peers serve is compared with it
as it arrives (``VolumeLog``): a fork or a rollback is noticed there.

Everything here blocks: the mount calls it from worker threads.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2

from ..core import wire
from ..core.committee import Committee
from ..core.log import Entry, LogError, batch_key, batch_op, decode_entry
from ..core.namespace import Op
from .staging import _private_file

log = logging.getLogger("walrusfs.mount")

FORMAT = 1
FILE_NAME = "log.sqlite"
_MAC_PERSON = b"wfs1-local-copy"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (author BLOB NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL,
    kind TEXT NOT NULL, encoded BLOB NOT NULL, mac BLOB NOT NULL, PRIMARY KEY (author, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (hlc INTEGER NOT NULL, author BLOB NOT NULL, key BLOB NOT NULL, idx INTEGER NOT NULL,
    id BLOB NOT NULL, seq INTEGER NOT NULL, batched INTEGER NOT NULL, op BLOB, mac BLOB NOT NULL,
    PRIMARY KEY (hlc, author, key, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bases (author BLOB PRIMARY KEY, seq INTEGER NOT NULL, id BLOB NOT NULL,
    keys BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoint (slot INTEGER PRIMARY KEY CHECK (slot = 0), position BLOB NOT NULL,
    tree BLOB NOT NULL, mac BLOB NOT NULL);
"""


class LocalCopyError(Exception):
    """The local copy is damaged or not this mount's: it must be rebuilt from peers."""


_R = TypeVar("_R")


def _reading(method: Callable[..., _R]) -> Callable[..., _R]:
    """A read that meets a damaged database (a value of the wrong type, a broken page) raises ``LocalCopyError``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> _R:
        try:
            return method(*args, **kwargs)
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            raise LocalCopyError(f"the local copy does not read: {type(exc).__name__}: {exc}") from None

    return wrapper


def committee_id(committee: Committee) -> bytes:
    """What identifies a committee's log: its members' and operators' keys."""
    keys = sorted(p.public_key for p in committee.peers) + [b"operators"] + sorted(committee.operators)
    return hashlib.blake2b(b"".join(keys), digest_size=32).digest()


def reader_id(read_key: bytes | None) -> bytes:
    """What identifies the key ops were opened with (a copy opened with another key is not used)."""
    return hashlib.blake2b(read_key or b"public", digest_size=32, person=b"wfs1-reader-id").digest()


@dataclass
class Position:
    """A checkpoint's position: per author (seq, entry ID, keys its volume entries rest on), and counters."""

    heads: dict[bytes, tuple[int, bytes, tuple[bytes, ...]]]
    #: The authors whose entries of this volume the tree folded.
    volume_authors: set[bytes] = field(default_factory=set)
    ops: int = 0
    sealed_seen: int = 0
    unreadable: int = 0
    #: The tree's last place in the fold's order (``Op.order``: stamp, author, key, index).
    last: tuple[int, bytes, bytes, int] | None = None

    def encode(self) -> bytes:
        """Canonical bytes of the position."""
        return wire.encode({
            "v": wire.WIRE_VERSION,
            "heads": [[a, s, i, list(k)] for a, (s, i, k) in sorted(self.heads.items())],
            "volume_authors": sorted(self.volume_authors), "ops": self.ops, "sealed_seen": self.sealed_seen,
            "unreadable": self.unreadable, "last": list(self.last) if self.last is not None else None,
        })

    @classmethod
    def decode(cls, data: bytes) -> Position:
        """Inverse of ``encode``; ``LocalCopyError`` if malformed."""
        try:
            message = wire.decode(data, 1 << 30)
            heads = {}
            for author, seq, entry_id, keys in message["heads"]:
                if not (isinstance(author, bytes) and isinstance(seq, int) and seq >= 1
                        and isinstance(entry_id, bytes) and all(isinstance(k, bytes) for k in keys)):
                    raise ValueError("bad head")
                heads[author] = (seq, entry_id, tuple(keys))
            last = message["last"]
            if last is not None:
                hlc, author, key, index = last
                if not (isinstance(hlc, int) and isinstance(author, bytes) and isinstance(key, bytes)
                        and isinstance(index, int)):
                    raise ValueError("bad last")
                last = (hlc, author, key, index)
            return cls(heads, set(message["volume_authors"]), int(message["ops"]), int(message["sealed_seen"]),
                       int(message["unreadable"]), last)
        except (wire.MessageError, KeyError, TypeError, ValueError) as exc:
            raise LocalCopyError(f"checkpoint position is malformed: {exc}") from None


@dataclass
class Checkpoint:
    """A stored checkpoint: where it stands and the encoded tree."""

    position: Position
    tree: bytes


class LogStore:
    """``log.sqlite`` of one mount's state directory."""

    def __init__(self, directory: Path, device_seed: bytes) -> None:
        self.path = directory / FILE_NAME
        self._key = hashlib.blake2b(device_seed, digest_size=32, person=_MAC_PERSON).digest()
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            # Not a database any more: a copy is only a cache of what peers serve.
            log.warning("local copy %s does not open (%s): starting a new one", self.path, exc)
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        _private_file(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a lost tail is fetched again from peers
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ MACs

    def _mac(self, *parts: bytes) -> bytes:
        h = hashlib.blake2b(digest_size=16, key=self._key)
        for part in parts:
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def _entry_mac(self, author: bytes, seq: int, entry_id: bytes) -> bytes:
        return self._mac(b"entry", author, seq.to_bytes(8, "big"), entry_id)

    def _op_mac(self, hlc: int, author: bytes, key: bytes, index: int, entry_id: bytes, seq: int, batched: int,
                op: bytes | None) -> bytes:
        return self._mac(b"op", hlc.to_bytes(8, "big"), author, key, index.to_bytes(4, "big"), entry_id,
                         seq.to_bytes(8, "big"), bytes([batched]), b"\x00" if op is None else b"\x01" + op)

    # ------------------------------------------------------------------ what the copy belongs to

    @_reading
    def claim(self, volume: bytes, committee: Committee, read_key: bytes | None) -> bool:
        """Make the copy this mount's; False (and the copy emptied) if it was made for another volume, committee or key."""
        wanted = {"format": FORMAT.to_bytes(4, "big"), "volume": volume, "committee": committee_id(committee),
                  "reader": reader_id(read_key)}
        with self._lock:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            same = {k: bytes(v) for k, v in rows.items()} == wanted
            if not same:
                had = bool(rows) or self._db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None
                self._wipe_locked()
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", list(wanted.items()))
                return not had
        return True

    def wipe(self) -> None:
        """Drop every entry, op, base and checkpoint (the copy is rebuilt from peers)."""
        with self._lock:
            try:
                rows = [(k, bytes(v)) for k, v in self._db.execute("SELECT key, value FROM meta").fetchall()]
                self._wipe_locked()
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", rows)
            except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
                # Too damaged to empty: a new file (``claim`` makes it this mount's again).
                log.warning("local copy %s does not empty (%s): starting a new one", self.path, exc)
                self._db.close()
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._db = self._open()

    def _wipe_locked(self) -> None:
        self._db.execute("BEGIN")
        for table in ("meta", "entries", "ops", "bases", "checkpoint"):
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ writing

    def add(self, entries: Sequence[Entry], ops: Sequence[tuple[Entry, Sequence[Op] | None]] = ()) -> None:
        """Record accepted entries and the volume ops they carry (None: unreadable here), in one transaction."""
        entry_rows = [(e.author, e.seq, e.id, e.kind, e.encode(), self._entry_mac(e.author, e.seq, e.id))
                      for e in entries]
        op_rows = []
        for entry, carried in ops:
            if carried is None:  # one row says the entry is there, unread
                op_rows.append(self._op_row(entry, entry.id, 0, 0, None))
                continue
            for op in carried:
                raw = cbor2.dumps({"kind": op.kind, "args": dict(op.args)}, canonical=True)
                if op.batch:
                    if op.batch != batch_key(entry.author, entry.seq):  # pragma: no cover - a caller's bug
                        raise ValueError("a batched op recorded with another entry than its own")
                    op_rows.append(self._op_row(entry, op.batch, op.index, 1, raw))
                else:
                    op_rows.append(self._op_row(entry, op.op_id, 0, 0, raw))
        if not entry_rows and not op_rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?)", entry_rows)
            self._db.executemany("INSERT OR IGNORE INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", op_rows)
            self._db.execute("COMMIT")

    def _op_row(self, entry: Entry, key: bytes, index: int, batched: int, raw: bytes | None) -> tuple[Any, ...]:
        return (entry.hlc, entry.author, key, index, entry.id, entry.seq, batched, raw,
                self._op_mac(entry.hlc, entry.author, key, index, entry.id, entry.seq, batched, raw))

    def set_bases(self, bases: Mapping[bytes, tuple[int, bytes, Iterable[bytes]]]) -> None:
        """Chains held from these positions on (a snapshot's): their history is fetched later."""
        rows = [(a, s, i, cbor2.dumps(sorted(k))) for a, (s, i, k) in bases.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO bases VALUES (?, ?, ?, ?)", rows)

    def drop_base(self, author: bytes) -> None:
        """``author``'s history below its base is stored now."""
        with self._lock:
            self._db.execute("DELETE FROM bases WHERE author = ?", (author,))

    def save_checkpoint(self, position: Position, tree: bytes) -> None:
        """Replace the checkpoint (the tree as folded at ``position``)."""
        encoded = position.encode()
        mac = self._mac(b"checkpoint", encoded, tree)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO checkpoint VALUES (0, ?, ?, ?)", (encoded, tree, mac))

    # ------------------------------------------------------------------ reading

    @_reading
    def checkpoint(self) -> Checkpoint | None:
        """The stored checkpoint, its MAC checked; ``LocalCopyError`` if it does not pass."""
        with self._lock:
            row = self._db.execute("SELECT position, tree, mac FROM checkpoint").fetchone()
        if row is None:
            return None
        position, tree, mac = bytes(row[0]), bytes(row[1]), bytes(row[2])
        if self._mac(b"checkpoint", position, tree) != mac:
            raise LocalCopyError("the checkpoint of the tree was changed or is not this mount's")
        return Checkpoint(Position.decode(position), tree)

    @_reading
    def bases(self) -> dict[bytes, tuple[int, bytes, tuple[bytes, ...]]]:
        """Chains held from a snapshot's position on whose history is not stored yet."""
        with self._lock:
            rows = self._db.execute("SELECT author, seq, id, keys FROM bases").fetchall()
        return {bytes(a): (s, bytes(i), tuple(cbor2.loads(k))) for a, s, i, k in rows}

    @_reading
    def heads(self) -> dict[bytes, int]:
        """The highest stored seq of every author."""
        with self._lock:
            rows = self._db.execute("SELECT author, MAX(seq) FROM entries GROUP BY author").fetchall()
        return {bytes(a): s for a, s in rows}

    def _checked(self, row: tuple[Any, ...]) -> Entry:
        author, seq, encoded, mac = bytes(row[0]), row[1], bytes(row[2]), bytes(row[3])
        try:
            entry = decode_entry(encoded)
        except LogError as exc:
            raise LocalCopyError(f"a stored entry does not decode: {exc}") from None
        if entry.author != author or entry.seq != seq or self._entry_mac(author, seq, entry.id) != mac:
            raise LocalCopyError(f"stored entry {seq} of {author.hex()[:12]} was changed or is not this mount's")
        return entry

    @_reading
    def chain(self, author: bytes, after: int = 0, upto: int | None = None) -> list[Entry]:
        """``author``'s stored entries after seq ``after`` (up to ``upto``), in order, each checked."""
        with self._lock:
            rows = self._db.execute(
                "SELECT author, seq, encoded, mac FROM entries WHERE author = ? AND seq > ? AND seq <= ? ORDER BY seq",
                (author, after, upto if upto is not None else 2**62)).fetchall()
        return [self._checked(row) for row in rows]

    @_reading
    def entry(self, author: bytes, seq: int) -> Entry | None:
        """``author``'s stored entry ``seq``, checked, if stored."""
        with self._lock:
            row = self._db.execute("SELECT author, seq, encoded, mac FROM entries WHERE author = ? AND seq = ?",
                                   (author, seq)).fetchone()
        return self._checked(row) if row is not None else None

    @_reading
    def of_kind(self, kind: str) -> list[Entry]:
        """Every stored entry of ``kind``, each checked (for the few kinds a mount looks up: snapshots)."""
        with self._lock:
            rows = self._db.execute("SELECT author, seq, encoded, mac FROM entries WHERE kind = ?", (kind,)).fetchall()
        return [self._checked(row) for row in rows]

    @_reading
    def entry_id(self, author: bytes, seq: int) -> bytes | None:
        """The stored ID of ``author``'s entry ``seq`` (MAC checked), if stored."""
        with self._lock:
            row = self._db.execute("SELECT id, mac FROM entries WHERE author = ? AND seq = ?", (author, seq)).fetchone()
        if row is None:
            return None
        if self._entry_mac(author, seq, bytes(row[0])) != bytes(row[1]):
            raise LocalCopyError(f"stored entry {seq} of {author.hex()[:12]} was changed or is not this mount's")
        return bytes(row[0])

    @_reading
    def ops(self, cutoffs: Mapping[bytes, int]) -> list[tuple[int, Op]]:
        """Every stored op of the volume that counts (seq below its author's cutoff), as (seq, op), in fold order."""
        with self._lock:
            rows = self._db.execute("SELECT hlc, author, key, idx, id, seq, batched, op, mac FROM ops "
                                    "ORDER BY hlc, author, key, idx").fetchall()
        out: list[tuple[int, Op]] = []
        huge = 1 << 62
        for hlc, author_raw, key_raw, index, id_raw, seq, batched, raw, mac in rows:
            author, key, entry_id = bytes(author_raw), bytes(key_raw), bytes(id_raw)
            raw = bytes(raw) if raw is not None else None
            if self._op_mac(hlc, author, key, index, entry_id, seq, batched, raw) != bytes(mac):
                raise LocalCopyError("a stored op was changed or is not this mount's")
            if raw is None or seq >= cutoffs.get(author, huge):
                continue
            try:
                message = cbor2.loads(raw)
                # The identity the live fold gives the op (``log.entry_ops``), derived again.
                if batched:
                    op = batch_op(author, seq, hlc, index, message)
                    if op.batch != key:
                        raise ValueError("a batched op's key is not its entry's")
                elif key == entry_id and index == 0:
                    op = Op(entry_id, hlc, author, message["kind"], message["args"])
                else:
                    raise ValueError("a single op is not named by its entry")
            except (cbor2.CBORError, KeyError, TypeError, ValueError) as exc:
                raise LocalCopyError(f"a stored op does not decode: {exc}") from None
            out.append((seq, op))
        return out

    @_reading
    def counts(self) -> tuple[int, int]:
        """(entries, ops) stored: for status and tests."""
        with self._lock:
            entries = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            ops = self._db.execute("SELECT COUNT(*) FROM ops").fetchone()[0]
        return entries, ops
