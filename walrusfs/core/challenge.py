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

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import merkle
from .committee import Committee
from .config import EncodingConfig
from .errors import VerificationError
from .metadata import BlobId
from .recovery import RecoverySymbol, recovery_symbol
from .redstuff import Axis, Sliver

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
        try:
            VerifyKey(committee.peers[index].public_key).verify(message, signature)
        except (BadSignatureError, ValueError) as exc:
            raise VerificationError(f"pass attestation by peer {index} is invalid for this round") from exc
    weight = committee.weight(certificate.signers)
    if weight < committee.quorum:
        raise VerificationError(f"pass attestations from peers holding {weight} shards; a certificate needs "
                                f"{committee.quorum}")
