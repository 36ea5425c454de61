"""Storage challenges, the pure part: round seeds, the challenged sample, what each peer checks.

Groundwork for asynchronous storage challenges (Walrus paper, section 4.6); the peer
protocol that runs rounds over the log is not built yet. What is here is pure and fixed:

- **Seed.** Each peer commits to a secret for round r (``seed_commitment``) before
  revealing it; the round's seed hashes the revealed secrets of committed peers holding at
  least 2f + 1 shards, so at least f + 1 honest secrets enter it and no peer can predict it
  before the reveals. Anyone holding the reveals recomputes it.
- **Sample.** ``challenged_blobs`` ranks every certified blob by H(seed || blob ID) and
  takes the first k: recomputable from the log by anyone, unpredictable before the seed.
- **What a checker is entitled to.** The challenged peer holding pair i proves possession
  to the peer holding pair j with two cells of the expanded matrix: symbol n-1-j of its
  primary sliver i (the cell on j's secondary sliver) and symbol j of its secondary sliver
  n-1-i (the cell on j's primary sliver), each with a Merkle proof against the writer's
  commitment. These are exactly the recovery symbols j would use to heal, so
  ``recovery.verify_recovery_symbol`` checks them.
- **Pass attestations.** A checker that verified every cell it is entitled to signs
  domain-separated bytes naming the round, its seed and the challenged peer; attestations
  of peers holding 2f + 1 shards form the pass certificate. Binding the round and seed in
  makes a certificate from another round useless.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import merkle
from .committee import Committee
from .config import EncodingConfig
from .errors import VerificationError
from .metadata import BlobId
from .recovery import RecoverySymbol, recovery_symbol
from .redstuff import Axis, Sliver, expanded_sliver

SEED_DOMAIN = b"walrusfs/challenge-seed/v1\x00"
COMMIT_DOMAIN = b"walrusfs/challenge-commit/v1\x00"
SAMPLE_DOMAIN = b"walrusfs/challenge-sample/v1\x00"
PASS_DOMAIN = b"walrusfs/challenge-pass/v1\x00"
SECRET_SIZE = 32


def seed_commitment(round_number: int, peer: int, secret: bytes) -> bytes:
    """What peer ``peer`` publishes for round ``round_number`` before revealing ``secret``."""
    if len(secret) != SECRET_SIZE:
        raise VerificationError(f"a challenge secret is {SECRET_SIZE} bytes, got {len(secret)}")
    return merkle.blake2b256(COMMIT_DOMAIN + struct.pack("<QI", round_number, peer) + secret)


def round_seed(
    committee: Committee, round_number: int, commitments: Mapping[int, bytes], reveals: Mapping[int, bytes]
) -> bytes:
    """The round's seed from committed peers' reveals; needs 2f + 1 shards' worth, all matching.

    Raises ``VerificationError`` if a reveal does not match its commitment or the
    revealers hold too few shards.
    """
    for peer, secret in reveals.items():
        if peer not in commitments:
            raise VerificationError(f"peer {peer} revealed a secret it never committed to")
        if seed_commitment(round_number, peer, secret) != commitments[peer]:
            raise VerificationError(f"peer {peer}'s reveal does not match its commitment")
    weight = committee.weight(reveals)
    if weight < committee.quorum:
        raise VerificationError(f"reveals from peers holding {weight} shards; a seed needs {committee.quorum}")
    parts = b"".join(struct.pack("<I", peer) + reveals[peer] for peer in sorted(reveals))
    return merkle.blake2b256(SEED_DOMAIN + struct.pack("<Q", round_number) + parts)


def challenged_blobs(seed: bytes, blob_ids: Iterable[BlobId], count: int) -> list[BlobId]:
    """The ``count`` blobs ranked first by H(seed || blob ID); the same for every input order."""
    ranked = sorted(set(blob_ids), key=lambda b: merkle.blake2b256(SAMPLE_DOMAIN + seed + b.raw))
    return ranked[:count]


def proof_cells(sliver_pair: tuple[Sliver, Sliver], n_shards: int, checker_pair: int) -> tuple[RecoverySymbol, RecoverySymbol]:
    """The two cells the holder of ``sliver_pair`` shows the holder of pair ``checker_pair``.

    ``sliver_pair`` is (primary sliver i, secondary sliver n-1-i). Each cell lies on one of
    the checker's own slivers, with a proof against the challenged sliver's commitment.
    """
    primary, secondary = sliver_pair
    if primary.axis is not Axis.PRIMARY or secondary.axis is not Axis.SECONDARY:
        raise VerificationError("a sliver pair is (primary, secondary)")
    config = EncodingConfig(n_shards)
    config.check_index(checker_pair, "checker pair")
    return (
        recovery_symbol(config, primary, n_shards - 1 - checker_pair),
        recovery_symbol(config, secondary, checker_pair),
    )


def pass_bytes(round_number: int, seed: bytes, peer: int) -> bytes:
    """The bytes a checker signs to attest that ``peer`` passed round ``round_number``."""
    return PASS_DOMAIN + struct.pack("<QI", round_number, peer) + seed


def sign_pass(key: SigningKey, round_number: int, seed: bytes, peer: int) -> bytes:
    """A pass attestation for ``peer`` in this round."""
    return key.sign(pass_bytes(round_number, seed, peer)).signature


@dataclass(frozen=True)
class PassCertificate:
    """Attestations by the listed members that ``peer`` proved possession in round ``round_number``."""

    round_number: int
    seed: bytes
    peer: int
    signers: tuple[int, ...]
    signatures: tuple[bytes, ...]


def verify_member(committee: Committee, peer: int, message: bytes, signature: bytes, error: str) -> None:
    """Raise ``VerificationError(error)`` unless committee member ``peer`` signed ``message``."""
    try:
        VerifyKey(committee.peers[peer].public_key).verify(message, signature)
    except (BadSignatureError, ValueError) as exc:
        raise VerificationError(error) from exc


def verify_pass_certificate(committee: Committee, certificate: PassCertificate) -> None:
    """Raise ``VerificationError`` unless distinct members holding 2f + 1 shards attested the pass."""
    if len(certificate.signers) != len(certificate.signatures):
        raise VerificationError("pass certificate has a different number of signers and signatures")
    if len(set(certificate.signers)) != len(certificate.signers):
        raise VerificationError("pass certificate lists a signer twice")
    message = pass_bytes(certificate.round_number, certificate.seed, certificate.peer)
    for index, signature in zip(certificate.signers, certificate.signatures):
        if not 0 <= index < len(committee.peers):
            raise VerificationError(f"pass attestation signer {index} is not a committee member")
        verify_member(committee, index, message, signature, f"pass attestation by peer {index} is invalid for this round")
    weight = committee.weight(certificate.signers)
    if weight < committee.quorum:
        raise VerificationError(f"pass attestations from peers holding {weight} shards; a certificate needs "
                                f"{committee.quorum}")


# ---------------------------------------------------------------------- possession digests

CELL_DOMAIN = b"walrusfs/challenge-cells/v1\x00"
COMMIT_SIGN_DOMAIN = b"walrusfs/challenge-commitment/v1\x00"
SECRET_DOMAIN = b"walrusfs/challenge-secret/v1\x00"
CONTEXT_DOMAIN = b"walrusfs/challenge-context/v1\x00"
NONCE_DOMAIN = b"walrusfs/challenge-nonce/v1\x00"
AUDIT_DOMAIN = b"walrusfs/audit-start/v1\x00"
#: The ``prev`` of round 1: no round precedes it.
NO_ROUND = bytes(32)
NONCE_SIZE = 16
#: A round never challenges more blobs than this; a round is meant to be a small sample.
MAX_SAMPLE = 4096
MAX_VERDICT = 200

#: (challenged pair i, checker pair j, cell on j's secondary sliver, cell on j's primary sliver)
Cell = tuple[int, int, bytes, bytes]


def prover_cells(config: EncodingConfig, pairs: Mapping[int, tuple[Sliver, Sliver]], checker_pairs: Iterable[int]) -> list[Cell]:
    """The cells the holder of ``pairs`` (pair index -> (primary, secondary)) owes the holder of ``checker_pairs``.

    Blocking (Reed-Solomon): each sliver is expanded once, whatever the number of checkers.
    """
    cells = []
    checkers = sorted(checker_pairs)
    for i in sorted(pairs):
        primary, secondary = pairs[i]
        row, column = expanded_sliver(config, primary), expanded_sliver(config, secondary)
        cells += [(i, j, row[config.n_shards - 1 - j], column[j]) for j in checkers]
    return cells


def checker_cells(config: EncodingConfig, own: Mapping[int, tuple[Sliver, Sliver]], challenged_pairs: Iterable[int]) -> list[Cell]:
    """The same cells, computed by the checker from its own slivers (pair index -> (primary, secondary))."""
    n = config.n_shards
    expanded = {j: (expanded_sliver(config, p), expanded_sliver(config, s)) for j, (p, s) in own.items()}
    return [(i, j, expanded[j][1][i], expanded[j][0][n - 1 - i]) for i in sorted(challenged_pairs) for j in sorted(own)]


def possession_digest(seed: bytes, blob_id: BlobId, cells: Iterable[Cell]) -> bytes:
    """A round-bound digest of the cells: only a holder of the cells can compute it once the seed is out.

    The checker holds the same cells in its own slivers, so 32 bytes per blob prove
    possession that would otherwise take the symbols themselves.
    """
    parts = [CELL_DOMAIN, seed, blob_id.raw]
    for i, j, on_secondary, on_primary in sorted(cells, key=lambda c: (c[0], c[1])):
        parts += [struct.pack("<III", i, j, len(on_secondary)), on_secondary, on_primary]
    return merkle.blake2b256(b"".join(parts))


def round_secret(key_seed: bytes, round_number: int, nonce: bytes) -> bytes:
    """A peer's secret for one round start, derived from its private key seed (so a restart reveals the same)."""
    return merkle.blake2b256(SECRET_DOMAIN + key_seed + struct.pack("<Q", round_number) + nonce)


