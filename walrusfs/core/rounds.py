"""Challenge rounds as the log records them: a pure, order-independent fold of challenge entries.

A round lives entirely in the log, so anyone holding the log can replay it:

1. ``challenge-start`` (any member): the round number, the start ID of the round it
   follows, a nonce, the sample size, the authors' heads that fix which blobs are
   eligible, and commitments from peers holding 2f + 1 shards, each signed over the number,
   predecessor and heads. Judged with the log (``Rounds.judge``), a start counts only if
   it follows the last round by the succession rules there; otherwise it is void.
2. ``challenge-reveal`` (each committed peer): its secret. Once every listed commitment is
   revealed the seed is known, and with it the challenged sample. The round is *open*:
   peers stop serving those blobs.
3. ``challenge-pass`` (usually the challenged peer): 2f + 1 shards' attestations that it
   proved possession, bound to this round's seed.
4. Once passes cover 2f + 1 shards the round is *closing*: each member stops attesting and
   writes ``challenge-close`` with its verdicts on every peer. Once closes cover 2f + 1
   shards the round is *closed* and reads resume. A peer with no pass is recorded as failed,
   with the verdicts the closers gave it.

The two-step close is what makes resuming reads safe without clocks: when any honest peer
serves again, members holding 2f + 1 shards have stopped attesting, so a peer that reads
its lost data back can collect at most f honest attestations (plus f from colluders),
short of the 2f + 1 a certificate needs. Attestations given before a checker closed still
count, so a slow honest peer whose certificate lands after the close is recorded as
passed (late).

A round that cannot complete (a committed member never reveals, say) does not hold up the
next: it expires once ``ROUND_EXPIRY`` more blobs are certified, and its peers without a
pass are recorded as unproven. Reads are refused only for the sample of a valid round
whose sample is known, so a start this replica cannot resolve refuses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .challenge import NO_ROUND, challenged_blobs, pass_from_payload, round_seed
from .committee import Committee
from .errors import VerificationError
from .log import (
    CHALLENGE_CLOSE,
    CHALLENGE_KINDS,
    CHALLENGE_PASS,
    CHALLENGE_REVEAL,
    CHALLENGE_START,
    Entry,
    LogState,
)
from .metadata import BlobId

REVEALING = "revealing"
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"
#: Judged with the log (``Rounds.judge``): a start whose heads this replica has not reached
#: yet; a start that breaks the succession rules (it never counts); a round that ended by
#: log progress without closing (its unproven peers are recorded as such).
UNRESOLVED = "unresolved"
VOID = "void"
EXPIRED = "expired"
#: Phases in which a round refuses no reads and takes no more attestations.
ENDED = frozenset({CLOSED, EXPIRED, VOID})
VALID = "valid"

PASSED = "passed"
FAILED = "failed"
PENDING = "pending"
UNPROVEN = "unproven"

#: A round that has not closed ends once this many more blobs are certified than its heads
#: held (or when a later round names it as its predecessor, which needs the same). Log
#: progress, not time: every replica that reached the same heads agrees. Counted in newly
#: certified blobs because each needs 2f + 1 peers to store data, so a member cannot fake
#: progress by writing entries.
ROUND_EXPIRY = 16
#: A round may follow a closed one only once this many blobs were certified since the
#: closed one started: rounds are paced by log progress (each certified blob needs 2f + 1
#: peers to store data), so a member cannot run rounds back to back, each refusing reads of
#: its sample while open. Peers' own cadence (every N certified blobs) is far above it.
MIN_ROUND_PROGRESS = 1


@dataclass
class Round:
    """One round: its start entry and every entry recorded about it so far."""

    start_id: bytes
    start: Entry | None = None
    reveals: dict[bytes, Entry] = field(default_factory=dict)
    passes: dict[bytes, Entry] = field(default_factory=dict)
    closes: dict[bytes, Entry] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The round number the start entry gave (0 while the start is unknown)."""
        return self.start.payload["round"] if self.start else 0

    @property
    def prev(self) -> bytes:
        """The start ID of the round this one follows (all zero for round 1 or while the start is unknown)."""
        return self.start.payload.get("prev", b"") if self.start else bytes(32)

    def commitments(self) -> dict[int, bytes]:
        """Committed peer -> commitment."""
        return {row[0]: row[1] for row in self.start.payload["commits"]} if self.start else {}

    def heads(self, committee: Committee) -> dict[bytes, int]:
        """Author key -> seq that fix the blobs eligible for this round."""
        if not self.start:
            return {}
        return {committee.peers[peer].public_key: seq for peer, seq in self.start.payload["heads"]}

    def reveal_secrets(self, committee: Committee) -> dict[int, bytes]:
        """Committed peer -> revealed secret, from its first reveal (by stamp, then ID)."""
        keys = {p.public_key: k for k, p in enumerate(committee.peers)}
        out: dict[int, bytes] = {}
        for entry in sorted(self.reveals.values(), key=lambda e: (e.hlc, e.id)):
            if entry.author in keys:
                out.setdefault(keys[entry.author], entry.payload["secret"])
        return out

    def seed(self, committee: Committee) -> bytes | None:
        """The round's seed once every listed commitment is revealed (None before, or if a reveal is bad)."""
        commitments = self.commitments()
        secrets = {k: s for k, s in self.reveal_secrets(committee).items() if k in commitments}
        if not commitments or set(secrets) != set(commitments):
            return None
        try:
            return round_seed(committee, self.number, commitments, secrets)
        except VerificationError:
            return None  # a member revealed something else than it committed to: the round stalls

    def bad_reveals(self, committee: Committee) -> list[int]:
        """Committed peers whose reveal does not match their commitment (they stall the round)."""
        commitments = self.commitments()
        out = []
        for peer, secret in self.reveal_secrets(committee).items():
            if peer in commitments:
                try:
                    round_seed(committee, self.number, {peer: commitments[peer]}, {peer: secret})
                except VerificationError as exc:
                    if "does not match" in str(exc):
                        out.append(peer)
        return sorted(out)

    def passed(self, committee: Committee) -> dict[int, Entry]:
        """Challenged peer -> the first pass entry bound to this round's seed."""
        seed = self.seed(committee)
        out: dict[int, Entry] = {}
        if seed is None:
            return out
        for entry in sorted(self.passes.values(), key=lambda e: (e.hlc, e.id)):
            certificate = pass_from_payload(entry.payload)
            if certificate.seed == seed and certificate.round_number == self.number:
                out.setdefault(certificate.peer, entry)
        return out

    def closers(self, committee: Committee) -> dict[int, Entry]:
        """Member -> its close entry."""
        keys = {p.public_key: k for k, p in enumerate(committee.peers)}
        return {keys[e.author]: e for e in self.closes.values() if e.author in keys}

    def phase(self, committee: Committee) -> str:
        """revealing, open, closing or closed."""
        if self.seed(committee) is None:
            return REVEALING
        if committee.weight(self.closers(committee)) >= committee.quorum:
            return CLOSED
        if committee.weight(self.passed(committee)) >= committee.quorum:
            return CLOSING
        return OPEN

    def results(self, committee: Committee, phase: str | None = None) -> dict[int, str]:
        """Each member's result: passed, failed (closed without a pass), unproven (expired without one) or pending.

        ``phase``: the round's phase as judged with the log (``Rounds.judge``), if known.
        """
        passed = self.passed(committee)
        phase = phase or self.phase(committee)
        other = {CLOSED: FAILED, EXPIRED: UNPROVEN}.get(phase, PENDING)
        return {k: PASSED if k in passed else other for k in range(len(committee.peers))}

    def verdicts(self, committee: Committee, peer: int) -> dict[int, str]:
        """What each closer recorded about ``peer`` (attested, refused: why, or nothing received)."""
        out = {}
        for closer, entry in self.closers(committee).items():
            for who, verdict in entry.payload["verdicts"]:
                if who == peer:
                    out[closer] = verdict
        return out

    def sample(self, committee: Committee, state: LogState) -> list[BlobId] | None:
        """The challenged blobs, or None until the seed is known and ``state`` holds the start's heads."""
        seed = self.seed(committee)
        heads = self.heads(committee)
        if seed is None or not state.reached(heads):
            return None
        return challenged_blobs(seed, state.certified_as_of(heads), self.start.payload["sample"])


