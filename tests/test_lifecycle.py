"""Writers, registrations, lifetimes, grants, epochs and the ledger fold (issue 16; pure).

What every peer must agree on without talking: whether a writer's chain of signatures
holds, what a registration or operation says (and that junk never decodes to one), when an
epoch has begun, and the ledger state a set of entries gives, whatever order they came in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.ledgerkit import certificate_for, registered_payload, registration
from walrusfs.core import wire
from walrusfs.core.certificates import Certificate, sign_confirmation
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.lifecycle import (
    BLOB_DELETED,
    BLOB_EXTENDED,
    DEVICE_DOMAIN,
    EPOCH,
    GRANT,
    MAX_EPOCHS_AHEAD,
    REVOKE,
    SPONSOR_DOMAIN,
    Grant,
    Ledger,
    LifecycleError,
    LifetimeOp,
    Registration,
    Revocation,
    Writer,
    check_epoch,
    delegate,
    device_authority,
    due_epoch,
    epoch_payload,
    own_authority,
    sign_epoch,
    sponsor,
    writer_for,
)
from walrusfs.core.log import (
    BLOB_CERTIFIED,
    GENESIS,
    NAMESPACE,
    Entry,
    LogError,
    LogState,
    Outcome,
    certificate_payload,
    check_entry,
    delegate_device,
    sign_entry,
)
from walrusfs.core.metadata import BlobId

MEMBERS = [SigningKey(bytes([0x10 + k]) * 32) for k in range(4)]
OPERATOR = SigningKey(b"\x0f" * 32)


def committee_of(shards: list[tuple[int, ...]]) -> Committee:
    return Committee(0, tuple(
        PeerInfo(peer_id_from_public_key(bytes(k.verify_key)), bytes(k.verify_key), (f"/ip4/127.0.0.1/tcp/{4100 + i}",), s)
        for i, (k, s) in enumerate(zip(MEMBERS, shards))), (bytes(OPERATOR.verify_key),), 60_000, 1_000_000)


#: n = 4, one shard each: 2f + 1 = 3 members.
COMMITTEE = committee_of([(0,), (1,), (2,), (3,)])
#: n = 7 with member 0 holding 4 shards: 2f + 1 = 5 shards, which members 0 and 1 hold alone.
LOPSIDED = committee_of([(0, 1, 2, 3), (4,), (5,), (6,)])

ACCOUNT = SigningKey(b"\x21" * 32)
OTHER = SigningKey(b"\x22" * 32)
VOLUME = SigningKey(b"\x23" * 32)
DEVICE = SigningKey(b"\x24" * 32)
STRANGER = SigningKey(b"\x25" * 32)


def pub(key: SigningKey) -> bytes:
    return bytes(key.verify_key)


def blob(k: int) -> BlobId:
    return BlobId(bytes([k]) * 32)


def _round_trip(value: dict[str, Any]) -> Any:
    """``value`` through the wire encoding and back, as a peer receives it."""
    return wire.decode(wire.encode({"v": wire.WIRE_VERSION, "x": value}), 1 << 20)["x"]


# ---------------------------------------------------------------------------- writers


def test_writers_whose_links_are_signed_check() -> None:
    own = writer_for(ACCOUNT)
    own.check()
    assert own.keys() == {pub(ACCOUNT)}
    mount = device_authority(ACCOUNT, VOLUME, DEVICE).writer
    mount.check()
    assert (mount.account, mount.owner, mount.signer) == (pub(ACCOUNT), pub(VOLUME), pub(DEVICE))
    assert mount.keys() == {pub(ACCOUNT), pub(VOLUME), pub(DEVICE)}
    # A volume on its own grant (no sponsor) and a volume signing for itself.
    device_authority(None, VOLUME, DEVICE).writer.check()
    device_authority(ACCOUNT, VOLUME, VOLUME).writer.check()
    assert Writer.from_wire(_round_trip(mount.to_wire())) == mount


def _forged_writers() -> dict[str, Writer]:
    a, v, d = pub(ACCOUNT), pub(VOLUME), pub(DEVICE)
    good = device_authority(ACCOUNT, VOLUME, DEVICE).writer
    return {
        "sponsorship by a stranger": dataclasses.replace(good, sponsorship=sponsor(STRANGER, v)),
        "delegation by a stranger": dataclasses.replace(good, delegation=delegate(STRANGER, d)),
        "sponsorship of another owner": dataclasses.replace(good, sponsorship=sponsor(ACCOUNT, pub(OTHER))),
        "delegation to another device": dataclasses.replace(good, delegation=delegate(VOLUME, pub(OTHER))),
        "sponsorship used as the delegation": dataclasses.replace(
            good, delegation=SigningKey(VOLUME.encode()).sign(SPONSOR_DOMAIN + v + d).signature),
        "delegation used as the sponsorship": dataclasses.replace(
            good, sponsorship=ACCOUNT.sign(DEVICE_DOMAIN + a + v).signature),
        "links swapped": dataclasses.replace(good, sponsorship=good.delegation, delegation=good.sponsorship),
        "owner swapped in": dataclasses.replace(good, owner=pub(OTHER)),
        "account swapped in": dataclasses.replace(good, account=pub(OTHER)),
        "signer swapped in": dataclasses.replace(good, signer=pub(OTHER)),
        "no sponsorship": dataclasses.replace(good, sponsorship=None),
        "no delegation": dataclasses.replace(good, delegation=None),
        "a sponsorship of itself": Writer(a, a, a, sponsor(ACCOUNT, a)),
        "a delegation to itself": Writer(a, a, a, None, delegate(ACCOUNT, a)),
        "short signature": dataclasses.replace(good, delegation=good.delegation[:63]),
        "zero signature": dataclasses.replace(good, sponsorship=bytes(64)),
        "short key": Writer(a[:31], a[:31], a[:31]),
        "text key": Writer(a, a, "x" * 32),  # type: ignore[arg-type]
        "signature of the wrong type": dataclasses.replace(good, sponsorship="s" * 64),  # type: ignore[arg-type]
    }


@pytest.mark.parametrize("name", sorted(_forged_writers()))
def test_every_forged_writer_link_is_refused(name: str) -> None:
    forged = _forged_writers()[name]
    with pytest.raises(LifecycleError):
        forged.check()
    with pytest.raises(LifecycleError):
        Writer.from_wire(forged.to_wire())
    # Whatever it signs with that writer is refused too.
    reg = Registration(blob(1), bytes(16), 5, True, forged, b"")
    signed = dataclasses.replace(reg, signature=DEVICE.sign(reg.signed_bytes()).signature)
    with pytest.raises(LifecycleError):
        Registration.from_wire(signed.to_wire())


# ---------------------------------------------------------------------------- wire forms


MOUNT = device_authority(ACCOUNT, VOLUME, DEVICE)


def test_registrations_operations_grants_and_revocations_round_trip() -> None:
    for deletable in (True, False):
        reg = MOUNT.register(blob(3), 17, deletable, 5000)
        back = Registration.from_wire(_round_trip(reg.to_wire()))
        assert back == reg and back.id == reg.id and back.length == 5000
        # Confirmations name the registration whatever its kind, so no member can attach
        # another registration to a certificate gathered for this one.
        assert reg.object_id == reg.id
    # The ID is the whole signed registration's: a new nonce, end, kind or length is a new ID.
    ids = {MOUNT.register(blob(3), 17, True, 1).id for _ in range(3)} | {
        registration(blob(3), 17, True, length=1).id, registration(blob(3), 18, True, length=1).id,
        registration(blob(3), 17, False, length=1).id, registration(blob(3), 17, True, length=2).id}
    assert len(ids) == 7
    for op in (MOUNT.operation("extend", [b"\x01" * 32, b"\x02" * 32], 4, 20), MOUNT.operation("delete", [b"\x03" * 32], 4)):
        assert LifetimeOp.from_wire(_round_trip(op.to_wire())) == op
    grant = Grant(pub(ACCOUNT), 1 << 40, 2, 9)
    assert Grant.from_wire(_round_trip(grant.to_wire())) == grant
    revocation = Revocation(pub(VOLUME), {pub(DEVICE): 7, pub(OTHER): 0})
    assert Revocation.from_wire(_round_trip(revocation.to_wire())) == revocation


def test_signed_fields_cannot_be_changed() -> None:
    reg = MOUNT.register(blob(3), 17, True, 100)
    for change in ({"end_epoch": 18}, {"deletable": False}, {"nonce": bytes(16)}, {"blob_id": blob(4)}, {"length": 101},
                   {"writer": device_authority(OTHER, VOLUME, DEVICE).writer}):
        with pytest.raises(LifecycleError):
            Registration.from_wire(dataclasses.replace(reg, **change).to_wire())
    op = MOUNT.operation("extend", [reg.id], 4, 20)
    for change in ({"end_epoch": 21}, {"at_epoch": 5}, {"targets": (reg.id, b"\x09" * 32)},
                   {"writer": writer_for(DEVICE)}):
        with pytest.raises(LifecycleError):
            LifetimeOp.from_wire(dataclasses.replace(op, **change).to_wire())
    # An extension to 0 and a deletion with an end are malformed, whoever signs them.
    for bad in (MOUNT.operation("extend", [reg.id], 4, 0), MOUNT.operation("delete", [reg.id], 4, 9),
                MOUNT.operation("extend", [reg.id, reg.id], 4, 9), MOUNT.operation("extend", [], 4, 9)):
        with pytest.raises(LifecycleError):
            LifetimeOp.from_wire(bad.to_wire())


cbor = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.binary(max_size=70)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | st.binary(max_size=4), inner,
                                                                max_size=6),
    max_leaves=25,
)


def _valid_forms() -> dict[str, tuple[Any, dict[str, Any]]]:
    reg = MOUNT.register(blob(3), 17, True, 100)
    return {
        "writer": (Writer.from_wire, MOUNT.writer.to_wire()),
        "registration": (Registration.from_wire, reg.to_wire()),
        "operation": (LifetimeOp.from_wire, MOUNT.operation("extend", [reg.id], 4, 20).to_wire()),
        "grant": (Grant.from_wire, Grant(pub(ACCOUNT), 100, 0, 9).to_wire()),
        "revocation": (Revocation.from_wire, Revocation(pub(VOLUME), {pub(DEVICE): 7}).to_wire()),
        "epoch": (lambda v: check_epoch(COMMITTEE, v),
                  epoch_payload(2, {k: sign_epoch(MEMBERS[k], 2) for k in range(3)})),
    }


FORMS = _valid_forms()


@pytest.mark.parametrize("kind", sorted(FORMS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=cbor, data=st.data())
def test_decoders_raise_only_lifecycle_error_on_junk(kind: str, junk: Any, data: st.DataObject) -> None:
    parse, valid = FORMS[kind]
    # Junk whole, and junk in place of (or beside) one field of a valid form, so the
    # decoder gets past its first check.
    name = data.draw(st.sampled_from(sorted(valid) + ["extra"]))
    for value in (junk, {**valid, name: junk}, {k: v for k, v in valid.items() if k != name}):
        try:
            parse(value)
        except LifecycleError:
            pass
    # The valid form itself parses.
    parse(valid)


# ---------------------------------------------------------------------------- epochs


def _epoch_entry(committee: Committee, epoch: int, signers: list[int], author: int = 0) -> Entry:
    payload = epoch_payload(epoch, {k: sign_epoch(MEMBERS[k], epoch) for k in signers})
    return sign_entry(MEMBERS[author], 1, GENESIS, 5, EPOCH, payload)


def test_epoch_entries_need_signatures_of_members_holding_2f_plus_1_shards() -> None:
    assert check_epoch(COMMITTEE, _epoch_entry(COMMITTEE, 4, [0, 1, 3]).payload) == 4
    check_entry(_epoch_entry(COMMITTEE, 4, [1, 2, 3], author=2), COMMITTEE)
    with pytest.raises(LogError, match="needs 3"):
        check_entry(_epoch_entry(COMMITTEE, 4, [0, 1]), COMMITTEE)
    # Shards count, not members: member 0 holds 4 of 7, so it and one more reach 5; the
    # other three members together hold only 3.
    assert check_epoch(LOPSIDED, _epoch_entry(LOPSIDED, 4, [0, 1]).payload) == 4
    with pytest.raises(LifecycleError, match="needs 5"):
        check_epoch(LOPSIDED, _epoch_entry(LOPSIDED, 4, [1, 2, 3]).payload)
    good = _epoch_entry(COMMITTEE, 4, [0, 1, 2]).payload
    bad = {
        "a signature for another epoch": {**good, "signatures": [sign_epoch(MEMBERS[0], 5), *good["signatures"][1:]]},
        "a signer twice": {**good, "signers": [0, 0, 1], "signatures": [good["signatures"][0]] * 2 + [good["signatures"][1]]},
        "a non-member index": {**good, "signers": [0, 1, 9]},
        "a boolean index": {**good, "signers": [0, 1, True]},
        "one signature short": {**good, "signatures": good["signatures"][:2]},
        "a confirmation as signature": {**good, "signatures": [sign_confirmation(MEMBERS[0], 0, blob(4)),
                                                                *good["signatures"][1:]]},
        "an unknown field": {**good, "at": 1},
    }
    for why, payload in bad.items():
        with pytest.raises(LifecycleError):
            check_epoch(COMMITTEE, payload)
        entry = sign_entry(MEMBERS[0], 1, GENESIS, 5, EPOCH, payload)
        with pytest.raises(LogError):
            check_entry(entry, COMMITTEE)
        assert LogState(COMMITTEE).apply(entry)[0] is Outcome.REJECTED, why
    # Only members author epoch entries, operators only grants and revocations.
    outsider = sign_entry(OPERATOR, 1, GENESIS, 5, EPOCH, good)
    with pytest.raises(LogError, match="not a committee member"):
        check_entry(outsider, COMMITTEE)
    member_grant = sign_entry(MEMBERS[0], 1, GENESIS, 5, GRANT, Grant(pub(ACCOUNT), 1, 0, 2).to_wire())
    with pytest.raises(LogError, match="operator"):
        check_entry(member_grant, COMMITTEE)


def test_due_epoch_counts_from_genesis() -> None:
    assert due_epoch(COMMITTEE, 0) == 0
    assert due_epoch(COMMITTEE, 1_000_000 - 1) == 0
    assert due_epoch(COMMITTEE, 1_000_000 + 59_999) == 0
    assert due_epoch(COMMITTEE, 1_000_000 + 60_000) == 1
    assert due_epoch(COMMITTEE, 1_000_000 + 60_000 * 7 + 5) == 7


# ---------------------------------------------------------------------------- the fold


LENGTH = 10_000
ENCODED = COMMITTEE.config.encoded_blob_length(LENGTH)
OWN = own_authority(ACCOUNT)
OTHER_OWN = own_authority(OTHER)

R1 = OWN.register(blob(1), 3, True, LENGTH)  # A, deletable, ends 3
R2 = OTHER_OWN.register(blob(1), 5, False, LENGTH)  # B on the same blob, permanent, ends 5
R3 = MOUNT.register(blob(2), 4, True, LENGTH)  # volume sponsored by A, signed by its device
R4 = OWN.register(blob(3), 2, False, LENGTH)  # A, permanent, ends 2
REGISTRATIONS = [R1, R2, R3, R4]

#: Each event is (kind, argument); the fold of any subset must not depend on their order.
EVENTS: list[tuple[str, Any]] = [
    ("grant", (b"g1" * 16, Grant(pub(ACCOUNT), 40 * ENCODED, 0, 100))),
    ("grant", (b"g2" * 16, Grant(pub(ACCOUNT), 5 * ENCODED, 2, 4))),
    ("grant", (b"g3" * 16, Grant(pub(OTHER), ENCODED, 0, 3))),
    ("revoke", Revocation(pub(DEVICE), {pub(DEVICE): 3, pub(OTHER): 1})),
    ("revoke", Revocation(pub(DEVICE), {pub(DEVICE): 1, pub(STRANGER): 4})),
    ("epoch", 1), ("epoch", 3), ("epoch", 5),
    *[("registered", r) for r in REGISTRATIONS],
    ("operate", OWN.operation("extend", [R1.id], 1, 6)),  # counts: signed at 1 < 3
    ("operate", OWN.operation("extend", [R1.id], 4, 9)),  # counts only once the one above did (4 < 6)
    ("operate", OWN.operation("extend", [R4.id], 2, 10)),  # signed at 2, when R4 had ended: counts only after
    # the last one below extended R4 to 7 (signed at 1)
    ("operate", OWN.operation("extend", [R4.id], 1, 1 + MAX_EPOCHS_AHEAD + 1)),  # never: too far ahead
    ("operate", MOUNT.operation("delete", [R3.id], 2)),  # the volume's device deletes its registration
    ("operate", OTHER_OWN.operation("delete", [R2.id], 1)),  # never: R2 is permanent
    ("operate", OTHER_OWN.operation("delete", [R1.id], 1)),  # never: not the owner
    ("operate", OWN.operation("extend", [R3.id, R4.id], 1, 7)),  # R3: not the owner (the volume is); R4 counts
]


def fold(events: list[tuple[str, Any]]) -> Ledger:
    ledger = Ledger(COMMITTEE)
    for kind, arg in events:
        if kind == "grant":
            ledger.grant(*arg)
        elif kind == "revoke":
            ledger.revoke(arg)
        elif kind == "epoch":
            ledger.advance(arg)
        elif kind == "registered":
            ledger.registered(arg, LENGTH)
        else:
            ledger.operate(arg)
    return ledger


def snapshot(ledger: Ledger) -> dict[str, Any]:
    """Everything the ledger answers, in a comparable form (a head of 0 and no head mean the same)."""
    return {
        "epoch": ledger.epoch,
        "grants": {k: dict(v) for k, v in ledger.grants.items()},
        "revoked": {k: {a: s for a, s in r.heads.items() if s} for k, r in ledger.revoked.items()},
        "held": {b: {rid: (h.end_epoch, h.deleted) for rid, h in regs.items()} for b, regs in ledger.held.items()},
        "usage": ledger.usage_by_account(),
        "released": ledger.released(),
        "live": {b: (ledger.live(b), ledger.end_epoch(b)) for b in ledger.held},
        "quota": {k: ledger.quota(k) for k in (pub(ACCOUNT), pub(OTHER), pub(DEVICE))},
        "authorize": [ledger.authorize(w, ENCODED) for w in (OWN.writer, OTHER_OWN.writer, MOUNT.writer)],
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(EVENTS))), unique=True).flatmap(
    lambda chosen: st.tuples(st.just(chosen), st.permutations(chosen))))
def test_the_ledger_is_the_same_for_the_same_entries_in_any_order(case: tuple[list[int], list[int]]) -> None:
    chosen, order = case
    in_order = fold([EVENTS[k] for k in sorted(chosen)])
    shuffled = fold([EVENTS[k] for k in order])
    assert snapshot(shuffled) == snapshot(in_order)
    # Applying anything twice changes nothing.
    assert snapshot(fold([EVENTS[k] for k in order] * 2)) == snapshot(in_order)


def test_the_whole_fold_gives_what_the_rules_say() -> None:
    ledger = fold(EVENTS)
    held = {h.registration.id: h for regs in ledger.held.values() for h in regs.values()}
    assert held[R1.id].end_epoch == 9  # 3 -> 6 (signed at 1) -> 9 (signed at 4, before 6)
    assert held[R4.id].end_epoch == 10  # 2 -> 7 (signed at 1) -> 10 (signed at 2, before 7); the far one never
    assert held[R3.id].deleted and not held[R2.id].deleted and not held[R1.id].deleted
    assert ledger.epoch == 5
    assert ledger.released() == [blob(2)]  # deleted; blob 1 lives on R1 (the permanent R2 ended at 5)
    assert ledger.live(blob(1)) and ledger.end_epoch(blob(1)) == 9 and ledger.live(blob(3))


def test_an_extension_counts_only_if_signed_before_the_end_it_extends() -> None:
    reg = OWN.register(blob(7), 5, True, LENGTH)

    def end(*extensions: tuple[int, int]) -> int:
        ledger = Ledger(COMMITTEE)
        ledger.registered(reg, LENGTH)
        for at, new_end in extensions:
            ledger.operate(OWN.operation("extend", [reg.id], at, new_end))
        return ledger.registration(reg.id).end_epoch

    assert end() == 5
    assert end((4, 8)) == 8
    assert end((5, 8)) == 5  # signed at its end: too late
    assert end((6, 12)) == 5
    assert end((6, 12), (4, 8)) == end((4, 8), (6, 12)) == 12  # a chain of timely extensions
    assert end((4, 8), (8, 14)) == 8  # the second was signed at the end the first gave
    assert end((4, 3)) == 5  # an extension never shortens
    assert end((1, 1 + MAX_EPOCHS_AHEAD)) == 1 + MAX_EPOCHS_AHEAD
    assert end((1, 2 + MAX_EPOCHS_AHEAD)) == 5  # further ahead than storage can be bought


def test_operations_that_arrive_before_their_registration_apply_when_it_does() -> None:
    reg = OWN.register(blob(8), 5, True, LENGTH)
    owner_op = OWN.operation("extend", [reg.id], 2, 20)
    # Many foreign operations naming the registration first (anyone with a writer key can
    # sign one, and a member can author the entries): the owner's must still count, or
    # replicas that saw the registration first would disagree with those that did not.
    foreign = [OTHER_OWN.operation("extend", [reg.id], 2, 20 + k) for k in range(100)]
    early = Ledger(COMMITTEE)
    for op in [*foreign, owner_op]:
        early.operate(op)
    early.registered(reg, LENGTH)
    late = Ledger(COMMITTEE)
    late.registered(reg, LENGTH)
    for op in [*foreign, owner_op]:
        late.operate(op)
    assert late.registration(reg.id).end_epoch == 20
    assert early.registration(reg.id).end_epoch == 20


def test_quota_usage_and_authorize() -> None:
    ledger = Ledger(COMMITTEE)
    assert ledger.quota(pub(ACCOUNT)) == 0
    code, reason = ledger.authorize(OWN.writer)
    assert code == "not-authorized" and "no storage grant" in reason
    ledger.grant(b"\x01" * 32, Grant(pub(ACCOUNT), 3 * ENCODED, 0, 10))
    ledger.grant(b"\x02" * 32, Grant(pub(ACCOUNT), 2 * ENCODED, 1, 3))
    assert ledger.quota(pub(ACCOUNT)) == 3 * ENCODED
    assert ledger.quota(pub(ACCOUNT), 2) == 5 * ENCODED and ledger.quota(pub(ACCOUNT), 10) == 0
    assert ledger.granted_until(pub(ACCOUNT)) == 10
    assert ledger.authorize(OWN.writer, 3 * ENCODED) is None
    code, reason = ledger.authorize(OWN.writer, 3 * ENCODED + 1)
    assert code == "quota-exceeded" and f"holds 0 of its {3 * ENCODED}" in reason
    # Registrations charge their account: the volume's (signed by its device) charges the sponsor.
    for k, authority in enumerate((OWN, MOUNT)):
        ledger.registered(authority.register(blob(20 + k), 5, True, LENGTH), LENGTH)
    assert ledger.usage(pub(ACCOUNT)) == 2 * ENCODED and ledger.usage(pub(VOLUME)) == 0
    assert ledger.usage_by_account() == {pub(ACCOUNT): 2 * ENCODED}
    assert ledger.authorize(MOUNT.writer, ENCODED) is None
    assert ledger.authorize(MOUNT.writer, ENCODED + 1)[0] == "quota-exceeded"
    # Epoch 2: the second grant is in force too.
    ledger.advance(2)
    assert ledger.authorize(OWN.writer, 3 * ENCODED) is None
    # Epoch 5: the registrations ended and stop counting; the second grant ended as well.
    ledger.advance(5)
    assert ledger.usage(pub(ACCOUNT)) == 0
    assert ledger.authorize(OWN.writer, 3 * ENCODED) is None
    assert ledger.authorize(OWN.writer, 3 * ENCODED + 1)[0] == "quota-exceeded"
    ledger.advance(10)
    assert ledger.authorize(OWN.writer)[0] == "not-authorized" and ledger.granted_until(pub(ACCOUNT)) == 0
    # Someone else's grant is not this account's.
    other = Ledger(COMMITTEE)
    other.grant(b"\x03" * 32, Grant(pub(OTHER), 10 * ENCODED, 0, 10))
    assert other.authorize(OWN.writer)[0] == "not-authorized"


@pytest.mark.parametrize("revoked", ["account", "owner", "signer"])
def test_a_revoked_key_anywhere_in_a_writer_ends_its_authority(revoked: str) -> None:
    ledger = Ledger(COMMITTEE)
    ledger.grant(b"\x01" * 32, Grant(pub(ACCOUNT), 3 * ENCODED, 0, 10))
    assert ledger.authorize(MOUNT.writer) is None
    key = getattr(MOUNT.writer, revoked)
    ledger.revoke(Revocation(key, {}))
    code, reason = ledger.authorize(MOUNT.writer)
    assert code == "not-authorized" and "revoked" in reason and key.hex()[:16] in reason
    assert (ledger.quota(pub(ACCOUNT)) == 0) is (revoked == "account")


def test_released_blobs_are_those_no_live_registration_holds() -> None:
    ledger = Ledger(COMMITTEE)
    assert ledger.released() == []
    a, b = OWN.register(blob(30), 3, True, LENGTH), OTHER_OWN.register(blob(30), 6, True, LENGTH)
    permanent = OWN.register(blob(31), 4, False, LENGTH)
    ledger.registered(a, LENGTH)
    ledger.registered(b, LENGTH)
    ledger.registered(permanent, LENGTH)
    ledger.operate(OWN.operation("delete", [a.id], 0))
    assert ledger.released() == []  # b still holds blob 30
    ledger.operate(OWN.operation("delete", [permanent.id, b.id], 0))  # neither: permanent, and not A's
    assert ledger.released() == []
    ledger.operate(OTHER_OWN.operation("delete", [b.id], 0))
    assert ledger.released() == [blob(30)]
    ledger.advance(3)
    assert ledger.released() == [blob(30)] and ledger.live(blob(31))
    ledger.advance(4)
    assert ledger.released() == [blob(30), blob(31)]
    assert not ledger.live(blob(31)) and ledger.live(blob(31), 3)
    # A new registration of a released blob holds it again.
    ledger.registered(OWN.register(blob(31), 9, True, LENGTH), LENGTH)
    assert ledger.released() == [blob(30)]


# ---------------------------------------------------------------------------- certified entries


def _cert(blob_id: BlobId, object_id: bytes | None) -> Certificate:
    """A certificate of ``blob_id`` by members 0-2 whose confirmations name ``object_id`` (None: the old permanent form)."""
    return Certificate(blob_id, 0, (0, 1, 2), tuple(sign_confirmation(MEMBERS[k], 0, blob_id, object_id)
                                                    for k in range(3)), False, object_id)


def test_a_blob_certified_entry_carries_the_registration_its_certificate_binds() -> None:
    deletable = registration(blob(40), 9, deletable=True, length=1)
    permanent = registration(blob(40), 9, deletable=False, length=1)

    def entry(certificate: Certificate, reg: Registration, length: int = 1) -> Entry:
        return sign_entry(MEMBERS[0], 1, GENESIS, 5, BLOB_CERTIFIED, certificate_payload(certificate, length, reg))

    for reg in (deletable, permanent):
        check_entry(entry(certificate_for(reg, MEMBERS, range(3)), reg), COMMITTEE)
    wrong = {
        "a deletable registration, a certificate naming no registration": (_cert(blob(40), None), deletable),
        # A permanent certificate is not anyone's to claim: a member cannot log one with a
        # registration of its own making (for good, charged to whoever it likes).
        "a permanent registration, a certificate naming no registration": (_cert(blob(40), None), permanent),
        "a permanent registration, a deletable one's certificate": (certificate_for(deletable, MEMBERS, range(3)),
                                                                    permanent),
        "another registration's certificate": (_cert(blob(40), registration(blob(40), 8, True, length=1).id),
                                               deletable),
        "a registration of another blob": (certificate_for(deletable, MEMBERS, range(3)),
                                           registration(blob(41), length=1)),
    }
    for why, (certificate, reg) in wrong.items():
        with pytest.raises(LogError, match="registration|another blob"):
            check_entry(entry(certificate, reg), COMMITTEE)
    # The entry's length is what the account is charged for: it must be the signed one.
    for reg in (deletable, permanent):
        with pytest.raises(LogError, match="length differs from the one the owner registered"):
            check_entry(entry(certificate_for(reg, MEMBERS, range(3)), reg, length=2), COMMITTEE)
    payload = registered_payload(permanent, MEMBERS, range(3))
    for broken in ({k: v for k, v in payload.items() if k != "registration"},
                   {**payload, "registration": {**permanent.to_wire(), "end_epoch": 10}},
                   {**payload, "registration": {**permanent.to_wire(), "length": 2}, "length": 2},
                   {**payload, "registration": b"junk"}):
        with pytest.raises(LogError, match="blob-certified entry"):
            check_entry(sign_entry(MEMBERS[0], 1, GENESIS, 5, BLOB_CERTIFIED, broken), COMMITTEE)


# ---------------------------------------------------------------------------- the log's view


class Chains:
    """Authors' chains built by hand (members, the operator, a mount's device)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, list[Entry]] = {}

    def add(self, key: SigningKey, kind: str, payload: dict[str, Any]) -> Entry:
        chain = self.entries.setdefault(pub(key), [])
        entry = sign_entry(key, len(chain) + 1, chain[-1].id if chain else GENESIS, 1000 + len(chain), kind, payload)
        chain.append(entry)
        return entry

    def all(self) -> list[Entry]:
        return [e for chain in self.entries.values() for e in chain]


