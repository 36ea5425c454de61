"""The mount's log follower and publisher when every peer fails or answers junk (no network).

Issue 15, finding 6: a round in which every peer failed ended the mount with a TypeError
on its error path (a ``PeerUnavailable`` rebuilt from one argument), and malformed push
or heads replies must count as that peer's failure, never as the mount's crash.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from p2p.rpc import PeerUnavailable
from walrusfs.core.committee import Committee, PeerInfo, peer_id_from_public_key
from walrusfs.core.log import GENESIS, NAMESPACE, delegate_device, sign_entry
from walrusfs.core.messages import LOG_HEADS, LOG_PUSH
from walrusfs.core.namespace import ROOT
from walrusfs.mount import volumelog
from walrusfs.mount.volumelog import LogUnavailable, PublishError, VolumeLog
from walrusfs.mount.volumes import Volume

KEYS = [SigningKey(bytes([k + 1]) * 32) for k in range(4)]
COMMITTEE = Committee(0, tuple(
    PeerInfo(peer_id_from_public_key(bytes(k.verify_key)), bytes(k.verify_key), (f"/ip4/127.0.0.1/tcp/{4000 + i}",), (i,))
    for i, k in enumerate(KEYS)
))
VOLUME = SigningKey(b"\x61" * 32)
DEVICE = SigningKey(b"\x62" * 32)
Answer = Callable[[int, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class FakeClient:
    """Stands in for ``Client``: each call is answered by ``answer(peer, protocol, fields)``."""

    def __init__(self, answer: Answer) -> None:
        self.committee = COMMITTEE
        self.answered: set[int] = set()
        self.answer = answer

    async def _call(self, peer: int, protocol: str, body: bytes = b"", **fields: Any) -> tuple[dict[str, Any], bytes]:
        return await self.answer(peer, protocol, fields), b""

    def silent(self, peer: int) -> None:
        self.answered.discard(peer)


def follower(answer: Answer) -> VolumeLog:
    return VolumeLog(FakeClient(answer), Volume(bytes(VOLUME.verify_key), "vol", VOLUME),  # type: ignore[arg-type]
                     SimpleNamespace(device=DEVICE))  # type: ignore[arg-type]


def test_peer_unavailable_survives_copy_and_pickle() -> None:
    exc = PeerUnavailable("12D3KooWpeer", "no answer within 5 s")
    for again in (copy.copy(exc), pickle.loads(pickle.dumps(exc))):
        assert (again.peer_id, again.reason, str(again)) == (exc.peer_id, exc.reason, str(exc))


async def test_a_round_in_which_every_peer_fails_is_reported_and_the_follower_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(volumelog, "CALL_LIMIT", 0.05)
    monkeypatch.setattr(volumelog, "POLL_INTERVAL", 0.01)
    asked: list[int] = []

    async def answer(peer: int, protocol: str, fields: dict[str, Any]) -> dict[str, Any]:
        asked.append(peer)
        if peer == 0:
            raise PeerUnavailable(COMMITTEE.peers[0].peer_id, "connection refused")
        if peer == 1:
            await trio.sleep_forever()  # paused: the follower's own limit makes it unavailable
        if peer == 2:
            return {"heads": {"not hex at all": [1, bytes(32)]}, "more": False, "entries": 1}
        return {"heads": {"ab" * 32: ["one", bytes(32)]}, "more": False, "entries": 1}

    vlog = follower(answer)
    with pytest.raises(LogUnavailable):
        await vlog.sync_any()
    assert sorted(set(asked)) == [0, 1, 2, 3]
    assert vlog.sync_error is not None and vlog.sync_summary.startswith("4 of 4 peers failed")
    for peer, why in ((0, "connection refused"), (1, "no answer within"), (2, "hex"), (3, "head")):
        assert f"{peer}: " in vlog.sync_error and why in vlog.sync_error, (why, vlog.sync_error)
    assert not vlog.synced_once.is_set()
    # The follower itself keeps going round after round; nothing escapes it.
    asked.clear()
    with trio.move_on_after(0.6):
        await vlog.run()
    assert asked.count(0) >= 2, asked


async def test_malformed_push_replies_are_that_peers_failure() -> None:
    payload = {"volume": bytes(VOLUME.verify_key), "delegation": delegate_device(VOLUME, bytes(DEVICE.verify_key)),
               "op": {"kind": "mkdir", "args": {"parent": ROOT, "name": "d", "node": b"\x01" * 32}}}
    batch = [sign_entry(DEVICE, 1, GENESIS, 1 << 16, NAMESPACE, payload)]
    junk = [{"results": 5}, {"results": [[1, 2]]}, {"results": [["accepted", ""]] * 3}, {"results": [None]},
            {"results": [["accepted"]]}, {}]
    honest = {"results": [["accepted", ""]]}

    def answering(replies: dict[int, dict[str, Any]]) -> Answer:
        async def answer(peer: int, protocol: str, fields: dict[str, Any]) -> dict[str, Any]:
            assert protocol == LOG_PUSH
            return replies[peer]
        return answer

    for reply in junk:
        vlog = follower(answering(dict.fromkeys(range(4), reply)))
        with pytest.raises(PublishError, match="only 0 peers accepted"):
            await vlog._push(batch)
    # Two honest peers (f + 1 shards at n = 4) are enough, whatever the other two send.
    vlog = follower(answering({0: junk[0], 1: honest, 2: junk[1], 3: honest}))
    await vlog._push(batch)


async def test_heads_and_ranges_of_the_wrong_shape_are_that_peers_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = [
        {"heads": {5: [1, bytes(32)]}, "more": False, "entries": 1},
        {"heads": {"AB" * 32: [1, bytes(32)]}, "more": False, "entries": 1},
        {"heads": {"ab" * 32: [2**70, bytes(32)]}, "more": False, "entries": 1},
        {"heads": [1, 2], "more": False, "entries": 1},
    ]
    for reply in replies:
        async def answer(peer: int, protocol: str, fields: dict[str, Any], reply: dict[str, Any] = reply) -> dict[str, Any]:
            return reply if protocol == LOG_HEADS else {"entries": [5, "x"]}
        with pytest.raises(LogUnavailable, match="4 of 4|no peer served"):
            await follower(answer).sync_any()
    # A well-formed head whose range reply holds no byte strings: also that peer's failure.

    async def bad_range(peer: int, protocol: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"heads": {"ab" * 32: [1, bytes(32)]}, "more": False, "entries": 1} if protocol == LOG_HEADS else {"entries": [5, "x"], "counts": [2]}

    vlog = follower(bad_range)
    with pytest.raises(LogUnavailable):
        await vlog.sync_any()
    assert "must be as many byte strings" in (vlog.sync_error or "")