def summary(found: Round, committee: Committee, phase: str | None = None) -> dict[str, object]:
    """A JSON-ready account of one round: phase, seed, and each peer's result with its evidence.

    ``phase``: the round's phase as judged with the log, if known (else from its entries alone).
    """
    seed = found.seed(committee)
    passed = found.passed(committee)
    phase = phase or (found.phase(committee) if found.start else REVEALING)
    results = found.results(committee, phase)
    keys = {p.public_key: k for k, p in enumerate(committee.peers)}
    peers = []
    for k, result in results.items():
        row: dict[str, object] = {"peer": k, "peer_id": committee.peers[k].peer_id, "result": result}
        if k in passed:
            certificate = pass_from_payload(passed[k].payload)
            row.update(pass_entry=passed[k].id.hex(), attested_by=list(certificate.signers))
        elif result == FAILED:
            row["verdicts"] = {str(c): v for c, v in sorted(found.verdicts(committee, k).items())}
        peers.append(row)
    start = found.start
    return {
        "round": found.number, "start": found.start_id.hex(), "phase": phase, "prev": found.prev.hex(),
        "started_by": keys.get(start.author) if start else None, "hlc": start.hlc if start else None,
        "sample": start.payload["sample"] if start else None,
        "committed": sorted(found.commitments()), "revealed": sorted(found.reveal_secrets(committee)),
        "bad_reveals": found.bad_reveals(committee), "seed": seed.hex() if seed else None,
        "closed_by": sorted(found.closers(committee)), "peers": peers,
    }


