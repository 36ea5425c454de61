"""The blob client: store a blob on the committee and read it back verified.

Nothing here trusts a peer: metadata is checked against the blob ID, every sliver against
the metadata, every confirmation against the signer's key in the committee file. Progress
is decided by counting valid answers, never by timeouts: slow peers are waited for
concurrently while the others answer, and a failure report names who failed and why.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from p2p.framing import Body
from p2p.host import IHost
from p2p.rpc import PeerUnavailable

from ..core import messages as m
from ..core.certificates import Certificate, assemble_certificate, verify_confirmation
from ..core.challenge import audit_request_bytes
from ..core.committee import Committee
from ..core.errors import CodecError, InconsistentBlob
from ..core.lifecycle import BLOB_DELETED, BLOB_EXTENDED, EPOCH, Authority, Registration
from ..core.log import (
    BLOB_CERTIFIED,
    BLOB_INVALID,
    Entry,
    LogError,
    certificate_payload,
    check_entry,
    decode_entry,
    registration_from_payload,
)
from ..core.messages import (
    LOG_CERTIFIED,
    LOG_EVIDENCE,
    LOG_HEADS,
    LOG_SUBMIT,
    LOG_TIMES,
)
from ..core.metadata import BlobId, BlobMetadata
from ..core.recovery import find_inconsistency
from ..core.redstuff import (
    Axis,
    EncodedBlob,
    Sliver,
    check_consistency,
    decode_primary,
    decode_secondary,
    encode_blob,
    pair_index,
    rows_for_range,
    verify_parts,
)
from ..core.rounds import Rounds
from ..core.wire import field as wire_field
from .logpages import RoundBudget, heads_pages, range_pages
from .members import SessionPool, call_member, member_fault

log = logging.getLogger("walrusfs.client")
_T = TypeVar("_T")

#: After the quorum, keep delivering to the remaining peers this long so they need not heal.
GRACE_PERIOD = 2.0
#: A background store (a mount's) gives a peer this long past the grace period, then
#: counts it failed, so a stalled peer holds no store for ever (env WALRUSFS_DELIVER_LIMIT:
#: tests shorten it).
DELIVER_LIMIT = 30.0
DELIVER_ENV = "WALRUSFS_DELIVER_LIMIT"


def deliver_limit() -> float:
    """This process's DELIVER_LIMIT in seconds."""
    try:
        return max(1.0, float(os.environ.get(DELIVER_ENV, DELIVER_LIMIT)))
    except ValueError:
        return DELIVER_LIMIT

#: Liveness timers: none of them decides what is certified, verified or valid.
#: A request asked of one peer in turn (publish, start a round, report a proof) is also
#: asked of the next one when the first has not answered within HEDGE_DELAY seconds.
HEDGE_DELAY = 2.0
#: The same for a peer that has not answered this client yet (a fresh command knows
#: nothing of the peers): it has to prove itself sooner.
UNKNOWN_HEDGE_DELAY = 0.5
#: A sliver fetch that has not answered within this (plus the sliver's transfer time at
#: HEDGE_RATE bytes/s) lets the next candidate start, and if nothing else is left to try,
#: the read falls back to other slivers.
SLIVER_HEDGE = 1.0
HEDGE_RATE = 20e6
#: Once one sliver of a read arrived in L seconds, the others that have not answered
#: within HEDGE_FACTOR * L (at least HEDGE_FLOOR seconds) are overdue as well.
HEDGE_FACTOR = 4.0
HEDGE_FLOOR = 0.25
#: Questions asked of every peer at once (status, log heads, entries) report a peer that
#: has not answered within STATUS_LIMIT seconds as unresponsive and go on without it; once
#: peers holding 2f + 1 shards answered, a peer silent STATUS_FACTOR times as long as
#: they took (at least STATUS_FLOOR seconds) is unresponsive too.
STATUS_LIMIT = 3.0
STATUS_FLOOR = 1.0
STATUS_FACTOR = 4.0
#: How long ``store`` waits for f + 1 peers' logs to hold its entry before reporting it.
LOG_WAIT = 60.0
#: Most bytes of entries ``log_entries`` fetches from one peer: past it, that peer's log
#: (which may be junk: a peer can serve unsigned bytes) is not held whole in memory.
LOG_FETCH_BYTES = 256 << 20

#: A read's buffers are joined in a worker thread from this many bytes on (a copy of a few
#: MB would hold up the trio loop for milliseconds).
JOIN_INLINE = 1 << 20

Progress = Callable[[int], None]


class LogTooLarge(CodecError):
    """A peer's log is larger than the caller will hold; the next peer may be asked."""


class StoreError(Exception):
    """The committee did not certify the blob."""


class StaleRegistration(StoreError):
    """Peers refused the registration's end epoch: the storage epoch moved on (retried with a fresh one)."""


class AccessDenied(StoreError):
    """Peers refused the upload: no grant (``not-authorized``) or over quota (``quota-exceeded``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: Epochs a blob is stored for unless the caller says.
DEFAULT_EPOCHS = 5
#: How long a client trusts the storage epoch it learned (it refreshes on a refusal anyway).
EPOCH_CACHE = 10.0


class ReadError(Exception):
    """The blob could not be read back verified."""


class AuditError(Exception):
    """A challenge round could not be started; the message says why."""


class ChallengedError(ReadError):
    """Too many peers refused the blob's slivers because a storage challenge round covers it."""


#: How long a read waits for a challenge round covering its blob to close before failing.
CHALLENGE_WAIT = 300.0


class BlobGone(ReadError):
    """Peers holding f + 1 shards (so at least one honest) say the blob's lifetime ended: expired or deleted."""


class InvalidBlobError(ReadError):
    """The blob's encoding is inconsistent: no honest reader returns bytes for it.

    ``entry`` is the blob-invalid log entry that certifies it, once there is one.
    """

    def __init__(self, message: str, entry: Entry | None = None) -> None:
        super().__init__(message)
        self.entry = entry


@dataclass
class _Fetched:
    """A verified sliver, held as the buffers it arrived in; joined into a ``Sliver`` only if decoding needs one."""

    axis: Axis
    index: int
    symbol_size: int
    parts: list[bytes]

    def sliver(self) -> Sliver:
        """The sliver as one buffer; its chunks are let go (joined once, never twice)."""
        if len(self.parts) != 1:
            self.parts = [b"".join(self.parts)]
        return Sliver(self.axis, self.index, self.symbol_size, self.parts[0])

    def piece(self, start: int, stop: int) -> list[bytes]:
        """Bytes [start, stop) of the sliver as buffers: whole chunks uncopied, the ends sliced."""
        return slice_parts(self.parts, start, stop)


def slice_parts(parts: Sequence[bytes], start: int, stop: int) -> list[bytes]:
    """Bytes [start, stop) of buffers held back to back: whole buffers as they are, the ends sliced (copied)."""
    out = []
    position = 0
    for part in parts:
        end = position + len(part)
        if end > start and position < stop:
            out.append(part if start <= position and end <= stop
                       else part[max(start - position, 0) : min(stop, end) - position])
        position = end
        if position >= stop:
            break
    return out


