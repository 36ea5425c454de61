"""Challenge rounds as the log records them: a pure, order-independent fold of challenge entries.

A round lives entirely in the log, so anyone holding the log can replay it:

1. ``challenge-start`` (any member): the round number, a nonce, the sample size, the
   authors' heads that fix which blobs are eligible, and signed commitments from peers
   holding 2f + 1 shards.
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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .challenge import challenged_blobs, pass_from_payload, round_seed
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

PASSED = "passed"
FAILED = "failed"
PENDING = "pending"


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

    def results(self, committee: Committee) -> dict[int, str]:
        """Each member's result: passed, failed (closed without a pass) or pending."""
        passed = self.passed(committee)
        closed = self.phase(committee) == CLOSED
        return {k: PASSED if k in passed else FAILED if closed else PENDING for k in range(len(committee.peers))}

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


def summary(found: Round, committee: Committee) -> dict[str, object]:
    """A JSON-ready account of one round: phase, seed, and each peer's result with its evidence."""
    seed = found.seed(committee)
    passed = found.passed(committee)
    results = found.results(committee)
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
        "round": found.number, "start": found.start_id.hex(), "phase": found.phase(committee) if start else REVEALING,
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

    def apply(self, entry: Entry) -> Round | None:
        """Fold one accepted challenge entry in; returns the round it belongs to (None for other kinds)."""
        if entry.kind not in CHALLENGE_KINDS:
            return None
        if entry.kind == CHALLENGE_START:
            found = self.rounds.setdefault(entry.id, Round(entry.id))
            found.start = entry
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
        """The highest round number started so far (0 if none)."""
        return max((r.number for r in self.rounds.values()), default=0)




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
