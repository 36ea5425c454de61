"""Self-healing on a peer: rebuild missing or damaged sliver pairs from recovery symbols.

The peer follows the log. Every certified blob assigns it one sliver pair per shard it
holds; a pair that is missing (the peer was down, its disk was wiped, the writer stopped
after the quorum) or that the scrubber found damaged is rebuilt in the background:

- metadata from any peer, accepted only if it matches the blob ID;
- for primary sliver i, symbol i of s = 2f + 1 other pairs' secondary slivers, and for
  secondary sliver n-1-i, symbol n-1-i of p = f + 1 other pairs' primary slivers, each
  checked against its Merkle proof; exactly as many requests run as symbols are needed,
  and each failure starts one more, so a pair costs about one pair's worth of bytes;
- decode, check the result against the metadata, store it durably (fsync, rename).

A rebuilt sliver that contradicts its commitment means the writer encoded inconsistently:
the verified symbols are an inconsistency proof, handed to ``InvalidBlobs``.

Work is bounded (blobs healed at once, symbol requests in flight, one decoding thread) and
never holds up serving: the handlers keep answering for what the peer has. Nothing is kept
about healing on disk: at start-up the peer compares the certified blobs in its log with
the pairs it stores, so healing resumes after a restart. The scrubber re-reads every stored
pair at a bounded rate, verifies it, and hands damaged ones (bit rot, truncation, a deleted
file) to the healer.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2p.host import IHost
from p2p.rpc import PeerUnavailable

from ..client.members import SessionPool, call_member, member_fault
from ..core import messages as m
from ..core.committee import Committee
from ..core.errors import (
    CodecError,
    InconsistentBlob,
    InvalidParameter,
    NotEnoughSymbols,
    VerificationError,
)
from ..core.log import BLOB_CERTIFIED, BLOB_INVALID, Entry, shown_millis
from ..core.metadata import BlobId, BlobMetadata
from ..core.recovery import (
    InconsistencyProof,
    RecoverySymbol,
    needed_symbols,
    rebuild_sliver,
    recovery_symbol,
    verify_recovery_symbol,
)
from ..core.redstuff import Axis, Sliver, pair_index, verify_sliver
from ..core.wire import encode
from .store import DiskFull, PeerStore

log = logging.getLogger("walrusfs.healing")

#: Blobs healed at once, and recovery-symbol requests in flight across all of them.
HEAL_BLOBS = 4
HEAL_STREAMS = 16
#: A freshly certified blob is checked this long after its entry arrives: the writer is
#: usually still delivering this peer's pair (it returns at the quorum and keeps sending).
SETTLE_DELAY = 5.0
#: Liveness only: a recovery-symbol request silent this long lets the next candidate
#: start (it keeps running), and any healing call silent for CALL_LIMIT is given up.
SYMBOL_HEDGE = 2.0
CALL_LIMIT = 30.0
#: A heal that could not finish (too few peers answered) is retried after this, doubling.
RETRY_FIRST, RETRY_MAX = 2.0, 60.0
#: While the disk is full, blobs to heal are looked at again this often (checking costs
#: nothing: free space is checked before anything is fetched).
DISK_FULL_RETRY = 5.0
#: Scrubber defaults: verified bytes per second, and the pause between full passes.
SCRUB_RATE = 8 << 20
SCRUB_PAUSE = 300.0
#: Recent heals kept for ``health --detail`` and the tests.
RECENT = 256


@dataclass
class HealRecord:
    """What healing one blob's pairs cost."""

    blob_id: str
    pairs: list[int]
    pair_bytes: int  # bytes of the rebuilt slivers
    downloaded: int  # bytes received for them: symbols, proofs and headers
    metadata_bytes: int  # bytes received for the metadata (0 if it was held)
    seconds: float


@dataclass
class HealStats:
    """Counters the peer reports in its status."""

    healed_blobs: int = 0
    healed_pairs: int = 0
    rebuilt_bytes: int = 0
    downloaded_bytes: int = 0
    metadata_bytes: int = 0
    failed_attempts: int = 0
    inconsistent: int = 0
    last_error: str = ""
    scrub_passes: int = 0
    scrub_checked: int = 0
    scrub_total: int = 0
    scrub_damaged: int = 0
    scrub_bytes: int = 0
    recent: deque[HealRecord] = field(default_factory=lambda: deque(maxlen=RECENT))