def start_nonce(key_seed: bytes, prev: bytes) -> bytes:
    """A member's nonce for its start after round ``prev``: the same on every retry, so members commit to one."""
    return merkle.blake2b256(NONCE_DOMAIN + key_seed + prev)[:NONCE_SIZE]


def audit_request_bytes(round_number: int) -> bytes:
    """What a member signs to let someone else ask a peer to start round ``round_number`` (useless for any other)."""
    return AUDIT_DOMAIN + struct.pack("<Q", round_number)


def check_heads(committee: Committee, raw: Any) -> list[list[int]]:
    """``raw`` as a start's heads ([member, seq] rows, in member order); raises ``VerificationError``."""
    heads = _members(committee, raw, "heads", 2)
    for _, seq in heads:
        _count(seq, "head", 1 << 62)
    return heads


def start_context(prev: bytes, heads: Iterable[Iterable[int]]) -> bytes:
    """What a commitment binds besides the round number: the previous round's start ID and the start's heads.

    A member commits only to a start whose heads its own log has reached and whose
    predecessor it judges ended (see ``rounds``). A start needs commitments of peers
    holding 2f + 1 shards, so peers holding f + 1 honest shards held every entry the heads
    name: every honest replica can fetch them, and a start naming entries nobody has
    cannot gather its commitments.
    """
    rows = b"".join(struct.pack("<IQ", *row) for row in heads)
    return merkle.blake2b256(CONTEXT_DOMAIN + prev + rows)


