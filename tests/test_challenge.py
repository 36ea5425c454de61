"""Storage challenges, the pure part: seeds, the sample, proof cells and digests, pass certificates, the round fold."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.conftest import blob_bytes
from tests.ledgerkit import certified_payload
from walrusfs.client.members import ask_others
from walrusfs.core.certificates import sign_confirmation
from walrusfs.core.challenge import (
    NO_ROUND,
    PassCertificate,
    challenged_blobs,
    checker_cells,
    pass_bytes,
    pass_payload,
    possession_digest,
    proof_cells,
    prover_cells,
    round_secret,
    round_seed,
    seed_commitment,
    sign_commitment,
    sign_pass,
    start_context,
    verify_pass_certificate,
)
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.config import EncodingConfig
from walrusfs.core.errors import VerificationError
from walrusfs.core.log import (
    CHALLENGE_KINDS,
    Entry,
    LogError,
    LogState,
    check_entry,
    sign_entry,
)
from walrusfs.core.metadata import BlobId
from walrusfs.core.recovery import verify_recovery_symbol
from walrusfs.core.redstuff import encode_blob, expanded_sliver
from walrusfs.core.rounds import (
    CLOSED,
    CLOSING,
    EXPIRED,
    FAILED,
    OPEN,
    PASSED,
    REVEALING,
    ROUND_EXPIRY,
    UNPROVEN,
    Rounds,
    may_start,
    summary,
)

KEYS = [SigningKey(bytes([k + 1]) * 32) for k in range(7)]
COMMITTEE = Committee(0, tuple(
    PeerInfo(peer_id_from_public_key(bytes(k.verify_key)), bytes(k.verify_key), (f"/ip4/127.0.0.1/tcp/{5000 + i}",), (i,))
    for i, k in enumerate(KEYS)
))
SECRETS = {k: bytes([k]) * 32 for k in range(7)}
COMMITS = {k: seed_commitment(3, k, s) for k, s in SECRETS.items()}


def test_seed_needs_2f_plus_1_matching_reveals_and_depends_on_each() -> None:
    five = {k: SECRETS[k] for k in range(5)}
    seed = round_seed(COMMITTEE, 3, COMMITS, five)
    assert seed == round_seed(COMMITTEE, 3, COMMITS, dict(reversed(list(five.items()))))
    assert seed != round_seed(COMMITTEE, 4, {k: seed_commitment(4, k, s) for k, s in SECRETS.items()}, five)
    for k in five:  # any one secret changes the seed
        other = {**five, k: os.urandom(32)}
        assert round_seed(COMMITTEE, 3, {**COMMITS, k: seed_commitment(3, k, other[k])}, other) != seed
    with pytest.raises(VerificationError, match="needs 5"):
        round_seed(COMMITTEE, 3, COMMITS, {k: SECRETS[k] for k in range(4)})
    with pytest.raises(VerificationError, match="does not match"):
        round_seed(COMMITTEE, 3, COMMITS, {**five, 0: b"\xff" * 32})
    with pytest.raises(VerificationError, match="never committed"):
        round_seed(COMMITTEE, 3, {k: COMMITS[k] for k in range(1, 7)}, five)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=0, max_size=60, unique=True),
       st.binary(min_size=32, max_size=32), st.integers(0, 70), st.randoms())
def test_the_sample_is_recomputable_in_any_order(raws: list[bytes], seed: bytes, count: int, rnd) -> None:  # type: ignore[no-untyped-def]
    blobs = [BlobId(r) for r in raws]
    sample = challenged_blobs(seed, blobs, count)
    shuffled = list(blobs)
    rnd.shuffle(shuffled)
    assert challenged_blobs(seed, shuffled + shuffled[:3], count) == sample
    assert len(sample) == min(count, len(blobs)) and set(sample) <= set(blobs)


def test_proof_cells_verify_against_the_writer_and_match_the_checkers_own_slivers() -> None:
    config = EncodingConfig(7)
    encoded = encode_blob(blob_bytes(4, 50_000), config)
    for i, pair in enumerate(encoded.pairs):
        for j, checker in enumerate(encoded.pairs):
            if i == j:
                continue
            on_secondary, on_primary = proof_cells((pair.primary, pair.secondary), 7, j)
            for cell in (on_secondary, on_primary):
                verify_recovery_symbol(encoded.metadata, cell)
            # The checker can also compare each cell with its own copy of it.
            assert on_secondary.data == expanded_sliver(config, checker.secondary)[i]
            assert on_primary.data == expanded_sliver(config, checker.primary)[6 - i]
            with pytest.raises(VerificationError):
                verify_recovery_symbol(encoded.metadata, dataclasses.replace(on_primary, data=bytes(len(on_primary.data))))


def certificate(peer: int, signers: tuple[int, ...], round_number: int = 3, seed: bytes = b"s" * 32) -> PassCertificate:
    return PassCertificate(round_number, seed, peer, signers,
                           tuple(sign_pass(KEYS[k], round_number, seed, peer) for k in signers))


def test_pass_certificates_reject_forgeries_outsiders_and_replays() -> None:
    good = certificate(2, (0, 1, 3, 4, 5))
    verify_pass_certificate(COMMITTEE, good)
    outsider = SigningKey(b"\x77" * 32)
    cases = {
        "needs 5": certificate(2, (0, 1, 3, 4)),
        "twice": certificate(2, (0, 1, 3, 4, 4)),
        "not a committee member": dataclasses.replace(good, signers=(0, 1, 3, 4, 9)),
        # An outsider's signature in a member's slot, and a storage confirmation passed off as one.
        "invalid": dataclasses.replace(good, signatures=(sign_pass(outsider, 3, b"s" * 32, 2), *good.signatures[1:])),
        "invalid for": dataclasses.replace(
            good, signatures=(sign_confirmation(KEYS[0], 0, BlobId(b"s" * 32), b"o" * 32), *good.signatures[1:])),
    }
    for reason, bad in cases.items():
        with pytest.raises(VerificationError, match=reason):
            verify_pass_certificate(COMMITTEE, bad)
    # Replayed into another round, for another seed, or for another peer: useless.
    for replay in (dataclasses.replace(good, round_number=4), dataclasses.replace(good, seed=b"t" * 32),
                   dataclasses.replace(good, peer=3)):
        with pytest.raises(VerificationError, match="invalid for this round"):
            verify_pass_certificate(COMMITTEE, replay)
    assert pass_bytes(3, b"s" * 32, 2).startswith(b"walrusfs/challenge-pass/v1\x00")


# ---------------------------------------------------------------------- cells and the round fold


@settings(max_examples=15, deadline=None)
@given(n=st.sampled_from([4, 7, 10]), size=st.integers(2_000, 30_000), seed=st.integers(0, 1 << 16))
def test_prover_and_checker_compute_the_same_digest_and_any_other_data_differs(n: int, size: int, seed: int) -> None:
    config = EncodingConfig(n)
    encoded = encode_blob(blob_bytes(seed, size), config)
    blob_id = encoded.blob_id
    pairs = {k: (p.primary, p.secondary) for k, p in enumerate(encoded.pairs)}
    prover, checker = seed % n, (seed + 1) % n
    round_seed_ = bytes([seed % 256]) * 32
    sent = possession_digest(round_seed_, blob_id, prover_cells(config, {prover: pairs[prover]}, [checker]))
    expected = possession_digest(round_seed_, blob_id, checker_cells(config, {checker: pairs[checker]}, [prover]))
    assert sent == expected
    # Another round's seed, or another pair's slivers, give another digest.
    assert possession_digest(b"\x01" * 32, blob_id, prover_cells(config, {prover: pairs[prover]}, [checker])) != sent \
        or round_seed_ == b"\x01" * 32
    other = (prover + 2) % n
    if other != checker:
        assert possession_digest(round_seed_, blob_id,
                                 prover_cells(config, {prover: pairs[other]}, [checker])) != sent


def _round_entries(sample: int = 2) -> tuple[list[Entry], LogState, bytes]:
    """A complete round by the 7 test keys over a log certifying 3 blobs: start, reveals, passes, closes."""
    state = LogState(COMMITTEE)
    entries: list[Entry] = []
    seqs = {k: 0 for k in range(7)}
    prevs = {k: bytes(32) for k in range(7)}

    def author(k: int, kind: str, payload: dict) -> Entry:
        seqs[k] += 1
        entry = sign_entry(KEYS[k], seqs[k], prevs[k], seqs[k], kind, payload)
        prevs[k] = entry.id
        entries.append(entry)
        assert state.apply(entry)[0].value == "accepted", check_entry(entry, COMMITTEE)
        return entry

    for b in range(3):
        author(b, "blob-certified", certified_payload(bytes([b + 1]) * 32, 100, KEYS, range(5)))
    nonce = b"n" * 16
    secrets = {k: round_secret(bytes([k]) * 32, 1, nonce) for k in range(5)}
    heads = [[k, seqs[k]] for k in range(7)]
    context = start_context(NO_ROUND, heads)
    commits = [[k, seed_commitment(1, k, s), sign_commitment(KEYS[k], 1, nonce, k, seed_commitment(1, k, s), context)]
               for k, s in secrets.items()]
    start = author(6, "challenge-start", {"round": 1, "prev": NO_ROUND, "nonce": nonce, "sample": sample,
                                          "heads": heads, "commits": commits})
    for k, secret in secrets.items():
        author(k, "challenge-reveal", {"start": start.id, "secret": secret})
    seed = round_seed(COMMITTEE, 1, {k: c for k, c, _ in commits}, secrets)
    for peer in range(6):
        signers = tuple(k for k in range(7) if k != peer)[:5]
        cert = PassCertificate(1, seed, peer, signers, tuple(sign_pass(KEYS[k], 1, seed, peer) for k in signers))
        author(peer, "challenge-pass", pass_payload(start.id, cert))
    for k in range(5):
        author(k, "challenge-close", {"start": start.id, "verdicts": [[j, "attested"] for j in range(7) if j != k]})
    # A blob certified after the start is not eligible.
    author(3, "blob-certified", certified_payload(b"\x09" * 32, 1, KEYS, range(5)))
    return entries, state, start.id


def test_a_round_folds_to_the_same_result_in_any_order() -> None:
    entries, state, start_id = _round_entries()
    reference = Rounds(COMMITTEE).extend(e for e in entries if e.kind in CHALLENGE_KINDS).rounds[start_id]
    assert reference.phase(COMMITTEE) == CLOSED
    assert reference.results(COMMITTEE) == {**{k: PASSED for k in range(6)}, 6: FAILED}
    assert reference.verdicts(COMMITTEE, 6) == {k: "attested" for k in range(5)}
    sample = reference.sample(COMMITTEE, state)
    assert sample is not None and len(sample) == 2 and BlobId(b"\x09" * 32) not in sample
    for seed in range(5):
        shuffled = list(entries)
        random.Random(seed).shuffle(shuffled)
        replay = LogState(COMMITTEE)
        for _ in range(len(shuffled)):  # entries wait for their chain; bounded passes
            for entry in shuffled:
                replay.apply(entry)
        fold = Rounds(COMMITTEE).extend(e for e in replay.counted() if e.kind in CHALLENGE_KINDS)
        again = fold.rounds[start_id]
        assert again.phase(COMMITTEE) == CLOSED and again.results(COMMITTEE) == reference.results(COMMITTEE)
        assert again.sample(COMMITTEE, replay) == sample
        assert summary(again, COMMITTEE) == summary(reference, COMMITTEE)


def test_round_phases_follow_reveals_passes_and_closes() -> None:
    entries, _, start_id = _round_entries()
    fold = Rounds(COMMITTEE)
    phases = []
    for entry in entries:
        if entry.kind in CHALLENGE_KINDS:
            fold.apply(entry)
            phases.append(fold.rounds[start_id].phase(COMMITTEE))
    # Revealing until the 5th reveal, open until the 5th of 6 passes, closing until the 5th close.
    assert phases == [REVEALING] * 5 + [OPEN] * 5 + [CLOSING] * 6 + [CLOSED]


def test_malformed_challenge_entries_are_rejected() -> None:
    entries, _, start_id = _round_entries()
    start = next(e for e in entries if e.kind == "challenge-start")
    bad = {
        "too few commitments": {**start.payload, "commits": start.payload["commits"][:4]},
        "unsigned commitment": {**start.payload, "commits": [[0, b"c" * 32, b"s" * 64], *start.payload["commits"][1:]]},
        "zero sample": {**start.payload, "sample": 0},
        "extra field": {**start.payload, "x": 1},
        "unordered heads": {**start.payload, "heads": list(reversed(start.payload["heads"]))},
    }
    for name, payload in bad.items():
        with pytest.raises(LogError, match="challenge-start"):
            check_entry(sign_entry(KEYS[0], 1, bytes(32), 1, "challenge-start", payload), COMMITTEE)
    with pytest.raises(LogError, match="challenge-reveal"):
        check_entry(sign_entry(KEYS[0], 1, bytes(32), 1, "challenge-reveal", {"start": start_id, "secret": b"x"}),
                    COMMITTEE)
    with pytest.raises(LogError, match="challenge-close"):
        check_entry(sign_entry(KEYS[0], 1, bytes(32), 1, "challenge-close",
                               {"start": start_id, "verdicts": [[9, "attested"]]}), COMMITTEE)
    # A reveal that does not match its commitment stalls the round instead of changing the seed.
    fold = Rounds(COMMITTEE).extend(e for e in entries if e.kind in CHALLENGE_KINDS and e.kind != "challenge-reveal")
    for k in range(5):
        fold.apply(sign_entry(KEYS[k], 50, bytes(32), 1, "challenge-reveal", {"start": start_id, "secret": bytes([k]) * 32}))
    assert fold.rounds[start_id].seed(COMMITTEE) is None and fold.rounds[start_id].bad_reveals(COMMITTEE) == list(range(5))


@settings(max_examples=200, deadline=None)
@given(every=st.integers(1, 50), progress=st.integers(0, 500), since_due=st.integers(0, 500),
       number=st.integers(1, 1_000), members=st.integers(4, 40))
def test_the_cadence_lets_one_member_start_first_and_the_others_only_after_more_writes(
        every: int, progress: int, since_due: int, number: int, members: int) -> None:
    allowed = [k for k in range(members) if may_start(progress, since_due, every, number, k, members)]
    if progress < every:
        assert allowed == []
        return
    # The member whose turn it is, then one more per further ``every`` blobs certified since.
    assert number % members in allowed
    assert len(allowed) == min(members, 1 + since_due // every)
    assert all((k - number) % members * every <= since_due for k in allowed)
    # Off means off.
    assert not any(may_start(progress, since_due, 0, number, k, members) for k in range(members))


async def test_asking_the_other_members_ends_when_enough_agreed_or_when_every_ask_returned() -> None:
    # Too few agree: every ask returns and so does the fan-out (it used to wait for good).
    asked: list[int] = []

    async def refuse(peer: int) -> None:
        asked.append(peer)

    with trio.fail_after(5):
        await ask_others(COMMITTEE, 2, refuse, trio.Event())
    assert sorted(asked) == [0, 1, 3, 4, 5, 6]
    # Enough agree: the asks still running are cancelled.
    enough, finished = trio.Event(), []

    async def agree_or_hang(peer: int) -> None:
        if peer in (0, 1, 3):
            if len(asked) == 2:
                enough.set()
            asked.append(peer)
            return
        await trio.sleep_forever()
        finished.append(peer)

    asked.clear()
    with trio.fail_after(5):
        await ask_others(COMMITTEE, 2, agree_or_hang, enough)
    assert len(asked) == 3 and finished == []


# ---------------------------------------------------------------------- succession rules (issue 15)


class _Log:
    """Entries by the 7 test keys applied to one state, continuing ``_round_entries``'s round 1."""

    def __init__(self) -> None:
        entries, self.state, self.first = _round_entries()
        self.seqs = {k: self.state.head(KEYS[k].verify_key.encode()) for k in range(7)}
        self.blobs = 100

    def author(self, k: int, kind: str, payload: dict) -> Entry:
        self.seqs[k] += 1
        chain = self.state.chains[bytes(KEYS[k].verify_key)]
        entry = sign_entry(KEYS[k], self.seqs[k], chain[-1].id, 1000 + self.seqs[k], kind, payload)
        assert self.state.apply(entry)[0].value == "accepted", check_entry(entry, COMMITTEE)
        return entry

    def certify(self, count: int) -> None:
        for _ in range(count):
            self.blobs += 1
            self.author(0, "blob-certified", certified_payload(self.blobs.to_bytes(32, "big"), 10, KEYS, range(5)))

    def heads(self) -> list[list[int]]:
        return [[k, self.seqs[k]] for k in range(7)]

    def start(self, k: int, number: int, prev: bytes, heads: list[list[int]] | None = None, signers=range(5)) -> Entry:
        heads = self.heads() if heads is None else heads
        nonce = os.urandom(16)
        context = start_context(prev, heads)
        commits = [[j, seed_commitment(number, j, SECRETS[j]),
                    sign_commitment(KEYS[j], number, nonce, j, seed_commitment(number, j, SECRETS[j]), context)]
                   for j in sorted(signers)]
        return self.author(k, "challenge-start", {"round": number, "prev": prev, "nonce": nonce, "sample": 2,
                                                  "heads": heads, "commits": commits})

    def rounds(self) -> Rounds:
        return Rounds(COMMITTEE).extend(e for e in self.state.counted() if e.kind in CHALLENGE_KINDS)


