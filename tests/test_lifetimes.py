"""Blob lifetimes end to end (issue 16): storage epochs, expiry, extend, delete, space given back.

Real peer processes on 127.0.0.1 with storage epochs of a few seconds (``devnet up
--epoch-seconds``), driven through the command line; faults are a SIGSTOPped peer, a slow
peer and a hostile member. The epoch advance itself is also checked in-process with members
whose clocks are off, since no real clock can be set per process here.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from tests.conftest import blob_bytes
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client
from walrusfs.client.writer import load_key, publish_operator_entry
from walrusfs.core import messages as m
from walrusfs.core.committee import (
    Committee,
    PeerInfo,
    parse_committee,
    peer_id_from_public_key,
)
from walrusfs.core.lifecycle import (
    EPOCH,
    GRANT,
    MAX_EPOCH,
    Grant,
    LifecycleError,
    check_epoch,
    due_epoch,
    epoch_payload,
    sign_epoch,
)
from walrusfs.core.metadata import BlobId
from walrusfs.devnet import OPERATOR_FILE
from walrusfs.identity import Identity
from walrusfs.peer import epochs as epochs_module
from walrusfs.peer.epochs import Epochs

EPOCH_SECONDS = 4


# ---------------------------------------------------------------------------- helpers


def committee_of(net: Devnet) -> Committee:
    return parse_committee(net.committee.read_text())


def pid_of(net: Devnet, index: int) -> int:
    return int(json.loads((net.directory / "devnet.json").read_text())[str(index)]["pid"])


def due_now(net: Devnet) -> int:
    """The storage epoch by this machine's clock (the peers share it)."""
    return due_epoch(committee_of(net), int(time.time() * 1000))


def peer_status(net: Devnet, limit: float = 5.0) -> list[dict[str, Any] | None]:
    """Each peer's status reply (None: it did not answer within ``limit`` s)."""
    committee = committee_of(net)

    async def main() -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = [None] * len(committee.peers)
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee)

            async def ask(k: int) -> None:
                with trio.move_on_after(limit):
                    try:
                        out[k] = (await client._call(k, m.GET_STATUS))[0]
                    except Exception:  # noqa: BLE001 - a hostile member's junk (even unparseable): no usable reply
                        pass

            async with trio.open_nursery() as nursery:
                for k in range(len(committee.peers)):
                    nursery.start_soon(ask, k)
        return out

    return trio.run(main)


def storage(status: dict[str, Any] | None) -> tuple[int, int, int]:
    """(storage epoch, stored bytes, reclaimed bytes) from a status reply ((-1, -1, -1): no usable reply)."""
    if status is None or not isinstance(status.get("storage"), dict):
        return -1, -1, -1
    try:
        return status["storage"]["epoch"], status["stored_bytes"], status["storage"]["reclaimed_bytes"]
    except KeyError:  # a hostile member's tampered reply (every peer is asked, the chosen ones read)
        return -1, -1, -1


def wait_epoch(net: Devnet, epoch: int, peers: tuple[int, ...] | None = None, limit: float = 40.0) -> list[tuple[int, int, int]]:
    """Wait (bounded) until ``peers`` (default all) are at storage epoch ``epoch`` or later; their storage triples."""
    deadline = time.monotonic() + limit
    while True:
        rows = [storage(s) for s in peer_status(net)]
        chosen = range(len(rows)) if peers is None else peers
        if all(rows[k][0] >= epoch for k in chosen):
            return rows
        assert time.monotonic() < deadline, f"peers did not reach storage epoch {epoch} in {limit} s: {rows}"
        time.sleep(0.5)


def wait_boundary(net: Devnet, margin: float = 0.3) -> None:
    """Sleep until just after the next storage-epoch boundary, so a step has a whole epoch before the next one."""
    committee = committee_of(net)
    into = (time.time() * 1000 - committee.genesis_ms) % committee.epoch_ms / 1000
    if into > margin:
        time.sleep(committee.epoch_ms / 1000 - into + 0.05)