@dataclass
class Rounds:
    """Every round in the log, keyed by the ID of its start entry."""

    committee: Committee
    rounds: dict[bytes, Round] = field(default_factory=dict)
    # Judging with the log (see ``judge``): final verdicts, successors, eligible blobs.
    _verdicts: dict[bytes, str] = field(default_factory=dict)
    _by_prev: dict[bytes, set[bytes]] = field(default_factory=dict)
    _certified_at: dict[bytes, list[BlobId]] = field(default_factory=dict)
    _judging: set[bytes] = field(default_factory=set)

    def apply(self, entry: Entry) -> Round | None:
        """Fold one accepted challenge entry in; returns the round it belongs to (None for other kinds)."""
        if entry.kind not in CHALLENGE_KINDS:
            return None
        if entry.kind == CHALLENGE_START:
            found = self.rounds.setdefault(entry.id, Round(entry.id))
            found.start = entry
            # .get: a start stored before starts named their predecessor has none (it is void).
            self._by_prev.setdefault(entry.payload.get("prev", b""), set()).add(entry.id)
            return found
        found = self.rounds.setdefault(entry.payload["start"], Round(entry.payload["start"]))
        if entry.kind == CHALLENGE_REVEAL:
            found.reveals.setdefault(entry.id, entry)
        elif entry.kind == CHALLENGE_PASS:
            found.passes.setdefault(entry.id, entry)
        elif entry.kind == CHALLENGE_CLOSE:
            found.closes.setdefault(entry.id, entry)
        return found

    def extend(self, entries: Iterable[Entry]) -> Rounds:
        """Fold many entries; returns self."""
        for entry in entries:
            self.apply(entry)
        return self

    def ordered(self) -> list[Round]:
        """Rounds whose start is known, oldest first (by number, then stamp)."""
        return sorted((r for r in self.rounds.values() if r.start),
                      key=lambda r: (r.number, r.start.hlc, r.start_id))  # type: ignore[union-attr]

    def last_number(self) -> int:
        """The highest round number started so far (0 if none); counts void starts too, see ``last_valid``."""
        return max((r.number for r in self.rounds.values()), default=0)

    # -------------------------------------------------------------- judged with the log
    #
    # The succession rules, checked once a replica holds the start's heads (so the verdict
    # depends only on entries the heads name, the same on every replica):
    #
    # - the start's ``prev`` is round 1's all-zero ID, or the start entry of a valid round
    #   that lies within the start's heads, and ``round`` is that round's number + 1;
    # - that previous round had ended as of the heads: closes of members holding 2f + 1
    #   shards within the heads (and ``MIN_ROUND_PROGRESS`` more blobs certified within the
    #   heads than within its own), or ``ROUND_EXPIRY`` more;
    # - no other valid start naming the same ``prev`` lies within the heads (the starter saw
    #   it, so this one does not follow the last round), nor, in its author's chain, an
    #   earlier start naming the same ``prev`` (one round per member after each round);
    # - the heads name only entries of its author before the start itself.
    #
    # A start that breaks one is void: it refuses nothing and nothing follows it. One whose
    # heads are not reached yet is unresolved and refuses nothing either; the commitments
    # binding its heads (``challenge.start_context``) mean honest members held them, so it
    # resolves once replication brings them.

    def judge(self, found: Round, state: LogState) -> str:
        """VOID, UNRESOLVED, or the round's phase (EXPIRED if it ended by log progress); pure."""
        verdict = self._verdict(found, state)
        if verdict != VALID:
            return verdict
        phase = found.phase(self.committee)
        if phase == CLOSED:
            return CLOSED
        if any(self._verdict(self.rounds[s], state) == VALID for s in self._by_prev.get(found.start_id, ())):
            return EXPIRED  # a later valid round followed it, which needs it ended
        if state.certified_count() - len(self._eligible(found, state)) >= ROUND_EXPIRY:
            return EXPIRED
        return phase

    def valid(self, state: LogState) -> list[Round]:
        """Rounds whose start is judged valid, oldest first."""
        ordered = self.ordered()
        # By number, so a predecessor is judged (and cached) before its successor: no deep recursion.
        return [r for r in ordered if self._verdict(r, state) == VALID]

    def last_valid(self, state: LogState) -> Round | None:
        """The newest valid round (highest number, then stamp), or None."""
        valid = self.valid(state)
        return valid[-1] if valid else None

    def may_follow(self, number: int, prev: bytes, heads: Mapping[bytes, int], state: LogState) -> str | None:
        """Why a start of round ``number`` after ``prev`` with ``heads`` would not be valid (None: it would).

        What an honest member checks before committing to a proposed start.
        """
        verdict, why = self._rule(number, prev, heads, state)
        return None if verdict == VALID else why

    def started_after(self, author: bytes, prev: bytes, state: LogState, before_seq: int = 1 << 62) -> bool:
        """Whether ``author``'s chain, below ``before_seq``, holds a start naming ``prev``."""
        chain = state.chains.get(author, ())
        return any(e.kind == CHALLENGE_START and e.payload.get("prev") == prev for e in chain[: before_seq - 1])

    def _rule(self, number: int, prev: bytes, heads: Mapping[bytes, int], state: LogState) -> tuple[str, str]:
        if not state.reached(heads):
            return UNRESOLVED, "this replica does not hold every entry the heads name yet"
        for other_id in self._by_prev.get(prev, ()):
            other = self.rounds[other_id]
            # The starter saw a valid round after the same predecessor already: this one does
            # not follow the last round. Until that one is judged this one is not final
            # either (caching it now could make replicas differ).
            if other.start is not None and _within(other.start, heads, state):
                seen = self._verdict(other, state)
                if seen == VALID:
                    return VOID, f"round {other.number} after the same predecessor had started already"
                if seen == UNRESOLVED:
                    return UNRESOLVED, f"round {other.number} within the heads is not judged yet"
        if prev == NO_ROUND:
            return (VALID, "") if number == 1 else (VOID, f"round {number} must name its predecessor")
        before = self.rounds.get(prev)
        if before is None or before.start is None or not _within(before.start, heads, state):
            return VOID, "the previous round's start is not within the heads"
        verdict = self._verdict(before, state)
        if verdict != VALID:
            return verdict, f"the previous round ({before.number}) is {verdict}"
        if number != before.number + 1:
            return VOID, f"round {number} cannot follow round {before.number}"
        closers = [k for k, e in before.closers(self.committee).items() if _within(e, heads, state)]
        progress = len(set(state.certified_as_of(heads)) - set(self._eligible(before, state)))
        if self.committee.weight(closers) >= self.committee.quorum:
            if progress >= MIN_ROUND_PROGRESS:
                return VALID, ""
            return VOID, (f"round {before.number} closed, but only {progress} of {MIN_ROUND_PROGRESS} blobs were "
                          f"certified since it started")
        if progress >= ROUND_EXPIRY:
            return VALID, ""
        return VOID, (f"round {before.number} had neither closed nor expired as of these heads "
                      f"({progress} of {ROUND_EXPIRY} blobs certified since it started)")

    def _verdict(self, found: Round, state: LogState) -> str:
        known = self._verdicts.get(found.start_id)
        if known is not None:
            return known
        start = found.start
        if start is None or found.start_id in self._judging:
            return UNRESOLVED
        heads = found.heads(self.committee)
        if heads.get(start.author, 0) >= start.seq:
            verdict = VOID  # its heads name the start itself or later entries of its author
        else:
            self._judging.add(found.start_id)  # forged heads could make two starts name each other
            try:
                verdict, _ = self._rule(found.number, found.prev, heads, state)
            finally:
                self._judging.discard(found.start_id)
        if verdict == VALID and self.started_after(start.author, found.prev, state, start.seq):
            verdict = VOID  # a member starts at most one round after each round
        if verdict != UNRESOLVED:
            # Final: it depends only on entries within the heads, which this replica holds.
            self._verdicts[found.start_id] = verdict
        return verdict

    def _eligible(self, found: Round, state: LogState) -> list[BlobId]:
        """The blobs certified as of ``found``'s heads (which the state holds), computed once."""
        cached = self._certified_at.get(found.start_id)
        if cached is None:
            cached = state.certified_as_of(found.heads(self.committee))
            self._certified_at[found.start_id] = cached
        return cached


