"""Log replication on a peer: authoring, validating, storing and spreading log entries.

Delivery is made certain by anti-entropy, not by the fast path: every interval (and at once
when an entry arrives ahead of a gap) the peer asks a random other peer for its per-author
heads and pulls the ranges it lacks. The fast path: an author pushes each entry it writes
to every other peer, in batches with one request in flight per destination. Invalid
entries are never stored or relayed; equivocation evidence is relayed so every peer learns
it. py-libp2p's gossipsub is not used: it drops messages silently under load and the
anti-entropy exchange is what makes delivery certain either way.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Any

import trio

from p2p.framing import FrameReader
from p2p.host import IHost, peer_info
from p2p.rpc import PeerUnavailable, Session

from ..client.logpages import RoundBudget, check_ranges, heads_pages, range_pages
from ..client.members import SessionPool, call_member, member_fault
from ..core import merkle
from ..core import messages as m
from ..core.certificates import Certificate, verify_certificate
from ..core.committee import Committee
from ..core.errors import CodecError, VerificationError
from ..core.lifecycle import (
    BLOB_DELETED,
    BLOB_EXTENDED,
    MAX_EPOCHS_AHEAD,
    LifecycleError,
    LifetimeOp,
    Registration,
)
from ..core.log import (
    BLOB_CERTIFIED,
    BLOB_INVALID,
    GENESIS,
    Entry,
    LogError,
    LogState,
    Outcome,
    certificate_from_payload,
    check_entry,
    decode_entry,
    invalid_payload,
    next_hlc,
    registration_from_payload,
    sign_entry,
)
from ..core.messages import (
    LOG_CERTIFIED,
    LOG_EVIDENCE,
    LOG_HEADS,
    LOG_PUSH,
    LOG_RANGE,
    LOG_SUBMIT,
    LOG_TIMES,
)
from ..core.wire import MessageError, field
from ..identity import Identity
from .store import DiskFull, PeerStore

log = logging.getLogger("walrusfs.replication")


#: Entries per push or range reply; keeps every message far below the header limit.
BATCH = 500
#: Entries kept in memory while the disk is full, to be stored when space returns.
UNSTORED_MAX = 100_000
ANTI_ENTROPY_INTERVAL = 1.0
#: Bytes (entries and heads) one anti-entropy exchange fetches at most; a larger gap is
#: closed over several rounds, resuming at ``_cursor``, so one exchange never holds a
#: whole flood of authors at once.
PULL_BYTES = 32 << 20
#: Liveness only: an anti-entropy exchange silent this long is given up (what was
#: received so far is kept) and that peer is asked less often until it answers again.
PULL_LIMIT = 10.0
#: Outcomes of an entry that this replica did not hold before.
_NEW = frozenset({Outcome.ACCEPTED.value, Outcome.PENDING.value, Outcome.EQUIVOCATION.value})


def _now_ms() -> int:
    return int(time.time() * 1000)


class LogService:
    """One peer's replica of the log and its replication tasks."""

    def __init__(self, identity: Identity, committee: Committee, store: PeerStore, index: int) -> None:
        self.identity = identity
        self.committee = committee
        self.store = store
        self.index = index
        self.state = LogState(committee)
        self._members = frozenset(peer.public_key for peer in committee.peers)
        self.last_hlc = 0
        self.max_seen = 0
        self._author_lock = trio.Lock()
        self._apply_lock = trio.Lock()
        self._outboxes: dict[int, list[Entry]] = {i: [] for i in range(len(committee.peers)) if i != index}
        self._silent: set[int] = set()  # peers whose last anti-entropy exchange timed out
        self._outbox_ready: dict[int, trio.Event] = {i: trio.Event() for i in self._outboxes}
        self._pull_now = trio.Event()
        self._unstored: list[tuple[bytes, bytes, int, bytes, int]] = []
        self.host: IHost | None = None
        #: Authors with at least one accepted entry, in byte order: ``log-heads`` pages are
        #: slices of it, found by bisection, so a page costs its own size, not the log's.
        self._authors: list[bytes] = []
        #: Where the next anti-entropy exchange resumes its walk of the heads pages (the
        #: last author it finished; None: from the start).
        self._cursor: bytes | None = None
        self._pool: SessionPool | None = None  # streams for anti-entropy's heads and ranges
        #: Called (on the trio loop, must not block) with every entry that becomes accepted.
        self.listeners: list[Callable[[Entry], None]] = [self._index_author]
        #: For the metrics (read from another thread: every key exists from the start, so
        #: only values change). Entries offered to this replica by outcome; anti-entropy
        #: exchanges by outcome, the entries they fetched, how many entries new here the
        #: last completed exchange brought (0: this replica was caught up), and when (Unix
        #: time) it completed.
        self.offered: dict[str, int] = {outcome.value: 0 for outcome in Outcome}
        self.exchanges: dict[str, int] = {"ok": 0, "failed": 0, "silent": 0}
        self.pulled_entries = 0
        self.lag_entries = 0
        self.last_exchange = 0.0

    async def load(self) -> None:
        """Rebuild the state from the entries stored here (they were validated before storing)."""
        for encoded in await trio.to_thread.run_sync(self.store.log_entries):
            try:
                entry = decode_entry(encoded)
            except LogError as exc:
                # Before stamps were bounded, a stamp of 2^63 - 1 pushed every peer's clock
                # past the 63-bit range and peers stored own entries nobody can decode (nor
                # ever accepted): skip them rather than refuse to start. Rows are keyed by
                # entry ID, so re-signing that position later stores alongside.
                log.warning("skipping a stored log entry that no longer decodes: %s", exc)
                continue
            self.state.apply(entry, checked=True)
            # Stamps already in the log (perhaps accepted before the bound existed) are
            # followed only within next_hlc's limit, so they cannot poison our clock.
            self.max_seen = max(self.max_seen, entry.hlc)
            if entry.author == self.identity.public_key:
                self.last_hlc = max(self.last_hlc, entry.hlc)
        self._authors = sorted(author for author, chain in self.state.chains.items() if chain)

    def _index_author(self, entry: Entry) -> None:
        # An author's first accepted entry is always seq 1, accepted once.
        if entry.seq == 1:
            bisect.insort(self._authors, entry.author)

    # ------------------------------------------------------------------ applying

    async def receive(self, entries: Sequence[Entry], relay: bool = False) -> list[tuple[str, str]]:
        """Validate, apply and store entries; return (outcome, reason) for each.

        Only our own new entries (``relay``), entries of writers outside the committee and
        equivocation evidence are pushed on: an author pushes to everyone once, and
        anti-entropy fills in whatever a push missed. Re-relaying every received entry would
        cost each entry n^2 streams.
        """
        fresh = [e for e in entries if e.id not in self.state.ids]

        problems: dict[bytes, str] = {}
        # One clock reading for the batch: the same bound our own entries are signed within.
        # An entry stamped too far ahead is refused for now (not stored, so the sender or
        # anti-entropy offers it again and it is accepted once our clock catches up).
        now = _now_ms()

        def validate(part: Sequence[Entry]) -> None:
            for entry in part:
                try:
                    check_entry(entry, self.committee, now)
                except LogError as exc:
                    problems[entry.id] = str(exc)

        # Signature checks dominate a catch-up; libsodium releases the GIL, so two threads
        # share a large batch.
        halves = [fresh] if len(fresh) < 64 else [fresh[: len(fresh) // 2], fresh[len(fresh) // 2 :]]
        async with trio.open_nursery() as nursery:
            for part in halves:
                nursery.start_soon(trio.to_thread.run_sync, validate, part)
        results: list[tuple[str, str]] = []
        to_store: dict[bytes, Entry] = {}
        to_relay: list[Entry] = []
        gap = False
        async with self._apply_lock:
            for entry in entries:
                if entry.id in problems:
                    results.append((Outcome.REJECTED.value, problems[entry.id]))
                    continue
                refused = self.state.admission(entry)
                if refused is not None and entry.id not in self.state.ids:
                    # Not stored: offered again by its writer or anti-entropy, and admitted
                    # once this replica holds the grant (or never, past a revocation).
                    results.append((Outcome.REJECTED.value, refused))
                    continue
                outcome, accepted = self.state.apply(entry, checked=True)
                reason = ""
                if outcome is Outcome.REJECTED:
                    reason = "does not extend the author's chain (prev mismatch)"
                elif outcome is Outcome.PENDING:
                    gap = True
                    to_store[entry.id] = entry
                elif outcome is Outcome.EQUIVOCATION:
                    reason = "author signed two entries at this position; kept as proof"
                    to_store[entry.id] = entry
                    to_relay.append(entry)
                for accepted_entry in accepted:
                    for listener in self.listeners:
                        listener(accepted_entry)
                    self.max_seen = max(self.max_seen, accepted_entry.hlc)
                    to_store[accepted_entry.id] = accepted_entry
                    # Members push their own entries; a writer outside the committee (a
                    # mount's device) publishes to one peer, which relays for it.
                    if relay or accepted_entry.author not in self._members:
                        to_relay.append(accepted_entry)
                results.append((outcome.value, reason))
            for outcome_name, _ in results:
                self.offered[outcome_name] += 1
            if to_store or self._unstored:
                now = _now_ms()
                rows = self._unstored + [(e.id, e.author, e.seq, e.encode(), now) for e in to_store.values()]
                try:
                    await trio.to_thread.run_sync(self.store.add_log_entries, rows)
                except DiskFull:
                    # Applied here but not on disk: kept to be written once space returns
                    # (and, after a restart, pulled again from the other members).
                    self._unstored = rows[-UNSTORED_MAX:]
                    raise
                self._unstored = []
        self._relay(to_relay)
        if gap:
            self._pull_now.set()
        return results

    def _relay(self, entries: list[Entry]) -> None:
        if not entries:
            return
        for peer, outbox in self._outboxes.items():
            outbox.extend(entries)
            self._outbox_ready[peer].set()

    def pull_soon(self) -> None:
        """Run an anti-entropy exchange now rather than at the next interval."""
        self._pull_now.set()

    async def submit(self, payload: dict[str, Any]) -> Entry:
        """Author a blob-certified entry for a certificate and registration a writer handed us."""
        certificate, _ = certificate_from_payload(payload)
        try:  # parsed only, for the cheap checks; verified below
            registration = Registration.from_wire(payload.get("registration"), verify=False)
        except LifecycleError as exc:
            raise LogError(f"blob-certified entry: {exc}") from exc
        existing = self.state.registration_entry(registration.id)
        if existing is not None:
            return existing
        # Only what honest peers would have admitted is recorded: a granted, unrevoked
        # account, an end within reach of the storage epoch. Checked before any signature, so
        # made-up registrations (an outsider's key, an end decades ahead) cost next to nothing;
        # a registration other than the one the certificate was gathered for is refused below.
        ledger = self.state.ledger
        refused = ledger.barred(registration.writer)
        if refused is not None:
            raise LogError(f"{refused[0]}: {refused[1]}")
        why = ledger.end_problem(registration.end_epoch)
        if why is not None:
            raise LogError(why)
        await trio.to_thread.run_sync(registration_from_payload, payload)
        await trio.to_thread.run_sync(verify_certificate, self.committee, certificate)
        return await self._author(BLOB_CERTIFIED, payload, lambda: self.state.registration_entry(registration.id))

    async def submit_lifetime(self, kind: str, raw: Any) -> Entry:
        """Author a blob-extended or blob-deleted entry for an owner's signed operation, if the log allows it.

        The fold ignores operations that do not apply, so this check only spares the log
        entries that would do nothing and tells the owner why.
        """
        try:
            op = await trio.to_thread.run_sync(LifetimeOp.from_wire, raw)
        except LifecycleError as exc:
            raise LogError(str(exc)) from exc
        if (op.op == "extend") != (kind == BLOB_EXTENDED):
            raise LogError(f"a {kind} entry cannot carry a {op.op} operation")
        ledger = self.state.ledger
        if op.at_epoch != ledger.epoch:
            raise LogError(f"the operation was signed at storage epoch {op.at_epoch}; this member is at "
                           f"{ledger.epoch}: sign it again")
        if op.op == "extend" and not ledger.epoch < op.end_epoch <= ledger.epoch + MAX_EPOCHS_AHEAD:
            raise LogError(f"an extension must end in epochs {ledger.epoch + 1}..{ledger.epoch + MAX_EPOCHS_AHEAD}")
        for target in op.targets:
            held = ledger.registration(target)
            if held is None:
                raise LogError(f"registration {target.hex()} is not in this member's log")
            if held.registration.writer.owner != op.writer.owner:
                raise LogError(f"registration {target.hex()} belongs to another owner")
            if not held.live(ledger.epoch):
                raise LogError(f"registration {target.hex()} has already ended (expired or deleted)")
            if op.op == "delete" and not held.registration.deletable:
                raise LogError(f"registration {target.hex()} is permanent: it cannot be deleted before it ends")
            if op.op == "extend" and op.writer.account != held.registration.writer.account:
                refused = ledger.authorize(op.writer, self.committee.config.encoded_blob_length(held.length))
                if refused is not None:
                    raise LogError(f"{refused[0]}: {refused[1]}")
        return await self._author(kind, {"op": op.to_wire()}, lambda: None)

    async def submit_invalid(self, certificate: Certificate) -> Entry:
        """Author a blob-invalid entry for an invalid-blob certificate (unless the log has one)."""
        await trio.to_thread.run_sync(verify_certificate, self.committee, certificate)
        return await self._author(BLOB_INVALID, invalid_payload(certificate),
                                  lambda: self.state.invalid_entry(certificate.blob_id))

    async def author(self, kind: str, payload: dict[str, Any]) -> Entry:
        """Author an entry of ``kind`` (challenge rounds); the caller has checked it is not already there."""
        return await self._author(kind, payload, lambda: None)

    async def _author(self, kind: str, payload: dict[str, Any], existing: Callable[[], Entry | None]) -> Entry:
        async with self._author_lock:
            found = existing()
            if found is not None:
                return found
            # An own entry that is signed but cannot be stored would fork this member's
            # chain after a restart: refuse to sign while the disk is full.
            free = await trio.to_thread.run_sync(self.store.free_bytes)
            if free < self.store.min_free // 2:
                raise DiskFull(f"only {free} bytes free; not signing log entries until space returns")
            me = self.identity.public_key
            chain = self.state.chains.get(me, [])
            # Our own last stamp is bounded like anyone else's: one signed while following a
            # far-future stamp before the bound existed (or before our clock was set back)
            # must not keep us signing entries every peer refuses. Still strictly later than
            # it whenever it is within the bound; beyond it, a step back in our own chain is
            # harmless: a member's stamps only order certificates and challenge steps.
            self.last_hlc = next_hlc(0, _now_ms(), max(self.last_hlc, self.max_seen))
            entry = sign_entry(
                self.identity.signing_key, len(chain) + 1, chain[-1].id if chain else GENESIS,
                self.last_hlc, kind, payload,
            )
            [(outcome, reason)] = await self.receive([entry], relay=True)
            if outcome != Outcome.ACCEPTED.value:
                raise LogError(f"could not append our own entry: {outcome} {reason}")
        return entry

    # ------------------------------------------------------------------ background

    async def run(self, host: IHost) -> None:
        """Relay and anti-entropy tasks; runs until cancelled."""
        self.host = host
        async with trio.open_nursery() as nursery:
            for peer in self._outboxes:
                nursery.start_soon(self._pusher, peer)
            nursery.start_soon(self._anti_entropy)

    async def _call(self, peer: int, protocol: str, **fields: Any) -> dict[str, Any]:
        assert self.host is not None
        reply, _ = await call_member(self.host, self.committee, peer, protocol, max_body=0, **fields)
        return reply

    async def _call_pooled(self, peer: int, protocol: str, **fields: Any) -> dict[str, Any]:
        """One request on a reused stream: a catch-up asks once per author (thousands, in a flood)."""
        assert self.host is not None
        if self._pool is None:
            self._pool = SessionPool(self.host, self.committee)
        reply, _ = await call_member(self.host, self.committee, peer, protocol, max_body=0, pool=self._pool, **fields)
        return reply

    async def _pusher(self, peer: int) -> None:
        assert self.host is not None
        info = self.committee.peers[peer]
        session = Session(self.host, peer_info(info.peer_id, info.addrs), LOG_PUSH,
                          max_header=m.MAX_HEADER, max_body=0)
        outbox = self._outboxes[peer]
        try:
            while True:
                await self._outbox_ready[peer].wait()
                self._outbox_ready[peer] = trio.Event()
                while outbox:
                    # Bounded in bytes as well: 500 maximal entries relayed for an outsider
                    # would make a request far past MAX_HEADER.
                    batch = m.entries_within((e.encode() for e in outbox[:BATCH]), m.reply_budget(), BATCH)
                    del outbox[: len(batch)]
                    try:
                        header, _ = await session.request(m.request(entries=batch))
                        m.parse_response(header)
                    except (PeerUnavailable, CodecError) as exc:
                        # Anti-entropy delivers it later; the fast path does not retry.
                        log.debug("push to peer %d failed: %s", peer, exc)
                        outbox.clear()
                    except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                        member_fault(peer, exc)
                        outbox.clear()
        finally:
            await session.aclose()

    async def _anti_entropy(self) -> None:
        others = list(self._outboxes)
        # Catch up with everyone at start (at once: a silent peer must not hold back the
        # others), then one random peer per round, preferring those that answered last time.
        async with trio.open_nursery() as nursery:
            for peer in others:
                nursery.start_soon(self._pull_from, peer)
        rounds = 0
        while True:
            with trio.move_on_after(ANTI_ENTROPY_INTERVAL):
                await self._pull_now.wait()
            self._pull_now = trio.Event()
            if self._unstored:
                try:
                    await self.receive([])  # writes what a full disk held back
                except DiskFull as exc:
                    log.info("log entries still not stored: %s", exc)
            rounds += 1
            answering = [p for p in others if p not in self._silent]
            # Every tenth round any peer may be chosen, so one that came back is heard again.
            await self._pull_from(random.choice(answering if answering and rounds % 10 else others))

    async def _pull_from(self, peer: int) -> None:
        with trio.move_on_after(PULL_LIMIT):
            await self._pull(peer)
            self._silent.discard(peer)
            return
        self._silent.add(peer)
        self.exchanges["silent"] += 1
        log.debug("anti-entropy with peer %d: no answer within %.0f s", peer, PULL_LIMIT)

    async def _pull(self, peer: int) -> None:
        """One anti-entropy exchange with ``peer``."""
        budget = RoundBudget(PULL_BYTES)

        async def call(protocol: str, **fields: Any) -> dict[str, Any]:
            return await self._call_pooled(peer, protocol, **fields)

        try:
            evidence = None
            missing = 0  # entries this replica lacked and the exchange brought
            async with aclosing(heads_pages(call, self._cursor, budget)) as pages:
                async for page in pages:
                    evidence = field(page.reply, "evidence", bytes) if evidence is None else evidence
                    missing += await self._catch_up(call, page.heads, budget)
                    if budget.spent:
                        break  # this page again next round (the cursor stays before it)
                    self._cursor = page.last if page.more else None  # at the end: the next exchange starts over
            if budget.spent:
                self._pull_now.set()  # more to fetch: the next round follows at once
            if evidence is not None and evidence != self._evidence_digest():
                got = await self._call(peer, LOG_EVIDENCE)
                await self.receive([decode_entry(e) for e in field(got, "entries", list)])
            self.exchanges["ok"] += 1
            self.lag_entries = missing
            self.last_exchange = time.time()
            return
        except (PeerUnavailable, CodecError) as exc:
            log.debug("anti-entropy with peer %d failed: %s", peer, exc)
        except DiskFull as exc:
            log.warning("anti-entropy with peer %d stopped: %s", peer, exc)
        except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
            member_fault(peer, exc)
        self.exchanges["failed"] += 1

    async def _catch_up(self, call: Any, heads: dict[bytes, tuple[int, bytes]], budget: RoundBudget) -> int:
        """Pull the entries of one heads page we lack; fetch the remote's version where the chains differ.

        Returns how many of the entries it fetched were new here (what a liar claims to hold
        but never sends does not count).
        """
        wants = [(a, self.state.head(a) + 1, seq) for a, (seq, _) in heads.items() if seq > self.state.head(a)]
        new = 0
        async with aclosing(range_pages(call, wants, budget)) as pages:
            async for entries in pages:
                self.pulled_entries += len(entries)
                results = await self.receive(entries)
                new += sum(1 for outcome, _ in results if outcome in _NEW)
        if budget.spent:
            return new
        for author, (remote_seq, remote_head) in heads.items():
            # Same position, different entry (or its next entry does not follow ours): the
            # author signed two entries. Fetching the remote's entry at our head makes that
            # an equivocation proof here too.
            common = min(self.state.head(author), remote_seq)
            if common == 0:
                continue
            ours = self.state.chains[author][common - 1].id
            if common == remote_seq and ours == remote_head:
                continue
            want = [(author, common, common)]
            [theirs] = check_ranges(await call(LOG_RANGE, wants=[[author, common, 1]]), want)
            if theirs[0].id != ours:
                await self.receive(theirs)
        return new

    def _evidence_digest(self) -> bytes:
        return merkle.blake2b256(b"".join(sorted(
            entry_id for proof in self.state.equivocations.values() for entry_id in proof
        )))

    # ------------------------------------------------------------------ handlers

    def handlers(self) -> dict[str, Any]:
        """Protocol ID -> handler(request, reader) for the peer to serve."""
        return {
            LOG_SUBMIT: self._h_submit, LOG_PUSH: self._h_push, LOG_HEADS: self._h_heads,
            LOG_RANGE: self._h_range, LOG_TIMES: self._h_times, LOG_EVIDENCE: self._h_evidence,
            LOG_CERTIFIED: self._h_certified,
        }

    async def _h_certified(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        blob_id = m.blob_id_field(request)
        entry = self.state.certified_entry(blob_id)
        invalid = self.state.invalid_entry(blob_id)
        if entry is None and invalid is None:
            return m.error(m.NOT_FOUND, f"blob {blob_id} is not certified in this peer's log"), b""
        ledger = self.state.ledger
        held = ledger.registrations(blob_id)[: m.MAX_REGISTRATIONS]
        carried = [self.state.registration_entry(h.registration.id) for h in held]
        return m.ok(entry=entry.encode() if entry else None, invalid=invalid.encode() if invalid else None,
                    registrations=[e.encode() for e in carried if e is not None],
                    lifetimes=[[h.registration.id, h.end_epoch, h.deleted] for h in held],
                    epoch=ledger.epoch), b""

    async def _h_submit(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        kind = request.get("kind", BLOB_CERTIFIED)
        try:
            if kind in (BLOB_EXTENDED, BLOB_DELETED):
                entry = await self.submit_lifetime(kind, field(request, "payload", dict))
            elif kind == BLOB_CERTIFIED:
                entry = await self.submit(field(request, "payload", dict))
            else:
                return m.error(m.MALFORMED, f"entries of kind {kind!r} are not submitted by writers"), b""
        except LogError as exc:
            return m.error(m.INVALID, str(exc)), b""
        except VerificationError as exc:
            return m.error(m.INVALID, f"invalid availability certificate: {exc}"), b""
        return m.ok(entry=entry.encode(), entry_id=entry.id), b""

    async def _h_push(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        raw = field(request, "entries", list)
        if len(raw) > BATCH:
            return m.error(m.MALFORMED, f"at most {BATCH} entries per push, got {len(raw)}"), b""
        if not all(isinstance(item, bytes) for item in raw):
            return m.error(m.MALFORMED, "entries must be byte strings"), b""
        # One result per pushed entry, in order: malformed ones are reported where they stood.
        results: list[tuple[str, str] | None] = []
        entries: list[Entry] = []
        for item in raw:
            try:
                entries.append(decode_entry(item))
                results.append(None)
            except LogError as exc:
                results.append((Outcome.REJECTED.value, str(exc)))
        applied = iter(await self.receive(entries))
        results = [r if r is not None else next(applied) for r in results]
        return m.ok(results=[[o, r] for o, r in results]), b""

    async def _h_heads(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        after = request.get("after")
        if after is not None and not (isinstance(after, bytes) and len(after) == 32):
            raise MessageError("field 'after' must be a 32-byte author key")
        authors, more = m.page_after(self._authors, after, m.reply_budget() // m.HEAD_BYTES)
        chains = self.state.chains
        heads = {author.hex(): [len(chains[author]), chains[author][-1].id] for author in authors}
        return m.ok(heads=heads, more=more, digest=self.state.digest(), entries=self.state.size,
                    evidence=self._evidence_digest(), proofs=len(self.state.equivocations)), b""

    async def _h_range(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        wants = m.wants_field(request)
        budget = m.reply_budget()
        entries: list[bytes] = []
        counts: list[int] = []
        used = 0
        # In request order, each author's entries from its start, until the byte budget
        # (always one entry, which the frame holds: 17 maximal entries would overflow a
        # 500-entry reply) or MAX_RANGE_ENTRIES. ``counts`` says how many each want got; a
        # want cut short by the budget is listed only if it got something.
        for author, start, count in wants:
            chain = self.state.chains.get(author, [])
            served = 0
            full = False
            for index in range(start - 1, min(len(chain), start - 1 + count)):
                encoded = chain[index].encode()
                size = len(encoded) + m.ITEM_OVERHEAD
                if entries and (used + size > budget or len(entries) >= m.MAX_RANGE_ENTRIES):
                    full = True
                    break
                entries.append(encoded)
                used += size
                served += 1
            if served or not full:
                counts.append(served)
                used += m.ITEM_OVERHEAD
            if full:
                break
        return m.ok(entries=entries, counts=counts), b""

    async def _h_times(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        ids = field(request, "ids", list)
        if len(ids) > 10_000 or not all(isinstance(i, bytes) for i in ids):
            return m.error(m.MALFORMED, "ids must be at most 10000 byte strings"), b""
        times = await trio.to_thread.run_sync(self.store.entry_times, ids)
        return m.ok(times=[times.get(i) for i in ids]), b""

    async def _h_evidence(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        entries = (e.encode() for proof in self.state.equivocations.values() for e in proof.values())
        return m.ok(entries=m.entries_within(entries, m.reply_budget(), BATCH)), b""

