"""Log replication between real peer processes (7 on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator

import pytest
import trio

from p2p.host import running_host
from tests.ledgerkit import certified_payload
from tests.test_network import Devnet, walrusfs
from walrusfs.client.blob import Client
from walrusfs.core.committee import Committee, parse_committee
from walrusfs.core.log import (
    BLOB_CERTIFIED,
    GENESIS,
    decode_entry,
    sign_entry,
)
from walrusfs.core.messages import LOG_HEADS, LOG_PUSH, LOG_SUBMIT
from walrusfs.devnet import peer_dir
from walrusfs.identity import load_identity

WAIT = 120.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("lognet"), 7)
    yield devnet
    devnet.down()


def committee_of(net: Devnet) -> Committee:
    return parse_committee(net.committee.read_text())


def certified(net: Devnet, signers: tuple[int, ...] = (0, 1, 2, 3, 4), blob: bytes | None = None) -> dict:
    """A blob-certified payload for a random blob ID: a registration by the devnet's writer
    (members log only granted accounts' registrations) and a certificate the devnet peers
    ``signers`` signed for it with their own keys."""
    keys = {i: load_identity(peer_dir(net.directory, i)).signing_key for i in set(signers)}
    return certified_payload(blob or os.urandom(32), 1, keys, signers, authority=net.authority)


async def submit_all(client: Client, payloads: list[dict], peers: list[int], concurrency: int = 16) -> None:
    limiter = trio.Semaphore(concurrency)

    async def one(payload: dict) -> None:
        async with limiter:
            reply, _ = await client._call(random.choice(peers), LOG_SUBMIT, payload=payload)
            assert reply["ok"]

    async with trio.open_nursery() as nursery:
        for payload in payloads:
            nursery.start_soon(one, payload)


async def converged(client: Client, peers: list[int], entries: int) -> dict[int, dict]:
    """Wait until every listed peer holds exactly ``entries`` entries with one digest."""
    with trio.move_on_after(WAIT):
        while True:
            heads = {p: r for p, r, _ in await client.log_heads() if r is not None and p in peers}
            counts = {p: r["entries"] for p, r in heads.items()}
            if len(heads) == len(peers) and set(counts.values()) == {entries} and len({r["digest"] for r in heads.values()}) == 1:
                return heads
            await trio.sleep(0.25)
    pytest.fail(f"peers did not converge on {entries} entries: {counts}")


async def test_burst_of_1000_reaches_every_peer_once(net: Devnet) -> None:
    committee = committee_of(net)
    certs = [certified(net) for _ in range(1000)]
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        before = {p: r["entries"] for p, r, _ in await client.log_heads()}
        await submit_all(client, certs, list(range(7)))
        heads = await converged(client, list(range(7)), before[0] + 1000)
    assert all(r["proofs"] == 0 for r in heads.values())


async def test_stopped_peer_catches_up_and_wiped_peer_syncs_everything(net: Devnet) -> None:
    committee = committee_of(net)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        before = max(r["entries"] for _, r, _ in await client.log_heads() if r is not None)
        await trio.to_thread.run_sync(net.stop, 6)
        await submit_all(client, [certified(net) for _ in range(200)], list(range(6)))
        await trio.to_thread.run_sync(net.start, 6)
        await converged(client, list(range(7)), before + 200)
        # A peer that lost everything but its identity syncs the whole log from the others.
        await trio.to_thread.run_sync(net.stop, 5)
        await trio.to_thread.run_sync(lambda: walrusfs("devnet", "wipe", str(net.directory), "--peer", "5", check=True))
        await trio.to_thread.run_sync(net.start, 5)
        await converged(client, list(range(7)), before + 200)


def invalid_entries(net: Devnet, head: int) -> dict[str, bytes]:
    """Invalid entries signed with peer 3's key; ``head`` is its chain's length in the log."""
    key = load_identity(peer_dir(net.directory, 3)).signing_key
    good = certified(net)
    first = sign_entry(key, 1000, b"\x01" * 32, 1, BLOB_CERTIFIED, good)
    from nacl.signing import SigningKey

    return {
        "forged signature": dataclasses.replace(first, signature=bytes(64)).encode(),
        # The next position, linked to an entry that is not the author's last: a broken chain.
        # (At a taken position it would be equivocation, which is kept as proof instead.)
        "broken chain": sign_entry(key, head + 1, b"\x05" * 32, 1, BLOB_CERTIFIED, good).encode(),
        "too few signers": sign_entry(key, 1, GENESIS, 1, BLOB_CERTIFIED, certified(net, (0, 1, 2, 3))).encode(),
        "duplicate signers": sign_entry(key, 1, GENESIS, 1, BLOB_CERTIFIED,
                                        certified(net, (0, 1, 2, 3, 3))).encode(),
        "unknown author": sign_entry(SigningKey(os.urandom(32)), 1, GENESIS, 1, BLOB_CERTIFIED, good).encode(),
    }


@pytest.mark.parametrize("case", ["forged signature", "broken chain", "too few signers", "duplicate signers", "unknown author"])
async def test_invalid_entries_are_rejected_and_never_relayed(case: str, net: Devnet) -> None:
    committee = committee_of(net)
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        # Peer 3 authors one entry first, so "the next position" is past its first one.
        await client._call(3, LOG_SUBMIT, payload=certified(net))
        await converged(client, list(range(7)), (await client._call(3, LOG_HEADS))[0]["entries"])
        reply, _ = await client._call(0, LOG_HEADS)
        head = reply["heads"][committee.peers[3].public_key.hex()][0]
        raw = invalid_entries(net, head)[case]
        entry = decode_entry(raw)
        reply, _ = await client._call(0, LOG_PUSH, entries=[raw])
        outcome, reason = reply["results"][0]
        assert outcome == "rejected" and reason, (outcome, reason)
        await trio.sleep(2.5)  # two anti-entropy rounds and any pushes
        for peer in range(7):
            entries = await client.log_entries(peer)
            assert entry.id not in {e.id for e in entries}


async def test_equivocation_is_detected_everywhere_and_shown_by_walrusfs_log(net: Devnet) -> None:
    committee = committee_of(net)
    key = load_identity(peer_dir(net.directory, 4)).signing_key
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        reply, _ = await client._call(4, LOG_SUBMIT, payload=certified(net))
        first = decode_entry(reply["entry"])
        # Two different entries at peer 4's next position, signed with its key, sent to
        # two different peers: each peer alone sees nothing wrong.
        a = sign_entry(key, first.seq + 1, first.id, first.hlc + 1, BLOB_CERTIFIED, certified(net))
        b = sign_entry(key, first.seq + 1, first.id, first.hlc + 2, BLOB_CERTIFIED, certified(net))
        await converged(client, list(range(7)), (await client._call(4, LOG_HEADS))[0]["entries"])
        await client._call(1, LOG_PUSH, entries=[a.encode()])
        await client._call(2, LOG_PUSH, entries=[b.encode()])
        with trio.move_on_after(WAIT):
            while True:
                heads = [r for _, r, _ in await client.log_heads() if r is not None]
                if len(heads) == 7 and all(r["proofs"] >= 1 for r in heads) and len({r["digest"] for r in heads}) == 1:
                    break
                await trio.sleep(0.25)
        assert all(r["proofs"] >= 1 for r in heads) and len({r["digest"] for r in heads}) == 1
    shown = await trio.to_thread.run_sync(
        lambda: walrusfs("log", "--json", "--author", committee.peers[4].peer_id, committee=net.committee, check=True)
    )
    import json

    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    flagged = {row["entryId"] for row in rows if row["validity"] == "equivocation"}
    assert {a.id.hex(), b.id.hex()} <= flagged


async def test_namespace_entries_from_a_mount_device_replicate_to_every_peer(net: Devnet) -> None:
    from nacl.signing import SigningKey

    from walrusfs.core.lifecycle import sponsor
    from walrusfs.core.log import NAMESPACE, delegate_device
    from walrusfs.core.namespace import ROOT

    committee = committee_of(net)
    volume, device = SigningKey(os.urandom(32)), SigningKey(os.urandom(32))
    unsponsored = {
        "volume": bytes(volume.verify_key),
        "delegation": delegate_device(volume, bytes(device.verify_key)),
        "op": {"kind": "mkdir", "args": {"parent": ROOT, "name": "photos", "node": os.urandom(32)}},
    }
    # The volume writes on the devnet writer's grant, which sponsors it.
    account = net.authority.key
    payload = {**unsponsored, "account": bytes(account.verify_key),
               "sponsorship": sponsor(account, bytes(volume.verify_key))}
    entry = sign_entry(device, 1, GENESIS, 1 << 40, NAMESPACE, payload)
    stranger = sign_entry(SigningKey(os.urandom(32)), 1, GENESIS, 1 << 40, NAMESPACE, payload)
    other_device = SigningKey(os.urandom(32))
    ungranted = sign_entry(other_device, 1, GENESIS, 1 << 40, NAMESPACE,
                           {**unsponsored, "delegation": delegate_device(volume, bytes(other_device.verify_key))})
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=net.authority)
        reply, _ = await client._call(0, LOG_PUSH, entries=[entry.encode(), stranger.encode(), ungranted.encode()])
        assert [r[0] for r in reply["results"]] == ["accepted", "rejected", "rejected"]
        assert "not authorized" in reply["results"][1][1]
        # Without a sponsoring account the volume itself needs a grant, which it does not have.
        assert reply["results"][2][1].startswith("not-authorized") and "no storage grant" in reply["results"][2][1]
        total = (await client._call(0, LOG_HEADS))[0]["entries"]
        await converged(client, list(range(7)), total)
        for peer in (3, 6):
            assert entry.id in {e.id for e in await client.log_entries(peer)}