def namespace_payload(name: str, sponsored: bool = True) -> dict[str, Any]:
    payload: dict[str, Any] = {"volume": pub(VOLUME), "delegation": delegate_device(VOLUME, pub(DEVICE)),
                               "op": {"kind": "mkdir", "args": {"parent": b"\x00" * 32, "name": name,
                                                                "node": name.encode().ljust(32, b"\x00")}}}
    if sponsored:
        payload.update(account=pub(ACCOUNT), sponsorship=sponsor(ACCOUNT, pub(VOLUME)))
    return payload


def test_namespace_entries_need_a_granted_account_and_stop_counting_past_a_revocations_heads() -> None:
    log = Chains()
    writes = [log.add(DEVICE, NAMESPACE, namespace_payload(f"d{k}")) for k in range(4)]
    state = LogState(COMMITTEE)
    for entry in writes:
        check_entry(entry, COMMITTEE)
        reason = state.admission(entry)
        assert reason is not None and reason.startswith("not-authorized") and "no storage grant" in reason
    # A grant of the volume's own key does not admit entries that name a sponsoring account.
    grant_volume = log.add(OPERATOR, GRANT, Grant(pub(VOLUME), 1 << 30, 0, 10).to_wire())
    assert state.apply(grant_volume)[0] is Outcome.ACCEPTED
    assert state.admission(writes[0]) is not None
    assert state.admission(sign_entry(DEVICE, 1, GENESIS, 5, NAMESPACE, namespace_payload("x", sponsored=False))) is None
    grant = log.add(OPERATOR, GRANT, Grant(pub(ACCOUNT), 1 << 30, 0, 10).to_wire())
    assert state.apply(grant)[0] is Outcome.ACCEPTED
    for entry in writes:
        assert state.admission(entry) is None
        assert state.apply(entry)[0] is Outcome.ACCEPTED
    assert [op.args["name"] for op in state.namespace_ops(pub(VOLUME))] == ["d0", "d1", "d2", "d3"]
    # Revoking the account with the device's head at 2: entries 3 and 4 stop counting,
    # and further ones are refused; entries within the heads are still admitted.
    revoke = log.add(OPERATOR, REVOKE, Revocation(pub(ACCOUNT), {pub(DEVICE): 2}).to_wire())
    assert state.apply(revoke)[0] is Outcome.ACCEPTED
    assert [op.args["name"] for op in state.namespace_ops(pub(VOLUME))] == ["d0", "d1"]
    assert state.admission(writes[1]) is None
    later = log.add(DEVICE, NAMESPACE, namespace_payload("d4"))
    for entry in (writes[2], writes[3], later):
        reason = state.admission(entry)
        assert reason is not None and "revoked" in reason
    # The same holds whichever order a replica got the entries in.
    for order in (log.all(), list(reversed(log.all())), [*log.entries[pub(OPERATOR)], *log.entries[pub(DEVICE)]]):
        other = LogState(COMMITTEE)
        for entry in order:
            other.apply(entry)
        assert [op.args["name"] for op in other.namespace_ops(pub(VOLUME))] == ["d0", "d1"]


