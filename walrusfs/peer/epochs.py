"""Advancing the storage epoch: members holding 2f + 1 shards sign once their clocks pass its start.

Storage epoch k starts at ``genesis_ms + k * epoch_ms`` (committee file). A member signs
"epoch k has begun" only when its own clock has passed that time, and an ``epoch`` entry
needs the signatures of members holding 2f + 1 shards, so at least f + 1 honest clocks
agree the time has come: one fast clock (or one lying member) cannot expire anyone's
blobs early, and f silent members cannot hold the epoch back. Every member gathers
signatures after a boundary, staggered by its index so that usually one entry is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from p2p.framing import FrameReader
from p2p.rpc import PeerUnavailable

from ..client.members import SessionPool, ask_others, call_member, member_fault
from ..core import messages as m
from ..core.certificates import SIGNATURE_SIZE
from ..core.committee import Committee
from ..core.errors import CodecError
from ..core.lifecycle import (
    EPOCH,
    MAX_EPOCH,
    LifecycleError,
    due_epoch,
    epoch_bytes,
    epoch_payload,
    sign_epoch,
)
from ..core.log import Entry, LogError
from ..core.wire import field, uint
from ..identity import Identity
from .replication import LogService

log = logging.getLogger("walrusfs.peer.epochs")

#: Longest a member waits between looks at its clock (also after a failed attempt).
POLL = 30.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class Epochs:
    """One member's part in advancing the storage epoch."""

    def __init__(self, identity: Identity, committee: Committee, index: int, log_service: LogService,
                 clock: Callable[[], int] = _now_ms) -> None:
        self.identity = identity
        #: Wall clock in ms: this member's own, and nobody else's, opinion of the time
        #: (tests give members clocks that are off).
        self.clock = clock
        self.committee = committee
        self.index = index
        self.log = log_service
        self.host: Any = None
        self.pool: SessionPool | None = None
        self._wake = trio.Event()

    def handlers(self) -> dict[str, Any]:
        """Protocol ID -> handler(request, reader)."""
        return {m.EPOCH_SIGN: self._h_sign}

    def on_entry(self, entry: Entry) -> None:
        """Log listener: an epoch entry from someone else may make our own attempt unnecessary."""
        if entry.kind == EPOCH:
            self._wake.set()

    async def _h_sign(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        await reader.body_length(0)
        epoch = uint(request, "epoch", MAX_EPOCH + 1)
        due = due_epoch(self.committee, self.clock())
        if epoch > due:
            return m.error(m.TOO_EARLY, f"storage epoch {epoch} has not begun by this member's clock "
                                        f"(it is in epoch {due})"), b""
        return m.ok(signature=sign_epoch(self.identity.signing_key, epoch)), b""

    def _stagger(self) -> float:
        """Seconds this member lets others go first after a boundary (member 0 none)."""
        return self.index * min(self.committee.epoch_ms / 1000 / 20, 2.0)

    async def advance(self, epoch: int) -> Entry | None:
        """Gather 2f + 1 shards' signatures for ``epoch`` and record it; None if the log got there first."""
        signatures = {self.index: sign_epoch(self.identity.signing_key, epoch)}
        problems: dict[int, str] = {}
        enough = trio.Event()
        message = epoch_bytes(epoch)

        async def ask(peer: int) -> None:
            from nacl.signing import VerifyKey

            try:
                reply, _ = await call_member(self.host, self.committee, peer, m.EPOCH_SIGN, pool=self.pool, epoch=epoch)
                signature = field(reply, "signature", bytes, size=SIGNATURE_SIZE)
                VerifyKey(self.committee.peers[peer].public_key).verify(message, signature)
                signatures[peer] = signature
                if self.committee.weight(signatures) >= self.committee.quorum:
                    enough.set()
            except (PeerUnavailable, CodecError) as exc:
                problems[peer] = str(exc)
            except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                problems[peer] = member_fault(peer, exc)

        if self.committee.weight(signatures) < self.committee.quorum:
            await ask_others(self.committee, self.index, ask, enough)
        if self.committee.weight(signatures) < self.committee.quorum:
            detail = "; ".join(f"peer {k}: {why}" for k, why in sorted(problems.items()))
            raise LifecycleError(f"only members holding {self.committee.weight(signatures)} shards signed epoch "
                                 f"{epoch}: {detail}")
        if self.log.state.ledger.epoch >= epoch:
            return None
        return await self.log.author(EPOCH, epoch_payload(epoch, signatures))

    async def run(self, host: Any) -> None:
        """Advance the epoch whenever our clock passes a boundary the log has not; runs until cancelled."""
        self.host = host
        self.pool = SessionPool(host, self.committee)
        while True:
            ledger_epoch = self.log.state.ledger.epoch
            due = due_epoch(self.committee, self.clock())
            if due > ledger_epoch:
                with trio.move_on_after(self._stagger()):
                    await self._wait_for_epoch(due)
                if self.log.state.ledger.epoch < due:
                    try:
                        entry = await self.advance(due)
                        if entry is not None:
                            log.info("storage epoch %d begins (entry %s)", due, entry.id.hex()[:16])
                    except (LifecycleError, LogError, OSError) as exc:
                        log.warning("storage epoch %d not recorded yet: %s", due, exc)
                        await trio.sleep(min(POLL, max(self.committee.epoch_ms / 1000 / 10, 0.5)))
                continue
            # Sleep until the next boundary by our clock, or until an epoch entry arrives.
            next_start = self.committee.genesis_ms + (max(due, ledger_epoch) + 1) * self.committee.epoch_ms
            wait = min(POLL, max(0.05, (next_start - self.clock()) / 1000))
            self._wake = trio.Event()
            with trio.move_on_after(wait):
                await self._wake.wait()

    async def _wait_for_epoch(self, epoch: int) -> None:
        while self.log.state.ledger.epoch < epoch:
            self._wake = trio.Event()
            await self._wake.wait()