def pair_problem(metadata: BlobMetadata, pair: int, data: bytes, primary_length: int) -> str | None:
    """Why a stored pair (primary sliver then secondary) fails verification, or None if it is valid."""
    config, size = metadata.config, metadata.symbol_size
    expected = (config.secondary_source_symbols + config.primary_source_symbols) * size
    if len(data) != expected or primary_length != config.secondary_source_symbols * size:
        return f"{len(data)} bytes on disk, {expected} expected"
    try:
        verify_sliver(metadata, Sliver(Axis.PRIMARY, pair, size, data[:primary_length]))
        verify_sliver(metadata, Sliver(Axis.SECONDARY, pair_index(Axis.SECONDARY, pair, config.n_shards), size,
                                       data[primary_length:]))
    except (VerificationError, InvalidParameter) as exc:
        return str(exc)
    return None


def stored_recovery_symbol(
    store: PeerStore, metadata: BlobMetadata, blob_id: BlobId, pair: int, target: Axis, target_index: int
) -> RecoverySymbol | None:
    """The recovery symbol stored pair ``pair`` gives towards sliver ``target_index`` on ``target``, or None.

    Blocking (disk, Reed-Solomon, hashing): call it from a worker thread.
    """
    n = metadata.config.n_shards
    source_axis = Axis.SECONDARY if target is Axis.PRIMARY else Axis.PRIMARY
    data = store.read_sliver(blob_id, pair, source_axis)
    if data is None:
        return None
    sliver = Sliver(source_axis, pair_index(source_axis, pair, n), metadata.symbol_size, data)
    return recovery_symbol(metadata.config, sliver, target_index)