def store(net: Devnet, path: Path, *args: str) -> dict[str, Any]:
    result = walrusfs("store", str(path), "--json", *args, committee=net.committee, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def blob_status(net: Devnet, blob: str) -> dict[str, Any]:
    return json.loads(walrusfs("blob-status", blob, "--json", committee=net.committee, check=True, timeout=120).stdout)


def read_back(net: Devnet, blob: str, out: Path) -> Any:
    return walrusfs("read", blob, "-o", str(out), committee=net.committee, timeout=120)


def wait_released(net: Devnet, blob: str, peers: tuple[int, ...], limit: float = 30.0) -> dict[str, Any]:
    """Wait (bounded) until ``peers`` hold no pair and no metadata of ``blob``; the last blob-status."""
    deadline = time.monotonic() + limit
    while True:
        status = blob_status(net, blob)
        holding = [k for k in peers if status["peers"][k].get("pairs") or status["peers"][k].get("metadata")]
        if not holding:
            return status
        assert time.monotonic() < deadline, f"peers {holding} still hold blob {blob} after {limit} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("lifetimes"), 4, None, "--epoch-seconds", str(EPOCH_SECONDS))
    yield devnet
    devnet.down()


# ---------------------------------------------------------------------------- lifetimes on real peers


def test_blob_stored_for_two_epochs_is_served_until_its_end_and_gone_after(net: Devnet, tmp_path: Path) -> None:
    data = blob_bytes(1, 1 << 20)
    source = tmp_path / "two-epochs"
    source.write_bytes(data)
    before = [storage(s) for s in peer_status(net)]
    wait_boundary(net)
    report = store(net, source, "--epochs", "2")
    end = report["endEpoch"]
    assert report["deletable"] is True

    # Served before its end epoch: read in-process at once (a new process costs seconds here).
    async def read_now() -> tuple[bytes, int]:
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee_of(net))
            got = await client.read(BlobId.parse(report["blobId"]))
            return got, await client.storage_epoch(fresh=True)

    got, epoch_at_read = trio.run(read_now)
    print(f"stored at storage epoch {end - 2}, ends at {end}; read back {len(got)} bytes at epoch {epoch_at_read}")
    assert got == data and epoch_at_read < end

    rows = wait_epoch(net, end)
    status = wait_released(net, report["blobId"], (0, 1, 2, 3))
    assert status["state"] == "expired" and status["registrations"][0]["state"] == "expired"
    result = read_back(net, report["blobId"], tmp_path / "out")
    print(f"read at epoch {rows[0][0]}: exit {result.returncode}: {result.stderr.strip()[-160:]}")
    assert result.returncode == 4 and "expired or was deleted" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    after = [storage(s) for s in peer_status(net)]
    share = committee_of(net).config.encoded_blob_length(len(data)) // 4
    for k, (b, a) in enumerate(zip(before, after)):
        print(f"peer {k}: reclaimed {b[2]} -> {a[2]} bytes (+{a[2] - b[2]}; encoded share about {share})")
        assert a[2] - b[2] >= share // 2


def test_extend_keeps_a_blob_past_its_original_end(net: Devnet, tmp_path: Path) -> None:
    data = blob_bytes(2, 300_000)
    source = tmp_path / "extended"
    source.write_bytes(data)
    wait_boundary(net)
    report = store(net, source, "--epochs", "3")
    original = report["endEpoch"]
    extended = walrusfs("extend", report["blobId"], "--epochs", "8", "--json", committee=net.committee, timeout=120)
    assert extended.returncode == 0, extended.stderr
    result = json.loads(extended.stdout)
    print(f"stored until epoch {original}; extended at epoch {result['storageEpoch']} to {result['endEpoch']}")
    assert result["extended"] == [report["registrationId"]] and result["endEpoch"] > original + 1

    wait_epoch(net, original + 1)
    out = tmp_path / "out"
    read = read_back(net, report["blobId"], out)
    assert read.returncode == 0, read.stderr
    assert out.read_bytes() == data
    status = blob_status(net, report["blobId"])
    assert status["state"] == "live" and status["endEpoch"] == result["endEpoch"]
    assert status["registrations"][0]["registeredEndEpoch"] == original
    text = walrusfs("blob-status", report["blobId"], committee=net.committee, check=True, timeout=120).stdout
    assert f"extended from {original}" in text
    # Extending to an earlier end changes nothing, and says so.
    again = walrusfs("extend", report["blobId"], "--epochs", "1", committee=net.committee, timeout=120)
    assert again.returncode == 0 and "nothing to extend" in again.stdout, again.stdout + again.stderr