def _within(entry: Entry, heads: Mapping[bytes, int], state: LogState) -> bool:
    """Whether ``entry`` is in ``state``'s chain of its author at or below ``heads``."""
    if entry.seq > heads.get(entry.author, 0):
        return False
    chain = state.chains.get(entry.author, ())
    return len(chain) >= entry.seq and chain[entry.seq - 1].id == entry.id


def may_start(progress: int, since_due: int, every: int, number: int, index: int, members: int) -> bool:
    """Whether member ``index`` may start round ``number`` by a cadence of ``every`` certified blobs.

    The cadence is counted in log progress, never in time. ``progress`` is the number of
    blobs certified since the previous round's start (the same on every replica);
    ``since_due`` those certified since this member first saw ``progress`` reach ``every``.
    Member ``number mod members`` starts the round as soon as it is due; the member d
    places after it only once ``since_due`` reaches d * ``every``. So a crashed starter
    delays a round by some writes and never stops it, and a backlog of writes does not
    have every member start at once.
    """
    if every <= 0 or progress < every:
        return False
    place = (index - number) % members
    return place * every <= since_due


def recent_rounds(entries: Iterable[Entry], budget: int) -> tuple[list[bytes], bool]:
    """The encoded challenge entries of the most recent whole rounds that fit ``budget`` bytes (at least one round), and whether older rounds were left out.

    ``audit-log`` answers with this: a long-lived committee gathers rounds without end, and a
    reply must stay bounded. A round is kept or left out whole, so a fold of the reply never
    sees a pass without its start; rounds are ordered by their start's stamp (the earliest
    stamp among their entries when the start is missing).
    """
    groups: dict[bytes, list[Entry]] = {}
    for entry in entries:
        if entry.kind not in CHALLENGE_KINDS:
            continue
        key = entry.id if entry.kind == CHALLENGE_START else entry.payload.get("start")
        if isinstance(key, bytes):
            groups.setdefault(key, []).append(entry)

    def when(item: tuple[bytes, list[Entry]]) -> tuple[int, bytes]:
        start_id, group = item
        starts = [e.hlc for e in group if e.id == start_id]
        return (starts[0] if starts else min(e.hlc for e in group), start_id)

    kept: list[bytes] = []
    used = 0
    for _, group in sorted(groups.items(), key=when, reverse=True):
        encoded = [e.encode() for e in sorted(group, key=lambda e: (e.hlc, e.id))]
        size = sum(len(e) + 8 for e in encoded)
        if kept and used + size > budget:
            return kept, True
        kept = encoded + kept
        used += size
    return kept, False
