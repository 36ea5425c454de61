"""Malformed, oversized and truncated protocol messages against a real peer process.

Each abuse gets an error reply (or, for a truncated frame, a closed stream), and the peer
goes on serving: a status request on a fresh stream still answers afterwards.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from p2p.framing import FrameReader
from p2p.host import peer_info, running_host
from tests.ledgerkit import registration
from tests.procstat import cpu_seconds
from tests.test_network import Devnet
from walrusfs.core import messages as m
from walrusfs.core.committee import Committee, parse_committee
from walrusfs.core.wire import encode


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("abuse"), 4)
    yield devnet
    devnet.down()


async def exchange(committee: Committee, protocol: str, raw: bytes, close_write: bool = True) -> tuple[dict | None, bytes]:
    """Send raw bytes on a fresh stream; return the decoded reply header (None if the stream just ended)."""
    target = committee.peers[0]
    async with running_host(os.urandom(32)) as host:
        info = peer_info(target.peer_id, target.addrs)
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [protocol])
        await stream.write(raw)
        if close_write:
            await stream.close()
        reader = FrameReader(stream)
        try:
            header = await reader.read_header(m.MAX_HEADER)
        except Exception:
            return None, b""
        body = await reader.read_body(m.MAX_BODY)
        return cbor2.loads(header), body


def frame(header: bytes, body: bytes = b"", declared_body: int | None = None) -> bytes:
    size = len(body) if declared_body is None else declared_body
    return struct.pack(">I", len(header)) + header + struct.pack(">Q", size) + body


async def status_still_works(committee: Committee) -> None:
    reply, _ = await exchange(committee, m.GET_STATUS, frame(m.request()))
    assert reply is not None and reply["ok"] is True and reply["shards"] == list(committee.peers[0].shards)


BLOB = bytes(32)
CASES = {
    "not cbor": (m.GET_METADATA, frame(b"\xff\x00garbage"), "indefinite lengths and reserved encodings"),
    "not a map": (m.GET_METADATA, frame(b"\x83\x01\x02\x03"), "CBOR map"),
    "wrong version": (m.GET_METADATA, frame(encode({"v": 99, "blob_id": BLOB})), "unsupported message version"),
    "missing field": (m.GET_METADATA, frame(m.request()), "lacks field 'blob_id'"),
    "short blob id": (m.GET_METADATA, frame(m.request(blob_id=b"\x01" * 31)), "must be 32 bytes"),
    "wrong type": (m.GET_SLIVER, frame(m.request(blob_id=BLOB, axis="primary", index="0")), "must be int"),
    "bad axis": (m.GET_SLIVER, frame(m.request(blob_id=BLOB, axis="diagonal", index=0)), "'primary' or 'secondary'"),
    "index out of range": (m.GET_SLIVER, frame(m.request(blob_id=BLOB, axis="primary", index=4)), "must be in 0..3"),
    # Canonical CBOR puts the shorter key "v" first.
    "non-canonical": (m.GET_METADATA, frame(b"\xa2\x67blob_id\x58\x20" + BLOB + b"\x61\x76\x01"), "not canonically encoded"),
    "oversized header": (m.GET_METADATA, struct.pack(">I", (1 << 20) + 1) + b"x" * 100, "exceeds the limit"),
    "unexpected body": (m.GET_STATUS, frame(m.request(), b"surprise"), "exceeds the limit of 0"),
    "unknown blob": (m.GET_METADATA, frame(m.request(blob_id=BLOB)), "no metadata"),
    "bad metadata": (m.PUT_METADATA, frame(m.request(blob_id=BLOB, metadata={"encoding": 1, "length": 5, "hashes": []})), "hash pairs"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_malformed_requests_get_error_replies(case: str, net: Devnet) -> None:
    committee = parse_committee(net.committee.read_text())
    protocol, raw, reason = CASES[case]
    reply, _ = await exchange(committee, protocol, raw)
    assert reply is not None, "expected an error reply, the stream just ended"
    assert reply["ok"] is False
    assert reply["error"]["code"] in {m.MALFORMED, m.NOT_FOUND, m.NOT_ASSIGNED, m.INVALID}
    assert reason in reply["error"]["message"]
    await status_still_works(committee)


@pytest.mark.parametrize("cut", [2, 6, 20])
async def test_truncated_frames_end_the_stream_and_nothing_else(cut: int, net: Devnet) -> None:
    committee = parse_committee(net.committee.read_text())
    raw = frame(m.request(blob_id=BLOB))[:cut]
    reply, _ = await exchange(committee, m.GET_METADATA, raw)
    if reply is not None:
        assert reply["ok"] is False and "ended inside" in reply["error"]["message"]
    await status_still_works(committee)


async def test_wrong_sliver_pair_is_rejected_and_not_confirmed(net: Devnet, tmp_path: Path) -> None:
    from walrusfs.core.redstuff import encode_blob

    committee = parse_committee(net.committee.read_text())
    encoded = encode_blob(b"x" * 5000, committee.config)
    blob_id = encoded.blob_id
    shard0 = committee.peers[0].shards[0]
    pair = encoded.pairs[blob_id.pair_for_shard(shard0, committee.n_shards)]
    registered = registration(blob_id, length=5000, authority=net.authority).to_wire()
    reply, _ = await exchange(committee, m.PUT_METADATA, frame(m.request(blob_id=blob_id.raw, metadata=m.metadata_to_wire(encoded.metadata),
                                                                         registration=registered)))
    assert reply and reply["ok"]
    oversized = frame(m.request(blob_id=blob_id.raw, pair=pair.index), declared_body=1 << 40)
    reply, _ = await exchange(committee, m.PUT_PAIR, oversized)
    assert reply and reply["error"]["code"] == m.MALFORMED and "exceeds the limit" in reply["error"]["message"]
    short = frame(m.request(blob_id=blob_id.raw, pair=pair.index), pair.primary.data)
    reply, _ = await exchange(committee, m.PUT_PAIR, short)
    assert reply and "a sliver pair of this blob is" in reply["error"]["message"]
    other = encoded.pairs[(pair.index + 1) % committee.n_shards]
    body = pair.primary.data + other.secondary.data
    reply, _ = await exchange(committee, m.PUT_PAIR, frame(m.request(blob_id=blob_id.raw, pair=pair.index), body))
    assert reply and reply["error"]["code"] == m.INVALID
    wrong_shard = encoded.pairs[(pair.index + 1) % committee.n_shards]
    reply, _ = await exchange(committee, m.PUT_PAIR, frame(m.request(blob_id=blob_id.raw, pair=wrong_shard.index), b"x"))
    assert reply and reply["error"]["code"] == m.NOT_ASSIGNED
    reply, _ = await exchange(committee, m.GET_CONFIRMATION, frame(m.request(blob_id=blob_id.raw, registration=registered)))
    assert reply and reply["error"]["code"] == m.NOT_FOUND
    # The honest pair is accepted and confirmed.
    reply, _ = await exchange(committee, m.PUT_PAIR, frame(m.request(blob_id=blob_id.raw, pair=pair.index), pair.primary.data + pair.secondary.data))
    assert reply and reply["ok"]
    reply, _ = await exchange(committee, m.GET_CONFIRMATION, frame(m.request(blob_id=blob_id.raw, registration=registered)))
    assert reply and reply["ok"] and len(reply["signature"]) == 64


async def test_decoder_bombs_cost_every_peer_milliseconds_and_every_peer_restarts_clean(net: Devnet, tmp_path: Path) -> None:
    """Issue 15, finding 2: one 71-byte header of maps nested as map keys held a peer at 100% CPU."""
    import trio

    from tests.test_wire import bombs
    from walrusfs.devnet import running

    committee = parse_committee(net.committee.read_text())
    pids = running(net.directory)
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    async with running_host(os.urandom(32)) as host:
        for index, target in enumerate(committee.peers):
            info = peer_info(target.peer_id, target.addrs)
            await host.connect(info)
            for name, header in bombs().items():
                stream = await host.new_stream(info.peer_id, [m.GET_METADATA])
                await stream.write(frame(header))
                await stream.close()
                with trio.fail_after(10):  # milliseconds in practice; 10 s only detects a hang
                    raw = await FrameReader(stream).read_header(m.MAX_HEADER)
                reply = cbor2.loads(raw)
                assert reply["ok"] is False and reply["error"]["code"] == m.MALFORMED, (index, name, reply)
    spent = {k: cpu_seconds(pid) - before[k] for k, pid in pids.items()}
    print(f"\nCPU seconds each peer spent on {len(bombs())} bombs (and its own background work): {spent}")
    assert max(spent.values()) < 5, spent
    assert running(net.directory) == pids, "a peer died"
    # Every peer restarts and the network stores and reads as before.
    net.stop(*range(len(committee.peers)))
    net.start(*range(len(committee.peers)))
    source = tmp_path / "after"
    source.write_bytes(os.urandom(100_000))
    stored = net.store_ok(source)
    out = tmp_path / "out"
    assert net.read(stored["blobId"], out).returncode == 0 and out.read_bytes() == source.read_bytes()
