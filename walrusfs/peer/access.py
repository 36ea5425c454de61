"""Who may store on this peer, and giving space back.

Every upload starts with a registration (see ``core.lifecycle``) in the metadata request:
signed by a writer whose account holds a grant in this peer's log, for an end epoch within
reach, with room left in the account's quota counting what it holds and what it is
uploading here now. Pairs and the confirmation are accepted only for a blob with such an
upload under way, or one the log already holds. An upload not certified within the upload
window stops counting and, unless the log holds the blob, its data is deleted.

Space is given back from the log alone: once no registration holds a blob (every one
expired or deleted), its pairs, confirmations and metadata are deleted and the bytes are
added to the peer's ``reclaimed`` counter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import trio

from ..core import messages as m
from ..core.committee import Committee
from ..core.lifecycle import BLOB_DELETED, EPOCH, MAX_EPOCHS_AHEAD, Registration
from ..core.log import Entry
from ..core.metadata import BlobId, BlobMetadata
from .replication import LogService
from .store import PeerStore

log = logging.getLogger("walrusfs.peer.access")

#: Seconds an upload may take from its metadata to its certificate in the log (env
#: WALRUSFS_UPLOAD_WINDOW: tests shorten it). Until then its bytes count against the quota
#: and its data is kept; after it, an uncertified upload is dropped.
UPLOAD_WINDOW = 3600.0
WINDOW_ENV = "WALRUSFS_UPLOAD_WINDOW"


def upload_window() -> float:
    """This process's upload window in seconds."""
    try:
        return max(1.0, float(os.environ.get(WINDOW_ENV, UPLOAD_WINDOW)))
    except ValueError:
        return UPLOAD_WINDOW


class AccessError(Exception):
    """A storage request this peer refuses: ``code`` is the error reply's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Upload:
    """An authorized upload not yet certified in this peer's log."""

    registration: Registration
    encoded: int
    deadline: float


class Access:
    """Authorizes uploads against the log's grants and quotas; deletes what nothing holds."""

    def __init__(self, committee: Committee, store: PeerStore, log_service: LogService,
                 window: float | None = None) -> None:
        self.committee = committee
        self.store = store
        self.log = log_service
        self.window = upload_window() if window is None else window
        self.uploads: dict[bytes, Upload] = {}  # registration ID -> upload
        self._wake = trio.Event()
        self.released_blobs = 0

    @property
    def ledger(self):  # noqa: ANN201 - the log's current ledger (replaced on a rebuild)
        """The ledger of this peer's log."""
        return self.log.state.ledger

    # ------------------------------------------------------------------ requests

    def _pending_bytes(self, account: bytes, now: float, besides: bytes = b"") -> int:
        return sum(u.encoded for rid, u in self.uploads.items()
                   if rid != besides and u.deadline > now and u.registration.writer.account == account)

    def admit(self, registration: Registration, blob_id: BlobId, metadata: BlobMetadata) -> None:
        """Record an authorized upload of ``blob_id``, or raise ``AccessError`` saying why not."""
        if registration.blob_id != blob_id:
            raise AccessError(m.MALFORMED, "the registration is for another blob")
        ledger = self.ledger
        if self.ledger.registration(registration.id) is not None:
            return  # certified already: a writer re-sending, nothing more to charge
        epoch = ledger.epoch
        if not epoch < registration.end_epoch <= epoch + MAX_EPOCHS_AHEAD:
            raise AccessError(m.INVALID, f"the registration ends at epoch {registration.end_epoch}; the storage "
                                         f"epoch is {epoch}, so it must end in {epoch + 1}..{epoch + MAX_EPOCHS_AHEAD}")
        now = trio.current_time()
        encoded = self.committee.config.encoded_blob_length(metadata.unencoded_length)
        refused = ledger.authorize(registration.writer,
                                   encoded + self._pending_bytes(registration.writer.account, now, registration.id))
        if refused is not None:
            raise AccessError(*refused)
        self.uploads[registration.id] = Upload(registration, encoded, now + self.window)

    def check_receiving(self, blob_id: BlobId) -> None:
        """Raise ``AccessError`` unless pairs of ``blob_id`` are expected: an upload under way, or a live blob."""
        now = trio.current_time()
        if any(u.registration.blob_id == blob_id and u.deadline > now for u in self.uploads.values()):
            return
        if self.ledger.live(blob_id):
            return
        raise AccessError(m.NOT_AUTHORIZED, f"no authorized upload of blob {blob_id} is under way here; "
                                            "send its metadata with a registration first")

    def check_confirming(self, registration: Registration) -> None:
        """Raise ``AccessError`` unless this registration's upload was admitted here (or is certified)."""
        upload = self.uploads.get(registration.id)
        if upload is not None and upload.deadline > trio.current_time():
            return
        if self.ledger.registration(registration.id) is not None:
            return
        raise AccessError(m.NOT_AUTHORIZED, "this registration's upload was not admitted here (or its window "
                                            "passed); send the metadata with it again")

    def check_serving(self, blob_id: BlobId) -> None:
        """Raise ``AccessError`` (``expired``) for a blob every registration of which has ended."""
        if self.ledger.registrations(blob_id) and not self.ledger.live(blob_id):
            if any(u.registration.blob_id == blob_id for u in self.uploads.values()):
                return  # stored again under a new registration
            raise AccessError(m.EXPIRED, f"blob {blob_id} has expired or was deleted (storage epoch "
                                         f"{self.ledger.epoch}); its slivers are gone")

    def on_entry(self, entry: Entry) -> None:
        """A log entry was accepted: a new epoch or a deletion may free space now."""
        if entry.kind in (EPOCH, BLOB_DELETED):
            self._wake.set()

    # ------------------------------------------------------------------ background

    def _sweep(self, now: float) -> list[BlobId]:
        """Forget ended uploads; the stored blobs to delete now (on the trio thread: reads state only)."""
        ledger = self.ledger
        for rid, upload in list(self.uploads.items()):
            if ledger.registration(rid) is not None or upload.deadline <= now:
                del self.uploads[rid]
        protected = {u.registration.blob_id for u in self.uploads.values()}
        return [b for b in ledger.released() if b not in protected]

    async def _orphans(self) -> list[BlobId]:
        """Stored blobs the log does not hold and no upload protects (left by uploads that never certified)."""
        stored = await trio.to_thread.run_sync(self.store.blob_ids)
        protected = {u.registration.blob_id for u in self.uploads.values()}
        ledger = self.ledger
        state = self.log.state
        return [b for b in stored if b not in protected and not ledger.registrations(b)
                and state.certified_entry(b) is None and state.invalid_entry(b) is None]

    async def run(self) -> None:
        """Delete released blobs as the log changes, and uncertified uploads after their window; runs until cancelled."""
        start = trio.current_time()
        # Blobs stored before a restart get a full window from now to be certified.
        next_orphan_check = start + self.window
        while True:
            now = trio.current_time()
            doomed = self._sweep(now)
            if now >= next_orphan_check:
                doomed += await self._orphans()
                next_orphan_check = now + max(self.window / 4, 1.0)
            stored = set(await trio.to_thread.run_sync(self.store.blob_ids)) if doomed else set()
            for blob_id in doomed:
                if blob_id not in stored:
                    continue
                freed = await trio.to_thread.run_sync(self.store.release_blob, blob_id)
                self.released_blobs += 1
                log.info("released blob %s (%d bytes): no registration holds it", blob_id, freed)
            self._wake = trio.Event()
            with trio.move_on_after(min(max(self.window / 4, 1.0), 30.0)):
                await self._wake.wait()
            await trio.sleep(0.2)  # a burst of entries is one sweep