def test_starts_follow_the_last_round_and_bad_ones_refuse_nothing() -> None:
    log = _Log()
    # Heads nobody reaches: unresolved, no sample, so nothing is refused. (Its commitments
    # are forged with honest keys: members commit only to heads they hold. It names no
    # known round, else its successors would wait for it to be judged.)
    far = log.start(1, 2, b"\x07" * 32, [[0, 10**9], [1, 1]])
    rounds = log.rounds()
    assert rounds.judge(rounds.rounds[far.id], log.state) == "unresolved"
    assert rounds.rounds[far.id].sample(COMMITTEE, log.state) is None
    assert [r.start_id for r in rounds.valid(log.state)] == [log.first]
    # Numbers follow the last round: 2^62 - 1, or round 1 again, are void.
    huge = log.start(2, (1 << 62) - 1, log.first)
    again = log.start(3, 1, NO_ROUND)
    rounds = log.rounds()
    assert rounds.judge(rounds.rounds[huge.id], log.state) == "void"
    assert rounds.judge(rounds.rounds[again.id], log.state) == "void"
    heads = {bytes(KEYS[k].verify_key): seq for k, seq in log.heads()}
    assert rounds.may_follow(2, log.first, heads, log.state) is None
    # A proper round 2 is valid; the same member's second start after round 1 is void.
    second = log.start(4, 2, log.first)
    burst = [log.start(4, 2, log.first) for _ in range(3)]
    rounds = log.rounds()
    assert rounds.last_valid(log.state).start_id == second.id
    assert all(rounds.judge(rounds.rounds[e.id], log.state) == "void" for e in burst)
    # Round 2 never gets its reveals: round 3 may not follow it yet...
    early = log.start(5, 3, second.id)
    rounds = log.rounds()
    assert rounds.judge(rounds.rounds[early.id], log.state) == "void"
    assert rounds.judge(rounds.rounds[second.id], log.state) == REVEALING
    # ...until ROUND_EXPIRY more blobs are certified: round 2 expired, its peers unproven.
    log.certify(ROUND_EXPIRY)
    rounds = log.rounds()
    stuck = rounds.rounds[second.id]
    assert rounds.judge(stuck, log.state) == EXPIRED
    assert set(stuck.results(COMMITTEE, EXPIRED).values()) == {UNPROVEN}
    third = log.start(6, 3, second.id)
    rounds = log.rounds()
    assert rounds.last_valid(log.state).start_id == third.id
    assert rounds.judge(rounds.rounds[third.id], log.state) == REVEALING
    # The verdicts are the same in any order of folding.
    again_rounds = Rounds(COMMITTEE).extend(reversed([e for e in log.state.counted() if e.kind in CHALLENGE_KINDS]))
    assert [r.start_id for r in again_rounds.valid(log.state)] == [log.first, second.id, third.id]


