"""Storage challenges on a peer: starting rounds, revealing, proving, attesting, closing.

The round itself is recorded in the log (see ``core.rounds``); this module is one peer's
part in it. Nothing waits on a clock for correctness: each step fires when the log shows
the previous one (a reveal when the start arrives, proofs when the seed is known, a close
when 2f + 1 shards passed), and retries of unreachable peers stop when the round closes.

Proofs are cheap: for each challenged blob a prover sends each checker a 32-byte digest of
the cells it owes that checker, bound to the round's seed (``challenge.possession_digest``).
The checker holds the same cells in its own slivers and recomputes the digest. A checker
that lacks its own slivers of a blob asks for the cells themselves as recovery symbols with
Merkle proofs against the writer's commitments, and checks those instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import Any

import trio

from p2p.framing import FrameReader
from p2p.host import IHost
from p2p.rpc import PeerUnavailable

from ..client.members import SessionPool, ask_others, call_member, member_fault
from ..core import merkle
from ..core import messages as m
from ..core.challenge import (
    NO_ROUND,
    NONCE_SIZE,
    PassCertificate,
    audit_request_bytes,
    check_heads,
    checker_cells,
    commitment_bytes,
    pass_bytes,
    pass_payload,
    possession_digest,
    prover_cells,
    round_secret,
    seed_commitment,
    sign_commitment,
    sign_pass,
    start_context,
    start_nonce,
    verify_member,
)
from ..core.committee import Committee, CommitteeError
from ..core.errors import CodecError, InvalidParameter, VerificationError
from ..core.log import (
    BLOB_CERTIFIED,
    CHALLENGE_CLOSE,
    CHALLENGE_KINDS,
    CHALLENGE_PASS,
    CHALLENGE_REVEAL,
    CHALLENGE_START,
    Entry,
    LogError,
)
from ..core.metadata import BlobId, BlobMetadata
from ..core.recovery import RecoverySymbol, recovery_symbols, verify_recovery_symbol
from ..core.redstuff import Axis, Sliver, pair_index
from ..core.rounds import (
    CLOSED,
    CLOSING,
    ENDED,
    EXPIRED,
    FAILED,
    OPEN,
    PASSED,
    REVEALING,
    UNPROVEN,
    UNRESOLVED,
    VOID,
    Round,
    Rounds,
    may_start,
)
from ..core.wire import MessageError, field, uint
from ..identity import Identity
from .healing import Healer, pair_problem
from .replication import LogService
from .store import PeerStore

log = logging.getLogger("walrusfs.challenges")

#: Blobs challenged per round unless ``audit start --sample`` or ``peer --challenge-sample``
#: say otherwise. A peer
#: missing 10% of its blobs passes 64 challenged blobs with probability 0.9^64 ~ 0.1%.
DEFAULT_SAMPLE = 64
RETRY_MIN, RETRY_MAX = 0.25, 5.0
#: Once peers holding 2f + 1 shards passed, a checker goes on attesting this long for the
#: others before it closes (unless everyone passed). Liveness only: safety never depends on
#: it, since reads resume only after 2f + 1 shards' worth of checkers closed.
CLOSE_GRACE = 5.0
NOT_READY = "not-ready"
#: Request key under which the peer passes the authenticated remote peer ID to handlers.
REMOTE_PEER = "\x00remote-peer-id"
#: A blob's metadata and this peer's slivers of it: pair -> (primary, secondary).
Held = tuple[BlobMetadata, dict[int, tuple[Sliver, Sliver]]]

#: After a failed start by the cadence, this peer waits this long before trying again.
CADENCE_RETRY = 10.0
#: A member asked to commit to a start whose heads it has not reached pulls the log for up
#: to this long before refusing. Liveness only: it commits only once it holds the entries.
COMMIT_WAIT = 3.0


class ChallengeError(Exception):
    """A round could not be started; the message says why."""


@dataclass
class Proving:
    """What this peer's proof collected in one round."""

    attestations: dict[int, bytes] = default(default_factory=dict)
    refusals: dict[int, str] = default(default_factory=dict)
    missing: list[str] = default(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class Checking:
    """This peer's side as a checker in one round."""

    verdicts: dict[int, str] = default(default_factory=dict)
    closed: bool = False
    lock: trio.Lock = default(default_factory=trio.Lock)
    own: dict[BlobId, Held | None] = default(default_factory=dict)
    bytes_received: int = 0
    bytes_sent: int = 0


class Challenges:
    """One peer's part in storage challenge rounds."""

    def __init__(
        self, identity: Identity, committee: Committee, store: PeerStore, index: int, log_service: LogService,
        healer: Healer, *, every: int = 0, sample: int = DEFAULT_SAMPLE, slow: float = 0.0, hold: Path | None = None,
        fetch_missing: bool = False, discard: float = 0.0,
    ) -> None:
        self.identity = identity
        self.committee = committee
        self.store = store
        self.index = index
        self.log = log_service
        self.healer = healer
        self.n = committee.n_shards
        self.rounds = Rounds(committee)
        #: The cadence: start a round of ``sample`` blobs once ``every`` blobs were certified
        #: since the last round's start, when it is this peer's turn (0: only on request).
        self.every = every
        self.sample = sample
        self._base = (b"", 0)  # (start ID of the last round, blobs certified as of its heads)
        self._closed: dict[bytes, str] = {}  # start ID -> how it ended (closed, expired, void)
        #: (predecessor's start ID, starter) -> the nonce this peer committed to: one start
        #: per member after each round, so a member cannot fork a round into a burst.
        self._committed: dict[tuple[bytes, int], bytes] = {}
        self._pulled: set[bytes] = set()  # unresolved starts we already pulled the log for
        self._due_at = (0, 0)  # (round, blobs certified when this peer first saw the cadence due it)
        self._cadence_retry = 0.0
        self.slow = slow
        self.hold = hold
        self.fetch_missing = fetch_missing
        self.discard = discard
        self._discarded = False
        #: Start ID -> challenged blobs, for rounds not closed yet; reads of these are refused.
        self._samples: dict[bytes, frozenset[BlobId]] = {}
        self._blocked: frozenset[BlobId] = frozenset()
        self._unresolved = False  # a start names entries this replica does not hold yet
        self._proving: dict[bytes, Proving] = {}
        self._checking: dict[bytes, Checking] = {}
        self._checked: dict[bytes, Checking] = {}  # the last closed round's, for status
        self._busy: set[tuple[str, bytes]] = set()
        self._close_at: dict[bytes, float] = {}  # start ID -> when this peer closes it
        self._start_lock = trio.Lock()
        self._wake = trio.Event()
        self._cpu = trio.CapacityLimiter(1)
        self.refused_reads = 0
        #: For the metrics (read from another thread; every key exists from the start): the
        #: newest valid round, the rounds that ended since start-up by this peer's result in
        #: them (void: the start never counted), and the proofs this peer checked by verdict.
        self.newest_round = 0
        self.rounds_ended: dict[str, int] = {PASSED: 0, FAILED: 0, UNPROVEN: 0, VOID: 0}
        self.proofs_checked: dict[str, int] = {"attested": 0, "refused": 0}
        self._counting = False  # rounds already ended in the stored log are not counted
        self.host: IHost | None = None
        self.pool: SessionPool | None = None

    # ------------------------------------------------------------------ following the log

    def load(self) -> None:
        """Fold the challenge entries already in the log (after ``LogService.load``)."""
        self.rounds.extend(e for e in self.log.state.counted() if e.kind in CHALLENGE_KINDS)
        self._refresh()
        self._counting = True

    def on_entry(self, entry: Entry) -> None:
        """Log listener: fold challenge entries; any entry may complete the heads a round waits for."""
        if entry.kind in CHALLENGE_KINDS:
            self.rounds.apply(entry)
        # A certified blob is log progress that may expire a round that cannot complete.
        if entry.kind in CHALLENGE_KINDS or self._unresolved or (entry.kind == BLOB_CERTIFIED and self._samples):
            self._refresh()
            self._wake.set()
        elif self.every and entry.kind == BLOB_CERTIFIED:
            self._wake.set()

    def _refresh(self) -> None:
        """Recompute which blobs are refused: the known samples of valid rounds not ended in this peer's view."""
        unresolved = False
        newest = self.rounds.last_valid(self.log.state)  # judges predecessors before successors
        if newest is not None:
            self.newest_round = newest.number
        for start_id, found in self.rounds.rounds.items():
            phase = self._phase(found)
            if phase in ENDED:
                self._samples.pop(start_id, None)
                done = self._checking.pop(start_id, None)
                if done is not None:
                    done.own.clear()  # the cached slivers; the counters stay for status
                    self._checked = {start_id: done}
                if found is not newest:
                    self._proving.pop(start_id, None)  # status shows the newest round only
            elif phase == UNRESOLVED:
                # The start names entries we lack: fetch them now (once per start, not per
                # entry). Until then it refuses nothing: we do not know its sample.
                unresolved = True
                if start_id not in self._pulled:
                    self._pulled.add(start_id)
                    self.log.pull_soon()
            elif phase != REVEALING and start_id not in self._samples:
                sample = found.sample(self.committee, self.log.state)
                if sample is not None:  # a valid round's heads are held, so known once the seed is
                    self._samples[start_id] = frozenset(sample)
        self._unresolved = unresolved
        self._blocked = frozenset().union(*self._samples.values()) if self._samples else frozenset()

    def _phase(self, found: Round) -> str:
        """``found``'s phase judged with the log; an ended round stays ended, so it is remembered, not judged again."""
        ended = self._closed.get(found.start_id)
        if ended is not None:
            return ended
        phase = self.rounds.judge(found, self.log.state)
        if phase in ENDED:
            self._closed[found.start_id] = phase
            if self._counting:
                result = VOID if phase == VOID else found.results(self.committee, phase)[self.index]
                if result in self.rounds_ended:
                    self.rounds_ended[result] += 1
        return phase

    def check_serving(self, blob_id: BlobId) -> str | None:
        """Why this peer must not serve data of ``blob_id`` now (a round challenges it), or None."""
        # Only known samples: a round whose sample this peer cannot compute yet refuses
        # nothing, so a start naming entries nobody has cannot stop reads.
        if blob_id in self._blocked:
            self.refused_reads += 1
            rounds = [self.rounds.rounds[s].number for s, sample in self._samples.items() if blob_id in sample]
            return f"blob {blob_id} is challenged in round {rounds[0]}; its data is served again once the round closes"
        return None

    def sample_of(self, start_id: bytes) -> list[BlobId] | None:
        """The blobs this peer challenges in round ``start_id`` (None until known)."""
        found = self.rounds.rounds.get(start_id)
        return None if found is None else found.sample(self.committee, self.log.state)

    # ------------------------------------------------------------------ tasks

    async def run(self, host: IHost) -> None:
        """Take each round through reveal, proof and close as the log moves; runs until cancelled."""
        self.host = host
        self.pool = SessionPool(host, self.committee)
        async with trio.open_nursery() as nursery:
            while True:
                self._step(nursery)
                due = min(self._close_at.values(), default=math.inf)
                if self._cadence_retry > trio.current_time():
                    due = min(due, self._cadence_retry)
                with trio.move_on_at(due):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _spawn(self, nursery: trio.Nursery, what: str, start_id: bytes, fn: Callable[[Round], Awaitable[None]],
               found: Round) -> None:
        key = (what, start_id)
        if key in self._busy:
            return
        self._busy.add(key)

        async def task() -> None:
            try:
                await fn(found)
            except (LogError, CodecError, OSError) as exc:
                log.warning("challenge round %d: %s failed: %s", found.number, what, exc)
                self._busy.discard(key)  # try again on the next log change

        nursery.start_soon(task)

    def _step(self, nursery: trio.Nursery) -> None:
        me = self.identity.public_key
        if self.every and ("start", b"") not in self._busy and self._cadence_due():
            self._busy.add(("start", b""))
            nursery.start_soon(self._start_by_cadence)
        for start_id, found in list(self.rounds.rounds.items()):
            if found.start is None:
                continue
            phase = self._phase(found)
            if phase in (VOID, EXPIRED, UNRESOLVED):
                continue  # never counted, ended without closing, or not judged yet: nothing to do
            if phase == REVEALING:
                if self.index in found.commitments() and not any(e.author == me for e in found.reveals.values()):
                    self._spawn(nursery, "reveal", start_id, self._reveal, found)
                continue
            if phase == OPEN and start_id in self._samples and self.index not in found.passed(self.committee):
                self._spawn(nursery, "prove", start_id, self._prove, found)
            if phase in (CLOSING, CLOSED) and not any(e.author == me for e in found.closes.values()):
                everyone = len(found.passed(self.committee)) == len(self.committee.peers)
                due = self._close_at.setdefault(start_id, trio.current_time() + CLOSE_GRACE)
                if phase == CLOSED or everyone or trio.current_time() >= due:
                    self._close_at.pop(start_id, None)
                    self._spawn(nursery, "close", start_id, self._close, found)

    async def _reveal(self, found: Round) -> None:
        assert found.start is not None
        secret = round_secret(self.identity.seed, found.number, found.start.payload["nonce"])
        await self.log.author(CHALLENGE_REVEAL, {"start": found.start_id, "secret": secret})

    async def _close(self, found: Round) -> None:
        checking = self._checking.setdefault(found.start_id, Checking())
        async with checking.lock:
            # From here on this peer attests nothing more in this round (see core.rounds).
            checking.closed = True
            passed = found.passed(self.committee)
            verdicts = []
            for peer in range(len(self.committee.peers)):
                if peer == self.index:
                    continue
                verdict = "passed" if peer in passed else checking.verdicts.get(peer, "sent no proof")
                verdicts.append([peer, verdict[:200]])
        await self.log.author(CHALLENGE_CLOSE, {"start": found.start_id, "verdicts": verdicts})

    async def _discard_some(self) -> None:
        """TEST FAULT: drop a fraction of the stored pairs, as a peer saving space would."""
        pairs = sorted(await trio.to_thread.run_sync(self.store.all_pairs),
                       key=lambda bp: merkle.blake2b256(bp[0] + bytes([bp[1] % 256])))
        victims = pairs[: math.ceil(len(pairs) * self.discard)]
        for blob, pair in victims:
            await trio.to_thread.run_sync(self.store.drop_pair, BlobId(blob), pair)
        log.warning("TEST FAULT: discarded %d of %d sliver pairs", len(victims), len(pairs))

    # ------------------------------------------------------------------ starting a round

    def _cadence_due(self) -> bool:
        """Whether the cadence has this peer start the next round now."""
        if trio.current_time() < self._cadence_retry:
            return False
        ordered = self.rounds.valid(self.log.state)
        if any(self._phase(found) not in ENDED for found in ordered):
            return False
        base = 0
        if ordered:
            last = ordered[-1]
            if self._base[0] != last.start_id:
                heads = last.heads(self.committee)
                if not self.log.state.reached(heads):
                    return False  # this peer lags behind that round's start; count once caught up
                self._base = (last.start_id, len(self.log.state.certified_as_of(heads)))
            base = self._base[1]
        certified, number = self.log.state.certified_count(), (ordered[-1].number if ordered else 0) + 1
        if certified - base < self.every:
            return False
        if self._due_at[0] != number:
            self._due_at = (number, certified)
        return may_start(certified - base, certified - self._due_at[1], self.every, number, self.index,
                         len(self.committee.peers))

    async def _start_by_cadence(self) -> None:
        try:
            entry = await self.start_round(self.sample)
            log.info("challenge round %d started by the cadence (every %d certified blobs)",
                     entry.payload["round"], self.every)
        except (ChallengeError, LogError, CodecError, OSError) as exc:
            # Peers may be down or a round may have just started elsewhere; try again on a
            # later log change, but not in a tight loop.
            log.warning("challenge round by the cadence not started: %s", exc)
            self._cadence_retry = trio.current_time() + CADENCE_RETRY
        finally:
            self._busy.discard(("start", b""))
            self._wake.set()

    async def start_round(self, sample: int) -> Entry:
        """Gather signed commitments from peers holding 2f + 1 shards and record a challenge-start."""
        async with self._start_lock:
            return await self._start_round(sample)

    def next_round(self) -> tuple[int, bytes]:
        """The number of the next round and the start ID it follows, or ``ChallengeError`` while one is running."""
        valid = self.rounds.valid(self.log.state)
        for found in valid:
            phase = self._phase(found)
            if phase not in ENDED:
                raise ChallengeError(f"round {found.number} is still {phase}; start the next one after it closes "
                                     f"(or expires after more writes)")
        return (valid[-1].number + 1, valid[-1].start_id) if valid else (1, NO_ROUND)

    async def _start_round(self, sample: int) -> Entry:
        number, prev = self.next_round()
        state = self.log.state
        if self.rounds.started_after(self.identity.public_key, prev, state):
            raise ChallengeError(f"this peer already started a round after round {number - 1}")
        heads = [[k, state.head(p.public_key)] for k, p in enumerate(self.committee.peers)]
        why = self.rounds.may_follow(number, prev, {p.public_key: h for p, (_, h) in zip(self.committee.peers, heads)},
                                     state)
        if why is not None:
            raise ChallengeError(f"round {number} cannot start yet: {why}")
        # The same nonce on a retry: members commit to one start per member after each round.
        nonce = start_nonce(self.identity.seed, prev)
        context = start_context(prev, heads)
        commits: dict[int, tuple[bytes, bytes]] = {self.index: self._commitment(number, nonce, context)}
        problems: dict[int, str] = {}
        enough = trio.Event()  # 2f + 1 shards committed: a silent member is not waited for

        async def ask(peer: int) -> None:
            try:
                reply, _ = await self._call(peer, m.CHALLENGE_COMMIT, round=number, nonce=nonce, prev=prev,
                                            heads=heads)
                commitment, signature = field(reply, "commitment", bytes, size=32), field(reply, "signature", bytes)
                await trio.to_thread.run_sync(
                    verify_member, self.committee, peer, commitment_bytes(number, nonce, peer, commitment, context),
                    signature, f"peer {peer}'s commitment signature is invalid")
                commits[peer] = (commitment, signature)
                if self.committee.weight(commits) >= self.committee.quorum:
                    enough.set()
            except (PeerUnavailable, CodecError, VerificationError) as exc:
                problems[peer] = str(exc)
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                problems[peer] = member_fault(peer, exc)

        await ask_others(self.committee, self.index, ask, enough)
        if self.committee.weight(commits) < self.committee.quorum:
            detail = "; ".join(f"peer {k}: {why}" for k, why in sorted(problems.items()))
            raise ChallengeError(f"only peers holding {self.committee.weight(commits)} shards committed to round "
                                 f"{number}; a round needs {self.committee.quorum}. {detail}")
        payload = {"round": number, "prev": prev, "nonce": nonce, "sample": sample, "heads": heads,
                   "commits": [[k, c, s] for k, (c, s) in sorted(commits.items())]}
        return await self.log.author(CHALLENGE_START, payload)

    def _commitment(self, number: int, nonce: bytes, context: bytes) -> tuple[bytes, bytes]:
        commitment = seed_commitment(number, self.index, round_secret(self.identity.seed, number, nonce))
        return commitment, sign_commitment(self.identity.signing_key, number, nonce, self.index, commitment, context)

    async def _call(self, peer: int, protocol: str, body: bytes = b"", **fields: Any) -> tuple[dict[str, Any], bytes]:
        assert self.host is not None
        return await call_member(self.host, self.committee, peer, protocol, body, pool=self.pool, **fields)

    # ------------------------------------------------------------------ proving

    def _pairs_of(self, peer: int, blob_id: BlobId) -> list[int]:
        return sorted(blob_id.pair_for_shard(shard, self.n) for shard in self.committee.peers[peer].shards)

    def _held(self, blob_id: BlobId) -> Held | None:
        """The metadata and this peer's verified slivers of ``blob_id`` (pair -> (primary, secondary)), or None.

        None if the metadata or any of this peer's pairs is missing or fails verification.
        Blocking (disk and hashing).
        """
        metadata = self.store.get_metadata(blob_id, self.n)
        if metadata is None:
            return None
        out = {}
        size = metadata.symbol_size
        for pair in self._pairs_of(self.index, blob_id):
            stored = self.store.read_pair(blob_id, pair)
            if stored is None or pair_problem(metadata, pair, *stored) is not None:
                return None
            data, primary_length = stored
            out[pair] = (Sliver(Axis.PRIMARY, pair, size, data[:primary_length]),
                         Sliver(Axis.SECONDARY, pair_index(Axis.SECONDARY, pair, self.n), size, data[primary_length:]))
        return metadata, out

    async def _prove(self, found: Round) -> None:
        """Send every checker our digests; record a pass entry once 2f + 1 shards attested."""
        sample = sorted(self._samples.get(found.start_id, ()), key=lambda b: b.raw)
        seed = found.seed(self.committee)
        assert seed is not None
        proving = self._proving.setdefault(found.start_id, Proving())
        if self.discard and not self._discarded:
            self._discarded = True
            await self._discard_some()
        if self.fetch_missing:
            await self._try_to_fetch(sample)

        def gather() -> dict[BlobId, Held | None]:
            return {blob_id: self._held(blob_id) for blob_id in sample}

        async with self._cpu:
            held = await trio.to_thread.run_sync(gather)
        proving.missing = [str(b) for b, v in held.items() if v is None]
        if proving.missing:
            log.warning("challenge round %d: %d challenged blobs are not held here", found.number, len(proving.missing))
        enough = trio.Event()
        # Our own attestation counts as one of the 2f + 1: among any 2f + 1 attesters at most
        # f are faulty (the prover included), so f + 1 honest checkers still verified the
        # proof. Without it an honest peer needs every other member's attestation at
        # n = 4, and one member that never attests fails everyone and wedges the round.
        if not proving.missing:
            proving.attestations[self.index] = sign_pass(self.identity.signing_key, found.number, seed, self.index)

        async def prove_to(peer: int) -> None:
            delay = RETRY_MIN
            while not self._over(found):
                try:
                    signature = await self._prove_to(found, seed, peer, held, proving)
                except PeerUnavailable as exc:
                    proving.refusals[peer] = f"unreachable: {exc}"
                except m.RemoteError as exc:
                    if exc.code != NOT_READY:
                        proving.refusals[peer] = str(exc)
                        return
                except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                    proving.refusals[peer] = member_fault(peer, exc)
                    return
                else:
                    proving.refusals.pop(peer, None)
                    proving.attestations[peer] = signature
                    if self.committee.weight(proving.attestations) >= self.committee.quorum:
                        enough.set()
                    return
                # The checker has not seen the seed yet, or is unreachable: no deadline, only the round's end.
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

        await ask_others(self.committee, self.index, prove_to, enough)
        if self.committee.weight(proving.attestations) < self.committee.quorum:
            log.warning("challenge round %d: no pass certificate; refused by %s", found.number, proving.refusals)
            return
        signers = tuple(sorted(proving.attestations))
        certificate = PassCertificate(found.number, seed, self.index, signers,
                                      tuple(proving.attestations[k] for k in signers))
        await self.log.author(CHALLENGE_PASS, pass_payload(found.start_id, certificate))

    def _over(self, found: Round) -> bool:
        return self._phase(found) in ENDED or self.index in found.passed(self.committee)

    async def _prove_to(
        self, found: Round, seed: bytes, peer: int,
        held: dict[BlobId, Held | None], proving: Proving,
    ) -> bytes:
        """One checker: digests first, the cells themselves for blobs it cannot check from its own slivers."""
        if self.slow:
            await trio.sleep(self.slow)
        while self.hold is not None and await trio.Path(self.hold).exists() and not self._over(found):
            await trio.sleep(0.2)

        def digests() -> list[bytes | None]:
            # In sample order (by blob ID), which the checker knows: no IDs on the wire.
            rows: list[bytes | None] = []
            for blob_id, value in sorted(held.items(), key=lambda item: item[0].raw):
                if value is None:
                    rows.append(None)
                    continue
                metadata, own = value
                cells = prover_cells(metadata.config, own, self._pairs_of(peer, blob_id))
                rows.append(possession_digest(seed, blob_id, cells))
            return rows

        async with self._cpu:
            rows = await trio.to_thread.run_sync(digests)
        header = m.request(start=found.start_id, digests=rows)
        reply, _ = await self._call(peer, m.CHALLENGE_PROVE, start=found.start_id, digests=rows)
        proving.bytes_sent += len(header)
        proving.bytes_received += len(m.encode(reply))
        need = reply.get("need")
        if isinstance(need, list) and need:
            wanted = [BlobId(raw) for raw in need if isinstance(raw, bytes) and len(raw) == 32]

            def symbols() -> tuple[list[list[Any]], bytes]:
                listing: list[list[Any]] = []
                body: list[bytes] = []
                for blob_id in wanted:
                    value = held.get(blob_id)
                    if value is None:
                        continue
                    metadata, own = value
                    for sym in self._symbols_for(metadata, own, self._pairs_of(peer, blob_id)):
                        listing.append([blob_id.raw, sym.target.value, sym.target_index, sym.source_index,
                                        list(sym.proof)])
                        body.append(sym.data)
                return listing, b"".join(body)

            async with self._cpu:
                listing, body = await trio.to_thread.run_sync(symbols)
            reply, _ = await self._call(peer, m.CHALLENGE_PROVE, body, start=found.start_id, digests=rows,
                                        symbols=listing)
            proving.bytes_sent += len(m.request(start=found.start_id, digests=rows, symbols=listing)) + len(body)
            proving.bytes_received += len(m.encode(reply))
        signature = field(reply, "signature", bytes)
        await trio.to_thread.run_sync(verify_member, self.committee, peer, pass_bytes(found.number, seed, self.index),
                                      signature, f"peer {peer}'s pass attestation is invalid")
        return signature

    def _symbols_for(self, metadata: BlobMetadata, own: dict[int, tuple[Sliver, Sliver]],
                     checker_pairs: list[int]) -> list[RecoverySymbol]:
        config = metadata.config
        out = []
        for primary, secondary in (own[i] for i in sorted(own)):
            out += recovery_symbols(config, primary, [self.n - 1 - j for j in checker_pairs])
            out += recovery_symbols(config, secondary, checker_pairs)
        return out

    async def _try_to_fetch(self, sample: list[BlobId]) -> None:
        """TEST FAULT: a peer missing challenged data tries to rebuild it from the others mid-round."""
        for blob_id in sample:
            stored = await trio.to_thread.run_sync(self.store.stored_pairs, blob_id)
            if all(p in stored for p in self._pairs_of(self.index, blob_id)):
                continue
            try:
                record = await self.healer.heal(blob_id)
                log.warning("TEST FAULT: fetching challenged blob %s mid-round: %s", blob_id,
                            "rebuilt" if record else "not rebuilt")
            except Exception as exc:  # noqa: BLE001 - the fault mode reports whatever stopped it
                log.warning("TEST FAULT: fetching challenged blob %s mid-round was refused: %s", blob_id, exc)

    # ------------------------------------------------------------------ checking

    async def check(self, start_id: bytes, prover: int, rows: list[Any], symbols: list[Any] | None,
                    body: bytes) -> dict[str, Any]:
        """Check a proof from ``prover``: the attestation, a list of blobs we need as symbols, or an error."""
        found = self.rounds.rounds.get(start_id)
        seed = found.seed(self.committee) if found is not None and found.start is not None else None
        sample = self._samples.get(start_id)
        if found is not None and found.start is not None and self._phase(found) in ENDED:
            raise _Refusal(m.INVALID, f"this round is {self._phase(found)}")
        if found is None or seed is None or sample is None:
            raise _Refusal(NOT_READY, "this peer has not seen the round's seed and sample yet")
        checking = self._checking.setdefault(start_id, Checking())
        ordered = sorted(sample, key=lambda b: b.raw)
        if len(rows) != len(ordered) or not all(r is None or (isinstance(r, bytes) and len(r) == 32) for r in rows):
            raise _Refusal(m.MALFORMED, f"expected {len(ordered)} digests (32 bytes or nil), in blob ID order")
        digests: dict[BlobId, bytes | None] = dict(zip(ordered, rows))
        missing = [b for b in ordered if digests[b] is None]
        async with checking.lock:
            if checking.closed:
                raise _Refusal(m.INVALID, f"this peer closed round {found.number} and attests no more")
            if missing:
                why = f"no proof for {len(missing)} of {len(sample)} challenged blobs (first: {missing[0]})"
            else:
                why = None
            if why is None:
                why, need = await self._verify(found, seed, prover, sample, digests, symbols, body, checking)
                if need:
                    return {"need": [b.raw for b in need]}
            if why is not None:
                checking.verdicts[prover] = f"refused: {why}"
                self.proofs_checked["refused"] += 1
                raise _Refusal(m.INVALID, f"proof refused: {why}")
            checking.verdicts[prover] = "attested"
            self.proofs_checked["attested"] += 1
        if self.slow:
            await trio.sleep(self.slow)
        return {"signature": sign_pass(self.identity.signing_key, found.number, seed, prover)}

    async def _verify(
        self, found: Round, seed: bytes, prover: int, sample: frozenset[BlobId], digests: dict[BlobId, bytes | None],
        symbols: list[Any] | None, body: bytes, checking: Checking,
    ) -> tuple[str | None, list[BlobId]]:
        """Why the digests fail (or None), and the blobs we need as symbols to check them."""
        prover_pairs = {b: self._pairs_of(prover, b) for b in sample}
        unknown = [b for b in sample if b not in checking.own]
        if unknown:
            async with self._cpu:
                loaded = await trio.to_thread.run_sync(lambda: {b: self._held(b) for b in unknown})
            checking.own.update(loaded)
        need = [b for b in sorted(sample, key=lambda b: b.raw) if checking.own[b] is None]
        given: dict[BlobId, list[RecoverySymbol]] = {}
        if need and symbols is None:
            return None, need
        if need:
            metadata = {b: await self.healer.metadata(b) for b in need}
            given = _parse_symbols(symbols, body, metadata, self.n)

        def verify() -> str | None:
            for blob_id in sorted(sample, key=lambda b: b.raw):
                held = checking.own[blob_id]
                if held is not None:
                    cells = checker_cells(held[0].config, held[1], prover_pairs[blob_id])
                else:
                    try:
                        cells = _cells_from_symbols(metadata[blob_id], given.get(blob_id, []), prover_pairs[blob_id],
                                                    self._pairs_of(self.index, blob_id))
                    except (VerificationError, InvalidParameter) as exc:
                        return f"blob {blob_id}: {exc}"
                if possession_digest(seed, blob_id, cells) != digests[blob_id]:
                    return f"blob {blob_id}: the digest does not match the cells this peer holds"
            return None

        async with self._cpu:
            return await trio.to_thread.run_sync(verify), []

    # ------------------------------------------------------------------ handlers

    def handlers(self) -> dict[str, Any]:
        """Protocol ID -> handler(request, reader) for the peer to serve."""
        return {m.CHALLENGE_COMMIT: self._h_commit, m.CHALLENGE_PROVE: self._h_prove, m.AUDIT_START: self._h_start}

    async def _h_commit(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        number = uint(request, "round", 1 << 62)
        nonce = field(request, "nonce", bytes, size=NONCE_SIZE)
        prev = field(request, "prev", bytes, size=32)
        try:
            starter = self._remote_member(request, "only committee members start rounds")
            rows = check_heads(self.committee, field(request, "heads", list))
        except _Refusal as exc:
            return m.error(exc.code, str(exc)), b""
        except VerificationError as exc:
            return m.error(m.MALFORMED, str(exc)), b""
        heads = {self.committee.peers[k].public_key: seq for k, seq in rows}
        state = self.log.state
        # We commit only to heads we hold (so f + 1 honest members hold whatever a start
        # names); the starter's newest entries may still be on their way, so pull a little.
        with trio.move_on_after(COMMIT_WAIT):
            while not state.reached(heads):
                self.log.pull_soon()
                await trio.sleep(0.1)
        why = self.rounds.may_follow(number, prev, heads, state)
        if why is None and self.rounds.started_after(self.committee.peers[starter].public_key, prev, state):
            why = f"peer {starter} already started a round after that one"
        if why is None and self._committed.setdefault((prev, starter), nonce) != nonce:
            why = f"this peer already committed to another start by peer {starter} after that round"
        if why is not None:
            return m.error(m.INVALID, f"no commitment to round {number}: {why}"), b""
        if len(self._committed) > 4 * len(self.committee.peers):
            # Old predecessors need no memory: a start after them is void already.
            self._committed = {k: v for k, v in self._committed.items() if k[0] == prev}
        commitment, signature = self._commitment(number, nonce, start_context(prev, rows))
        return m.ok(commitment=commitment, signature=signature), b""

    async def _h_prove(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        start_id = field(request, "start", bytes, size=32)
        rows = field(request, "digests", list)
        symbols = request.get("symbols")
        if symbols is not None and not isinstance(symbols, list):
            return m.error(m.MALFORMED, "symbols must be a list"), b""
        length = await reader.body_length(m.MAX_BODY)
        body = b"".join([chunk async for chunk in reader.body_chunks(length)])
        try:
            prover = self._remote_member(request)
            reply = await self.check(start_id, prover, rows, symbols, body)
        except _Refusal as exc:
            return m.error(exc.code, str(exc)), b""
        header = m.ok(**reply)
        checking = self._checking.get(start_id)
        if checking is not None:
            sent = {k: v for k, v in request.items() if k != REMOTE_PEER}
            checking.bytes_received += len(m.encode(sent)) + len(body)
            checking.bytes_sent += len(header)
        return header, b""

    def _remote_member(self, request: dict[str, Any], why: str = "only committee members prove possession") -> int:
        # Set by the peer from the authenticated connection, never from the sender's fields.
        try:
            return self.committee.index_of(str(request.get(REMOTE_PEER)))
        except CommitteeError:
            raise _Refusal(m.INVALID, why) from None

    async def _h_start(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        sample = uint(request, "sample", 1 << 13)
        if sample < 1:
            return m.error(m.MALFORMED, "a round challenges at least one blob"), b""
        try:
            self._remote_member(request)
        except _Refusal:
            # Not a member: it needs a member's signature for exactly the next round, so an
            # outsider cannot start rounds, and a signature it saw once starts one round at most.
            try:
                number, _ = self.next_round()
                member = uint(request, "member", len(self.committee.peers))
                signature = field(request, "signature", bytes, size=64)
            except ChallengeError as exc:
                return m.error(m.INVALID, str(exc)), b""
            except MessageError:
                return m.error(m.INVALID, f"only committee members start rounds: sign round {number} with a "
                                          "member's key (walrusfs audit start --key)"), b""
            try:
                verify_member(self.committee, member, audit_request_bytes(number), signature,
                              f"the request is not signed by member {member} for round {number}")
            except VerificationError as exc:
                return m.error(m.INVALID, f"only committee members start rounds: {exc}"), b""
        try:
            entry = await self.start_round(sample)
        except ChallengeError as exc:
            return m.error(m.INVALID, str(exc)), b""
        return m.ok(entry=entry.encode(), round=entry.payload["round"]), b""

    # ------------------------------------------------------------------ status

    def status(self, detail: bool = False) -> dict[str, Any]:
        """This peer's view of the last round: its number, phase and this peer's result (and sample)."""
        ordered = self.rounds.valid(self.log.state)  # void starts are not rounds
        if not ordered:
            return {"round": 0, "refused_reads": self.refused_reads}
        last = ordered[-1]
        proving = self._proving.get(last.start_id)
        closed = [r for r in ordered if self._phase(r) == CLOSED]
        phase = self._phase(last)
        out: dict[str, Any] = {
            "round": last.number, "start": last.start_id.hex(), "phase": phase,
            "result": last.results(self.committee, phase)[self.index],
            "refused_reads": self.refused_reads,
            "sample": len(self._samples.get(last.start_id, ())) or None,
        }
        if detail:
            sample = last.sample(self.committee, self.log.state)
            out["sample_ids"] = None if sample is None else [str(b) for b in sample]
        if closed:
            out["last_closed"] = {"round": closed[-1].number, "result": closed[-1].results(self.committee)[self.index]}
        checking = self._checking.get(last.start_id) or self._checked.get(last.start_id)
        mine = [e for e in (last.start, *last.reveals.values(), *last.passes.values(), *last.closes.values())
                if e is not None and e.author == self.identity.public_key]
        # Entries this peer wrote for the round go to the n - 1 others once each (its own pushes).
        log_bytes = sum(len(e.encode()) for e in mine) * (len(self.committee.peers) - 1)
        out["traffic"] = {
            "proof_sent": proving.bytes_sent if proving else 0, "proof_received": proving.bytes_received if proving else 0,
            "check_received": checking.bytes_received if checking else 0,
            "check_sent": checking.bytes_sent if checking else 0, "log_sent": log_bytes,
        }
        if proving is not None:
            out["proof"] = {"attested_by": sorted(proving.attestations), "refused_by": proving.refusals,
                            "missing_blobs": len(proving.missing), "bytes_sent": proving.bytes_sent,
                            "bytes_received": proving.bytes_received}
        return out


class _Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _parse_symbols(listing: Any, body: bytes, metadata: dict[BlobId, BlobMetadata], n: int) -> dict[BlobId, list[RecoverySymbol]]:
    """Recovery symbols sent as [blob, target axis, target index, source index, proof] rows plus a body."""
    out: dict[BlobId, list[RecoverySymbol]] = {}
    offset = 0
    for row in listing:
        if not (isinstance(row, list) and len(row) == 5 and isinstance(row[0], bytes) and len(row[0]) == 32
                and row[1] in ("primary", "secondary") and isinstance(row[2], int) and isinstance(row[3], int)
                and isinstance(row[4], list) and len(row[4]) <= 64
                and all(isinstance(h, bytes) and len(h) == merkle.DIGEST_SIZE for h in row[4])):
            raise _Refusal(m.MALFORMED, "each symbol row is [blob ID, target axis, target index, source index, proof]")
        blob_id = BlobId(row[0])
        if blob_id not in metadata:
            raise _Refusal(m.MALFORMED, f"symbols for blob {blob_id}, which this peer did not ask for")
        size = metadata[blob_id].symbol_size
        if offset + size > len(body):
            raise _Refusal(m.MALFORMED, "the body is shorter than the symbols listed")
        out.setdefault(blob_id, []).append(
            RecoverySymbol(Axis(row[1]), row[2], row[3], body[offset : offset + size], tuple(row[4])))
        offset += size
    if offset != len(body):
        raise _Refusal(m.MALFORMED, "the body is longer than the symbols listed")
    return out


def _cells_from_symbols(metadata: BlobMetadata, symbols: list[RecoverySymbol], prover_pairs: list[int],
                        checker_pairs: list[int]) -> list[tuple[int, int, bytes, bytes]]:
    """The cells, from recovery symbols each checked against the writer's commitments."""
    n = metadata.config.n_shards
    by_key = {(s.target, s.target_index, s.source_index): s for s in symbols}
    cells = []
    for i in prover_pairs:
        for j in checker_pairs:
            # The cell on the checker's secondary sliver comes from the prover's primary sliver i,
            # the cell on its primary sliver from the prover's secondary sliver n-1-i.
            a = by_key.get((Axis.SECONDARY, n - 1 - j, i))
            b = by_key.get((Axis.PRIMARY, j, n - 1 - i))
            if a is None or b is None:
                raise VerificationError(f"cells for pairs ({i}, {j}) are missing")
            verify_recovery_symbol(metadata, a)
            verify_recovery_symbol(metadata, b)
            cells.append((i, j, a.data, b.data))
    return cells
