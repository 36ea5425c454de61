"""The signed log: validation, chains, equivocation and order-independent state (pure)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.ledgerkit import certified_payload
from walrusfs.core.certificates import Certificate, sign_confirmation, sign_invalid_blob
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.log import (
    BLOB_CERTIFIED,
    BLOB_INVALID,
    GENESIS,
    Entry,
    LogError,
    LogState,
    Outcome,
    check_entry,
    decode_entry,
    invalid_payload,
    next_hlc,
    sign_entry,
)
from walrusfs.core.metadata import BlobId

KEYS = [SigningKey(bytes([k + 1]) * 32) for k in range(4)]
COMMITTEE = Committee(
    0,
    tuple(
        PeerInfo(peer_id_from_public_key(bytes(k.verify_key)), bytes(k.verify_key), (f"/ip4/127.0.0.1/tcp/{4000 + i}",), (i,))
        for i, k in enumerate(KEYS)
    ),
)
OUTSIDER = SigningKey(b"\x99" * 32)


def payload(blob: bytes, length: int, signers: tuple[int, ...] = (0, 1, 2)) -> dict:
    """A blob-certified payload: the test writer's registration and a certificate ``signers`` gathered for it."""
    return certified_payload(blob, length, KEYS, signers)


def chain(key: SigningKey, blobs: list[bytes], start_hlc: int = 1000) -> list[Entry]:
    entries: list[Entry] = []
    prev, hlc = GENESIS, start_hlc
    for seq, blob in enumerate(blobs, 1):
        hlc = next_hlc(hlc, 0)
        entry = sign_entry(key, seq, prev, hlc, BLOB_CERTIFIED, payload(blob, 10))
        entries.append(entry)
        prev = entry.id
    return entries