def test_permanent_blob_cannot_be_deleted_early_but_goes_at_its_end(net: Devnet, tmp_path: Path) -> None:
    data = blob_bytes(3, 200_000)
    source = tmp_path / "permanent"
    source.write_bytes(data)
    wait_boundary(net)  # three whole epochs for the refused delete and the read (one started late left two)
    report = store(net, source, "--epochs", "3", "--permanent")
    end = report["endEpoch"]
    assert report["deletable"] is False
    refused = walrusfs("delete", report["blobId"], "--yes", committee=net.committee, timeout=120)
    print(f"delete of a permanent blob: exit {refused.returncode}: {refused.stderr.strip()}")
    assert refused.returncode == 1 and f"permanent: it cannot be deleted before epoch {end}" in refused.stderr
    out = tmp_path / "out"
    read = read_back(net, report["blobId"], out)
    assert read.returncode == 0 and out.read_bytes() == data, read.stderr
    wait_epoch(net, end)
    wait_released(net, report["blobId"], (0, 1, 2, 3))
    gone = read_back(net, report["blobId"], tmp_path / "gone")
    assert gone.returncode == 4 and "expired" in gone.stderr, gone.stderr


def test_deleting_a_deletable_blob_lowers_every_peers_stored_bytes(net: Devnet, tmp_path: Path) -> None:
    data = blob_bytes(4, 4 << 20)
    source = tmp_path / "deletable"
    source.write_bytes(data)
    report = store(net, source, "--epochs", "30")
    before = [storage(s) for s in peer_status(net)]
    asked = walrusfs("delete", report["blobId"], committee=net.committee, timeout=120)
    assert asked.returncode == 2 and "--yes" in asked.stderr  # no terminal, no confirmation: nothing deleted
    deleted = walrusfs("delete", report["blobId"], "--yes", "--json", committee=net.committee, timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    result = json.loads(deleted.stdout)
    assert result["released"] is True and result["deleted"] == [report["registrationId"]]
    wait_released(net, report["blobId"], (0, 1, 2, 3))
    after = [storage(s) for s in peer_status(net)]
    share = committee_of(net).config.encoded_blob_length(len(data)) // 4
    for k, (b, a) in enumerate(zip(before, after)):
        print(f"peer {k}: stored {b[1]} -> {a[1]} bytes (-{b[1] - a[1]}), reclaimed +{a[2] - b[2]}, "
              f"encoded share about {share}")
        assert b[1] - a[1] >= share // 2 and a[2] - b[2] >= share // 2
    status = blob_status(net, report["blobId"])
    assert status["state"] == "deleted"
    gone = read_back(net, report["blobId"], tmp_path / "out")
    assert gone.returncode == 4 and "deleted" in gone.stderr, gone.stderr
    again = walrusfs("delete", report["blobId"], "--yes", committee=net.committee, timeout=120)
    assert again.returncode == 4 and "no live registration" in again.stderr


def grant_writer(net: Devnet, key_path: Path) -> SigningKey:
    """A second writer key with a grant from the devnet's operator."""
    key = load_key(key_path, create=True)
    operator_path = net.directory / OPERATOR_FILE
    grant = Grant(bytes(key.verify_key), 1 << 34, 0, MAX_EPOCH)

    async def main() -> None:
        async with running_host(os.urandom(32)) as host:
            await publish_operator_entry(Client(host, committee_of(net)), load_key(operator_path), operator_path,
                                         GRANT, grant.to_wire())

    trio.run(main)
    return key


def test_two_writers_hold_one_blob_until_both_let_go(net: Devnet, tmp_path: Path) -> None:
    second = tmp_path / "second.key"
    grant_writer(net, second)
    data = blob_bytes(5, 2 << 20)
    source = tmp_path / "shared"
    source.write_bytes(data)
    first = store(net, source, "--epochs", "30")
    time.sleep(1.0)  # the grant reaches every peer (it is pushed to all; f + 1 acknowledged)
    other = store(net, source, "--epochs", "30", "--writer-key", str(second))
    assert first["blobId"] == other["blobId"] and first["owner"] != other["owner"]
    blob = first["blobId"]
    status = blob_status(net, blob)
    assert status["state"] == "live" and sorted(status["owners"]) == sorted([first["owner"], other["owner"]])
    before = [storage(s) for s in peer_status(net)]

    mine = walrusfs("delete", blob, "--yes", committee=net.committee, timeout=120)
    assert mine.returncode == 0, mine.stderr
    print(mine.stdout.strip())
    assert "still held by 1 other registration" in mine.stdout
    time.sleep(EPOCH_SECONDS)  # peers sweep on the deletion entry; give them the chance to get it wrong
    kept = [storage(s) for s in peer_status(net)]
    out = tmp_path / "out"
    read = read_back(net, blob, out)
    assert read.returncode == 0 and out.read_bytes() == data, read.stderr
    for k, (b, a) in enumerate(zip(before, kept)):
        print(f"peer {k}: stored {b[1]} -> {a[1]} bytes after the first owner's delete")
        assert a[1] >= b[1]

    theirs = walrusfs("delete", blob, "--yes", "--json", "--writer-key", str(second), committee=net.committee,
                      timeout=120)
    assert theirs.returncode == 0, theirs.stderr
    assert json.loads(theirs.stdout)["released"] is True
    wait_released(net, blob, (0, 1, 2, 3))
    after = [storage(s) for s in peer_status(net)]
    for k, (b, a) in enumerate(zip(kept, after)):
        print(f"peer {k}: stored {b[1]} -> {a[1]} bytes after the second owner's delete")
        assert a[1] < b[1]


# ---------------------------------------------------------------------------- the epoch advances under faults


def advance_for(net: Devnet, epochs: int, honest: tuple[int, ...]) -> tuple[int, int, float]:
    """Watch ``honest`` peers for ``epochs`` epochs; (epochs they advanced, epochs the clock advanced, seconds)."""
    start_rows = wait_epoch(net, due_now(net) - 1, honest)
    start = min(start_rows[k][0] for k in honest)
    began, due_start = time.monotonic(), due_now(net)
    time.sleep(epochs * committee_of(net).epoch_ms / 1000)
    rows = wait_epoch(net, due_now(net) - 1, honest, limit=3 * committee_of(net).epoch_ms / 1000)
    return min(rows[k][0] for k in honest) - start, due_now(net) - due_start, time.monotonic() - began


def test_epochs_advance_and_expire_with_a_stalled_peer(net: Devnet, tmp_path: Path) -> None:
    source = tmp_path / "short"
    source.write_bytes(blob_bytes(6, 500_000))
    pid = pid_of(net, 3)
    os.kill(pid, signal.SIGSTOP)
    try:
        report = store(net, source, "--epochs", "1")
        advanced, clock, seconds = advance_for(net, 4, (0, 1, 2))
        print(f"peer 3 stopped: peers 0-2 advanced {advanced} epochs while the clock passed {clock} in {seconds:.1f} s")
        assert advanced >= clock - 1 and advanced >= 3
        status = wait_released(net, report["blobId"], (0, 1, 2))
        assert not status["peers"][3]["reachable"]
    finally:
        os.kill(pid, signal.SIGCONT)
    # The stalled peer catches up: it learns the epochs from the log and drops the expired blob.
    rows = wait_epoch(net, due_now(net) - 1, limit=60)
    wait_released(net, report["blobId"], (0, 1, 2, 3), limit=60)
    print(f"peer 3 resumed: at storage epoch {rows[3][0]} (clock {due_now(net)}), expired blob dropped")


@pytest.mark.parametrize("mode", ["hostile", "slow"])
def test_epochs_advance_with_a_faulty_member(mode: str, tmp_path: Path) -> None:
    faulty = Devnet(tmp_path / "net", 4, {3: mode}, "--epoch-seconds", "2")
    try:
        source = tmp_path / "short"
        source.write_bytes(blob_bytes(7, 300_000))
        report = store(faulty, source, "--epochs", "2")
        advanced, clock, seconds = advance_for(faulty, 5, (0, 1, 2))
        print(f"peer 3 {mode}: peers 0-2 advanced {advanced} epochs while the clock passed {clock} in {seconds:.1f} s")
        assert advanced >= clock - 1 and advanced >= 4
        wait_epoch(faulty, report["endEpoch"], (0, 1, 2))
        wait_released(faulty, report["blobId"], (0, 1, 2))
        gone = read_back(faulty, report["blobId"], tmp_path / "out")
        assert gone.returncode == 4 and "expired" in gone.stderr, gone.stderr
        statuses = peer_status(faulty)
        assert all(s is not None for s in statuses[:3])  # the honest ones still answer
    finally:
        faulty.down()


def test_real_peers_refuse_to_sign_an_epoch_their_clocks_have_not_reached(net: Devnet) -> None:
    committee = committee_of(net)
    begun = due_now(net)
    future = begun + 1000

    async def main() -> tuple[list[str], list[bytes]]:
        refusals, signatures = [], []
        async with running_host(os.urandom(32)) as host:
            client = Client(host, committee)
            for k in range(len(committee.peers)):
                try:
                    await client._call(k, m.EPOCH_SIGN, epoch=future)
                    refusals.append("signed")
                except m.RemoteError as exc:
                    refusals.append(exc.code)
                signatures.append((await client._call(k, m.EPOCH_SIGN, epoch=begun))[0]["signature"])
        return refusals, signatures

    refusals, signatures = trio.run(main)
    assert refusals == [m.TOO_EARLY] * 4
    # The epoch that has begun is signed by everyone, and those signatures make a valid entry.
    assert check_epoch(committee, epoch_payload(begun, dict(enumerate(signatures)))) == begun


# ---------------------------------------------------------------------------- members with clocks that are off


class _Reader:
    async def body_length(self, limit: int) -> int:
        return 0


class _Log:
    """What ``Epochs`` needs of a log service: the ledger's epoch, and authoring (recorded here)."""

    def __init__(self) -> None:
        self.state = type("State", (), {})()
        self.state.ledger = type("Ledger", (), {"epoch": 0})()
        self.authored: list[tuple[str, dict[str, Any]]] = []

    async def author(self, kind: str, payload: dict[str, Any]) -> Any:
        self.authored.append((kind, payload))
        self.state.ledger.epoch = payload["epoch"]
        return type("Entry", (), {"id": bytes(32)})()


def _members(offsets_ms: list[int], hostile: frozenset[int] = frozenset()) -> tuple[Committee, list[Epochs]]:
    """In-process members whose clocks are off by ``offsets_ms``; ``hostile`` ones answer epoch-sign with junk."""
    identities = [Identity(bytes([k + 1]) * 32) for k in range(len(offsets_ms))]
    now = int(time.time() * 1000)
    committee = Committee(0, tuple(PeerInfo(peer_id_from_public_key(i.public_key), i.public_key,
                                            ("/ip4/127.0.0.1/tcp/1",), (k,)) for k, i in enumerate(identities)),
                          (), 60_000, now - 10 * 60_000)  # epoch 10 has begun a moment ago
    members = [Epochs(i, committee, k, _Log(), clock=lambda off=off: int(time.time() * 1000) + off)
               for k, (i, off) in enumerate(zip(identities, offsets_ms))]
    return committee, members


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Route ``call_member`` between in-process members (junk from the hostile ones)."""
    table: dict[str, Any] = {}

    async def call_member(host: Any, committee: Committee, peer: int, protocol: str, body: bytes = b"", *,
                          pool: Any = None, **fields: Any) -> tuple[dict[str, Any], bytes]:
        assert protocol == m.EPOCH_SIGN
        if peer in table["hostile"]:
            return {"v": 1, "ok": True, "signature": os.urandom(64)}, b""
        header, _ = await table["members"][peer]._h_sign(dict(fields), _Reader())
        return m.parse_response(header), b""

    monkeypatch.setattr(epochs_module, "call_member", call_member)
    return table


def test_a_member_whose_clock_is_far_ahead_cannot_advance_the_epoch_alone(wired: Any) -> None:
    day = 24 * 3600 * 1000
    committee, members = _members([day, 0, 0, 0])
    wired.update(members=members, hostile=frozenset())
    fast = members[0]
    ahead = due_epoch(committee, fast.clock())
    assert ahead >= due_epoch(committee, members[1].clock()) + 1000
    with pytest.raises(LifecycleError, match="only members holding 1 shards signed"):
        trio.run(fast.advance, ahead)
    assert fast.log.authored == []
    # f members with fast clocks (here also one liar) are still short of 2f + 1.
    header, _ = trio.run(members[1]._h_sign, {"epoch": ahead}, _Reader())
    with pytest.raises(m.RemoteError, match="too-early"):
        m.parse_response(header)
    forged = epoch_payload(ahead, {0: sign_epoch(fast.identity.signing_key, ahead),
                                   1: sign_epoch(SigningKey(os.urandom(32)), ahead)})
    with pytest.raises(LifecycleError):
        check_epoch(committee, forged)
    # The epoch that has begun by the others' clocks advances as usual, asked by anyone.
    honest = members[1]
    entry = trio.run(honest.advance, due_epoch(committee, honest.clock()))
    assert entry is not None
    kind, payload = honest.log.authored[0]
    assert kind == EPOCH and check_epoch(committee, payload) == 10


def test_epoch_advances_with_a_hostile_member_and_a_slow_clock(wired: Any) -> None:
    # Member 3 lies (junk signatures); member 2's clock is a minute behind, so it refuses:
    # with 4 members only 2 honest signatures are left (quorum 3): the advance must fail,
    # and succeed once member 2's clock catches up.
    committee, members = _members([0, 0, -60_000, 0])
    wired.update(members=members, hostile=frozenset({3}))
    with pytest.raises(LifecycleError, match="peer 3"):
        trio.run(members[0].advance, 10)
    members[2].clock = members[0].clock
    assert trio.run(members[0].advance, 10) is not None
    assert check_epoch(committee, members[0].log.authored[0][1]) == 10


# ---------------------------------------------------------------------------- a stale upload holds nothing


def test_an_upload_whose_registration_ended_stops_counting() -> None:
    """A writer re-registers when the epoch moves on mid-upload; the stale upload must not keep the blob."""
    from walrusfs.core.lifecycle import Ledger, register, writer_for
    from walrusfs.core.redstuff import compute_metadata
    from walrusfs.peer.access import Access, AccessError

    committee, _ = _members([0, 0, 0, 0])
    ledger = Ledger(committee)
    key = SigningKey(os.urandom(32))
    ledger.grant(bytes(32), Grant(bytes(key.verify_key), 1 << 30, 0, MAX_EPOCH))
    log = type("Log", (), {})()
    log.state = type("State", (), {"ledger": ledger})()
    access = Access(committee, None, log, window=3600)  # type: ignore[arg-type]
    metadata = compute_metadata(b"x" * 10_000, committee.config)
    blob_id = metadata.blob_id()
    stale = register(key, writer_for(key), blob_id, 1, True, length=10_000)

    async def main() -> None:
        access.admit(stale, blob_id, metadata)
        access.check_receiving(blob_id)  # under way
        assert access._pending_bytes(bytes(key.verify_key), trio.current_time()) > 0
        ledger.advance(1)  # the registration's end: it can never be certified live now
        with pytest.raises(AccessError):
            access.check_receiving(blob_id)
        with pytest.raises(AccessError):
            access.check_confirming(stale)
        assert access._pending_bytes(bytes(key.verify_key), trio.current_time()) == 0
        assert access._sweep(trio.current_time()) == [] and access.uploads == {}

    trio.run(main)