@pytest.mark.parametrize("revoked", ["device", "volume"])
def test_revoking_the_device_or_the_volume_cuts_the_device_off_too(revoked: str) -> None:
    log = Chains()
    log.add(OPERATOR, GRANT, Grant(pub(ACCOUNT), 1 << 30, 0, 10).to_wire())
    writes = [log.add(DEVICE, NAMESPACE, namespace_payload(f"d{k}")) for k in range(3)]
    key = pub(DEVICE) if revoked == "device" else pub(VOLUME)
    log.add(OPERATOR, REVOKE, Revocation(key, {pub(DEVICE): 1}).to_wire())
    state = LogState(COMMITTEE)
    for entry in log.all():
        state.apply(entry)
    assert [op.args["name"] for op in state.namespace_ops(pub(VOLUME))] == ["d0"]
    assert state.admission(writes[0]) is None and state.admission(writes[1]) is not None


def _member_log() -> tuple[Chains, dict[str, Any]]:
    """Members certifying blobs 50 (ends 2), 51 (ends 10), 52 (deletable, deleted later), then epoch 3."""
    log = Chains()
    log.add(OPERATOR, GRANT, Grant(pub(ACCOUNT), 1 << 40, 0, 100).to_wire())
    short, long_ = OWN.register(blob(50), 2, False, LENGTH), OWN.register(blob(51), 10, False, LENGTH)
    gone = OWN.register(blob(52), 10, True, LENGTH)
    certified = [log.add(MEMBERS[k], BLOB_CERTIFIED, registered_payload(reg, MEMBERS, range(3)))
                 for k, reg in enumerate((short, long_, gone))]
    marks = {"certified": {e.author: e.seq for e in certified}}
    deleted = log.add(MEMBERS[3], BLOB_DELETED, {"op": OWN.operation("delete", [gone.id], 0).to_wire()})
    marks["deleted"] = {**marks["certified"], pub(MEMBERS[3]): deleted.seq}
    epoch = log.add(MEMBERS[0], EPOCH, epoch_payload(3, {k: sign_epoch(MEMBERS[k], 3) for k in (0, 1, 2)}))
    marks["epoch"] = {**marks["deleted"], pub(MEMBERS[0]): epoch.seq}
    extended = log.add(MEMBERS[1], BLOB_EXTENDED, {"op": OWN.operation("extend", [long_.id], 3, 20).to_wire()})
    marks["extended"] = {**marks["epoch"], pub(MEMBERS[1]): extended.seq}
    return log, marks


