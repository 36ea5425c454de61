"""The storage peer: verifies, durably stores and serves slivers, signs confirmations.

Each protocol handler parses and validates its request, does disk, SQLite and hashing work
in worker threads (never on the trio loop, which also carries every other stream), and
answers with an error reply naming the problem for anything malformed, so one bad request
never disturbs the others. Pair uploads are written to disk chunk by chunk as they arrive,
so the sender's Yamux window never stalls.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2p.framing import EndOfStream, FrameReader
from p2p.host import guard_of, running_host
from p2p.limits import Guard, Limits, Overloaded
from p2p.rpc import serve

from .. import __version__
from ..core import messages as m
from ..core.certificates import sign_confirmation
from ..core.committee import Committee
from ..core.errors import CodecError, VerificationError
from ..core.lifecycle import Registration
from ..core.log import CHALLENGE_KINDS
from ..core.metadata import BlobId, BlobMetadata
from ..core.redstuff import Axis, pair_index, symbols_from_parts, verify_symbols
from ..core.rounds import recent_rounds
from ..core.wire import MessageError, decode, encode, field, uint
from ..identity import Identity
from .access import Access, AccessError
from .challenges import DEFAULT_SAMPLE, REMOTE_PEER, Challenges
from .epochs import Epochs
from .healing import (
    SCRUB_PAUSE,
    SCRUB_RATE,
    Healer,
    pair_problem,
    stored_recovery_symbol,
)
from .invalidity import InvalidBlobs
from .metrics import PeerMetrics
from .replication import LogService
from .store import MIN_FREE, DiskFull, PeerStore, write_all, writing

log = logging.getLogger("walrusfs.peer")

#: Incoming pairs are written to disk in blocks this large, at most this many queued.
_SPOOL_BLOCK = 4 << 20
_SPOOL_BLOCKS = 4


#: blob-status verification results kept (one per stored pair asked about, least recently used dropped).
_VERIFIED_CACHE = 65536


#: Values a hostile member puts where honest fields belong.
_JUNK: list[Any] = [
    0, -1, 2**63, 2**64 - 1, "x", "", b"", b"\x00" * 7, b"\xff" * 33, [], [1, 2, 3], [[[[[]]]]], {}, {"a": 1},
    {"0": [b"x"]}, None, True, 1.5, float("inf"), [b"junk"] * 3, [encode({"v": 1, "author": 5, "seq": "x"})],
    [[0, b"\x01" * 32]], {"ff" * 32: [1, 2]}, {"zz": "not hex"},
]


def hostile_reply(rng: random.Random, header: bytes, body: bytes) -> tuple[bytes, bytes]:
    """A hostile version of an honest reply (test fault): the same fields with junk in them, or junk outright."""
    choice = rng.random()
    if choice < 0.1:
        return rng.randbytes(rng.randrange(1, 64)), b""
    if choice < 0.2:
        return header, rng.randbytes(len(body)) if body else rng.randbytes(100)
    try:
        fields = decode(header, m.MAX_HEADER)
    except CodecError:
        fields = {}
    fields = {"v": 1, "ok": True, **fields}
    for name in list(fields):
        if name not in ("v", "ok") and rng.random() < 0.7:
            fields[name] = rng.choice(_JUNK)
    return encode(fields), body


def hostile_entry(rng: random.Random, key: Any) -> bytes:
    """A junk log entry (test fault): random bytes, or signed by ``key`` with junk in its fields."""
    from ..core.log import GENESIS, NAMESPACE, sign_entry

    choice = rng.random()
    if choice < 0.2:
        return rng.randbytes(rng.randrange(0, 200))
    kind = rng.choice(["blob-certified", "blob-invalid", NAMESPACE, *sorted(CHALLENGE_KINDS), "committee-change", "x"])
    payload = {name: rng.choice(_JUNK) for name in rng.sample(
        ["blob_id", "signers", "signatures", "length", "round", "heads", "commits", "start", "volume", "op", "sealed",
         "delegation", "verdicts", "secret"], rng.randrange(0, 6))}
    seq = rng.choice([1, 2, 2**62, rng.randrange(1, 1000)])
    stamp = rng.choice([0, 1, 2**63 - 1, rng.randrange(0, 2**63)])
    prev = rng.choice([GENESIS, rng.randbytes(32)])
    try:
        entry = sign_entry(key, seq, prev, stamp, kind, payload).encode()
    except (CodecError, ValueError, TypeError):
        return rng.randbytes(64)
    if choice < 0.35:  # a signature that does not match
        entry = entry[:-1] + bytes([entry[-1] ^ 1])
    return entry


class Fault(enum.Enum):
    """Test-only misbehaviour, to show that clients withstand up to f lying peers."""

    CORRUPT_SLIVERS = "corrupt-slivers"
    WRONG_METADATA = "wrong-metadata"
    BAD_CONFIRMATIONS = "bad-confirmations"
    #: Storage challenges: drop 10% of the stored pairs when a round starts and never heal
    #: (a peer saving space); the same, also trying to fetch the data back mid-round; and
    #: an honest peer whose proofs and attestations each take SLOW_SECONDS longer, and
    #: which sends no proof at all while the file HOLD_FILE exists in its directory (so a
    #: test can keep a round open for exactly as long as it needs, with no race).
    DISCARD = "discard-tenth"
    DISCARD_FETCH = "discard-tenth-fetch"
    SLOW = "slow-challenge"
    #: Asynchrony drills: accept connections and requests and never answer any (a paused
    #: machine, or an adversary that holds connections open); answer everything, each
    #: reply SLOW_REPLY seconds late and its body as if sent at SLOW_RATE bytes/s.
    STALL = "stall"
    SLOW_REPLIES = "slow"
    #: A malicious member: every reply is replaced by a hostile one made from the honest
    #: reply (fields of the wrong type, shape or size, junk entries, junk bodies, junk
    #: headers), and once a second it pushes every other member junk log entries (random
    #: bytes, or signed by it with junk fields, impossible stamps or a broken signature),
    #: so clients, mounts and honest peers show they survive it.
    HOSTILE = "hostile"


#: Overrides of the resource limits (p2p.limits.Limits), "name=value,...": operators' tuning, tests' smaller caps.
LIMITS_ENV = "WALRUSFS_LIMITS"

SLOW_SECONDS = 3.0
SLOW_REPLY = 1.0
SLOW_RATE = 1_000_000  # bytes per second
HOLD_FILE = "hold-challenge"


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _flip(data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


class PeerService:
    """Protocol handlers of one peer over its store."""

    def __init__(
        self, identity: Identity, committee: Committee, store: PeerStore, fault: Fault | None = None,
        scrub_rate: int = SCRUB_RATE, scrub_pause: float = SCRUB_PAUSE, *, challenge_every: int = 0,
        challenge_sample: int = DEFAULT_SAMPLE, metrics: PeerMetrics | None = None,
    ) -> None:
        self.identity = identity
        self.committee = committee
        self.store = store
        self.fault = fault
        self._hostile_rng = random.Random(identity.peer_id)
        self.index = committee.index_of(identity.peer_id)
        self.log = LogService(identity, committee, store, self.index)
        self.shards = frozenset(committee.peers[self.index].shards)
        self.n = committee.n_shards
        self.healer = Healer(committee, store, self.index, self.log.state, self._inconsistent, scrub_rate, scrub_pause)
        self.invalid = InvalidBlobs(identity, committee, store, self.index, self.log, self.healer.metadata)
        discarding = fault in (Fault.DISCARD, Fault.DISCARD_FETCH)
        self.challenges = Challenges(
            identity, committee, store, self.index, self.log, self.healer,
            every=challenge_every, sample=challenge_sample, slow=SLOW_SECONDS if fault is Fault.SLOW else 0.0,
            hold=store.directory / HOLD_FILE if fault is Fault.SLOW else None, fetch_missing=fault is Fault.DISCARD_FETCH,
            discard=0.1 if discarding else 0.0,
        )
        self.heal_in_background = not discarding
        #: (blob ID, pair) -> (the pair file's stamp when verified, whether it was valid). A
        #: blob-status answer re-verifies a pair only once its file has changed, so asking
        #: again costs a stat, not a read and hash of the whole pair.
        self._verified: OrderedDict[tuple[bytes, int], tuple[tuple[int, int, int, int], bool]] = OrderedDict()
        #: Verifications blob-status starts run one at a time: one core at most, whoever asks.
        self._verify_limit = trio.CapacityLimiter(1)
        self._guard: Guard | None = None
        self.access = Access(committee, store, self.log)
        self.epochs = Epochs(identity, committee, self.index, self.log)
        self.log.listeners += [self.epochs.on_entry, self.healer.on_entry, self.invalid.on_entry, self.challenges.on_entry,
                               self.access.on_entry]
        #: Counted whether or not they are served (``--metrics``): a few increments per request.
        self.metrics = metrics or PeerMetrics()
        self.metrics.watch(self)

    async def _inconsistent(self, blob_id: BlobId, metadata: BlobMetadata, proof: Any) -> None:
        await self.invalid.report(blob_id, metadata, proof)

    def _check_valid(self, blob_id: BlobId) -> None:
        entry = self.log.state.invalid_entry(blob_id)
        if entry is not None:
            raise _Reject(m.BLOB_INVALID, f"blob {blob_id} is certified invalid (log entry {entry.id.hex()})")

    def _check_unchallenged(self, blob_id: BlobId) -> None:
        why = self.challenges.check_serving(blob_id)
        if why is not None:
            raise _Reject(m.CHALLENGED, why)

    async def run(self, host: Any) -> None:
        """Replication, healing, scrubbing and deleting invalid blobs; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.log.run, host)
            nursery.start_soon(self.healer.run, host, self.heal_in_background)
            nursery.start_soon(self.invalid.run, host)
            nursery.start_soon(self.challenges.run, host)
            nursery.start_soon(self.access.run)
            nursery.start_soon(self.epochs.run, host)
            if self.fault is Fault.HOSTILE:
                nursery.start_soon(self._hostile_pushes, host)

    async def _hostile_pushes(self, host: Any) -> None:
        """Test fault: push generated junk entries to every other member, once a second."""
        from ..client.members import call_member

        rng = self._hostile_rng
        others = [k for k in range(len(self.committee.peers)) if k != self.index]
        while True:
            await trio.sleep(1.0)
            for peer in others:
                entries = [hostile_entry(rng, self.identity.signing_key) for _ in range(rng.randrange(1, 8))]
                try:
                    with trio.move_on_after(5):
                        await call_member(host, self.committee, peer, m.LOG_PUSH, max_body=0, entries=entries)
                except Exception as exc:  # noqa: BLE001 - whatever they answer, the liar goes on lying
                    log.debug("hostile push to %d: %s", peer, exc)

    def register(self, host: Any) -> None:
        """Serve every storage protocol on ``host``."""
        self._guard = guard_of(host)
        handlers: dict[str, Callable[[dict[str, Any], FrameReader], Awaitable[tuple[bytes, bytes]]]] = {
            m.PUT_METADATA: self._put_metadata,
            m.PUT_PAIR: self._put_pair,
            m.GET_CONFIRMATION: self._get_confirmation,
            m.GET_METADATA: self._get_metadata,
            m.GET_SLIVER: self._get_sliver,
            m.GET_RECOVERY_SYMBOL: self._get_recovery_symbol,
            m.GET_STATUS: self._status,
            m.GET_BLOB_STATUS: self._blob_status,
            **self.log.handlers(),
            **self.invalid.handlers(),
            **self.challenges.handlers(),
            **self.epochs.handlers(),
            m.AUDIT_LOG: self._audit_log,
        }
        for protocol, handler in handlers.items():
            serve(host, protocol, self._counted(protocol, self._guarded(handler)), self._frame_error(protocol))

    def _counted(self, protocol: str, handler: Callable[[FrameReader, str], Awaitable[tuple[bytes, bytes]]]
                 ) -> Callable[[FrameReader, str], Awaitable[tuple[bytes, bytes]]]:
        """``handler`` with each answered request counted in the metrics (bytes in and out, outcome)."""
        metrics = self.metrics

        async def run(reader: FrameReader, remote: str) -> tuple[bytes, bytes]:
            before = reader.received
            try:
                header, body = await handler(reader, remote)
            finally:
                metrics.arrived(protocol, reader.received - before)  # refused or broken off: counted too
            metrics.answered(protocol, header, body)
            return header, body

        return run

    def _frame_error(self, protocol: str) -> Callable[[Exception], bytes]:
        """``_frame_error`` for ``protocol``, counting the refusal in the metrics."""
        def on_error(exc: Exception) -> bytes:
            if not isinstance(exc, EndOfStream):
                self.metrics.refused(protocol, m.BUSY if isinstance(exc, Overloaded) else m.MALFORMED)
            return _frame_error(exc)

        return on_error

    def _guarded(
        self, handler: Callable[[dict[str, Any], FrameReader], Awaitable[tuple[bytes, bytes]]]
    ) -> Callable[[FrameReader, str], Awaitable[tuple[bytes, bytes]]]:
        async def run(reader: FrameReader, remote: str) -> tuple[bytes, bytes]:
            if self.fault is Fault.STALL:
                # Take the request and never answer: a peer hung while working on it (one that
                # never read would be reset by its own header deadline). Reading on ends the
                # stream once the requester gives up, or after the idle limit.
                await reader.read_header(m.MAX_HEADER)
                async for _ in reader.body_chunks(await reader.body_length(m.MAX_BODY)):
                    pass
                await reader.read_header(m.MAX_HEADER)
                await trio.sleep_forever()
            if self.fault is Fault.SLOW_REPLIES:
                await trio.sleep(SLOW_REPLY)
            try:
                request = m.parse_request(await reader.read_header(m.MAX_HEADER))
                request[REMOTE_PEER] = remote  # authenticated by the connection, overriding any sent field
                header, body = await handler(request, reader)
                if self.fault is Fault.SLOW_REPLIES:
                    await trio.sleep(len(body) / SLOW_RATE)  # as if sent over a thin link
                if self.fault is Fault.HOSTILE:
                    return hostile_reply(self._hostile_rng, header, body)
                return header, body
            except (_Reject, AccessError) as exc:
                return m.error(exc.code, str(exc)), b""
            except DiskFull as exc:
                return m.error(m.DISK_FULL, str(exc)), b""
            except MessageError as exc:
                return m.error(m.MALFORMED, str(exc)), b""
            except VerificationError as exc:
                return m.error(m.INVALID, str(exc)), b""
            except CodecError as exc:
                return m.error(m.MALFORMED, str(exc)), b""

        return run

    async def _no_body(self, reader: FrameReader) -> None:
        await reader.body_length(0)

    async def _metadata(self, blob_id: BlobId) -> BlobMetadata:
        metadata = await trio.to_thread.run_sync(self.store.get_metadata, blob_id, self.n)
        if metadata is None:
            raise _Reject(m.NOT_FOUND, f"no metadata for blob {blob_id}")
        return metadata

    def _check_pair_is_mine(self, blob_id: BlobId, pair: int) -> None:
        shard = blob_id.shard_for_pair(pair, self.n)
        if shard not in self.shards:
            raise _Reject(m.NOT_ASSIGNED, f"pair {pair} of blob {blob_id} belongs to shard {shard}, not this peer")

    def _registration(self, request: dict[str, Any]) -> Registration:
        """The registration a storage request carries, parsed (its signatures are not checked yet)."""
        return Registration.from_wire(field(request, "registration", dict), verify=False)

    async def _put_metadata(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blob_id = m.blob_id_field(request)
        wire = field(request, "metadata", dict)
        metadata = m.metadata_from_wire(wire, self.n)
        registration = self._registration(request)
        # An account that could not store anyway is refused before the costly checks.
        self.access.precheck(registration)
        await trio.to_thread.run_sync(Registration.from_wire, request["registration"])  # the signatures
        await trio.to_thread.run_sync(metadata.verify, blob_id)
        self.access.admit(registration, blob_id, metadata)
        await trio.to_thread.run_sync(self.store.check_room, 0)
        await trio.to_thread.run_sync(self.store.put_metadata, blob_id, metadata)
        return m.ok(), b""

    async def _put_pair(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        blob_id = m.blob_id_field(request)
        pair = uint(request, "pair", self.n)
        self._check_pair_is_mine(blob_id, pair)
        self._check_valid(blob_id)
        self.access.check_receiving(blob_id)
        metadata = await self._metadata(blob_id)
        config = metadata.config
        size = metadata.symbol_size
        primary_length = config.secondary_source_symbols * size
        expected = primary_length + config.primary_source_symbols * size
        length = await reader.body_length(m.MAX_BODY)
        if length != expected:
            raise _Reject(m.MALFORMED, f"a sliver pair of this blob is {expected} bytes, got {length}")
        reader.admit()  # an upload of a registered blob this peer must store: its buffers are reused soon
        try:
            await trio.to_thread.run_sync(self.store.check_room, length)
        except DiskFull:
            # Drained, not stored, so the stream stays usable for the writer's next request.
            async for _ in reader.body_chunks(length):
                pass
            raise
        path = self.store.spool_path()
        try:
            with writing("receiving a sliver pair"):
                parts = await self._spool(reader, length, path)

            def verify_and_commit() -> None:
                # The symbols are cut from the chunks as they arrived: the pair is never joined.
                symbols = symbols_from_parts(parts, size, config.secondary_source_symbols
                                             + config.primary_source_symbols)
                parts.clear()
                s = config.secondary_source_symbols
                verify_symbols(metadata, Axis.PRIMARY, pair, symbols[:s])
                verify_symbols(metadata, Axis.SECONDARY, pair_index(Axis.SECONDARY, pair, self.n), symbols[s:])
                del symbols
                self.store.commit_pair(blob_id, pair, path, primary_length)

            await trio.to_thread.run_sync(verify_and_commit)
        finally:
            if path.exists():
                path.unlink()
        return m.ok(), b""

    async def _spool(self, reader: FrameReader, length: int, path: Path) -> list[bytes]:
        """Drain a body to ``path`` and return it as the chunks it arrived in: one task reads, another writes.

        Reading never waits for the disk (a stalled reader stalls the sender's Yamux
        window, and 5 s of it resets the stream). The chunks are also kept, because
        verification needs the whole pair in memory anyway; reading it back would cost a
        copy, and so would joining them (a pair is larger than the allocator's reuse limit,
        so every join of one is page-faulted in afresh).
        """
        send, receive = trio.open_memory_channel[list[bytes]](_SPOOL_BLOCKS)
        fd = await trio.to_thread.run_sync(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async with trio.open_nursery() as nursery:

                async def write_blocks() -> None:
                    async with receive:
                        async for block in receive:
                            await trio.to_thread.run_sync(write_all, fd, block)

                nursery.start_soon(write_blocks)
                parts: list[bytes] = []
                async with send:
                    pending: list[bytes] = []
                    pending_size = 0
                    async for chunk in reader.body_chunks(length):
                        parts.append(chunk)
                        pending.append(chunk)
                        pending_size += len(chunk)
                        if pending_size >= _SPOOL_BLOCK:
                            await send.send(pending)
                            pending, pending_size = [], 0
                    if pending:
                        await send.send(pending)
        finally:
            await trio.to_thread.run_sync(os.close, fd)
        return parts
    async def _get_confirmation(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blob_id = m.blob_id_field(request)
        self._check_valid(blob_id)
        registration = self._registration(request)
        if registration.blob_id != blob_id:
            raise _Reject(m.MALFORMED, "the registration is for another blob")
        # Matched by ID against an admitted upload or a certified registration: both were
        # verified, and the ID hashes every signed byte, so no signature is checked here.
        self.access.check_confirming(registration)
        epoch = self.committee.epoch
        # Signed afresh for each request (microseconds): a deletable blob's confirmation names
        # its registration (the object ID), so a recorded one may be for another registration.
        object_id = registration.object_id
        pairs = [blob_id.pair_for_shard(shard, self.n) for shard in sorted(self.shards)]
        stored = await trio.to_thread.run_sync(self.store.stored_pairs, blob_id)
        missing = [p for p in pairs if p not in stored]
        if missing:
            raise _Reject(m.NOT_FOUND, f"blob {blob_id}: sliver pairs {missing} are not stored here yet")
        signature = sign_confirmation(self.identity.signing_key, epoch, blob_id, object_id)
        # Recorded so blob-status can say this peer confirmed the blob.
        await trio.to_thread.run_sync(self.store.put_confirmation, blob_id, epoch, signature)
        if self.fault is Fault.BAD_CONFIRMATIONS:
            signature = _flip(signature)
        return m.ok(epoch=epoch, signature=signature), b""

    async def _get_metadata(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blob_id = m.blob_id_field(request)
        self.access.check_serving(blob_id)
        metadata = m.metadata_to_wire(await self._metadata(blob_id))
        if self.fault is Fault.WRONG_METADATA:
            metadata["hashes"][0][0] = _flip(metadata["hashes"][0][0])
        # Readers learn at once, with proof they can check, that no bytes will come.
        invalid = self.log.state.invalid_entry(blob_id)
        return m.ok(metadata=metadata, invalid=invalid.encode() if invalid else None), b""

    async def _get_sliver(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blob_id = m.blob_id_field(request)
        axis = m.axis_field(request)
        index = uint(request, "index", self.n)
        pair = pair_index(axis, index, self.n)
        self._check_pair_is_mine(blob_id, pair)
        self._check_valid(blob_id)
        self.access.check_serving(blob_id)
        self._check_unchallenged(blob_id)
        data = await trio.to_thread.run_sync(self.store.read_sliver, blob_id, pair, axis)
        if data is None:
            raise _Reject(m.NOT_FOUND, f"{axis.value} sliver {index} of blob {blob_id} is not stored here")
        if self.fault is Fault.CORRUPT_SLIVERS:
            data = _flip(data)
        return m.ok(), data

    async def _get_recovery_symbol(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blob_id = m.blob_id_field(request)
        target = m.axis_field(request, "target")
        target_index = uint(request, "target_index", self.n)
        pair = uint(request, "pair", self.n)
        self._check_pair_is_mine(blob_id, pair)
        self._check_valid(blob_id)
        self.access.check_serving(blob_id)
        self._check_unchallenged(blob_id)
        metadata = await self._metadata(blob_id)
        symbol = await trio.to_thread.run_sync(
            stored_recovery_symbol, self.store, metadata, blob_id, pair, target, target_index
        )
        if symbol is None:
            raise _Reject(m.NOT_FOUND, f"pair {pair} of blob {blob_id} is not stored here")
        return m.ok(source_index=symbol.source_index, proof=list(symbol.proof)), symbol.data

    async def _status(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blobs, stored = await trio.to_thread.run_sync(self.store.stats)
        free = await trio.to_thread.run_sync(self.store.free_bytes)
        pairs = await trio.to_thread.run_sync(self.store.all_pairs)
        detail = request.get("detail") is True
        return m.ok(
            peer_id=self.identity.peer_id, version=__version__, epoch=self.committee.epoch,
            shards=sorted(self.shards), n_shards=self.n, blobs=blobs, stored_bytes=stored, free_bytes=free,
            disk_full=free < self.store.min_free,
            healing=self.healer.counts(pairs), recent_heals=self.healer.recent() if detail else None,
            challenge=self.challenges.status(detail), limits=self._guard.status() if self._guard else None,
            storage=await self._storage_status(detail),
        ), b""

    async def _storage_status(self, detail: bool) -> dict[str, Any]:
        """The storage epoch (with the entry proving it), space given back, and (``detail``) usage per account."""
        state = self.log.state
        ledger = state.ledger
        out: dict[str, Any] = {
            "epoch": ledger.epoch, "epoch_entry": state.epoch_entry.encode() if state.epoch_entry else None,
            "epoch_seconds": self.committee.epoch_ms // 1000,
            "reclaimed_bytes": await trio.to_thread.run_sync(self.store.counter, "reclaimed"),
            "released_blobs": self.access.released_blobs, "pending_uploads": len(self.access.uploads),
            "grants": len(ledger.grants), "revoked": len(ledger.revoked),
        }
        if detail:
            usage = ledger.usage_by_account()  # on the loop: the ledger changes there
            accounts = sorted(set(usage) | set(ledger.grants), key=lambda a: -usage.get(a, 0))[:100]
            out["accounts"] = [{"account": a.hex(), "used": usage.get(a, 0), "quota": ledger.quota(a)}
                               for a in accounts]
        return out

    async def _audit_log(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        entries, more = recent_rounds(self.log.state.counted(), m.reply_budget())
        return m.ok(entries=entries, more=more), b""

    async def _pair_valid(self, blob_id: BlobId, metadata: BlobMetadata, pair: int) -> bool:
        """Whether a stored pair verifies against its metadata now, verifying only if its file changed since last time."""
        key = (blob_id.raw, pair)
        stamp = await trio.to_thread.run_sync(self.store.pair_stamp, blob_id, pair)
        if stamp is None:
            return False
        cached = self._verified.get(key)
        if cached is not None and cached[0] == stamp:
            self._verified.move_to_end(key)
            return cached[1]

        def verify() -> tuple[tuple[int, int, int, int], bool] | None:
            # Stamp first: a rewrite during the read leaves an older stamp, verified again next time.
            before = self.store.pair_stamp(blob_id, pair)
            stored = self.store.read_pair(blob_id, pair)
            if before is None or stored is None:
                return None
            return before, pair_problem(metadata, pair, *stored) is None

        async with self._verify_limit:
            result = await trio.to_thread.run_sync(verify)
        if result is None:
            return False
        self._verified[key] = result
        self._verified.move_to_end(key)
        while len(self._verified) > _VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return result[1]

    async def _blob_status(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await self._no_body(reader)
        blob_id = m.blob_id_field(request)
        metadata = await trio.to_thread.run_sync(self.store.get_metadata, blob_id, self.n)
        pairs = await trio.to_thread.run_sync(self.store.stored_pairs, blob_id)
        confirmed = await trio.to_thread.run_sync(self.store.get_confirmation, blob_id, self.committee.epoch)
        valid = []
        if metadata is not None:
            for pair in pairs:
                if await self._pair_valid(blob_id, metadata, pair):
                    valid.append(pair)
        invalid = self.log.state.invalid_entry(blob_id)
        held = confirmed is not None
        if not held and metadata is not None:
            # A confirmation names its registration and is signed afresh for each (a recorded
            # one may be another's): this peer confirms a live blob whenever it holds its pairs.
            ledger = self.log.state.ledger
            assigned = {blob_id.pair_for_shard(shard, self.n) for shard in self.shards}
            held = assigned <= set(valid) and any(h.live(ledger.epoch) for h in ledger.registrations(blob_id))
        return m.ok(metadata=metadata is not None, pairs=pairs, valid_pairs=valid, confirmed=held,
                    healing=self.healer.is_healing(blob_id), invalid=invalid.id if invalid else None), b""


def _frame_error(exc: Exception) -> bytes:
    """The error reply to a request the framing layer refused: over a resource limit, or malformed."""
    return m.error(m.BUSY if isinstance(exc, Overloaded) else m.MALFORMED, str(exc))


def _say(text: str) -> None:
    """Print a line to the peer's log; a log on a full disk must not stop the peer."""
    try:
        print(text, flush=True)
    except OSError:
        pass


async def run_peer(
    directory: Path, identity: Identity, committee: Committee, fault: Fault | None = None,
    scrub_rate: int = SCRUB_RATE, scrub_pause: float = SCRUB_PAUSE, *, challenge_every: int = 0,
    challenge_sample: int = DEFAULT_SAMPLE, min_free: int = MIN_FREE, metrics: PeerMetrics | None = None,
) -> None:
    """Serve as a committee peer until SIGTERM or SIGINT, then close cleanly.

    ``metrics`` is the registry a metrics server (started by the caller) shows.
    """
    store = await trio.to_thread.run_sync(PeerStore, directory, min_free)
    service = PeerService(identity, committee, store, fault, scrub_rate, scrub_pause,
                          challenge_every=challenge_every, challenge_sample=challenge_sample, metrics=metrics)
    await service.log.load()
    service.challenges.load()
    me = committee.peers[service.index]
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            # Committee members have reserved connection slots and stream/byte allowances.
            members = [peer.peer_id for peer in committee.peers]
            limits = Limits.parse(os.environ.get(LIMITS_ENV, ""))
            async with running_host(identity.seed, me.addrs, members, limits) as host, trio.open_nursery() as nursery:
                service.register(host)
                nursery.start_soon(service.run, host)
                addrs = ", ".join(str(a) for a in host.get_addrs())
                _say(f"walrusfs peer {identity.peer_id} serving shards {sorted(service.shards)} on {addrs}"
                     + (f" [TEST FAULT: {fault.value}]" if fault else ""))
                async for signum in signals:
                    _say(f"walrusfs peer: {signal.Signals(signum).name}, shutting down")
                    break
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    os.sync()