def test_round_trip_and_validation() -> None:
    (entry,) = chain(KEYS[0], [b"\x01" * 32])
    assert decode_entry(entry.encode()) == entry
    check_entry(entry, COMMITTEE)
    state = LogState(COMMITTEE)
    assert state.apply(entry) == (Outcome.ACCEPTED, [entry])
    assert state.apply(entry) == (Outcome.DUPLICATE, [])
    assert BlobId(b"\x01" * 32) in state.certified()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda e: dataclasses.replace(e, signature=bytes(64)), "signature is invalid"),
        (lambda e: dataclasses.replace(e, hlc=e.hlc + 1), "signature is invalid"),
        (lambda e: sign_entry(OUTSIDER, 1, GENESIS, 5, BLOB_CERTIFIED, e.payload), "not a committee member"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, BLOB_CERTIFIED, payload(b"\x02" * 32, 1, (0, 1))), "needs 3"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, BLOB_CERTIFIED, payload(b"\x02" * 32, 1, (0, 1, 1))), "signer twice"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, BLOB_CERTIFIED, {**e.payload, "signatures": [bytes(64)] * 3}), "signature is invalid"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, "committee-change", {}), "reserved"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, "namespace", {}), "delegation"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, "gossip", {}), "unknown entry kind"),
        (lambda e: sign_entry(KEYS[0], 1, GENESIS, 5, BLOB_CERTIFIED, {"blob_id": b"x"}), "malformed"),
    ],
    ids=["forged-signature", "altered-field", "unknown-author", "too-few-signers", "duplicate-signers",
         "bad-confirmations", "reserved-kind", "namespace-without-delegation", "unknown-kind", "malformed-payload"],
)
def test_invalid_entries_are_rejected_with_reasons(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    (good,) = chain(KEYS[0], [b"\x01" * 32])
    bad = make(good)
    with pytest.raises(LogError, match=reason):
        check_entry(bad, COMMITTEE)
    assert LogState(COMMITTEE).apply(bad) == (Outcome.REJECTED, [])


def test_malformed_encodings() -> None:
    (entry,) = chain(KEYS[0], [b"\x01" * 32])
    with pytest.raises(LogError, match="malformed"):
        decode_entry(b"\xa0")
    with pytest.raises(LogError, match="prev"):
        decode_entry(dataclasses.replace(entry, prev=b"\x01" * 32).encode())
    with pytest.raises(LogError, match="seq"):
        decode_entry(dataclasses.replace(entry, seq=0).encode())


def test_broken_chain_is_rejected_and_gaps_wait() -> None:
    entries = chain(KEYS[1], [bytes([k]) * 32 for k in range(1, 5)])
    state = LogState(COMMITTEE)
    assert state.apply(entries[2])[0] is Outcome.PENDING
    assert state.apply(entries[0])[0] is Outcome.ACCEPTED
    assert state.apply(entries[1]) == (Outcome.ACCEPTED, entries[1:3])
    assert state.head(entries[0].author) == 3
    forged_link = sign_entry(KEYS[1], 4, b"\x07" * 32, entries[3].hlc, BLOB_CERTIFIED, entries[3].payload)
    assert state.apply(forged_link)[0] is Outcome.REJECTED


def test_equivocation_is_detected_kept_and_excludes_the_rest() -> None:
    honest = chain(KEYS[2], [b"\x01" * 32, b"\x02" * 32, b"\x03" * 32])
    other = sign_entry(KEYS[2], 2, honest[0].id, honest[1].hlc, BLOB_CERTIFIED, payload(b"\x09" * 32, 1))
    state = LogState(COMMITTEE)
    for entry in honest:
        state.apply(entry)
    assert state.apply(other)[0] is Outcome.EQUIVOCATION
    proof = state.equivocations[(honest[0].author, 2)]
    assert set(proof) == {honest[1].id, other.id}
    for entry in proof.values():  # both signatures check: anyone can verify the proof
        check_entry(entry, COMMITTEE)
    assert set(state.certified()) == {BlobId(b"\x01" * 32)}


@st.composite
def entry_sets(draw: st.DrawFn) -> list[Entry]:
    entries: list[Entry] = []
    blobs = [bytes([k]) * 32 for k in range(1, 9)]
    for key in KEYS[:3]:
        length = draw(st.integers(0, 4))
        mine = chain(key, [draw(st.sampled_from(blobs)) for _ in range(length)], draw(st.integers(0, 5000)))
        entries += mine
        if mine and draw(st.booleans()):
            # An equivocating fork at a random position, continued for a while.
            at = draw(st.integers(1, len(mine)))
            prev = mine[at - 2].id if at > 1 else GENESIS
            fork = sign_entry(key, at, prev, draw(st.integers(0, 9999)), BLOB_CERTIFIED,
                              payload(draw(st.sampled_from(blobs)), 3))
            entries.append(fork)
            if draw(st.booleans()):
                entries.append(sign_entry(key, at + 1, fork.id, 10**6, BLOB_CERTIFIED,
                                          payload(blobs[0], 3)))
    return entries


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry_sets(), st.randoms(use_true_random=False), st.randoms(use_true_random=False))
def test_any_order_with_duplicates_gives_the_same_state(entries: list[Entry], r1: random.Random, r2: random.Random) -> None:
    def run(rng: random.Random) -> LogState:
        shuffled = entries + rng.sample(entries, k=len(entries) // 2)
        rng.shuffle(shuffled)
        state = LogState(COMMITTEE)
        for entry in shuffled:
            state.apply(entry)
        return state

    a, b = run(r1), run(r2)
    assert a.digest() == b.digest()
    assert a.certified() == b.certified()
    assert a.cutoffs() == b.cutoffs()


VOLUME = SigningKey(b"\x42" * 32)
DEVICES = [SigningKey(b"\x51" * 32), SigningKey(b"\x52" * 32)]


def namespace_entry(device: SigningKey, seq: int, prev: bytes, hlc: int, kind: str, delegate: SigningKey = VOLUME,
                    volume: bytes | None = None, **args: object) -> Entry:
    from walrusfs.core.log import NAMESPACE, delegate_device

    payload = {
        "volume": volume or bytes(VOLUME.verify_key),
        "delegation": delegate_device(delegate, bytes(device.verify_key)),
        "op": {"kind": kind, "args": args},
    }
    return sign_entry(device, seq, prev, hlc, NAMESPACE, payload)


def test_namespace_entries_from_delegated_devices_build_the_tree() -> None:
    from walrusfs.core.namespace import ROOT, build

    a1 = namespace_entry(DEVICES[0], 1, GENESIS, 10, "mkdir", parent=ROOT, name="docs", node=b"\x01" * 32)
    a2 = namespace_entry(DEVICES[0], 2, a1.id, 11, "create", parent=b"\x01" * 32, name="a.txt", node=b"\x02" * 32)
    chunk = b"\x09" * 32
    a3 = namespace_entry(DEVICES[0], 3, a2.id, 12, "write", node=b"\x02" * 32, base=None,
                         content={"size": 5, "chunk_size": 4, "chunks": [chunk, None]})
    # A second mount of the same volume writes its own chain: no equivocation.
    b1 = namespace_entry(DEVICES[1], 1, GENESIS, 13, "create", parent=b"\x01" * 32, name="b.txt", node=b"\x03" * 32)
    state = LogState(COMMITTEE)
    for entry in (b1, a3, a1, a2):
        check_entry(entry, COMMITTEE)
        state.apply(entry)
    assert not state.equivocations
    tree = build(state.namespace_ops(bytes(VOLUME.verify_key))).tree()
    assert set(tree) == {"/docs", "/docs/a.txt", "/docs/b.txt"}
    assert tree["/docs/a.txt"][2].chunks == (chunk, None)
    assert state.namespace_ops(b"\x00" * 32) == []


def test_links_special_files_and_times_pass_the_validator_and_fold() -> None:
    from walrusfs.core.namespace import ROOT, build

    f, node = b"\x01" * 32, b"\x02" * 32
    ops = [
        ("create", {"parent": ROOT, "name": "f", "node": f, "mtime_ns": -5, "atime_ns": 3, "ctime_ns": 2**63 - 1}),
        ("link", {"parent": ROOT, "name": "g", "node": f, "ctime_ns": 10}),
        ("mknod", {"parent": ROOT, "name": "dev", "node": node, "type": "blockdev", "rdev": 2**32 - 1}),
        ("setattr", {"node": f, "atime_ns": -(2**63), "mtime_ns": 7}),
        ("unlink", {"parent": ROOT, "name": "f", "node": f, "ctime_ns": 11}),
    ]
    entries, prev = [], GENESIS
    for seq, (kind, args) in enumerate(ops, 1):
        entries.append(namespace_entry(DEVICES[0], seq, prev, seq, kind, **args))
        prev = entries[-1].id
    state = LogState(COMMITTEE)
    for entry in entries:
        check_entry(entry, COMMITTEE)
        state.apply(entry)
    tree = build(state.namespace_ops(bytes(VOLUME.verify_key))).tree()
    assert set(tree) == {"/g", "/dev"} and tree["/g"][-1] == 1 and tree["/dev"][0] == "blockdev"
    for kind, args, reason in [("mknod", {"type": "dir"}, "type"), ("mknod", {"type": "blockdev", "rdev": 2**32}, "rdev"),
                               ("link", {"name": "a/b"}, "file name"), ("setattr", {"atime_ns": 2**63}, "atime_ns")]:
        base = {"parent": ROOT, "name": "x", "node": node}
        with pytest.raises(LogError, match=reason):
            check_entry(namespace_entry(DEVICES[1], 1, GENESIS, 1, kind, **{**base, **args}), COMMITTEE)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "mkdir", delegate=SigningKey(b"\x77" * 32), parent=bytes(32), name="x", node=b"\x01" * 32), "not authorized"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "mkdir", volume=b"\x07" * 32, parent=bytes(32), name="x", node=b"\x01" * 32), "not authorized"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "mkdir", parent=bytes(32), name="a/b", node=b"\x01" * 32), "file name"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "mkdir", parent=bytes(32), name="..", node=b"\x01" * 32), "file name"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "create", parent=bytes(32), name="x", node=b"\x01"), "node ID"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "format-disk", node=b"\x01" * 32), "unknown namespace op"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "write", node=b"\x01" * 32,
                                 content={"size": 9, "chunk_size": 4, "chunks": [None]}), "one blob ID"),
        (lambda: namespace_entry(DEVICES[0], 1, GENESIS, 1, "setattr", node=b"\x01" * 32, mode=-1), "non-negative"),
    ],
    ids=["wrong-volume-key", "other-volume", "slash-in-name", "dot-dot", "short-node", "unknown-op", "bad-content", "bad-mode"],
)
def test_bad_namespace_entries_are_rejected(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LogError, match=reason):
        check_entry(make(), COMMITTEE)


