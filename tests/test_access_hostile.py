"""Write access and lifetimes under attack: an outsider, a granted writer, a malicious member.

Real peer processes (n = 4) for what crosses the wire: an outsider (a fresh key, no grant)
floods put-metadata, put-pair, get-confirmation and log-submit with self-signed and forged
registrations; a granted writer races many uploads against its quota, re-uses a
registration for another blob and registers end epochs far ahead. Each is refused, cheaply
(CPU per request measured on the peer), and leaves nothing behind: no upload counted, no
disk, no log entry. The log-level attacks of a malicious member (entries it signs alone,
registrations of other owners, old deletions replayed, operations on targets nobody holds)
are checked on the pure ``LogState`` that every peer runs, and the ledger answers a
storage request in microseconds with 20,000 registrations.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from tests import ledgerkit
from tests.procstat import cpu_seconds
from tests.test_log import COMMITTEE, KEYS
from tests.test_network import Devnet
from walrusfs.client.blob import AccessDenied, Client, StoreError
from walrusfs.client.writer import load_authority, load_key, publish_operator_entry
from walrusfs.core import messages as m
from walrusfs.core.certificates import Certificate
from walrusfs.core.committee import parse_committee
from walrusfs.core.lifecycle import (
    BLOB_DELETED,
    BLOB_EXTENDED,
    EPOCH,
    GRANT,
    MAX_EPOCH,
    Grant,
    Ledger,
    Registration,
    Writer,
    epoch_payload,
    own_authority,
    sign_epoch,
)
from walrusfs.core.log import (
    BLOB_CERTIFIED,
    GENESIS,
    LogError,
    LogState,
    Outcome,
    certificate_payload,
    check_entry,
    sign_entry,
)
from walrusfs.core.metadata import BlobId
from walrusfs.core.redstuff import encode_blob
from walrusfs.devnet import peer_dir, running
from walrusfs.identity import load_identity


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("access"), 4)
    yield devnet
    devnet.down()


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


async def status(client: Client, peer: int) -> dict:
    reply, _ = await client._call(peer, m.GET_STATUS)
    return reply["storage"]


async def refused(client: Client, peer: int, protocol: str, body: bytes = b"", **fields: object) -> str:
    """The error code of a request that must be refused."""
    try:
        await client._call(peer, protocol, body, **fields)
    except m.RemoteError as exc:
        return exc.code
    raise AssertionError(f"{protocol} was accepted")


# ---------------------------------------------------------------------------- outsiders


async def test_an_outsider_flood_is_refused_cheaply_and_leaves_nothing(net: Devnet) -> None:
    committee = parse_committee(net.committee.read_text())
    pids = running(net.directory)
    granted = load_authority(net.committee)  # the devnet's writer: stores the permanent blob copied below
    async with running_host(os.urandom(32)) as host:
        honest = Client(host, committee, authority=granted)
        stored = await honest.store(os.urandom(20_000), deletable=False, epochs=3)
        epoch = await honest.storage_epoch()
        outsider = Client(host, committee)
        encoded = encode_blob(os.urandom(5000), committee.config)
        blob_id, metadata = encoded.blob_id, m.metadata_to_wire(encoded.metadata)
        pair = encoded.pairs[blob_id.pair_for_shard(committee.peers[0].shards[0], committee.n_shards)]
        junk_key = SigningKey.generate()
        forged = Writer(granted.writer.account, bytes(junk_key.verify_key), bytes(junk_key.verify_key),
                        sponsorship=os.urandom(64))  # claims the granted account, signature made up
        before_status = await status(outsider, 0)
        before_disk = disk_bytes(net.directory / "peer-0")
        before_cpu = cpu_seconds(pids[0])
        rounds = 100
        codes: dict[str, set[str]] = {}
        started = time.monotonic()
        for k in range(rounds):
            own = own_authority(SigningKey.generate()).register(blob_id, epoch + 2, k % 2 == 0, 5000)
            fake = own_authority(junk_key).register(blob_id, epoch + 2, True, 5000)
            fake = dataclasses.replace(fake, writer=forged)
            junk = {**own.to_wire(), "nonce": os.urandom(1 << 12)}
            for name, protocol, fields, body in (
                ("self-signed metadata", m.PUT_METADATA, {"registration": own.to_wire()}, b""),
                ("forged chain metadata", m.PUT_METADATA, {"registration": fake.to_wire()}, b""),
                ("junk registration", m.PUT_METADATA, {"registration": junk}, b""),
                ("pair", m.PUT_PAIR, {"pair": pair.index}, pair.primary.data + pair.secondary.data),
                ("confirmation", m.GET_CONFIRMATION, {"registration": own.to_wire()}, b""),
            ):
                extra = {"metadata": metadata} if protocol == m.PUT_METADATA else {}
                code = await refused(outsider, 0, protocol, body, blob_id=blob_id.raw, **fields, **extra)
                codes.setdefault(name, set()).add(code)
            # The writer's permanent certificate paired with the outsider's own registration
            # (to keep the blob for good, on an account of its choosing): refused.
            payload = certificate_payload(stored.certificate, 20_000, own_authority(SigningKey.generate()).register(
                stored.blob_id, MAX_EPOCH, False, 20_000))
            code = await refused(outsider, 0, m.LOG_SUBMIT, kind=BLOB_CERTIFIED, payload=payload)
            codes.setdefault("log-submit", set()).add(code)
        elapsed = time.monotonic() - started
        spent = cpu_seconds(pids[0]) - before_cpu
        # The granted writer's own second registration, decades ahead, on the same certificate:
        # refused as well.
        far = granted.register(stored.blob_id, epoch + 10_000, False, 20_000)
        far_payload = certificate_payload(stored.certificate, 20_000, far)
        try:
            await honest._call(0, m.LOG_SUBMIT, kind=BLOB_CERTIFIED, payload=far_payload)
            raise AssertionError("a registration decades ahead was logged")
        except m.RemoteError as exc:
            assert exc.code == m.INVALID and "must end in" in exc.message, exc
        after_status = await status(outsider, 0)
        after_disk = disk_bytes(net.directory / "peer-0")
        registrations, _ = await honest.registrations(stored.blob_id)
    requests = rounds * 6
    print(f"\noutsider: {requests} requests in {elapsed:.1f} s, peer 0 spent {spent:.2f} s of CPU "
          f"({spent / requests * 1000:.2f} ms a request); codes {codes}; pending uploads "
          f"{before_status['pending_uploads']} -> {after_status['pending_uploads']}; disk {before_disk} -> {after_disk}")
    assert codes["self-signed metadata"] == {m.NOT_AUTHORIZED}
    assert codes["forged chain metadata"] == {m.MALFORMED}  # a forged sponsorship: not validly signed
    assert codes["junk registration"] == {m.MALFORMED}
    assert codes["pair"] == {m.NOT_AUTHORIZED} and codes["confirmation"] == {m.NOT_AUTHORIZED}
    assert codes["log-submit"] == {m.INVALID}
    # Both refusals hold even for a malicious member that skips the checks a member makes
    # before authoring (grant, end epoch): every confirmation names the registration it was
    # given for, so every replica refuses the entry: the certificate is not for that registration.
    member = load_identity(peer_dir(net.directory, 3)).signing_key
    for attached in (payload, far_payload):
        with pytest.raises(LogError, match="not gathered for this registration"):
            check_entry(sign_entry(member, 1, GENESIS, 5, BLOB_CERTIFIED, attached), committee)
    check_entry(sign_entry(member, 1, GENESIS, 5, BLOB_CERTIFIED,
                           certificate_payload(stored.certificate, 20_000, stored.registration)), committee)
    assert after_status["pending_uploads"] == before_status["pending_uploads"]
    assert after_disk - before_disk < 256 << 10, "refused requests left data behind"
    assert [r.id for r in registrations] == [stored.registration.id], "a made-up registration was logged"
    assert spent / requests < 0.01, "refusing should cost well under 10 ms of CPU a request"
    assert running(net.directory) == pids


# ---------------------------------------------------------------------------- a granted writer


async def test_a_granted_writer_cannot_race_past_its_quota(net: Devnet) -> None:
    """Twelve stores at once on a quota of five: each peer counts uploads in flight, so few more than five certify.

    Every peer admits an upload only while what the account holds plus what it is
    uploading *to that peer* fits the quota; a certificate needs 2f + 1 shards, so at least
    one honest peer in any quorum counted it. Peers that admitted different uploads in the
    same race can still certify more than a quota between them: at most n / (2f + 1) quotas.
    """
    committee = parse_committee(net.committee.read_text())
    size = 20_000
    per_blob = committee.config.encoded_blob_length(size)
    key = SigningKey.generate()
    operator = load_key(net.directory / "operator.key")
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=own_authority(key))
        await publish_operator_entry(client, operator, net.directory / "operator.key", GRANT,
                                     Grant(bytes(key.verify_key), 5 * per_blob, 0, MAX_EPOCH).to_wire())
        with trio.fail_after(30):
            while (await status(client, 0))["grants"] < 2 or (await status(client, 3))["grants"] < 2:
                await trio.sleep(0.2)
        results: list[str] = []

        async def one(k: int) -> None:
            try:
                await client.store(os.urandom(size), epochs=2)
                results.append("certified")
            except AccessDenied as exc:
                results.append(exc.code)
            except StoreError:
                results.append("no quorum")  # admitted by some peers, refused by others

        async with trio.open_nursery() as nursery:
            for k in range(12):
                nursery.start_soon(one, k)
        # The same registration for another blob is refused.
        first = encode_blob(os.urandom(size), committee.config)
        other = encode_blob(os.urandom(size), committee.config)
        registration = client.authority.register(first.blob_id, (await client.storage_epoch()) + 2, True, size)
        code = await refused(client, 1, m.PUT_METADATA, blob_id=other.blob_id.raw,
                             metadata=m.metadata_to_wire(other.metadata),
                             registration=registration.to_wire())
        assert code == m.MALFORMED
        # A registration of the blob with another length (what the account is charged for): refused.
        short = client.authority.register(first.blob_id, (await client.storage_epoch()) + 2, True, size // 2)
        code = await refused(client, 1, m.PUT_METADATA, blob_id=first.blob_id.raw,
                             metadata=m.metadata_to_wire(first.metadata), registration=short.to_wire())
        assert code == m.MALFORMED
        far = client.authority.register(first.blob_id, (await client.storage_epoch()) + 1000, True, size)
        code = await refused(client, 1, m.PUT_METADATA, blob_id=first.blob_id.raw,
                             metadata=m.metadata_to_wire(first.metadata), registration=far.to_wire())
        assert code == m.INVALID
        reply, _ = await client._call(0, m.GET_STATUS, detail=True)
        usage = {row["account"]: row for row in reply["storage"]["accounts"]}[bytes(key.verify_key).hex()]
    print(f"\n12 concurrent stores on a quota of 5 blobs ({5 * per_blob} encoded bytes): {sorted(results)}; "
          f"peer 0 counts {usage['used']} of {usage['quota']}")
    certified = results.count("certified")
    # Each certified blob was admitted by peers holding 2f + 1 shards, each admitting at most
    # a quota's worth: at most n / (2f + 1) quotas in one race (f + 1 honest admissions
    # each with a colluding member: (n - f) / (f + 1)). Once logged, the excess is charged.
    assert 1 <= certified <= 5 * committee.n_shards // committee.quorum
    assert set(results) <= {"certified", "no quorum", m.QUOTA_EXCEEDED}
    assert usage["used"] <= certified * per_blob


# ---------------------------------------------------------------------------- a malicious member (log level)


MEMBER = KEYS[3]


def member_chain(key: SigningKey, items: list[tuple[str, dict]]) -> list:
    entries, prev = [], GENESIS
    for seq, (kind, payload) in enumerate(items, start=1):
        entry = sign_entry(key, seq, prev, 1000 + seq, kind, payload)
        entries.append(entry)
        prev = entry.id
    return entries


def certificate_for(registration: Registration) -> Certificate:
    """A certificate members 0-2 gathered for ``registration``."""
    return ledgerkit.certificate_for(registration, KEYS, (0, 1, 2))


def test_a_member_alone_cannot_advance_the_epoch_or_log_another_owners_registration() -> None:
    alone = epoch_payload(7, {3: sign_epoch(MEMBER, 7)})
    junk = {"epoch": 7, "signers": [0, 1, 3], "signatures": [os.urandom(64)] * 3}
    for payload in (alone, junk):
        entry = member_chain(MEMBER, [(EPOCH, payload)])[0]
        with pytest.raises(LogError):
            check_entry(entry, COMMITTEE)
    victim, thief = own_authority(SigningKey.generate()), own_authority(SigningKey.generate())
    blob = BlobId(os.urandom(32))
    # A certificate binds its registration, deletable or permanent: another one (or none)
    # cannot ride on it.
    for deletable in (True, False):
        theirs = victim.register(blob, 5, deletable, 100)
        mine = thief.register(blob, 50, deletable, 100)
        check_entry(member_chain(MEMBER, [(BLOB_CERTIFIED, certificate_payload(certificate_for(theirs), 100, theirs))])[0],
                    COMMITTEE)
        for registration in (mine, None):
            payload = certificate_payload(certificate_for(theirs), 100, mine)
            if registration is None:
                payload.pop("registration")
            entry = member_chain(MEMBER, [(BLOB_CERTIFIED, payload)])[0]
            with pytest.raises(LogError, match="not gathered for this registration" if registration else "registration"):
                check_entry(entry, COMMITTEE)


def test_an_old_deletion_replayed_does_not_touch_a_new_registration() -> None:
    owner = own_authority(SigningKey.generate())
    blob = BlobId(os.urandom(32))
    old, new = owner.register(blob, 5, True, 100), owner.register(blob, 9, True, 100)
    delete_old = owner.operation("delete", [old.id], 0)
    items = [(BLOB_CERTIFIED, certificate_payload(certificate_for(old), 100, old)),
             (BLOB_DELETED, {"op": delete_old.to_wire()}),
             (BLOB_CERTIFIED, certificate_payload(certificate_for(new), 100, new)),
             (BLOB_DELETED, {"op": delete_old.to_wire()})]  # the same op again, after the re-registration
    state = LogState(COMMITTEE)
    for entry in member_chain(MEMBER, items):
        assert state.apply(entry)[0] is Outcome.ACCEPTED
    ledger = state.ledger
    assert ledger.registration(old.id).deleted and not ledger.registration(new.id).deleted
    assert ledger.live(blob) and ledger.end_epoch(blob) == 9
    # Another owner's deletion of the new one does nothing either.
    stranger = own_authority(SigningKey.generate()).operation("delete", [new.id], 0)
    state.apply(member_chain(KEYS[2], [(BLOB_DELETED, {"op": stranger.to_wire()})])[0])
    assert not ledger.registration(new.id).deleted and ledger.live(blob)


def test_a_backdated_extension_revives_only_what_its_owner_signed() -> None:
    """What a member achieves by logging an extension signed with an ``at_epoch`` in the past.

    Honest members log an operation only if it was signed at their current epoch; a
    malicious one can log one signed earlier. The fold counts an extension signed before
    the end it extends, so the owner's own backdated extension revives its expired
    registration: its quota is charged again, though peers deleted the data when it
    ended. Nobody else's registration can be touched (the owner signs), and the end is at
    most 53 epochs past the signed ``at_epoch``.
    """
    owner = own_authority(SigningKey.generate())
    blob = BlobId(os.urandom(32))
    registration = owner.register(blob, 3, True, 100)
    ledger = Ledger(COMMITTEE)
    ledger.grant(b"g" * 32, Grant(owner.writer.account, 1 << 40, 0, MAX_EPOCH))
    ledger.registered(registration, 100)
    ledger.advance(5)
    assert not ledger.live(blob) and ledger.released() == [blob] and ledger.usage(owner.writer.account) == 0
    ledger.operate(owner.operation("extend", [registration.id], 2, 2 + 53))
    assert ledger.live(blob) and ledger.usage(owner.writer.account) > 0
    ledger.operate(owner.operation("extend", [registration.id], 2, 2 + 54))  # beyond 53 ahead: ignored
    assert ledger.end_epoch(blob) == 55
    print("\na backdated extension revives its owner's expired registration (charged again, data already gone)")


def test_operations_on_unknown_targets_cost_memory_in_proportion_to_the_log() -> None:
    """A member logging extensions of 512 made-up registrations each: what the ledger keeps for them."""
    import gc
    import tracemalloc

    owner = own_authority(SigningKey.generate())
    items = [(BLOB_EXTENDED, {"op": owner.operation("extend", [os.urandom(32) for _ in range(512)], 0, 10).to_wire()})
             for _ in range(100)]
    entries = member_chain(MEMBER, items)
    wire = sum(len(e.encode()) for e in entries)
    state = LogState(COMMITTEE)
    gc.collect()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        for entry in entries:
            state.apply(entry)
        elapsed = time.perf_counter() - started
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{len(entries)} entries naming 51,200 unknown targets ({wire} bytes on the wire): {held} bytes held "
          f"({held / wire:.1f}x), applied in {elapsed:.2f} s")
    assert len(state.ledger._waiting) == 51_200
    assert held < 6 * wire  # the entries themselves plus the waiting index: a small multiple of what was sent


def test_twenty_thousand_registrations_still_authorize_in_microseconds() -> None:
    account = own_authority(SigningKey.generate())
    ledger = Ledger(COMMITTEE)
    ledger.grant(b"g" * 32, Grant(account.writer.account, 1 << 50, 0, MAX_EPOCH))
    for k in range(20_000):
        registration = account.register(BlobId(os.urandom(32)), 5 + k % 40, True, 1000)
        ledger.registered(registration, 1000)
    started = time.perf_counter()
    for _ in range(1000):
        assert ledger.authorize(account.writer, 10) is None
    per_call = (time.perf_counter() - started) / 1000
    ledger.advance(20)
    started = time.perf_counter()
    released = ledger.released()
    first = time.perf_counter() - started
    started = time.perf_counter()
    assert ledger.released() == released
    again = time.perf_counter() - started
    expected = sum(COMMITTEE.config.encoded_blob_length(1000) for k in range(20_000) if 5 + k % 40 > 20)
    print(f"\n20,000 registrations: authorize {per_call * 1e6:.1f} us; released() {first * 1000:.1f} ms, "
          f"unchanged {again * 1e6:.0f} us")
    assert ledger.usage(account.writer.account) == expected
    assert len(released) == sum(1 for k in range(20_000) if 5 + k % 40 <= 20)
    assert per_call < 0.001


async def test_a_peer_with_an_old_epoch_entry_does_not_shorten_what_a_client_registers() -> None:
    """A member answering status with an old (validly signed) epoch entry: the client takes the highest of f + 1."""
    def epoch_entry(epoch: int, author: SigningKey, seq: int = 1):
        payload = epoch_payload(epoch, {k: sign_epoch(KEYS[k], epoch) for k in (0, 1, 2)})
        return member_chain(author, [(EPOCH, payload)])[0]

    old, new = epoch_entry(2, KEYS[3]), epoch_entry(9, KEYS[0])
    client = Client(None, COMMITTEE, authority=own_authority(SigningKey.generate()))
    asked: list[int] = []

    async def call(peer: int, protocol: str, body: bytes = b"", **fields: object):
        asked.append(peer)
        if peer == 3:
            return {"storage": {"epoch_entry": old.encode()}}, b""  # the liar answers at once
        await trio.sleep(0.05)
        return {"storage": {"epoch_entry": new.encode()}}, b""

    client._call = call  # type: ignore[method-assign]
    for _ in range(5):
        client._epoch = None
        assert await client.storage_epoch() == 9, asked
    registration = await client.registration(BlobId(os.urandom(32)), 5, True, 1000)
    assert registration.end_epoch == 14