def commitment_bytes(round_number: int, nonce: bytes, peer: int, commitment: bytes, context: bytes) -> bytes:
    """What a peer signs when it hands out its commitment for a round start (``context``: see ``start_context``)."""
    return COMMIT_SIGN_DOMAIN + struct.pack("<QI", round_number, peer) + nonce + commitment + context


def sign_commitment(key: SigningKey, round_number: int, nonce: bytes, peer: int, commitment: bytes,
                    context: bytes) -> bytes:
    """The signature that lets a round start list this peer's commitment."""
    return key.sign(commitment_bytes(round_number, nonce, peer, commitment, context)).signature


# ---------------------------------------------------------------------- log payloads


def _bytes(payload: Mapping[str, Any], name: str, size: int) -> bytes:
    value = payload.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise VerificationError(f"{name} must be {size} bytes")
    return value


def _count(value: Any, name: str, upper: int, lower: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lower <= value < upper:
        raise VerificationError(f"{name} must be an integer in {lower}..{upper - 1}")
    return value


def _members(committee: Committee, raw: Any, name: str, width: int) -> list[list[Any]]:
    if not isinstance(raw, list) or not all(isinstance(row, list) and len(row) == width for row in raw):
        raise VerificationError(f"{name} must be a list of {width}-item rows")
    peers = [_count(row[0], f"{name} peer", len(committee.peers)) for row in raw]
    if len(set(peers)) != len(peers) or peers != sorted(peers):
        raise VerificationError(f"{name} must list each member once, in order")
    return raw


def check_start(committee: Committee, payload: Mapping[str, Any]) -> None:
    """Raise ``VerificationError`` unless a challenge-start payload is well-formed and its commitments signed."""
    if set(payload) != {"round", "prev", "nonce", "sample", "heads", "commits"}:
        raise VerificationError("challenge-start has fields round, prev, nonce, sample, heads, commits")
    number = _count(payload["round"], "round", 1 << 62, 1)
    prev = _bytes(payload, "prev", 32)
    if (number == 1) != (prev == NO_ROUND):
        raise VerificationError("round 1, and only round 1, names no previous round")
    nonce = _bytes(payload, "nonce", NONCE_SIZE)
    _count(payload["sample"], "sample", MAX_SAMPLE + 1, 1)
    heads = check_heads(committee, payload["heads"])
    context = start_context(prev, heads)
    commits = _members(committee, payload["commits"], "commits", 3)
    for peer, commitment, signature in commits:
        if not (isinstance(commitment, bytes) and len(commitment) == 32 and isinstance(signature, bytes)):
            raise VerificationError("a commitment is 32 bytes with a signature")
        # The signature covers the heads and the previous round: a start cannot reuse
        # commitments given for other heads (see ``start_context``).
        verify_member(committee, peer, commitment_bytes(number, nonce, peer, commitment, context), signature,
                      f"peer {peer}'s commitment signature is invalid for this round, predecessor and heads")
    weight = committee.weight(row[0] for row in commits)
    if weight < committee.quorum:
        raise VerificationError(f"commitments from peers holding {weight} shards; a round needs {committee.quorum}")


def check_reveal(payload: Mapping[str, Any]) -> None:
    """Raise ``VerificationError`` unless a challenge-reveal payload is well-formed."""
    if set(payload) != {"start", "secret"}:
        raise VerificationError("challenge-reveal has fields start, secret")
    _bytes(payload, "start", 32)
    _bytes(payload, "secret", SECRET_SIZE)


def pass_from_payload(payload: Mapping[str, Any]) -> PassCertificate:
    """The pass certificate a challenge-pass payload carries (not yet verified)."""
    if set(payload) != {"start", "round", "seed", "peer", "signers", "signatures"}:
        raise VerificationError("challenge-pass has fields start, round, seed, peer, signers, signatures")
    _bytes(payload, "start", 32)
    signers, signatures = payload["signers"], payload["signatures"]
    if not (isinstance(signers, list) and isinstance(signatures, list)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in signers)
            and all(isinstance(s, bytes) for s in signatures)):
        raise VerificationError("signers must be integers and signatures byte strings")
    return PassCertificate(_count(payload["round"], "round", 1 << 62, 1), _bytes(payload, "seed", 32),
                           _count(payload["peer"], "peer", 1 << 32), tuple(signers), tuple(signatures))