def invalid_certificate(blob: bytes, signers: tuple[int, ...] = (0, 1)) -> Certificate:
    blob_id = BlobId(blob)
    return Certificate(blob_id, 0, signers, tuple(sign_invalid_blob(KEYS[i], 0, blob_id) for i in signers), True)


def test_blob_invalid_entries_need_f_plus_1_attestations_with_their_own_intent() -> None:
    (certified,) = chain(KEYS[0], [b"\x05" * 32])
    good = sign_entry(KEYS[1], 1, GENESIS, 7, BLOB_INVALID, invalid_payload(invalid_certificate(b"\x05" * 32)))
    check_entry(good, COMMITTEE)
    state = LogState(COMMITTEE)
    before = state.digest()
    state.apply(certified)
    with_certified = state.digest()
    assert state.apply(good)[0] is Outcome.ACCEPTED
    assert state.invalid_entry(BlobId(b"\x05" * 32)) == good and set(state.invalid()) == {BlobId(b"\x05" * 32)}
    assert len({before, with_certified, state.digest()}) == 3
    blob_id = BlobId(b"\x06" * 32)
    confirmations = Certificate(blob_id, 0, (0, 1), tuple(sign_confirmation(KEYS[i], 0, blob_id) for i in (0, 1)))
    bad = {
        # Storage confirmations are not attestations: the intent byte differs.
        "signature is invalid": {**confirmations.to_wire()},
        "needs 2": invalid_payload(invalid_certificate(b"\x06" * 32, (2,))),
        "signer twice": invalid_payload(invalid_certificate(b"\x06" * 32, (2, 2))),
        "not a committee member": {**invalid_payload(invalid_certificate(b"\x06" * 32, (0, 1))), "signers": [0, 9]},
        "unexpected fields": {**invalid_payload(invalid_certificate(b"\x06" * 32)), "length": 3},
    }
    for reason, refused in bad.items():
        entry = sign_entry(KEYS[2], 1, GENESIS, 9, BLOB_INVALID, refused)
        with pytest.raises(LogError, match=reason):
            check_entry(entry, COMMITTEE)
        assert LogState(COMMITTEE).apply(entry)[0] is Outcome.REJECTED
    # An attestation never passes as a storage confirmation either (in a payload whose
    # registration matches, so the signatures are what is refused).
    attestations = invalid_certificate(b"\x06" * 32, (0, 1, 2)).signatures
    forged = sign_entry(KEYS[2], 1, GENESIS, 9, BLOB_CERTIFIED,
                        {**payload(b"\x06" * 32, 1), "signatures": list(attestations)})
    with pytest.raises(LogError, match="signature is invalid"):
        check_entry(forged, COMMITTEE)


