"""Storage-challenge groundwork (pure): seeds, the challenged sample, proof cells, pass certificates."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.conftest import blob_bytes
from walrusfs.core.certificates import sign_confirmation
from walrusfs.core.challenge import (
    PassCertificate,
    challenged_blobs,
    pass_bytes,
    proof_cells,
    round_seed,
    seed_commitment,
    sign_pass,
    verify_pass_certificate,
)
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.config import EncodingConfig
from walrusfs.core.errors import VerificationError
from walrusfs.core.metadata import BlobId
from walrusfs.core.recovery import verify_recovery_symbol
from walrusfs.core.redstuff import encode_blob, expanded_sliver

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
            good, signatures=(sign_confirmation(KEYS[0], 0, BlobId(b"s" * 32)), *good.signatures[1:])),
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
