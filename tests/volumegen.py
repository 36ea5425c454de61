"""Large volumes without FUSE: namespace entries signed with the pure core and pushed to the peers.

What a mount would write for a tree of small files (a ``mkdir`` per directory, a ``create``
and a ``write`` per file), signed by one delegated device on the devnet writer key's grant
and sealed under the read key for a private volume: one op per entry, or (``batch``) as a
mount signs a burst, up to that many ops per entry within the mount's ``BATCH_BYTES``. Contents are holes (a zero-filled file
needs no blob), so millions of bytes of log cost no uploads. Used by the start-up benchmark
(``benchmarks/mount.py --startup``) and the local-copy tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from p2p.host import running_host
from p2p.rpc import PeerUnavailable
from walrusfs.client.members import call_member
from walrusfs.client.writer import load_key
from walrusfs.core import wire
from walrusfs.core.committee import parse_committee
from walrusfs.core.lifecycle import sponsor
from walrusfs.core.log import (
    GENESIS,
    NAMESPACE,
    SNAPSHOT,
    Entry,
    delegate_device,
    next_hlc,
    sign_entry,
)
from walrusfs.core.messages import LOG_PUSH, entries_within, reply_budget
from walrusfs.core.namespace import ROOT
from walrusfs.core.sealing import seal_ops, seal_payload
from walrusfs.identity import read_seed_file
from walrusfs.mount.volumelog import BATCH_BYTES, entry_context

PUSH_BATCH = 250
PUSH_RETRIES = 30


class Device:
    """A delegated device of a volume signing one chain of namespace entries."""

    def __init__(self, volume_key: SigningKey, account: SigningKey, read_key: bytes | None) -> None:
        self.volume = bytes(volume_key.verify_key)
        self.read_key = read_key
        self.key = SigningKey(os.urandom(32))
        self.author = bytes(self.key.verify_key)
        self.base = {"volume": self.volume, "delegation": delegate_device(volume_key, self.author),
                     "account": bytes(account.verify_key), "sponsorship": sponsor(account, self.volume)}
        self.seq = 0
        self.prev = GENESIS
        self.hlc = 0

    def sign(self, kind: str, args: dict[str, Any]) -> Entry:
        """The next entry of the chain, carrying one op."""
        self.seq += 1
        self.hlc = next_hlc(self.hlc, int(time.time() * 1000))
        op = {"kind": kind, "args": args}
        payload = dict(self.base)
        if self.read_key is None:
            payload["op"] = op
        else:
            payload["sealed"] = seal_payload(self.read_key, self.volume, op, entry_context(self.author, self.seq))
        entry = sign_entry(self.key, self.seq, self.prev, self.hlc, NAMESPACE, payload)
        self.prev = entry.id
        return entry

    def sign_batch(self, raws: list[dict[str, Any]]) -> Entry:
        """The next entry of the chain, carrying a batch of ops (what a mount signs for a burst)."""
        self.seq += 1
        self.hlc = next_hlc(self.hlc, int(time.time() * 1000))
        payload = dict(self.base)
        if self.read_key is None:
            payload["ops"] = raws
        else:
            payload["sealed_ops"] = seal_ops(self.read_key, self.volume, raws, entry_context(self.author, self.seq))
        entry = sign_entry(self.key, self.seq, self.prev, self.hlc, NAMESPACE, payload)
        self.prev = entry.id
        return entry


def tree_ops(files: int, directories: int, prefix: str = "d") -> Iterator[tuple[str, dict[str, Any]]]:
    """The ops of ``files`` small files spread over ``directories`` directories under the root."""
    now = time.time_ns()
    dirs = []
    for d in range(directories):
        node = os.urandom(32)
        dirs.append(node)
        yield "mkdir", {"parent": ROOT, "name": f"{prefix}{d}", "node": node, "mode": 0o755, "uid": 1000,
                        "gid": 1000, "mtime_ns": now}
    for i in range(files):
        node = os.urandom(32)
        parent = dirs[i % directories] if dirs else ROOT
        yield "create", {"parent": parent, "name": f"f{i}.txt", "node": node, "mode": 0o644, "uid": 1000,
                         "gid": 1000, "mtime_ns": now}
        size = 500 + (i * 7919) % 2500
        yield "write", {"node": node, "content": {"size": size, "chunk_size": 4 << 20, "chunks": [None]},
                        "mtime_ns": now, "last_name": f"f{i}.txt", "last_parent": parent}


def volume_keys(config: Path, name: str) -> tuple[SigningKey, bytes | None]:
    """A volume's signing key and read key (None if public), from a config directory."""
    key = SigningKey(read_seed_file(config / "volumes" / f"{name}.key"))
    read_path = config / "volumes" / f"{name}.readkey"
    read_key = None if read_path.read_text().strip() == "public" else read_seed_file(read_path)
    return key, read_key