def test_certified_as_of_leaves_out_blobs_released_as_of_the_heads() -> None:
    log, marks = _member_log()
    state = LogState(COMMITTEE)
    for entry in log.all():
        assert state.apply(entry, now_ms=10**13)[0] is Outcome.ACCEPTED, entry.kind
    assert state.certified_as_of(marks["certified"]) == [blob(50), blob(51), blob(52)]
    assert state.certified_as_of(marks["deleted"]) == [blob(50), blob(51)]
    assert state.certified_as_of(marks["epoch"]) == [blob(51)]  # blob 50 ended at epoch 2
    assert state.ledger_as_of(marks["epoch"]).end_epoch(blob(51)) == 10
    assert state.ledger_as_of(marks["extended"]).end_epoch(blob(51)) == 20
    assert state.ledger.epoch == 3 and state.epoch_entry is not None and state.epoch_entry.payload["epoch"] == 3
    assert state.ledger.released() == [blob(50), blob(52)]
    # The certified set itself (what healing and digests use) still names every blob.
    assert sorted(state.certified(), key=lambda b: b.raw) == [blob(50), blob(51), blob(52)]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_the_logs_ledger_is_the_same_for_any_arrival_order(rnd: Any) -> None:
    log, marks = _member_log()
    entries = log.all()
    reference = LogState(COMMITTEE)
    for entry in entries:
        reference.apply(entry)
    shuffled = entries[:]
    rnd.shuffle(shuffled)
    state = LogState(COMMITTEE)
    for entry in shuffled + shuffled[: len(shuffled) // 2]:
        state.apply(entry)
    assert snapshot(state.ledger) == snapshot(reference.ledger)
    for heads in marks.values():
        assert state.certified_as_of(heads) == reference.certified_as_of(heads)
        assert snapshot(state.ledger_as_of(heads)) == snapshot(reference.ledger_as_of(heads))
