"""Inconsistently encoded blobs: from an inconsistency proof to a blob-invalid log entry.

Whoever finds a proof (a healing peer, or a reader whose decoded blob failed its
consistency check) hands it to a peer. That peer checks it, signs its own attestation,
asks the others to check it and sign theirs (``ATTEST_INVALID``), and once peers holding
f + 1 shards attested (so at least one honest peer checked the proof) it records the
invalid-blob certificate in the log. Every peer that applies the entry deletes the blob's
slivers and from then on answers "blob-invalid" for it, so every reader gets the same
outcome. A proof that does not verify (for example symbols of a consistent blob) is
refused with the reason and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2p.framing import FrameReader
from p2p.host import IHost
from p2p.rpc import PeerUnavailable

from ..client.members import ask_others, call_member, member_fault
from ..core import messages as m
from ..core.certificates import (
    assemble_certificate,
    sign_invalid_blob,
    verify_invalid_blob,
)
from ..core.committee import Committee
from ..core.errors import CodecError, InvalidProof, VerificationError
from ..core.log import BLOB_INVALID, Entry
from ..core.metadata import BlobId, BlobMetadata
from ..core.recovery import InconsistencyProof, verify_inconsistency_proof
from ..core.wire import field
from ..identity import Identity
from .replication import LogService
from .store import DiskFull, PeerStore

log = logging.getLogger("walrusfs.invalidity")

MetadataSource = Callable[[BlobId], Awaitable[BlobMetadata]]


class InvalidBlobs:
    """One peer's part in certifying blobs invalid and forgetting them."""

    def __init__(
        self, identity: Identity, committee: Committee, store: PeerStore, index: int, log_service: LogService,
        metadata: MetadataSource,
    ) -> None:
        self.identity = identity
        self.committee = committee
        self.store = store
        self.index = index
        self.log = log_service
        self.metadata = metadata
        self.host: IHost | None = None
        self._deletions, self._to_delete = trio.open_memory_channel[BlobId](1 << 16)
        self._locks: dict[BlobId, trio.Lock] = {}
        self.deleted_pairs = 0

    def on_entry(self, entry: Entry) -> None:
        """Log listener: a blob certified invalid is deleted here."""
        if entry.kind == BLOB_INVALID:
            try:
                self._deletions.send_nowait(BlobId(entry.payload["blob_id"]))
            except trio.WouldBlock:
                log.warning("deletion queue full; %s is deleted on the next start", entry.payload["blob_id"])

    async def run(self, host: IHost) -> None:
        """Delete the data of blobs certified invalid, including any found in the log at start."""
        self.host = host
        for blob_id in self.log.state.invalid():
            await self._delete(blob_id)
        async for blob_id in self._to_delete:
            await self._delete(blob_id)

    async def _delete(self, blob_id: BlobId) -> None:
        try:
            count = await trio.to_thread.run_sync(self.store.delete_blob, blob_id)
        except DiskFull as exc:
            # Its data is never served anyway (the log says invalid); a restart deletes it.
            log.warning("could not delete invalid blob %s yet: %s", blob_id, exc)
            return
        if count:
            self.deleted_pairs += count
            log.warning("blob %s is certified invalid: deleted its %d sliver pairs here", blob_id, count)

    # ------------------------------------------------------------------ proofs

    async def _verify(self, blob_id: BlobId, metadata: BlobMetadata, proof: InconsistencyProof) -> None:
        await trio.to_thread.run_sync(verify_inconsistency_proof, metadata, proof)

    async def report(self, blob_id: BlobId, metadata: BlobMetadata, proof: InconsistencyProof) -> Entry:
        """Check ``proof``, gather f + 1 shards' attestations and record the invalid-blob certificate."""
        existing = self.log.state.invalid_entry(blob_id)
        if existing is not None:
            return existing
        await self._verify(blob_id, metadata, proof)
        lock = self._locks.setdefault(blob_id, trio.Lock())
        async with lock:
            existing = self.log.state.invalid_entry(blob_id)
            if existing is not None:
                return existing
            epoch = self.committee.epoch
            signatures: dict[int, bytes] = {self.index: sign_invalid_blob(self.identity.signing_key, epoch, blob_id)}
            refusals: dict[int, str] = {}
            enough = trio.Event()
            fields, body = m.proof_to_wire(proof)

            async def ask(peer: int) -> None:
                assert self.host is not None
                try:
                    reply, _ = await call_member(self.host, self.committee, peer, m.ATTEST_INVALID, body, max_body=0,
                                                 blob_id=blob_id.raw, **fields)
                    signature = field(reply, "signature", bytes)
                    verify_invalid_blob(self.committee.peers[peer].public_key, epoch, blob_id, signature)
                except (PeerUnavailable, CodecError) as exc:
                    refusals[peer] = str(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - whatever its reply raises is that peer's failure
                    refusals[peer] = member_fault(peer, exc)
                    return
                signatures[peer] = signature
                if self.committee.weight(signatures) >= self.committee.validity_threshold:
                    enough.set()

            if self.committee.weight(signatures) < self.committee.validity_threshold:
                await ask_others(self.committee, self.index, ask, enough)
            try:
                certificate = assemble_certificate(self.committee, blob_id, signatures.items(), invalid=True)
            except VerificationError as exc:
                detail = "; ".join(f"peer {k}: {why}" for k, why in sorted(refusals.items()))
                raise InvalidProof(f"too few attestations for invalid blob {blob_id}: {exc}. {detail}") from exc
            entry = await self.log.submit_invalid(certificate)
            log.warning("blob %s certified invalid by %s (entry %s)", blob_id, list(certificate.signers), entry.id.hex())
            return entry

    async def _parse(self, request: dict[str, Any], reader: FrameReader) -> tuple[BlobId, BlobMetadata, InconsistencyProof]:
        blob_id = m.blob_id_field(request)
        metadata = await self.metadata(blob_id)
        length = await reader.body_length(m.MAX_BODY)
        body = b"".join([chunk async for chunk in reader.body_chunks(length)])
        return blob_id, metadata, m.proof_from_wire(request, body, metadata)

    def handlers(self) -> dict[str, Any]:
        """Protocol ID -> handler(request, reader) for the peer to serve."""
        return {m.REPORT_INVALID: self._h_report, m.ATTEST_INVALID: self._h_attest}

    async def _h_report(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        blob_id, metadata, proof = await self._parse(request, reader)
        try:
            entry = await self.report(blob_id, metadata, proof)
        except InvalidProof as exc:
            return m.error(m.INVALID, f"inconsistency proof rejected: {exc}"), b""
        return m.ok(entry=entry.encode()), b""

    async def _h_attest(self, request: dict[str, Any], reader: FrameReader) -> tuple[bytes, bytes]:
        blob_id, metadata, proof = await self._parse(request, reader)
        try:
            await self._verify(blob_id, metadata, proof)
        except InvalidProof as exc:
            return m.error(m.INVALID, f"inconsistency proof rejected: {exc}"), b""
        return m.ok(signature=sign_invalid_blob(self.identity.signing_key, self.committee.epoch, blob_id)), b""