# ---------------------------------------------------------------- time cannot be pushed (issue 15)

from walrusfs.core.log import (  # noqa: E402 - grouped with the tests that use them
    FOLLOW_LIMIT_MS,
    MAX_CLOCK_SKEW_MS,
    NAMESPACE,
    TooEarly,
    check_stamp,
    delegate_device,
    hlc_millis,
    shown_millis,
)

NOW = 1_780_000_000_000  # a wall clock in ms (2026)
YEAR_MS = 365 * 24 * 3600 * 1000
STAMPS = st.one_of(st.integers(0, 2**63 - 1), st.integers(0, (NOW + 2 * YEAR_MS) << 16),
                   st.sampled_from([0, 2**63 - 1, (NOW + YEAR_MS) << 16, (NOW + MAX_CLOCK_SKEW_MS + 1) << 16]))


def stamped_entry(hlc: int) -> Entry:
    volume, device = SigningKey(b"\x51" * 32), SigningKey(b"\x52" * 32)
    payload = {"volume": bytes(volume.verify_key), "delegation": delegate_device(volume, bytes(device.verify_key)),
               "op": {"kind": "mkdir", "args": {"parent": b"\x00" * 32, "name": "d", "node": b"\x07" * 32}}}
    return sign_entry(device, 1, GENESIS, hlc, NAMESPACE, payload)