@dataclass
class StoreResult:
    """Outcome of a store: blob ID, certificate, its log entry and what each peer did."""

    blob_id: BlobId
    metadata: BlobMetadata
    certificate: Certificate
    confirmed: list[str]
    failures: dict[str, str] = field(default_factory=dict)
    entry: Entry | None = None
    logged_by: list[str] = field(default_factory=list)
    registration: Registration | None = None


def _now_ms() -> int:
    """Wall clock in ms: entries are checked against it like peers check them (stamp bound)."""
    return int(time.time() * 1000)


def _certified_invalid(blob_id: BlobId, entry: Entry) -> InvalidBlobError:
    return InvalidBlobError(
        f"blob {blob_id} is invalid: its writer encoded it inconsistently, and log entry {entry.id.hex()} "
        f"certifies this (attested by {len(entry.payload['signers'])} peers)", entry,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PeerUnavailable):
        return exc.reason
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, CodecError) else str(exc)


class Client:
    """Talks to the committee through a libp2p host."""

    def __init__(self, host: IHost, committee: Committee, reuse_streams: bool = False,
                 authority: Authority | None = None) -> None:
        self.host = host
        self.committee = committee
        #: Who this client stores as (None: it can read, not store).
        self.authority = authority
        self._epoch: tuple[float, int] | None = None  # (when learned, storage epoch)
        self.pool = SessionPool(host, committee) if reuse_streams else None
        self.n = committee.n_shards
        self.config = committee.config
        #: Peers that have answered this client (an error reply counts: the peer is alive).
        #: Requests that go to one peer at a time ask these first, so a silent peer is asked
        #: last instead of costing a hedge delay whenever a random draw picks it.
        self.answered: set[int] = set()

    async def _call(self, peer: int, protocol: str, body: Body = b"", *, parts: bool = False,
                    reply_limit: int | None = None, **fields: Any) -> tuple[dict[str, Any], Any]:
        try:
            result = await call_member(self.host, self.committee, peer, protocol, body, pool=self.pool, parts=parts,
                                       reply_limit=reply_limit, **fields)
        except m.RemoteError:
            self.answered.add(peer)
            raise
        except PeerUnavailable:
            self.answered.discard(peer)
            raise
        self.answered.add(peer)
        return result

    def silent(self, peer: int) -> None:
        """``peer`` has not answered in time: ask it last until it answers again."""
        self.answered.discard(peer)

    def responsive_first(self) -> list[int]:
        """Every peer in random order, those that have answered this client before the rest."""
        order = list(range(len(self.committee.peers)))
        random.shuffle(order)
        return sorted(order, key=lambda peer: peer not in self.answered)

    # ------------------------------------------------------------------ store

    async def storage_epoch(self, fresh: bool = False) -> int:
        """The storage epoch, from a verified epoch entry a responsive peer holds (0 before the first)."""
        if not fresh and self._epoch is not None and trio.current_time() - self._epoch[0] < EPOCH_CACHE:
            # Not past the next boundary by our clock either: with short epochs (a devnet's
            # few seconds) a cached epoch would register fewer epochs than the writer asked.
            if _now_ms() < self.committee.genesis_ms + (self._epoch[1] + 1) * self.committee.epoch_ms:
                return self._epoch[1]

        async def ask(peer: int) -> int:
            status, _ = await self._call(peer, m.GET_STATUS)
            storage = status.get("storage")
            raw = storage.get("epoch_entry") if isinstance(storage, dict) else None
            if raw is None:
                return 0
            if not isinstance(raw, bytes):
                raise CodecError(f"peer {peer}'s status carries a malformed epoch entry")
            entry = decode_entry(raw)
            await trio.to_thread.run_sync(check_entry, entry, self.committee, _now_ms())
            if entry.kind != EPOCH:
                raise CodecError(f"peer {peer}'s epoch entry is a {entry.kind} entry")
            return int(entry.payload["epoch"])

        # A peer may answer with an old (validly signed) epoch entry: registering from it
        # would give a blob fewer epochs than asked, or none (already expired). Nobody can
        # sign a later epoch than the committee reached, so the highest answer of peers
        # holding f + 1 shards (one of them honest and up to date enough) is taken.
        answers: dict[int, int] = {}
        problems: dict[str, str] = {}
        enough = trio.Event()

        async def one(peer: int) -> None:
            try:
                answers[peer] = await ask(peer)
            except (PeerUnavailable, CodecError) as exc:
                problems[self.committee.peers[peer].peer_id] = _describe(exc)
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                problems[self.committee.peers[peer].peer_id] = member_fault(peer, exc)
            finally:
                if (self.committee.weight(answers) >= self.committee.validity_threshold
                        or len(answers) + len(problems) == len(self.committee.peers)):
                    enough.set()

        async with trio.open_nursery() as nursery:
            for peer in self.responsive_first():
                nursery.start_soon(one, peer)
            with trio.move_on_after(STATUS_LIMIT):
                await enough.wait()
            nursery.cancel_scope.cancel()
        if not answers:
            detail = "; ".join(f"{p}: {why}" for p, why in sorted(problems.items()))
            raise StoreError(f"no peer told the storage epoch: {detail}")
        epoch = max(answers.values())
        # Never go back: a lagging peer's older entry must not shorten what we register.
        epoch = max(epoch, self._epoch[1] if self._epoch else 0)
        self._epoch = (trio.current_time(), epoch)
        return epoch

    async def registration(self, blob_id: BlobId, epochs: int, deletable: bool, length: int) -> Registration:
        """A registration of ``blob_id`` (``length`` unencoded bytes) by this client's authority for ``epochs`` epochs from now."""
        if self.authority is None:
            raise AccessDenied(m.NOT_AUTHORIZED, "this client has no writer key; storing needs one")
        epoch = await self.storage_epoch()
        return await trio.to_thread.run_sync(self.authority.register, blob_id, epoch + epochs, deletable, length)

    async def store(
        self, data: bytes, progress: Progress | None = None, grace: float = GRACE_PERIOD, publish: bool = True,
        wait_logged: bool = True, epochs: int = DEFAULT_EPOCHS, deletable: bool = True,
    ) -> StoreResult:
        """Encode and store ``data`` for ``epochs`` epochs; certify it (2f + 1 shards) and record it in the log."""
        encoded: EncodedBlob = await trio.to_thread.run_sync(encode_blob, data, self.config)
        return await self.store_encoded(encoded, len(data), progress, grace, publish, wait_logged,
                                        epochs=epochs, deletable=deletable)

    async def store_encoded(
        self, encoded: EncodedBlob, length: int, progress: Progress | None = None, grace: float = GRACE_PERIOD,
        publish: bool = True, wait_logged: bool = True, background: trio.Nursery | None = None,
        epochs: int = DEFAULT_EPOCHS, deletable: bool = True, registration: Registration | None = None,
    ) -> StoreResult:
        """Store an encoded blob of ``length`` bytes; certify it and (``publish``) record it in the log.

        The upload is registered for ``epochs`` storage epochs (or under ``registration``);
        a refusal because the epoch moved on is retried once with a fresh registration.
        """
        if registration is None:
            registration = await self.registration(encoded.blob_id, epochs, deletable, length)
        try:
            return await self._store_registered(encoded, length, registration, progress, grace, publish,
                                                wait_logged, background)
        except StaleRegistration:
            self._epoch = None  # learn the epoch again, from a peer that has moved on
            await self.storage_epoch(fresh=True)
            registration = await self.registration(encoded.blob_id, epochs, deletable, length)
            return await self._store_registered(encoded, length, registration, progress, grace, publish,
                                                wait_logged, background)

    async def _store_registered(
        self, encoded: EncodedBlob, length: int, registration: Registration, progress: Progress | None,
        grace: float, publish: bool, wait_logged: bool, background: trio.Nursery | None,
    ) -> StoreResult:
        blob_id = encoded.blob_id
        metadata_wire = m.metadata_to_wire(encoded.metadata)
        registration_wire = registration.to_wire()
        object_id = registration.object_id
        signatures: dict[int, bytes] = {}
        failures: dict[str, str] = {}
        refusals: dict[str, m.RemoteError] = {}  # peers that refused the registration itself
        quorum_reached = trio.Event()
        decided = trio.Event()  # quorum reached, or it never can be
        remaining = len(self.committee.peers)
        # Peers that answered the metadata and are still receiving pairs: after the quorum,
        # the grace period waits for these only. A peer that has not answered anything yet
        # is silent as far as this store knows, and its pairs reach it by healing.
        receiving: set[int] = set()
        change = trio.lowlevel.ParkingLot()

        async def store_on(peer: int) -> None:
            nonlocal remaining
            info = self.committee.peers[peer]
            try:
                try:
                    await self._call(peer, m.PUT_METADATA, blob_id=blob_id.raw, metadata=metadata_wire,
                                     registration=registration_wire)
                except m.RemoteError as exc:
                    if exc.code in (m.NOT_AUTHORIZED, m.QUOTA_EXCEEDED) or (
                            exc.code == m.INVALID and "must end in" in exc.message):
                        refusals[info.peer_id] = exc
                    raise
                receiving.add(peer)
                for shard in info.shards:
                    pair = encoded.pairs[blob_id.pair_for_shard(shard, self.n)]
                    await self._call(peer, m.PUT_PAIR, (pair.primary.data, pair.secondary.data),
                                     blob_id=blob_id.raw, pair=pair.index)
                    if progress:
                        progress(len(pair.primary.data) + len(pair.secondary.data))
                reply, _ = await self._call(peer, m.GET_CONFIRMATION, blob_id=blob_id.raw,
                                            registration=registration_wire)
                signature = wire_field(reply, "signature", bytes)
                verify_confirmation(info.public_key, self.committee.epoch, blob_id, signature, object_id)
                signatures[peer] = signature
                if self.committee.weight(signatures) >= self.committee.quorum:
                    quorum_reached.set()
                    decided.set()
            except (PeerUnavailable, CodecError) as exc:
                failures[info.peer_id] = _describe(exc)
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                failures[info.peer_id] = member_fault(peer, exc)
            finally:
                receiving.discard(peer)
                change.unpark_all()
                remaining -= 1
                failed = [k for k, p in enumerate(self.committee.peers) if p.peer_id in failures]
                if remaining == 0 or self.n - self.committee.weight(failed) < self.committee.quorum:
                    decided.set()  # everyone answered, or too many failed for a quorum: say so now

        async def responsive_done() -> None:
            while receiving:
                await change.park()

        async def certify() -> StoreResult:
            for peer in range(len(self.committee.peers)):
                if peer not in receiving and peer not in signatures and self.committee.peers[peer].peer_id not in failures:
                    self.silent(peer)  # no answer at all by the quorum: ask it last when choosing one peer
            if not quorum_reached.is_set():
                weight = self.committee.weight(signatures)
                detail = "; ".join(f"{peer}: {why}" for peer, why in sorted(failures.items()))
                refused = [k for k, p in enumerate(self.committee.peers) if p.peer_id in refusals]
                if refusals and self.n - self.committee.weight(refused) < self.committee.quorum:
                    # Enough honest peers refused the registration itself that no quorum can
                    # form: say why plainly (a storage grant or quota), not as a peer failure.
                    codes = [e.code for e in refusals.values()]
                    if m.INVALID in codes and m.NOT_AUTHORIZED not in codes and m.QUOTA_EXCEEDED not in codes:
                        raise StaleRegistration(next(iter(refusals.values())).message)
                    code = m.QUOTA_EXCEEDED if m.QUOTA_EXCEEDED in codes else m.NOT_AUTHORIZED
                    message = next(e.message for e in refusals.values() if e.code == code)
                    raise AccessDenied(code, f"{code}: {message} (refused by peers holding "
                                             f"{self.committee.weight(refused)} of {self.n} shards)")
                raise StoreError(
                    f"blob {blob_id} was confirmed by peers holding {weight} of {self.n} shards, "
                    f"a certificate needs {self.committee.quorum}. Failures: {detail or 'none'}"
                )
            certificate = assemble_certificate(self.committee, blob_id, signatures.items(), object_id=object_id)
            confirmed = [self.committee.peers[i].peer_id for i in certificate.signers]
            result = StoreResult(blob_id, encoded.metadata, certificate, confirmed, failures, registration=registration)
            if publish:
                result.entry = await self.publish(certificate, length, registration)
                if wait_logged:
                    result.logged_by = await self.wait_logged(result.entry.id)
            return result

        if background is not None:
            # Return at the quorum; the remaining peers keep receiving their pairs in the
            # caller's nursery (bounded by the grace period), so fewer of them need to heal.
            limit = grace + deliver_limit()

            async def deliver(peer: int) -> None:
                with trio.move_on_after(limit) as scope:
                    await store_on(peer)
                if scope.cancelled_caught:
                    failures[self.committee.peers[peer].peer_id] = f"no answer within {limit:.0f} s"

            for peer in range(len(self.committee.peers)):
                background.start_soon(deliver, peer)
            await decided.wait()
            return await certify()
        outcome: StoreResult | None = None
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            for peer in range(len(self.committee.peers)):
                nursery.start_soon(store_on, peer)
            await decided.wait()
            grace_end = trio.current_time() + grace
            try:
                # The remaining peers keep receiving their pairs while the certificate is
                # published (so fewer need to heal), until the grace period after the quorum.
                outcome = await certify()
            except Exception as exc:  # raised after the nursery, as itself
                error = exc
            if outcome is not None:
                with trio.move_on_at(grace_end):
                    await responsive_done()
                for peer, info in enumerate(self.committee.peers):
                    if peer not in signatures and info.peer_id not in failures:
                        failures[info.peer_id] = "no confirmation before the store finished (it heals the blob)"
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        assert outcome is not None
        return outcome

    async def hedged(
        self, attempt: Callable[[int], Awaitable[_T]], order: Sequence[int] | None = None,
    ) -> tuple[_T | None, dict[str, str]]:
        """Run ``attempt(peer)`` on peers, random but responsive ones first, until one succeeds; (its result or None, each failure).

        The next peer is asked whenever the last one asked has not answered within
        ``HEDGE_DELAY`` (the earlier ones keep going: whichever answers first wins), so a
        stalled peer costs that delay, never the whole operation. ``attempt`` raises
        ``PeerUnavailable`` or ``CodecError`` for a peer that failed, ``AuditError``,
        ``ReadError`` or ``StoreError`` to stop all; anything else its reply made the code
        raise is that peer's failure.
        ``order`` overrides the order in which peers are asked.
        """
        order = list(order) if order is not None else self.responsive_first()
        problems: dict[str, str] = {}
        found: list[_T] = []
        settled = trio.Event()  # one succeeded, or every peer failed
        error: list[BaseException] = []

        async def one(peer: int, answered: trio.Event) -> None:
            try:
                found.append(await attempt(peer))
            except (PeerUnavailable, CodecError) as exc:
                problems[self.committee.peers[peer].peer_id] = _describe(exc)
            except (AuditError, ReadError, StoreError) as exc:  # a verdict that asking others won't change
                error.append(exc)  # re-raised by the caller's task, not inside the nursery's group
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                problems[self.committee.peers[peer].peer_id] = member_fault(peer, exc)
            finally:
                answered.set()
                if found or error or len(problems) == len(order):
                    settled.set()

        async with trio.open_nursery() as nursery:
            for peer in order:
                answered = trio.Event()
                nursery.start_soon(one, peer, answered)
                with trio.move_on_after(HEDGE_DELAY if peer in self.answered else UNKNOWN_HEDGE_DELAY):
                    await answered.wait()
                if not answered.is_set():
                    self.silent(peer)
                if settled.is_set():
                    break
            await settled.wait()
            nursery.cancel_scope.cancel()
        if error:
            raise error[0]
        return (found[0] if found else None), problems

    async def publish(self, certificate: Certificate, length: int, registration: Registration) -> Entry:
        """Hand the certificate and its registration to peers in random order until one records them in the log.

        A peer that has not answered within ``PUBLISH_HEDGE`` seconds is not waited for: the
        next one is asked as well and the first valid entry wins (a stalled peer only
        costs that delay).
        """
        payload = certificate_payload(certificate, length, registration)

        def expected(entry: Entry) -> str | None:
            if entry.payload.get("blob_id") != certificate.blob_id.raw:
                return "peer returned an entry for another blob"
            if entry.payload.get("registration") != registration.to_wire():
                return "peer returned an entry for another registration"
            return None

        return await self._first(
            lambda peer: self._submitted(peer, expected, payload=payload),
            lambda detail: StoreError(f"no peer recorded the certificate of {certificate.blob_id} in the log: {detail}"))

    async def _submitted(self, peer: int, expected: Callable[[Entry], str | None], **fields: Any) -> Entry:
        """Ask ``peer`` to log what ``fields`` submit; the entry it returns, checked here and by ``expected``."""
        reply, _ = await self._call(peer, LOG_SUBMIT, **fields)
        entry = decode_entry(wire_field(reply, "entry", bytes))
        await trio.to_thread.run_sync(check_entry, entry, self.committee, _now_ms())
        why = expected(entry)
        if why is not None:
            raise LogError(why)
        return entry

    async def _first(self, attempt: Callable[[int], Awaitable[_T]], failure: Callable[[str], Exception]) -> _T:
        """The first result ``attempt`` gets from a peer (see ``hedged``), or ``failure(each peer's problem)`` raised."""
        found, problems = await self.hedged(attempt)
        if found is not None:
            return found
        raise failure("; ".join(f"{p}: {why}" for p, why in sorted(problems.items())))

    async def wait_logged(self, entry_id: bytes, limit: float = LOG_WAIT) -> list[str]:
        """Wait until the logs of peers holding f + 1 shards hold the entry; return those peers."""
        holders: set[int] = set()
        enough = trio.Event()

        async def watch(peer: int) -> None:
            # Each peer is asked until it holds the entry; a silent one only misses out.
            while True:
                try:
                    reply, _ = await self._call(peer, LOG_TIMES, ids=[entry_id])
                    times = wire_field(reply, "times", list)
                    if times and times[0] is not None:
                        holders.add(peer)
                        if self.committee.weight(holders) >= self.committee.validity_threshold:
                            enough.set()
                        return
                except (PeerUnavailable, CodecError):
                    pass
                except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                    member_fault(peer, exc)
                    return
                await trio.sleep(0.05)

        with trio.move_on_after(limit):
            async with trio.open_nursery() as nursery:
                for peer in range(len(self.committee.peers)):
                    nursery.start_soon(watch, peer)
                await enough.wait()
                nursery.cancel_scope.cancel()
            return [self.committee.peers[i].peer_id for i in sorted(holders)]
        raise StoreError(
            f"entry {entry_id.hex()} reached only {len(holders)} peers' logs in {limit:.0f} s; "
            f"f + 1 = {self.committee.validity_threshold} shards are needed"
        )

    async def log_heads(self) -> list[tuple[int, dict[str, Any] | None, str | None]]:
        """Each peer's log heads, digest and entry count (or why it did not answer)."""
        return await self._each_peer(LOG_HEADS, check=m.check_heads_reply)

    async def fullest_log(self, max_bytes: int = LOG_FETCH_BYTES) -> list[Entry] | None:
        """The entries of the most complete log: every peer's heads asked at once, then the fullest peer's log (hedged)."""
        # Each peer's own count of its entries (the first heads page carries it): only an
        # order to try peers in, since a peer may claim anything.
        totals = {peer: reply["entries"] for peer, reply, _ in await self.log_heads() if reply is not None}
        rest = [peer for peer in self.responsive_first() if peer not in totals]

        async def entries_of(peer: int) -> list[Entry]:
            return await self.log_entries(peer, max_bytes)

        entries, _ = await self.hedged(entries_of, sorted(totals, key=lambda p: -totals[p]) + rest)
        return entries

    async def log_entries(self, peer: int, max_bytes: int = LOG_FETCH_BYTES) -> list[Entry]:
        """Every accepted entry in ``peer``'s log, walked page by page; ``LogTooLarge`` past ``max_bytes``."""

        # One request per author and page: reused streams keep that cheap (a new stream
        # costs milliseconds of CPU on both ends, times thousands of authors).
        pool = self.pool or SessionPool(self.host, self.committee)

        async def call(protocol: str, **fields: Any) -> dict[str, Any]:
            return (await call_member(self.host, self.committee, peer, protocol, max_body=0, pool=pool, **fields))[0]

        budget = RoundBudget(max_bytes)
        entries: list[Entry] = []
        try:
            async with aclosing(heads_pages(call, None, budget)) as pages:
                async for page in pages:
                    wants = [(author, 1, head) for author, (head, _) in page.heads.items()]
                    async with aclosing(range_pages(call, wants, budget)) as ranges:
                        async for batch in ranges:
                            entries += batch
                    if budget.spent:
                        raise LogTooLarge(f"peer {peer}'s log is larger than {max_bytes} bytes; not fetched whole")
        finally:
            if pool is not self.pool:
                await pool.aclose()
        evidence, _ = await self._call(peer, LOG_EVIDENCE)
        entries += [decode_entry(e) for e in wire_field(evidence, "entries", list)]
        return entries

    async def certified_entry(self, blob_id: BlobId) -> Entry | None:
        """The log entry certifying ``blob_id``, from the first peer that has a valid one."""
        return (await self.blob_entries(blob_id))[0]

    async def blob_entries(self, blob_id: BlobId) -> tuple[Entry | None, Entry | None]:
        """The entries certifying ``blob_id`` available and invalid, each from the first peer with a valid one."""
        found: dict[str, Entry] = {}
        for _, reply, _ in await self._each_peer(LOG_CERTIFIED, check=m.check_certified_reply, blob_id=blob_id.raw):
            for name, kind in (("entry", BLOB_CERTIFIED), ("invalid", BLOB_INVALID)):
                if reply is None or reply.get(name) is None or name in found:
                    continue
                try:
                    found[name] = await self._check_blob_entry(blob_id, reply[name], kind)
                except CodecError:
                    continue
        return found.get("entry"), found.get("invalid")

    async def registrations(self, blob_id: BlobId) -> tuple[list[Registration], dict[str, dict[str, Any]]]:
        """The registrations of ``blob_id`` (each from a checked blob-certified entry) and each peer's view of them.

        The view maps a peer ID to ``{"epoch": its storage epoch, "lifetimes": {registration ID
        hex: [end epoch, deleted]}}``: what that peer's log says, shown as such.
        """
        found: dict[bytes, Registration] = {}
        views: dict[str, dict[str, Any]] = {}
        for peer, reply, _ in await self._each_peer(LOG_CERTIFIED, check=m.check_certified_reply,
                                                     blob_id=blob_id.raw):
            if reply is None:
                continue
            views[self.committee.peers[peer].peer_id] = {
                "epoch": reply.get("epoch", 0),
                "lifetimes": {rid.hex(): [end, deleted] for rid, end, deleted in reply.get("lifetimes", [])}}
            for raw in reply.get("registrations", []):
                try:
                    entry = await self._check_blob_entry(blob_id, raw, BLOB_CERTIFIED)
                    registration = registration_from_payload(entry.payload)
                except CodecError:
                    continue  # that peer's junk; another peer's copy may be good
                found.setdefault(registration.id, registration)
        return sorted(found.values(), key=lambda r: r.id), views

    async def lifetime(self, op: str, targets: Sequence[bytes], epochs: int = 0) -> Entry:
        """Extend (by ``epochs`` from now) or delete this client's registrations ``targets``; the logged entry.

        Signed at the current storage epoch and handed to peers until one records it; an
        answer saying why it cannot be done (not the owner, permanent, already ended) is
        final, not asked of others.
        """
        if self.authority is None:
            raise AccessDenied(m.NOT_AUTHORIZED, "this client has no writer key")
        epoch = await self.storage_epoch(fresh=True)
        signed = self.authority.operation(op, targets, epoch, epoch + epochs if op == "extend" else 0)
        kind = BLOB_EXTENDED if op == "extend" else BLOB_DELETED

        def expected(entry: Entry) -> str | None:
            if entry.kind != kind or entry.payload.get("op") != signed.to_wire():
                return "peer returned another entry than the operation asked for"
            return None

        async def submit(peer: int) -> Entry:
            try:
                return await self._submitted(peer, expected, kind=kind, payload=signed.to_wire())
            except m.RemoteError as exc:
                if exc.code == m.INVALID and "not in this member's log" not in exc.message \
                        and "sign it again" not in exc.message:
                    raise StoreError(exc.message) from exc  # a verdict about the operation itself
                raise

        return await self._first(submit, lambda detail: StoreError(f"no peer recorded the {op}: {detail}"))

    # ------------------------------------------------------------------ read

    def _holders(self, blob_id: BlobId, axis: Axis, index: int) -> int:
        return self.committee.shard_owner(blob_id.shard_for_pair(pair_index(axis, index, self.n), self.n))

    async def get_metadata(self, blob_id: BlobId) -> BlobMetadata:
        """Metadata from the first peer whose copy verifies against the blob ID."""
        failures: dict[str, str] = {}
        found: list[BlobMetadata] = []
        order = list(range(len(self.committee.peers)))
        random.shuffle(order)

        async def ask(peer: int, cancel: trio.CancelScope) -> None:
            peer_id = self.committee.peers[peer].peer_id
            try:
                reply, _ = await self._call(peer, m.GET_METADATA, blob_id=blob_id.raw)
                metadata = m.metadata_from_wire(reply.get("metadata"), self.n)
                await trio.to_thread.run_sync(metadata.verify, blob_id)
                if reply.get("invalid") is not None:
                    invalid.append(await self._check_blob_entry(blob_id, reply["invalid"]))
            except (PeerUnavailable, CodecError) as exc:
                failures[peer_id] = _describe(exc)
                if self._weight_saying(failures, m.NOT_FOUND, m.EXPIRED) >= self.committee.quorum:
                    cancel.cancel()  # 2f + 1 shards say it does not exist (or no more): nobody else is waited for
                return
            except InvalidBlobError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                failures[peer_id] = member_fault(peer, exc)
                return
            found.append(metadata)
            cancel.cancel()

        invalid: list[Entry] = []
        async with trio.open_nursery() as nursery:
            for peer in order:
                nursery.start_soon(ask, peer, nursery.cancel_scope)
        if invalid:
            raise _certified_invalid(blob_id, invalid[0])
        if found:
            return found[0]
        self._raise_if_gone(blob_id, failures)
        not_found = self._weight_saying(failures, m.NOT_FOUND, m.EXPIRED)
        if not_found >= self.committee.quorum:
            raise ReadError(f"blob {blob_id} does not exist: peers holding {not_found} shards do not know it")
        detail = "; ".join(f"{p}: {why}" for p, why in sorted(failures.items()))
        raise ReadError(f"no peer returned metadata that matches blob {blob_id}. {detail}")

    def _weight_saying(self, failures: dict[str, str], *codes: str) -> int:
        """Shards of the distinct peers whose failure is an error reply with one of ``codes``.

        Keys are peer IDs, optionally followed by what was asked (``"ID (primary sliver 3)"``).
        """
        peers = {who.split(" ", 1)[0] for who, why in failures.items()
                 if any(why.startswith(code + ":") for code in codes)}
        return self.committee.weight(self.committee.index_of(p) for p in peers)

    def _raise_if_gone(self, blob_id: BlobId, failures: dict[str, str]) -> None:
        """Raise ``BlobGone`` if peers holding f + 1 shards refused ``blob_id`` as expired or deleted.

        f + 1 shards include an honest peer, whose log holds the end of every registration:
        f lying peers cannot make a live blob look gone.
        """
        gone = self._weight_saying(failures, m.EXPIRED)
        if gone >= self.committee.validity_threshold:
            raise BlobGone(f"blob {blob_id} has expired or was deleted: peers holding {gone} of "
                           f"{self.committee.n_shards} shards say its lifetime ended and its slivers are gone")

    async def _check_blob_entry(self, blob_id: BlobId, encoded: Any, kind: str = BLOB_INVALID) -> Entry:
        """A ``kind`` entry about ``blob_id`` a peer sent, checked (signatures and certificate) here."""
        if not isinstance(encoded, bytes):
            raise LogError("a log entry must be sent encoded")
        entry = decode_entry(encoded)
        await trio.to_thread.run_sync(check_entry, entry, self.committee, _now_ms())
        if entry.kind != kind or entry.payload.get("blob_id") != blob_id.raw:
            raise LogError(f"peer sent a log entry that is not a {kind} entry for this blob")
        return entry

    async def invalid_entry(self, blob_id: BlobId) -> Entry | None:
        """The log entry certifying ``blob_id`` invalid, from the first peer that has a valid one."""
        return (await self.blob_entries(blob_id))[1]

    async def report_invalid(self, blob_id: BlobId, proof: Any) -> Entry:
        """Hand an inconsistency proof to peers, in random order, until one records the blob invalid."""
        fields, body = m.proof_to_wire(proof)

        async def report(peer: int) -> Entry:
            reply, _ = await self._call(peer, m.REPORT_INVALID, body, blob_id=blob_id.raw, **fields)
            return await self._check_blob_entry(blob_id, reply.get("entry"))

        return await self._first(report, lambda detail: ReadError(f"no peer certified blob {blob_id} invalid: {detail}"))

    async def _inconsistent(self, blob_id: BlobId, metadata: BlobMetadata, slivers: list[Sliver], why: str) -> InvalidBlobError:
        """Build the proof from the slivers that decoded inconsistently and report it; the error to raise."""
        try:
            proof = await trio.to_thread.run_sync(find_inconsistency, metadata, slivers)
        except CodecError:
            proof = None  # too few slivers to build one; the failure still stands
        if proof is None:  # only strict mode sees this: a tampered row that only pads
            return InvalidBlobError(f"blob {blob_id} is invalid: {why}")
        try:
            entry = await self.report_invalid(blob_id, proof)
        except ReadError as exc:
            log.warning("could not report invalid blob %s: %s", blob_id, exc)
            return InvalidBlobError(f"blob {blob_id} is invalid: {why} (reporting it failed: {exc})")
        return _certified_invalid(blob_id, entry)

    def _others(self, exclude: Sequence[int]) -> list[int]:
        rest = [i for i in range(self.n) if i not in exclude]
        random.shuffle(rest)
        return rest

    async def _collect(
        self, blob_id: BlobId, metadata: BlobMetadata, axis: Axis, candidates: Sequence[int], needed: int,
        progress: Progress | None, failures: dict[str, str], unanswered: set[int] | None = None,
    ) -> dict[int, _Fetched]:
        """Fetch and verify slivers on ``axis`` in ``candidates`` order until ``needed`` are valid.

        Each sliver is kept as the chunks it arrived in and verified from them (the
        transport's buffers are never joined into a second copy; see ``verify_parts``); a
        reply longer than the sliver is refused on its length prefix.

        At most ``needed`` requests are waited for at once; each failure starts the next
        candidate, and so does a request that has not answered within its hedge delay (it
        keeps running: whichever answers first counts). Once nothing is left to start and
        every outstanding request is overdue, it returns what it has (the caller falls back
        to other slivers) and names the silent indices in ``unanswered``.
        """
        valid: dict[int, _Fetched] = {}
        if needed <= 0:
            return valid
        axis_symbols = (self.config.secondary_source_symbols if axis is Axis.PRIMARY
                        else self.config.primary_source_symbols)
        sliver_length = axis_symbols * metadata.symbol_size
        hedge = SLIVER_HEDGE + sliver_length / HEDGE_RATE
        limiter = trio.Semaphore(needed)
        done = trio.Event()
        waiting = list(candidates)  # not started yet
        overdue: set[int] = set()
        running: set[int] = set()
        # Each running fetch's hedge timer: (when it started, its scope). Once one fetch
        # answered in L seconds, the others are overdue after HEDGE_FACTOR * L (at least
        # HEDGE_FLOOR): silence is judged against this read's own answers.
        timers: dict[int, tuple[float, trio.CancelScope]] = {}

        def answered_in(latency: float) -> None:
            allowance = max(HEDGE_FLOOR, HEDGE_FACTOR * latency)
            for began, scope in timers.values():
                scope.deadline = min(scope.deadline, began + allowance)

        def check_done() -> None:
            if len(valid) >= needed or (not waiting and running <= overdue):
                done.set()

        async def fetch(index: int) -> None:
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    limiter.release()

            async def hedge_later() -> None:
                began = trio.current_time()
                with trio.CancelScope(deadline=began + hedge) as scope:
                    timers[index] = (began, scope)
                    await trio.sleep_forever()
                del timers[index]
                if scope.cancelled_caught:
                    overdue.add(index)
                    release()
                    check_done()

            await limiter.acquire()
            running.add(index)
            waiting.remove(index)
            try:
                if done.is_set():
                    return
                peer = self._holders(blob_id, axis, index)
                peer_id = self.committee.peers[peer].peer_id
                async with trio.open_nursery() as timer:
                    timer.start_soon(hedge_later)
                    asked = trio.current_time()
                    try:
                        _, parts = await self._call(peer, m.GET_SLIVER, parts=True, reply_limit=sliver_length,
                                                    blob_id=blob_id.raw, axis=axis.value, index=index)
                        answered_in(trio.current_time() - asked)
                        await trio.to_thread.run_sync(verify_parts, metadata, axis, index, parts)
                    except (PeerUnavailable, CodecError) as exc:
                        failures[f"{peer_id} ({axis.value} sliver {index})"] = _describe(exc)
                        return
                    except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                        failures[f"{peer_id} ({axis.value} sliver {index})"] = member_fault(peer, exc)
                        return
                    finally:
                        timer.cancel_scope.cancel()
                valid[index] = _Fetched(axis, index, metadata.symbol_size, parts)
                if progress:
                    progress(sliver_length)
            finally:
                running.discard(index)
                overdue.discard(index)
                release()
                check_done()

        async with trio.open_nursery() as nursery:
            for index in candidates:
                nursery.start_soon(fetch, index)
            await done.wait()
            silent = set(overdue) if len(valid) < needed else set()
            nursery.cancel_scope.cancel()
        for index in silent:
            self.silent(self._holders(blob_id, axis, index))
            peer_id = self.committee.peers[self._holders(blob_id, axis, index)].peer_id
            failures.setdefault(f"{peer_id} ({axis.value} sliver {index})", "no answer while others did")
            if unanswered is not None:
                unanswered.add(index)
        return valid

    async def read(
        self, blob_id: BlobId, offset: int = 0, size: int | None = None, *, strict: bool = False,
        progress: Progress | None = None, metadata: BlobMetadata | None = None,
        challenge_wait: float = CHALLENGE_WAIT,
    ) -> bytes:
        """Bytes [offset, offset + size) of a blob, verified; raise ``ReadError`` otherwise.

        While a storage challenge round covers the blob, peers refuse its slivers; the read
        waits (up to ``challenge_wait`` seconds) for the round to close and tries again.
        """
        parts = await self.read_parts(blob_id, offset, size, strict=strict, progress=progress, metadata=metadata,
                                      challenge_wait=challenge_wait)
        if len(parts) <= 1:
            return parts[0] if parts else b""
        if sum(len(part) for part in parts) < JOIN_INLINE:
            return b"".join(parts)
        return await trio.to_thread.run_sync(b"".join, parts)  # one copy of the range, off the trio loop

    async def read_parts(
        self, blob_id: BlobId, offset: int = 0, size: int | None = None, *, strict: bool = False,
        progress: Progress | None = None, metadata: BlobMetadata | None = None,
        challenge_wait: float = CHALLENGE_WAIT,
    ) -> list[bytes]:
        """``read``'s bytes as buffers back to back (``b"".join`` of them is what ``read`` returns).

        When the range's own rows were read, these are the buffers the rows arrived in,
        uncopied, and the caller holds the only references: a streaming reader lets each go
        once sent, so a read costs about the rows it holds, not twice that.
        """
        deadline = trio.current_time() + challenge_wait
        delay = 0.25
        while True:
            try:
                return await self._read_once(blob_id, offset, size, strict=strict, progress=progress, metadata=metadata)
            except ChallengedError:
                if trio.current_time() + delay > deadline:
                    raise
                log.info("blob %s is challenged; waiting %.2f s for the round to close", blob_id, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _read_once(
        self, blob_id: BlobId, offset: int = 0, size: int | None = None, *, strict: bool = False,
        progress: Progress | None = None, metadata: BlobMetadata | None = None,
    ) -> list[bytes]:
        """One attempt at ``read_parts``.

        Prefers the systematic primary slivers the range covers (no decoding, and a small
        range fetches only its rows), then any p primary slivers, then s secondary slivers.
        Strict mode reads the whole blob and recomputes its blob ID. ``metadata``, if given,
        must already be verified against the blob ID.
        """
        metadata = metadata or await self.get_metadata(blob_id)
        length = metadata.unencoded_length
        size = length - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > length:
            raise ReadError(f"range {offset}+{size} is outside blob {blob_id} of {length} bytes")
        if size == 0:
            return []
        start, count = (0, length) if strict else (offset, size)
        p, s = self.config.primary_source_symbols, self.config.secondary_source_symbols
        rows = list(rows_for_range(self.config, length, start, count))
        failures: dict[str, str] = {}
        silent: set[int] = set()  # primary slivers whose holders did not answer in time
        primary = await self._collect(blob_id, metadata, Axis.PRIMARY, rows, len(rows), progress, failures, silent)
        secondary: dict[int, _Fetched] = {}
        if len(primary) < len(rows):
            primary.update(await self._collect(
                blob_id, metadata, Axis.PRIMARY, self._others([*primary, *silent]), p - len(primary), progress,
                failures, silent,
            ))
        row_length = s * metadata.symbol_size

        def own_rows(begin: int, stop: int) -> list[bytes]:
            # The verified systematic rows hold the blob's bytes as they are: no decoding.
            return [piece for r in rows_for_range(self.config, length, begin, stop - begin)
                    for piece in primary[r].piece(max(begin - r * row_length, 0), min(stop - r * row_length, row_length))]

        def decode_rows() -> list[bytes]:
            if all(r in primary for r in rows):
                data = b"".join(own_rows(0, length))
                check_consistency(metadata, data, rows, strict=True)
                return [data[offset : offset + size]]
            chosen = [primary[k].sliver() for k in sorted(primary)[:p]]
            data = decode_primary(self.config, length, chosen)
            check_consistency(metadata, data, [c.index for c in chosen], strict)
            return [data[offset : offset + size]]

        def decode_columns() -> list[bytes]:
            data = decode_secondary(self.config, length, [f.sliver() for f in secondary.values()])
            check_consistency(metadata, data, (), strict)
            return [data[offset : offset + size]]

        used: list[_Fetched] = []
        try:
            if all(r in primary for r in rows) and not strict:
                return own_rows(offset, offset + size)
            if all(r in primary for r in rows) or len(primary) >= p:
                used = list(primary.values())
                return await trio.to_thread.run_sync(decode_rows)
            secondary = await self._collect(blob_id, metadata, Axis.SECONDARY, self._others([]), s, progress, failures)
            if len(secondary) >= s:
                used = list(secondary.values())
                return await trio.to_thread.run_sync(decode_columns)
        except InconsistentBlob as exc:
            if len(used) < (p if used[0].axis is Axis.PRIMARY else s):
                # Decoded from the range's own systematic rows only: fetch the rest to build a proof.
                more = await self._collect(blob_id, metadata, Axis.PRIMARY, self._others(list(primary)),
                                           p - len(primary), None, failures)
                used += list(more.values())
            slivers = await trio.to_thread.run_sync(lambda: [f.sliver() for f in used])
            raise await self._inconsistent(blob_id, metadata, slivers, str(exc)) from exc
        if any(why.startswith(m.BLOB_INVALID) for why in failures.values()):
            entry = await self.invalid_entry(blob_id)
            if entry is not None:
                raise _certified_invalid(blob_id, entry)
        self._raise_if_gone(blob_id, failures)
        detail = "; ".join(f"{who}: {why}" for who, why in sorted(failures.items()))
        error = ChallengedError if any(why.startswith(m.CHALLENGED) for why in failures.values()) else ReadError
        raise error(
            f"blob {blob_id}: got {len(primary)} valid primary slivers (need {p}) and {len(secondary)} "
            f"valid secondary slivers (need {s}). {detail}"
        )

    # ------------------------------------------------------------------ status

    async def _each_peer(
        self, protocol: str, limit: float | None = None, patient: bool = False,
        check: Callable[[dict[str, Any]], Any] | None = None, **fields: Any,
    ) -> list[tuple[int, dict[str, Any] | None, str | None]]:
        """Ask every peer at once; (peer, reply or None, why not), silent peers reported as unresponsive.

        A peer is unresponsive once peers holding 2f + 1 shards have answered and it has
        not within ``STATUS_FACTOR`` times as long (at least ``STATUS_FLOOR`` s), or within
        ``limit`` (``STATUS_LIMIT``) s in any case: silence is judged against how fast the
        others were, so a stalled peer costs about a second on a fast network and a slow
        network does not make healthy peers look dead. A ``patient`` caller, whose answer
        is wrong rather than late without every peer's reply, waits for the full ``limit``.
        ``check`` validates a reply where it enters; what it raises is that peer's failure.
        """
        results: list[tuple[int, dict[str, Any] | None, str | None]] = []
        limit = STATUS_LIMIT if limit is None else limit
        started = trio.current_time()
        answered: set[int] = set()
        scopes = {peer: trio.CancelScope(deadline=started + limit) for peer in range(len(self.committee.peers))}
        gave_up: dict[int, float] = {}
        quorum = trio.Event()

        async def ask(peer: int) -> None:
            with scopes[peer]:
                try:
                    reply, _ = await self._call(peer, protocol, **fields)
                    if check is not None:
                        check(reply)
                    results.append((peer, reply, None))
                except (PeerUnavailable, CodecError) as exc:
                    results.append((peer, None, _describe(exc)))
                except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                    results.append((peer, None, member_fault(peer, exc)))
                answered.add(peer)
                if not patient and self.committee.weight(answered) >= self.committee.quorum:
                    quorum.set()
                return
            gave_up[peer] = trio.current_time() - started

        async def judge_silence() -> None:
            # Once 2f + 1 shards answered, a peer silent STATUS_FACTOR times as long is
            # unresponsive, unless its connection is up (it completed a handshake with us:
            # a live process, perhaps busy), which keeps the full limit.
            await quorum.wait()
            allowance = max(STATUS_FLOOR, STATUS_FACTOR * (trio.current_time() - started))
            await trio.sleep_until(started + allowance)
            for peer, scope in scopes.items():
                if peer not in answered and not self._connected(peer):
                    scope.cancel()

        async with trio.open_nursery() as nursery:
            judge = trio.CancelScope()

            async def judging() -> None:
                with judge:
                    await judge_silence()

            nursery.start_soon(judging)
            async with trio.open_nursery() as asks:
                for peer in range(len(self.committee.peers)):
                    asks.start_soon(ask, peer)
            judge.cancel()
        for peer in range(len(self.committee.peers)):
            if peer not in answered:
                self.silent(peer)
                results.append((peer, None, f"unresponsive: no answer within {gave_up.get(peer, limit):.1f} s"))
        return sorted(results, key=lambda r: r[0])

    def _connected(self, peer: int) -> bool:
        """Whether a connection to ``peer`` is open (its handshake completed: the process is alive)."""
        try:
            connections = self.host.get_network().get_connections(ID.from_base58(self.committee.peers[peer].peer_id))
        except Exception:  # noqa: BLE001 - a liveness hint only
            return False
        return any(not getattr(c, "is_closed", False) for c in connections)

    async def health(self, detail: bool = False) -> list[dict[str, Any]]:
        """Each peer's status (with ``detail``, its recent heals and usage per account), or why it could not be reached."""
        out = []
        for peer, reply, problem in await self._each_peer(m.GET_STATUS, check=m.check_status_reply, detail=detail):
            info = self.committee.peers[peer]
            entry: dict[str, Any] = {"peer_id": info.peer_id, "addrs": list(info.addrs), "reachable": reply is not None}
            if reply is not None:
                entry.update(
                    shards=reply.get("shards"), blobs=reply.get("blobs"),
                    stored_bytes=reply.get("stored_bytes"), version=reply.get("version"),
                    healing=reply.get("healing"), challenge=reply.get("challenge"),
                    free_bytes=reply.get("free_bytes"), disk_full=reply.get("disk_full") is True,
                )
                if reply.get("recent_heals") is not None:
                    entry["recent_heals"] = reply["recent_heals"]
                storage = m.storage_status(reply)
                if storage is not None:
                    entry["storage"] = storage
            else:
                entry["error"] = problem
            out.append(entry)
        return out

    async def start_audit(self, sample: int, member: tuple[int, SigningKey] | None = None) -> Entry:
        """Ask a responsive peer to start a challenge round of ``sample`` blobs; the checked start entry.

        Only committee members start rounds: a client outside the committee passes
        ``member`` (index, signing key), whose signature authorizes exactly the next round.
        The start itself is asked of one peer at a time, never hedged: a peer gathering
        commitments under load is slow, not silent, and a second peer asked meanwhile would
        start a second round with the same number. Finding a responsive peer is hedged.
        """
        async def status_of(peer: int) -> tuple[int, int]:
            status, _ = await self._call(peer, m.GET_STATUS)
            challenge = status.get("challenge")
            last = challenge.get("round") if isinstance(challenge, dict) else None
            if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last < 1 << 62:
                raise CodecError(f"peer {peer}'s status names no last challenge round")
            return peer, last

        async def start(peer: int, last: int) -> Entry:
            fields: dict[str, Any] = {}
            if member is not None:
                fields = {"member": member[0], "signature": member[1].sign(audit_request_bytes(last + 1)).signature}
            try:
                reply, _ = await self._call(peer, m.AUDIT_START, sample=sample, **fields)
            except m.RemoteError as exc:
                if exc.code == m.INVALID:
                    raise AuditError(exc.message) from exc  # e.g. a round is still open: asking others won't help
                raise
            entry = decode_entry(wire_field(reply, "entry", bytes))
            await trio.to_thread.run_sync(check_entry, entry, self.committee, _now_ms())
            return entry

        async def started_meanwhile() -> Entry | None:
            """The start of a round we asked for, if a peer whose reply failed started it anyway.

            A peer may start the round and then fail to answer (a timeout, a broken or
            hostile reply); the next peer asked then refuses because that round is open.
            The round we asked for exists, so report it rather than a refusal.
            """
            rounds = await self.audit_rounds(patient=False)
            for found in reversed(rounds.ordered()):
                if (found.start is not None and found.number in asked
                        and found.start.payload.get("sample") == sample):
                    return found.start
            return None

        ids = {info.peer_id: k for k, info in enumerate(self.committee.peers)}
        tried: set[int] = set()
        problems: dict[str, str] = {}
        asked: set[int] = set()  # round numbers a peer was asked to start and may have started
        while len(tried) < len(self.committee.peers):
            found, more = await self.hedged(status_of, [k for k in self.responsive_first() if k not in tried])
            problems.update(more)
            tried.update(ids[p] for p in more if p in ids)
            if found is None:
                break
            peer, last = found
            tried.add(peer)
            try:
                return await start(peer, last)
            except (PeerUnavailable, CodecError) as exc:
                problems[self.committee.peers[peer].peer_id] = _describe(exc)
            except AuditError:
                if asked and (meanwhile := await started_meanwhile()) is not None:
                    return meanwhile
                raise
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                problems[self.committee.peers[peer].peer_id] = member_fault(peer, exc)
            asked.add(last + 1)
        if asked and (meanwhile := await started_meanwhile()) is not None:
            return meanwhile
        detail = "; ".join(f"{p}: {why}" for p, why in sorted(problems.items()))
        raise AuditError(f"no peer started a challenge round: {detail}")

    async def audit_rounds(self, patient: bool = True) -> Rounds:
        """Every challenge round, folded here from the challenge entries of all reachable peers' logs.

        Each entry is checked (signatures, certificates) before it counts, so the result does
        not depend on trusting any one peer.
        """
        entries: dict[bytes, Entry] = {}
        # Patient by default: a pass entry only a slower peer holds would otherwise read as
        # a failure. Not patient, a round's results are still right for every peer that
        # answered (its own log holds its own pass), which is all ``health`` shows them for.
        for _peer, reply, _problem in await self._each_peer(m.AUDIT_LOG, patient=patient, check=m.check_entries_reply):
            if reply is None:
                continue
            for raw in reply.get("entries") or []:
                if isinstance(raw, bytes):
                    try:
                        entry = decode_entry(raw)
                    except CodecError:
                        continue
                    entries.setdefault(entry.id, entry)

        def valid() -> list[Entry]:
            out = []
            now = _now_ms()
            for entry in entries.values():
                try:
                    check_entry(entry, self.committee, now)
                except LogError:
                    continue
                out.append(entry)
            return out

        return Rounds(self.committee).extend(await trio.to_thread.run_sync(valid))

    async def blob_status(self, blob_id: BlobId) -> list[dict[str, Any]]:
        """Which peers hold which pairs of a blob and whether they confirmed it."""
        out = []
        for peer, reply, problem in await self._each_peer(m.GET_BLOB_STATUS, check=m.check_blob_status_reply,
                                                          blob_id=blob_id.raw):
            info = self.committee.peers[peer]
            expected = sorted(blob_id.pair_for_shard(sh, self.n) for sh in info.shards)
            entry: dict[str, Any] = {"peer_id": info.peer_id, "shards": list(info.shards), "pairs_expected": expected}
            if reply is not None:
                invalid = reply.get("invalid")
                entry.update(reachable=True, metadata=reply.get("metadata"), pairs=reply.get("pairs"),
                             valid_pairs=reply.get("valid_pairs"), confirmed=reply.get("confirmed"),
                             healing=reply.get("healing"), invalid=invalid.hex() if isinstance(invalid, bytes) else None)
            else:
                entry.update(reachable=False, error=problem)
            out.append(entry)
        return out
