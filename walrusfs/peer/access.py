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
from ..core.lifecycle import BLOB_DELETED, EPOCH, Registration
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
#: Uploads one account may have under way on one peer. Quota bounds their bytes; this bounds
#: the peer's memory for them (about 1 KiB each) against a writer uploading many tiny blobs.
MAX_UPLOADS = 10_000


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
    """Authorizes uploads against the log's grants and quotas; deletes what nothing holds.

    Every request is refused as cheaply as possible: an account with no grant (or a revoked
    key) before any signature is checked, a confirmation by registration ID alone. Uploads
    under way are indexed by account and by blob, so a request costs the same however many
    other uploads are in flight, and one account has at most ``MAX_UPLOADS`` of them here.
    """

    def __init__(self, committee: Committee, store: PeerStore, log_service: LogService,
                 window: float | None = None) -> None:
        self.committee = committee
        self.store = store
        self.log = log_service
        self.window = upload_window() if window is None else window
        self.uploads: dict[bytes, Upload] = {}  # registration ID -> upload
        self._by_account: dict[bytes, dict[bytes, Upload]] = {}
        self._by_blob: dict[BlobId, dict[bytes, Upload]] = {}
        self._wake = trio.Event()
        self.released_blobs = 0

    @property
    def ledger(self):  # noqa: ANN201 - the log's current ledger (replaced on a rebuild)
        """The ledger of this peer's log."""
        return self.log.state.ledger

    def _add(self, rid: bytes, upload: Upload) -> None:
        self._drop(rid)
        self.uploads[rid] = upload
        self._by_account.setdefault(upload.registration.writer.account, {})[rid] = upload
        self._by_blob.setdefault(upload.registration.blob_id, {})[rid] = upload

    def _drop(self, rid: bytes) -> None:
        upload = self.uploads.pop(rid, None)
        if upload is None:
            return
        for index, key in ((self._by_account, upload.registration.writer.account),
                           (self._by_blob, upload.registration.blob_id)):
            group = index.get(key)
            if group is not None:
                group.pop(rid, None)
                if not group:
                    del index[key]

    # ------------------------------------------------------------------ requests

    def _active(self, upload: Upload, now: float) -> bool:
        """Whether an upload still counts: within its window, and its registration has not ended.

        A writer whose registration went stale (the epoch moved on while it uploaded)
        registers again; the stale upload could only ever be certified dead, so it must
        not keep the blob's data, count against the quota or protect a released blob.
        """
        return upload.deadline > now and upload.registration.end_epoch > self.ledger.epoch

    def _uploading(self, blob_id: BlobId, now: float) -> bool:
        """Whether an upload of ``blob_id`` that still counts is under way here."""
        return any(self._active(u, now) for u in self._by_blob.get(blob_id, {}).values())

    def _pending_bytes(self, account: bytes, now: float, besides: bytes = b"") -> int:
        return sum(u.encoded for rid, u in self._by_account.get(account, {}).items()
                   if rid != besides and self._active(u, now))

    def precheck(self, registration: Registration) -> None:
        """Refuse, before any signature is checked, a registration whose account could not store anyway.

        Costs a few dictionary lookups: an outsider's made-up registrations are turned away
        without the two signature checks and the metadata hashing a real upload costs.
        """
        ledger = self.ledger
        if ledger.registration(registration.id) is not None or registration.id in self.uploads:
            return
        refused = ledger.barred(registration.writer)
        if refused is not None:
            raise AccessError(*refused)

    def admit(self, registration: Registration, blob_id: BlobId, metadata: BlobMetadata) -> None:
        """Record an authorized upload of ``blob_id``, or raise ``AccessError`` saying why not."""
        if registration.blob_id != blob_id:
            raise AccessError(m.MALFORMED, "the registration is for another blob")
        if registration.length != metadata.unencoded_length:
            # The metadata is verified against the blob ID, which commits to the length: the
            # registration (what the account is charged for) must say the same.
            raise AccessError(m.MALFORMED, f"the registration says {registration.length} bytes; the blob is "
                                           f"{metadata.unencoded_length}")
        ledger = self.ledger
        if ledger.registration(registration.id) is not None:
            return  # certified already: a writer re-sending, nothing more to charge
        why = ledger.end_problem(registration.end_epoch)
        if why is not None:
            raise AccessError(m.INVALID, why)
        now = trio.current_time()
        account = registration.writer.account
        mine = self._by_account.get(account, {})
        if registration.id not in mine and len(mine) >= MAX_UPLOADS:
            live = sum(1 for u in mine.values() if u.deadline > now)
            if live >= MAX_UPLOADS:
                raise AccessError(m.QUOTA_EXCEEDED, f"account {account.hex()[:16]}... has {live} uploads under way "
                                                    f"here (at most {MAX_UPLOADS}); finish or abandon some first")
        encoded = self.committee.config.encoded_blob_length(metadata.unencoded_length)
        refused = ledger.authorize(registration.writer, encoded + self._pending_bytes(account, now, registration.id))
        if refused is not None:
            raise AccessError(*refused)
        self._add(registration.id, Upload(registration, encoded, now + self.window))

    def check_receiving(self, blob_id: BlobId) -> None:
        """Raise ``AccessError`` unless pairs of ``blob_id`` are expected: an upload under way, or a live blob."""
        now = trio.current_time()
        if self._uploading(blob_id, now):
            return
        if self.ledger.live(blob_id):
            return
        raise AccessError(m.NOT_AUTHORIZED, f"no authorized upload of blob {blob_id} is under way here; "
                                            "send its metadata with a registration first")

    def check_confirming(self, registration: Registration) -> None:
        """Raise ``AccessError`` unless this registration's upload was admitted here (or is certified).

        Compared by ID (the hash of the whole signed registration), so a registration that
        passes was checked when it was admitted: no signature needs checking again.
        """
        upload = self.uploads.get(registration.id)
        if upload is not None and self._active(upload, trio.current_time()):
            return
        if self.ledger.registration(registration.id) is not None:
            return
        raise AccessError(m.NOT_AUTHORIZED, "this registration's upload was not admitted here (or its window "
                                            "passed); send the metadata with it again")

    def check_serving(self, blob_id: BlobId) -> None:
        """Raise ``AccessError`` (``expired``) for a blob every registration of which has ended."""
        if self.ledger.registrations(blob_id) and not self.ledger.live(blob_id):
            if self._uploading(blob_id, trio.current_time()):
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
            if ledger.registration(rid) is not None or not self._active(upload, now):
                self._drop(rid)
        return [b for b in ledger.released() if b not in self._by_blob]

    def _still_doomed(self, blob_id: BlobId) -> bool:
        """Whether ``blob_id`` may still be deleted: the deletions before it awaited threads, and
        meanwhile a writer may have begun storing it again or the log certified a new registration."""
        if self.ledger.live(blob_id):
            return False
        return not self._uploading(blob_id, trio.current_time())

    def _orphans(self, stored: set[BlobId]) -> list[BlobId]:
        """Stored blobs the log does not hold and no upload protects (left by uploads that never certified)."""
        ledger = self.ledger
        state = self.log.state
        return [b for b in stored if b not in self._by_blob and not ledger.registrations(b)
                and state.certified_entry(b) is None and state.invalid_entry(b) is None]

    async def run(self) -> None:
        """Delete released blobs as the log changes, and uncertified uploads after their window; runs until cancelled."""
        start = trio.current_time()
        # Blobs stored before a restart get a full window from now to be certified.
        next_orphan_check = start + self.window
        while True:
            now = trio.current_time()
            doomed = self._sweep(now)
            orphan_check = now >= next_orphan_check
            # One read of the stored blobs serves both the orphan check and the deletions.
            stored = set(await trio.to_thread.run_sync(self.store.blob_ids)) if doomed or orphan_check else set()
            if orphan_check:
                doomed += self._orphans(stored)
                next_orphan_check = now + max(self.window / 4, 1.0)
            for blob_id in doomed:
                if blob_id not in stored or not self._still_doomed(blob_id):
                    continue
                freed = await trio.to_thread.run_sync(self.store.release_blob, blob_id)
                self.released_blobs += 1
                log.info("released blob %s (%d bytes): no registration holds it", blob_id, freed)
            self._wake = trio.Event()
            with trio.move_on_after(min(max(self.window / 4, 1.0), 30.0)):
                await self._wake.wait()
            await trio.sleep(0.2)  # a burst of entries is one sweep