@settings(max_examples=300, deadline=None)
@given(last=st.integers(0, (NOW + FOLLOW_LIMIT_MS) << 16), seen=STAMPS, now=st.integers(NOW - YEAR_MS, NOW + YEAR_MS))
def test_next_stamp_follows_others_only_within_the_bound(last: int, seen: int, now: int) -> None:
    stamp = next_hlc(last, now, seen)
    assert stamp > last and hlc_millis(stamp) >= now
    # Causal order with every stamp that is not too far ahead of us ...
    if hlc_millis(seen) < now + FOLLOW_LIMIT_MS:
        assert stamp > seen
    # ... and never dragged further than FOLLOW_LIMIT_MS by anyone else's stamp: our own
    # entries pass the check every peer applies, even at a peer whose clock is behind ours
    # by up to MAX_CLOCK_SKEW_MS - FOLLOW_LIMIT_MS, whatever the log holds.
    if hlc_millis(last) < now + FOLLOW_LIMIT_MS:
        assert hlc_millis(stamp) <= now + FOLLOW_LIMIT_MS
        check_stamp(stamp, now - (MAX_CLOCK_SKEW_MS - FOLLOW_LIMIT_MS))
    assert stamp < 2**63  # always encodable: decode_entry accepts 63-bit stamps only


@settings(max_examples=30, deadline=None)
@given(seen=STAMPS, skew=st.integers(-(MAX_CLOCK_SKEW_MS - FOLLOW_LIMIT_MS), MAX_CLOCK_SKEW_MS - FOLLOW_LIMIT_MS))
def test_own_chain_signed_after_a_poisoned_stamp_passes_everyone_elses_check(seen: int, skew: int) -> None:
    """A chain signed with the clock rule is valid for checkers within 30 s of the signer, whatever it saw."""
    state = LogState(COMMITTEE)
    prev, last = GENESIS, 0
    for seq in range(1, 4):
        last = next_hlc(last, NOW + seq, seen)
        entry = sign_entry(KEYS[0], seq, prev, last, BLOB_CERTIFIED, payload(bytes([seq]) * 32, 1))
        check_entry(entry, COMMITTEE, NOW + seq + skew)
        assert state.apply(entry, now_ms=NOW + seq + skew)[0] is Outcome.ACCEPTED
        prev = entry.id


@pytest.mark.parametrize("stamp", [2**63 - 1, (NOW + YEAR_MS) << 16, (NOW + MAX_CLOCK_SKEW_MS + 1) << 16],
                         ids=["2^63-1", "one-year-ahead", "just-beyond"])
def test_a_future_stamp_is_refused_for_now_and_accepted_once_the_clock_catches_up(stamp: int) -> None:
    entry = stamped_entry(stamp)
    check_entry(entry, COMMITTEE)  # signed and well-formed: only the time is wrong
    with pytest.raises(TooEarly, match="ahead of this clock"):
        check_entry(entry, COMMITTEE, NOW)
    assert issubclass(TooEarly, LogError)
    state = LogState(COMMITTEE)
    assert state.apply(entry, now_ms=NOW) == (Outcome.REJECTED, [])
    # Nothing about it was kept: not accepted, not waiting, so offering it again later works.
    assert entry.id not in state.ids and not state.pending and state.size == 0
    later = hlc_millis(stamp) - MAX_CLOCK_SKEW_MS
    assert state.apply(entry, now_ms=later) == (Outcome.ACCEPTED, [entry])


def test_the_bound_is_inclusive_and_counts_milliseconds_not_the_counter() -> None:
    edge = ((NOW + MAX_CLOCK_SKEW_MS) << 16) | 0xFFFF
    check_entry(stamped_entry(edge), COMMITTEE, NOW)
    with pytest.raises(TooEarly):
        check_entry(stamped_entry(edge + 1), COMMITTEE, NOW)
    check_entry(stamped_entry(0), COMMITTEE, NOW)  # the past is never refused


@given(hlc=STAMPS, now=st.integers(0, NOW + YEAR_MS))
def test_shown_time_is_never_later_than_now(hlc: int, now: int) -> None:
    shown = shown_millis(hlc, now)
    assert shown <= now and shown == min(hlc_millis(hlc), now)