def test_commitments_bind_the_heads_and_the_predecessor() -> None:
    log = _Log()
    start = log.start(1, 2, log.first)
    for name, change in {"heads": {"heads": [[0, 10**9], *start.payload["heads"][1:]]},
                         "predecessor": {"prev": b"\x01" * 32}, "round": {"round": 3}}.items():
        forged = sign_entry(KEYS[1], 99, bytes(32), 1, "challenge-start", {**start.payload, **change})
        with pytest.raises(LogError, match="commitment signature is invalid"):
            check_entry(forged, COMMITTEE)
    with pytest.raises(LogError, match="only round 1"):
        check_entry(sign_entry(KEYS[1], 99, bytes(32), 1, "challenge-start", {**start.payload, "prev": NO_ROUND}),
                    COMMITTEE)
    # A pass certificate may count the prover's own attestation among the 2f + 1.
    verify_pass_certificate(COMMITTEE, certificate(2, (0, 1, 2, 3, 4)))
    with pytest.raises(VerificationError, match="needs 5"):
        verify_pass_certificate(COMMITTEE, certificate(2, (0, 1, 2, 3)))


def test_audit_log_replies_keep_the_newest_whole_rounds_within_the_budget() -> None:
    from walrusfs.core.log import (
        CHALLENGE_PASS,
        CHALLENGE_START,
        decode_entry,
        sign_entry,
    )
    from walrusfs.core.rounds import recent_rounds

    key = SigningKey(b"\x07" * 32)
    entries, rounds = [], []
    for number in range(1, 41):
        start = sign_entry(key, 2 * number - 1, b"\x01" * 32, number << 20, CHALLENGE_START, {"round": number, "pad": b"x" * 500})
        proof = sign_entry(key, 2 * number, b"\x01" * 32, (number << 20) + 1, CHALLENGE_PASS, {"start": start.id, "pad": b"y" * 500})
        rounds.append((start.id, proof.id))
        entries += [proof, start]  # any order: the reply is ordered by stamp
    kept, more = recent_rounds(reversed(entries), 10_000)
    assert more and 4 <= len(kept) // 2 < 40
    starts = [e for e in map(decode_entry, kept) if e.kind == CHALLENGE_START]
    assert [e.payload["round"] for e in starts] == list(range(41 - len(starts), 41))  # the newest, oldest first
    ids = {decode_entry(e).id for e in kept}
    assert all((s in ids) == (p in ids) for s, p in rounds)  # whole rounds only
    assert recent_rounds(entries, 1 << 20) == (recent_rounds(entries, 1 << 20)[0], False)
    assert len(recent_rounds(entries, 10)[0]) == 2  # at least one round, however small the budget