def sign_tree(config: Path, name: str, committee_path: Path, files: int, directories: int,
              prefix: str = "d", batch: int = 1) -> list[Entry]:
    """One new device's chain holding a tree of ``files`` files (see ``tree_ops``), ``batch`` ops an entry at most."""
    volume_key, read_key = volume_keys(config, name)
    device = Device(volume_key, load_key(committee_path.parent / "writer.key"), read_key)
    if batch <= 1:
        return [device.sign(kind, args) for kind, args in tree_ops(files, directories, prefix)]
    entries: list[Entry] = []
    raws: list[dict[str, Any]] = []
    size = 0
    for kind, args in tree_ops(files, directories, prefix):
        raw = {"kind": kind, "args": args}
        encoded = len(wire.encode({"v": wire.WIRE_VERSION, **raw}))
        if raws and (len(raws) >= batch or size + encoded > BATCH_BYTES):  # where a mount cuts its batch
            entries.append(device.sign_batch(raws))
            raws, size = [], 0
        raws.append(raw)
        size += encoded
    if raws:
        entries.append(device.sign_batch(raws))
    return entries


async def push(committee_path: Path, entries: Sequence[Entry]) -> None:
    """Push entries (in chain order) to every peer; raise unless every peer holds them all."""
    committee = parse_committee(committee_path.read_text())
    encoded = [e.encode() for e in entries]
    async with running_host(os.urandom(32)) as host:

        async def to_peer(peer: int) -> None:
            start = 0
            failures = 0
            while start < len(encoded):
                batch = entries_within(encoded[start : start + PUSH_BATCH], reply_budget(), PUSH_BATCH)
                try:
                    reply, _ = await call_member(host, committee, peer, LOG_PUSH, entries=batch)
                except PeerUnavailable:
                    # A peer busy checking earlier batches (a loaded machine) may drop one: again.
                    failures += 1
                    if failures > PUSH_RETRIES:
                        raise
                    await trio.sleep(min(failures, 5))
                    continue
                refused = [r for r in reply["results"] if r[0] not in ("accepted", "duplicate")]
                if refused:
                    raise AssertionError(f"peer {peer} refused pushed entries: {refused[:2]}")
                start += len(batch)

        async with trio.open_nursery() as nursery:
            for peer in range(len(committee.peers)):
                nursery.start_soon(to_peer, peer)


async def publish_snapshot(committee_path: Path, config: Path, name: str, data: bytes, ops: int,
                           key: SigningKey) -> Entry:
    """Store ``data`` as a blob (on the devnet writer's grant) and push a ``volume-snapshot`` entry by ``key`` naming it.

    What a writer of the volume can publish, honest or not: ``key`` is delegated by the
    volume key, so peers admit the entry whatever the blob holds.
    """
    from tests.ledgerkit import devnet_authority
    from walrusfs.client.blob import Client

    volume_key, _ = volume_keys(config, name)
    account = load_key(committee_path.parent / "writer.key")
    volume = bytes(volume_key.verify_key)
    committee = parse_committee(committee_path.read_text())
    async with running_host(os.urandom(32)) as host:
        client = Client(host, committee, authority=devnet_authority(committee_path.parent))
        result = await client.store(data, wait_logged=False)
    payload = {"volume": volume, "delegation": delegate_device(volume_key, bytes(key.verify_key)),
               "account": bytes(account.verify_key), "sponsorship": sponsor(account, volume),
               "blob": result.blob_id.raw, "length": len(data), "folded": ops}
    entry = sign_entry(key, 1, GENESIS, next_hlc(0, int(time.time() * 1000)), SNAPSHOT, payload)
    await push(committee_path, [entry])
    return entry


def seed_volume(config: Path, name: str, committee_path: Path, files: int, directories: int,
                prefix: str = "d", batch: int = 1) -> int:
    """Sign a tree of ``files`` files into volume ``name`` (``batch`` ops an entry at most) and push it to every peer; how many entries."""
    entries = sign_tree(config, name, committee_path, files, directories, prefix, batch)
    trio.run(push, committee_path, entries)
    return len(entries)
