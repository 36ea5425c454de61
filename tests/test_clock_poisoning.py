"""Time cannot be pushed (issue 15, finding 1): an outsider's far-future stamps poison nobody's clock.

Before the fix, a namespace entry for the outsider's own volume stamped 2^63 - 1 was accepted,
every peer's hybrid logical clock followed it past the 63-bit range, and from then on every
store failed, a restarted peer crashed loading its own log and mounts could not start; a
stamp one year ahead postponed healing of every new blob by a year. Here, against 4 real
peer processes, such entries are refused for now, the committee keeps working, and peers
restarted with such an entry already in their logs (accepted before the fix), and with an
own entry stamped beyond the 63-bit range, still start and work.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sqlite3
import time
from pathlib import Path

import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from tests.ledgerkit import certified_payload
from tests.mounting import MountedVolume
from tests.test_network import walrusfs
from walrusfs.client.blob import Client
from walrusfs.core.committee import parse_committee
from walrusfs.core.log import (
    BLOB_CERTIFIED,
    FOLLOW_LIMIT_MS,
    GENESIS,
    MAX_CLOCK_SKEW_MS,
    NAMESPACE,
    Entry,
    LogState,
    decode_entry,
    delegate_device,
    hlc_millis,
    sign_entry,
)
from walrusfs.core.messages import LOG_PUSH, LOG_SUBMIT
from walrusfs.core.metadata import BlobId
from walrusfs.core.namespace import ROOT
from walrusfs.devnet import peer_dir
from walrusfs.identity import load_identity

YEAR_MS = 365 * 24 * 3600 * 1000
PEERS = (0, 1, 2, 3)


def certified(vol: MountedVolume) -> dict:
    """A blob-certified payload for a random blob ID: a registration by the devnet's writer
    (members log only granted accounts' registrations) and a certificate 3 devnet peers
    signed for it with their own keys."""
    keys = [load_identity(peer_dir(vol.net.directory, i)).signing_key for i in (0, 1, 2)]
    return certified_payload(os.urandom(32), 1, keys, authority=vol.net.authority)


def outsider_entry(hlc: int) -> Entry:
    """A namespace entry for a volume the outsider just made, signed by its own device key."""
    volume, device = SigningKey(os.urandom(32)), SigningKey(os.urandom(32))
    payload = {"volume": bytes(volume.verify_key), "delegation": delegate_device(volume, bytes(device.verify_key)),
               "op": {"kind": "mkdir", "args": {"parent": ROOT, "name": "x", "node": os.urandom(32)}}}
    return sign_entry(device, 1, GENESIS, hlc, NAMESPACE, payload)


def store_and_read(vol: MountedVolume, tmp_path: Path, tag: str) -> dict:
    data = random.Random(tag).randbytes(50_000)
    source = tmp_path / f"blob-{tag}"
    source.write_bytes(data)
    stored = walrusfs("store", str(source), "--json", committee=vol.net.committee, timeout=120)
    assert stored.returncode == 0, stored.stderr
    report = json.loads(stored.stdout)
    assert len(report["loggedBy"]) >= 2  # f + 1 peers' logs hold the certificate
    out = tmp_path / f"out-{tag}"
    read = walrusfs("read", report["blobId"], "-o", str(out), committee=vol.net.committee, timeout=120)
    assert read.returncode == 0, read.stderr
    assert out.read_bytes() == data
    return report


async def logs(vol: MountedVolume) -> dict[int, list[Entry]]:
    committee = parse_committee(vol.net.committee.read_text())
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee)
        return {p: await client.log_entries(p) for p in PEERS}


def members_stamps_are_sane(entries: dict[int, list[Entry]], members: set[bytes], legacy: frozenset[bytes] = frozenset()) -> None:
    """Every member-signed stamp (but the ``legacy`` ones) is within the follow limit of now (nobody's clock was pushed)."""
    now = int(time.time() * 1000)
    for peer, held in entries.items():
        for entry in held:
            if entry.author in members and entry.id not in legacy:
                assert hlc_millis(entry.hlc) <= now + FOLLOW_LIMIT_MS, (peer, entry.author.hex()[:8], entry.hlc)


def mount_write_read(vol: MountedVolume, name: str) -> None:
    mount = vol.mount(name)
    try:
        target = mount.path / f"{name}.txt"
        target.write_bytes(name.encode() * 1000)
        mount.sync()  # certified and its namespace entry published
        assert target.read_bytes() == name.encode() * 1000
    finally:
        mount.stop()


def test_an_outsiders_far_future_stamps_poison_nobody(tmp_path: Path) -> None:
    vol = MountedVolume(tmp_path / "vol", 4)
    try:
        committee = parse_committee(vol.net.committee.read_text())
        members = {p.public_key for p in committee.peers}
        poison = outsider_entry(2**63 - 1)
        year_ahead = outsider_entry((int(time.time() * 1000) + YEAR_MS) << 16)

        async def push() -> dict[int, list]:
            async with running_host(os.urandom(32)) as host:  # a fresh key, no committee membership
                client = Client(host, committee)
                return {p: (await client._call(p, LOG_PUSH, entries=[poison.encode(), year_ahead.encode()]))[0]["results"]
                        for p in PEERS}

        for peer, results in trio.run(push).items():
            assert [r[0] for r in results] == ["rejected", "rejected"], (peer, results)
            assert all("ahead of this clock" in r[1] and "once the clock has caught up" in r[1] for r in results)

        store_and_read(vol, tmp_path, "after-push")
        mount_write_read(vol, "first")
        held = trio.run(logs, vol)
        assert all(poison.id not in {e.id for e in es} and year_ahead.id not in {e.id for e in es} for es in held.values())
        members_stamps_are_sane(held, members)

        # Before the fix, every peer accepted the poison and followed it: peer 0 then signed an
        # own entry beyond the 63-bit range (stored only by itself: nobody could decode it),
        # and after the year-ahead stamp peer 1 signed an own entry a year ahead, which every
        # peer accepted. Write those into the stopped peers' stores, restart them all, and
        # the committee must work as before.
        def own_head(peer: int) -> Entry | None:
            own = [e for e in held[peer] if e.author == committee.peers[peer].public_key]
            return max(own, key=lambda e: e.seq) if own else None

        def own_next(peer: int, hlc: int) -> Entry:
            head = own_head(peer)
            return sign_entry(load_identity(peer_dir(vol.net.directory, peer)).signing_key,
                              (head.seq if head else 0) + 1, head.id if head else GENESIS, hlc,
                              BLOB_CERTIFIED, certified(vol))

        beyond = own_next(0, 2**63)
        ahead = own_next(1, (int(time.time() * 1000) + YEAR_MS) << 16)
        vol.net.stop(*PEERS)
        for peer in PEERS:
            rows_in = [(e.id, e.author, e.seq, e.encode(), 0) for e in (poison, ahead) + ((beyond,) if peer == 0 else ())]
            db = sqlite3.connect(peer_dir(vol.net.directory, peer) / "peer.sqlite")
            with db:
                db.executemany("INSERT INTO log_entries (id, author, seq, encoded, received_ms) VALUES (?, ?, ?, ?, ?)",
                               rows_in)
            db.close()
        vol.net.start(*PEERS)

        store_and_read(vol, tmp_path, "after-restart")
        shown = walrusfs("log", "--json", committee=vol.net.committee, check=True, timeout=60)
        rows = {r["entryId"]: r for r in map(json.loads, shown.stdout.splitlines())}
        # Every honest entry is valid; the poison is shown as not (yet) valid, at a time no
        # later than now.
        assert all(r["validity"] == "valid" for i, r in rows.items() if i not in (poison.id.hex(), ahead.id.hex()))
        assert "ahead of this clock" in rows[poison.id.hex()]["validity"]
        shown_at = datetime.datetime.fromisoformat(rows[poison.id.hex()]["time"])
        assert shown_at <= datetime.datetime.now(datetime.timezone.utc)
        held = trio.run(logs, vol)
        members_stamps_are_sane(held, members, frozenset({ahead.id}))
        assert all(beyond.id not in {e.id for e in es} for es in held.values())

        # Peers 0 and 1 sign on with sane stamps from where their decodable chains end, and
        # every peer accepts what they sign.
        async def submit_and_spread() -> None:
            async with running_host(os.urandom(32)) as host:
                client = Client(host, committee)
                for peer, stale in ((0, beyond), (1, ahead)):
                    reply, _ = await client._call(peer, LOG_SUBMIT, payload=certified(vol))
                    entry = decode_entry(reply["entry"])
                    assert entry.seq >= stale.seq and hlc_millis(entry.hlc) <= int(time.time() * 1000) + FOLLOW_LIMIT_MS
                    author = committee.peers[peer].public_key.hex()
                    with trio.fail_after(30):
                        while not all(r is not None and r["heads"].get(author, [0])[0] >= entry.seq
                                      for _, r, _ in await client.log_heads()):
                            await trio.sleep(0.25)

        trio.run(submit_and_spread)
    finally:
        vol.close()


async def test_healing_waits_no_longer_than_the_settle_delay_for_a_future_stamp(tmp_path: Path) -> None:
    """A certified entry stamped ahead (up to the accepted minute, or a year if it got in) heals on time."""
    from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
    from walrusfs.peer.healing import SETTLE_DELAY, Healer
    from walrusfs.peer.store import PeerStore

    keys = [SigningKey(bytes([k + 1]) * 32) for k in range(4)]
    committee = Committee(0, tuple(
        PeerInfo(peer_id_from_public_key(bytes(k.verify_key)), bytes(k.verify_key), (f"/ip4/127.0.0.1/tcp/{4000 + i}",), (i,))
        for i, k in enumerate(keys)))

    async def nothing(*_: object) -> None:
        return None

    healer = Healer(committee, PeerStore(tmp_path), 0, LogState(committee), nothing)
    now = int(time.time() * 1000)
    for ahead in (MAX_CLOCK_SKEW_MS, YEAR_MS):
        blob = os.urandom(32)
        entry = sign_entry(keys[1], 1, GENESIS, (now + ahead) << 16, BLOB_CERTIFIED, {"blob_id": blob})
        healer.on_entry(entry)
        due = healer._due[BlobId(blob)]
        assert due - trio.current_time() <= SETTLE_DELAY