def pass_payload(start: bytes, certificate: PassCertificate) -> dict[str, Any]:
    """The challenge-pass payload recording ``certificate`` for the round started by entry ``start``."""
    return {"start": start, "round": certificate.round_number, "seed": certificate.seed, "peer": certificate.peer,
            "signers": list(certificate.signers), "signatures": list(certificate.signatures)}


def check_pass(committee: Committee, payload: Mapping[str, Any]) -> None:
    """Raise ``VerificationError`` unless a challenge-pass payload holds a valid pass certificate."""
    certificate = pass_from_payload(payload)
    if certificate.peer >= len(committee.peers):
        raise VerificationError("the challenged peer is not a committee member")
    # The prover's own attestation may be one of the 2f + 1: at most f attesters are faulty,
    # the prover included, so f + 1 honest checkers still verified its proof. Without it an
    # honest prover at n = 4 needs every other member, and one silent member fails it.
    verify_pass_certificate(committee, certificate)


def check_close(committee: Committee, payload: Mapping[str, Any]) -> None:
    """Raise ``VerificationError`` unless a challenge-close payload is well-formed."""
    if set(payload) != {"start", "verdicts"}:
        raise VerificationError("challenge-close has fields start, verdicts")
    _bytes(payload, "start", 32)
    for _, verdict in _members(committee, payload["verdicts"], "verdicts", 2):
        if not isinstance(verdict, str) or len(verdict) > MAX_VERDICT:
            raise VerificationError(f"a verdict is a string of at most {MAX_VERDICT} characters")