class _Counter:
    """Bytes received over the network while healing one blob."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, reply: dict[str, Any], body: bytes) -> None:
        self.total += len(encode(reply)) + len(body)


class Healer:
    """Keeps one peer's sliver pairs complete and verified."""

    def __init__(
        self, committee: Committee, store: PeerStore, index: int, log_state: Any,
        on_inconsistent: Callable[[BlobId, BlobMetadata, InconsistencyProof], Awaitable[None]],
        scrub_rate: int = SCRUB_RATE, scrub_pause: float = SCRUB_PAUSE,
    ) -> None:
        self.committee = committee
        self.store = store
        self.index = index
        self.state = log_state
        self.on_inconsistent = on_inconsistent
        self.n = committee.n_shards
        self.shards = sorted(committee.peers[index].shards)
        self.scrub_rate = scrub_rate
        self.scrub_pause = scrub_pause
        self.stats = HealStats()
        #: blob -> earliest time (trio clock) to look at it again, and its retry delay.
        self._due: dict[BlobId, float] = {}
        self._retry: dict[BlobId, float] = {}
        self._healing: set[BlobId] = set()
        self._damaged: dict[BlobId, set[int]] = {}  # pairs the scrubber found bad
        self._wake = trio.Event()
        self._streams = trio.Semaphore(HEAL_STREAMS)
        # One decoding thread: healing a wiped peer must not starve the threads that serve.
        self._cpu = trio.CapacityLimiter(1)
        self.host: IHost | None = None
        self.pool: SessionPool | None = None

    # ------------------------------------------------------------------ what to heal

    def my_pairs(self, blob_id: BlobId) -> list[int]:
        """The sliver pairs of ``blob_id`` this peer's shards hold."""
        return sorted(blob_id.pair_for_shard(shard, self.n) for shard in self.shards)

    def wanted(self, blob_id: BlobId) -> bool:
        """Whether this peer should hold ``blob_id``: certified valid and some registration still holds it."""
        return self.state.invalid_entry(blob_id) is None and self.state.ledger.live(blob_id)

    def on_entry(self, entry: Entry) -> None:
        """Log listener: look at newly certified blobs after they settle; drop invalid ones."""
        if entry.kind == BLOB_CERTIFIED:
            # Only a blob certified moments ago waits; one learned while catching up is due now.
            # Age from the stamp, never negative: a stamp ahead of our clock (the log accepts
            # up to a minute) must not postpone healing beyond the settle delay.
            now = time.time()
            age = now - shown_millis(entry.hlc, int(now * 1000)) / 1000
            self._schedule(BlobId(entry.payload["blob_id"]), min(SETTLE_DELAY, max(0.0, SETTLE_DELAY - age)))
        elif entry.kind == BLOB_INVALID:
            blob_id = BlobId(entry.payload["blob_id"])
            self._due.pop(blob_id, None)
            self._damaged.pop(blob_id, None)

    def _schedule(self, blob_id: BlobId, delay: float = 0.0) -> None:
        due = trio.current_time() + delay
        if blob_id not in self._due or self._due[blob_id] > due:
            self._due[blob_id] = due
            # Wake every idle worker (each holds this event), then arm a fresh one.
            self._wake.set()
            self._wake = trio.Event()

    def mark_damaged(self, blob_id: BlobId, pair: int) -> None:
        """The scrubber found ``pair`` missing or failing verification: heal it now."""
        self._damaged.setdefault(blob_id, set()).add(pair)
        self._schedule(blob_id)

    def counts(self, stored: set[tuple[bytes, int]]) -> dict[str, Any]:
        """Certified blobs assigned here, held, missing (given the ``stored`` pairs), healing, and the counters."""
        certified = [b for b in self.state.certified() if self.wanted(b)]
        missing = sum(1 for b in certified if any((b.raw, p) not in stored for p in self.my_pairs(b)))
        s = self.stats
        return {
            "certified": len(certified), "held": len(certified) - missing, "missing": missing,
            "healing": len(self._healing), "queued": len(self._due), "healed": s.healed_blobs,
            "healed_pairs": s.healed_pairs, "rebuilt_bytes": s.rebuilt_bytes, "downloaded_bytes": s.downloaded_bytes,
            "metadata_bytes": s.metadata_bytes, "failed_attempts": s.failed_attempts, "inconsistent": s.inconsistent,
            "invalid": len(self.state.invalid()), "last_error": s.last_error,
            "scrub": {"passes": s.scrub_passes, "checked": s.scrub_checked, "total": s.scrub_total,
                      "damaged": s.scrub_damaged, "bytes": s.scrub_bytes, "rate": self.scrub_rate},
        }

    def backlog(self) -> tuple[int, int]:
        """(blobs waiting to be healed, blobs being healed): safe to call from another thread."""
        return len(self._due), len(self._healing)

    def recent(self) -> list[dict[str, Any]]:
        """The most recent heals and what each cost."""
        return [vars(r) for r in self.stats.recent]

    # ------------------------------------------------------------------ tasks

    async def run(self, host: IHost, background: bool = True) -> None:
        """Heal and scrub until cancelled (without ``background``, only ``heal`` calls run)."""
        self.host = host
        self.pool = SessionPool(host, self.committee)
        if not background:
            return
        # Resume: every certified blob whose pairs are not all here is due now.
        stored = await trio.to_thread.run_sync(self.store.all_pairs)
        for blob_id in self.state.certified():
            if self.wanted(blob_id) and any((blob_id.raw, p) not in stored for p in self.my_pairs(blob_id)):
                self._schedule(blob_id)
        async with trio.open_nursery() as nursery:
            for _ in range(HEAL_BLOBS):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._scrubber)

    async def _next_due(self) -> BlobId:
        while True:
            now = trio.current_time()
            ready = [(due, b) for b, due in self._due.items() if due <= now and b not in self._healing]
            if ready:
                blob_id = min(ready, key=lambda item: item[0])[1]
                del self._due[blob_id]
                if not self.wanted(blob_id):
                    continue  # invalid, expired or deleted since it was scheduled
                return blob_id
            later = [due for b, due in self._due.items() if b not in self._healing]
            wake = self._wake
            with trio.move_on_at(min(later) if later else now + 3600):
                await wake.wait()

    async def _worker(self) -> None:
        while True:
            blob_id = await self._next_due()
            self._healing.add(blob_id)
            try:
                await self.heal(blob_id)
                self._retry.pop(blob_id, None)
            except DiskFull as exc:
                self.stats.last_error = f"{blob_id}: {exc}"
                self._schedule(blob_id, DISK_FULL_RETRY)
            except (NotEnoughSymbols, PeerUnavailable, CodecError, OSError) as exc:
                self.stats.failed_attempts += 1
                self.stats.last_error = f"{blob_id}: {exc}"
                delay = min(self._retry.get(blob_id, RETRY_FIRST / 2) * 2, RETRY_MAX)
                self._retry[blob_id] = delay
                log.info("healing %s failed, retrying in %.0f s: %s", blob_id, delay, exc)
                self._schedule(blob_id, delay)
            except Exception as exc:  # noqa: BLE001 - one blob's heal never stops the healer
                log.exception("healing %s failed unexpectedly; retrying later", blob_id)
                self.stats.failed_attempts += 1
                self.stats.last_error = f"{blob_id}: {type(exc).__name__}: {exc}"
                self._retry[blob_id] = RETRY_MAX
                self._schedule(blob_id, RETRY_MAX)
            finally:
                self._healing.discard(blob_id)

    # ------------------------------------------------------------------ healing one blob

    async def metadata(self, blob_id: BlobId) -> BlobMetadata:
        """The blob's verified metadata, from here or from any peer."""
        return await self._metadata(blob_id, _Counter())

    def is_healing(self, blob_id: BlobId) -> bool:
        """Whether ``blob_id`` is being healed or waits to be."""
        return blob_id in self._healing or blob_id in self._due

    async def heal(self, blob_id: BlobId) -> HealRecord | None:
        """Rebuild whichever of this peer's pairs of ``blob_id`` are missing or damaged."""
        if self.state.invalid_entry(blob_id) is not None:
            return None
        damaged = self._damaged.get(blob_id, set())
        stored = set(await trio.to_thread.run_sync(self.store.stored_pairs, blob_id))
        wanted = [p for p in self.my_pairs(blob_id) if p not in stored or p in damaged]
        if not wanted:
            return None
        started = time.monotonic()
        await trio.to_thread.run_sync(self.store.check_room, 0)
        meta_counter, counter = _Counter(), _Counter()
        metadata = await self._metadata(blob_id, meta_counter)
        rebuilt_bytes = 0
        for pair in wanted:
            targets = [(Axis.PRIMARY, pair), (Axis.SECONDARY, pair_index(Axis.SECONDARY, pair, self.n))]
            slivers: dict[Axis, Sliver] = {}
            for axis, index in targets:
                try:
                    slivers[axis] = await self._rebuild(blob_id, metadata, axis, index, set(wanted), counter)
                except InconsistentBlob as exc:
                    self.stats.inconsistent += 1
                    log.warning("blob %s is inconsistent: %s", blob_id, exc)
                    await self.on_inconsistent(blob_id, metadata, exc.proof)  # type: ignore[arg-type]
                    return None
            primary, secondary = slivers[Axis.PRIMARY], slivers[Axis.SECONDARY]
            await trio.to_thread.run_sync(
                self.store.write_pair, blob_id, pair, primary.data + secondary.data, len(primary.data)
            )
            rebuilt_bytes += len(primary.data) + len(secondary.data)
            damaged.discard(pair)  # kept if a later pair of this blob fails
        self._damaged.pop(blob_id, None)
        record = HealRecord(str(blob_id), wanted, rebuilt_bytes, counter.total, meta_counter.total,
                            round(time.monotonic() - started, 3))
        s = self.stats
        s.healed_blobs += 1
        s.healed_pairs += len(wanted)
        s.rebuilt_bytes += rebuilt_bytes
        s.downloaded_bytes += counter.total
        s.metadata_bytes += meta_counter.total
        s.recent.append(record)
        log.info("healed %s pairs %s: %d bytes rebuilt from %d downloaded", blob_id, wanted, rebuilt_bytes,
                 counter.total)
        return record

    async def _call(self, peer: int, protocol: str, counter: _Counter, **fields: Any) -> tuple[dict[str, Any], bytes]:
        assert self.host is not None
        async with self._streams:
            with trio.move_on_after(CALL_LIMIT):
                reply, body = await call_member(self.host, self.committee, peer, protocol, pool=self.pool, **fields)
                counter.add(reply, body)
                return reply, body
        # A silent peer frees the stream slot; the heal goes on with others or is retried.
        raise PeerUnavailable(self.committee.peers[peer].peer_id, f"no answer within {CALL_LIMIT:.0f} s")

    async def _metadata(self, blob_id: BlobId, counter: _Counter) -> BlobMetadata:
        """The blob's metadata: ours, or the first peer's copy that matches the blob ID (then kept)."""
        held = await trio.to_thread.run_sync(self.store.get_metadata, blob_id, self.n)
        if held is not None:
            return held
        problems: list[str] = []
        found: list[BlobMetadata] = []
        others = [k for k in range(len(self.committee.peers)) if k != self.index]

        random.shuffle(others)

        # One peer at a time, the next one also asked when the last has failed or been
        # silent for SYMBOL_HEDGE seconds; the first copy that verifies wins. A silent peer
        # costs one hedge delay, and a healthy committee sends the metadata once.
        async def ask(peer: int, cancel: trio.CancelScope, answered: trio.Event) -> None:
            try:
                reply, _ = await self._call(peer, m.GET_METADATA, counter, blob_id=blob_id.raw)
                metadata = m.metadata_from_wire(reply.get("metadata"), self.n)
                await trio.to_thread.run_sync(metadata.verify, blob_id)
            except (PeerUnavailable, CodecError) as exc:
                problems.append(f"peer {peer}: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                problems.append(f"peer {peer}: {member_fault(peer, exc)}")
                return
            finally:
                answered.set()
            found.append(metadata)
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            for peer in others:
                answered = trio.Event()
                nursery.start_soon(ask, peer, nursery.cancel_scope, answered)
                with trio.move_on_after(SYMBOL_HEDGE):
                    await answered.wait()
        if found:
            await trio.to_thread.run_sync(self.store.put_metadata, blob_id, found[0])
            return found[0]
        raise NotEnoughSymbols(f"no peer gave metadata matching blob {blob_id}: {'; '.join(problems)}")

    async def _rebuild(
        self, blob_id: BlobId, metadata: BlobMetadata, target: Axis, target_index: int, skip: set[int], counter: _Counter
    ) -> Sliver:
        """Collect exactly the needed verified recovery symbols (one more per failure) and decode."""
        config = metadata.config
        needed = needed_symbols(config, target)
        source_axis = Axis.SECONDARY if target is Axis.PRIMARY else Axis.PRIMARY
        # Sources are the other pairs; the pair being rebuilt and our other damaged ones cannot help.
        candidates = [p for p in range(self.n) if p not in skip]
        random.shuffle(candidates)
        # Pairs held here (a peer with several shards) are read locally, first.
        local = [p for p in candidates if self.committee.shard_owner(blob_id.shard_for_pair(p, self.n)) == self.index]
        candidates = local + [p for p in candidates if p not in local]
        symbols: list[RecoverySymbol] = []
        failures: list[str] = []
        # Exactly ``needed`` requests run at first; each failure starts the next candidate,
        # and so does a request silent for SYMBOL_HEDGE seconds (it keeps running: whichever
        # answers counts). A prompt success never starts another, so a healthy committee
        # downloads nothing twice, and a stalled peer costs one hedge delay.
        queue = iter(candidates)

        async def fetch(pair: int, nursery: trio.Nursery) -> None:
            started_next = False

            def start_next() -> None:
                nonlocal started_next
                if not started_next:
                    started_next = True
                    following = next(queue, None)
                    if following is not None:
                        nursery.start_soon(fetch, following, nursery)

            async def hedge() -> None:
                await trio.sleep(SYMBOL_HEDGE)
                start_next()

            async with trio.open_nursery() as timer:
                timer.start_soon(hedge)
                try:
                    symbol = await self._symbol(blob_id, metadata, pair, source_axis, target, target_index, counter)
                except (PeerUnavailable, CodecError, VerificationError, InvalidParameter) as exc:
                    failures.append(f"pair {pair}: {exc}")
                    start_next()
                    return
                except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                    failures.append(f"pair {pair}: {member_fault(pair, exc)}")
                    start_next()
                    return
                finally:
                    timer.cancel_scope.cancel()
            symbols.append(symbol)
            if len(symbols) >= needed:
                nursery.cancel_scope.cancel()  # enough: the overdue ones are not waited for

        async with trio.open_nursery() as nursery:
            for pair in itertools.islice(queue, needed):
                nursery.start_soon(fetch, pair, nursery)
        if len(symbols) < needed:
            raise NotEnoughSymbols(
                f"{target.value} sliver {target_index} of {blob_id}: {len(symbols)} of {needed} recovery symbols; "
                + "; ".join(failures[:6])
            )
        return await trio.to_thread.run_sync(
            rebuild_sliver, metadata, target, target_index, symbols[:needed], limiter=self._cpu
        )

    async def _symbol(
        self, blob_id: BlobId, metadata: BlobMetadata, pair: int, source_axis: Axis, target: Axis, target_index: int,
        counter: _Counter,
    ) -> RecoverySymbol:
        """One verified recovery symbol from pair ``pair``: read locally if held here, else asked for."""
        owner = self.committee.shard_owner(blob_id.shard_for_pair(pair, self.n))
        source_index = pair_index(source_axis, pair, self.n)
        if owner == self.index:
            local = await trio.to_thread.run_sync(
                stored_recovery_symbol, self.store, metadata, blob_id, pair, target, target_index
            )
            if local is None:
                raise VerificationError(f"pair {pair} is not held here")
            return local
        reply, body = await self._call(
            owner, m.GET_RECOVERY_SYMBOL, counter, blob_id=blob_id.raw, target=target.value,
            target_index=target_index, pair=pair,
        )
        proof = reply.get("proof")
        if reply.get("source_index") != source_index or not isinstance(proof, list):
            raise VerificationError(f"peer {owner} answered for the wrong source sliver")
        symbol = RecoverySymbol(target, target_index, source_index, body, tuple(proof))
        await trio.to_thread.run_sync(verify_recovery_symbol, metadata, symbol)
        return symbol

    # ------------------------------------------------------------------ scrubbing

    async def _scrubber(self) -> None:
        """Verify every stored pair, pass after pass, at ``scrub_rate`` bytes per second."""
        while True:
            self.stats.scrub_total = await trio.to_thread.run_sync(self.store.count_pairs)
            self.stats.scrub_checked = 0
            cursor: tuple[bytes, int] = (b"", -1)
            started = trio.current_time()
            verified = 0
            while True:
                batch = await trio.to_thread.run_sync(self.store.pairs_after, cursor, 64)
                if not batch:
                    break
                for raw, pair in batch:
                    cursor = (raw, pair)
                    verified += await self.scrub_pair(BlobId(raw), pair)
                    self.stats.scrub_checked += 1
                    # Stay at or below the rate: sleep until the bytes so far are "due".
                    await trio.sleep_until(started + verified / self.scrub_rate)
            self.stats.scrub_passes += 1
            await trio.sleep(self.scrub_pause)

    async def scrub_pair(self, blob_id: BlobId, pair: int) -> int:
        """Verify one stored pair; drop and heal it if it is damaged. Returns the bytes read."""
        if blob_id in self._healing or self.state.invalid_entry(blob_id) is not None:
            return 0
        metadata = await trio.to_thread.run_sync(self.store.get_metadata, blob_id, self.n)
        stored = await trio.to_thread.run_sync(self.store.read_pair, blob_id, pair)
        if stored is None or metadata is None:
            return 0
        data, primary_length = stored
        problem = await trio.to_thread.run_sync(pair_problem, metadata, pair, data, primary_length, limiter=self._cpu)
        self.stats.scrub_bytes += len(data)
        if problem is not None:
            self.stats.scrub_damaged += 1
            log.warning("scrub: pair %d of %s is damaged (%s); healing it", pair, blob_id, problem)
            await trio.to_thread.run_sync(self.store.drop_pair, blob_id, pair)
            self.mark_damaged(blob_id, pair)
        return len(data)
