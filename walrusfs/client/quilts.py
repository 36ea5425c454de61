"""Quilts on the committee: many small files stored as one blob, and one read back from its own slivers.

A quilt is an ordinary blob (``walrusfs.core.quilt`` lays it out), so storing one is one
``Client.store`` and every guarantee of a blob holds for it. Each patch sits on whole rows
(primary slivers), so reading one is the client's ordinary range read of those rows:

- by patch ID: the metadata, then the patch's own rows (one sliver for a file smaller than
  a row), each verified against its commitment;
- by identifier: the metadata, the index's rows (one row for a small index), then the
  patch's rows.

When one of those slivers is bad or missing, the range read falls back as every read does
(any p primary or s secondary slivers, decoded and checked for consistency), so a patch
reads correctly unless the blob itself cannot be read; then it fails with the read's
``ReadError`` (or ``InvalidBlobError`` for an inconsistently encoded blob), and patches
whose own rows are intact still read. Bytes that are not a valid quilt raise
``InvalidQuilt``. No function here returns bytes the metadata did not vouch for.

For the mount (packing small files closed in a burst): ``store_quilt(client, patches)``
returns the quilt's blob ID, index and each file's data range inside the blob;
``read_patch(client, quilt_id, patch_id)`` reads one file back, and an ordinary
``client.read(quilt_id, offset, length)`` within a data range reads part of one file,
fetching only the rows it touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import trio

from ..core import quilt as q
from ..core.metadata import BlobId, BlobMetadata
from ..core.quilt import (
    BuiltQuilt,
    DecodedQuilt,
    Patch,
    PatchEntry,
    PatchId,
    QuiltError,
    QuiltIndex,
)
from .blob import DEFAULT_EPOCHS, Client, Progress, ReadError, StoreResult

#: What names a patch to read: its identifier, its patch ID or its index entry.
PatchRef = Union[str, PatchId, PatchEntry]


class InvalidQuilt(ReadError):
    """The blob was read verified, but it is not a quilt, or not one that holds the patch asked for."""


class PatchNotFound(ReadError):
    """The quilt's index has no patch with that identifier."""


@dataclass(frozen=True)
class StoredQuilt:
    """A stored quilt: the store's result, and the quilt as built (index, data ranges)."""

    result: StoreResult
    quilt: BuiltQuilt

    @property
    def quilt_id(self) -> BlobId:
        """The quilt's blob ID."""
        return self.result.blob_id

    def patch_ids(self) -> list[PatchId]:
        """Each patch's ID, in index order."""
        return [entry.patch_id(self.quilt_id) for entry in self.quilt.index.entries]


async def store_quilt(
    client: Client, patches: Sequence[Patch] | BuiltQuilt, *, epochs: int = DEFAULT_EPOCHS, deletable: bool = True,
    progress: Progress | None = None,
) -> StoredQuilt:
    """Pack ``patches`` into one quilt (or take one ``build_quilt`` made) and store it as one blob.

    Raises ``QuiltError`` if the patches do not fit one quilt on this committee, and what
    ``Client.store`` raises if the store fails.
    """
    if isinstance(patches, BuiltQuilt):
        built = patches
        if q.row_length(client.config, len(built.data)) != built.row_length:
            raise QuiltError(f"this quilt was built for another committee than this one of {client.n} shards")
    else:
        built = await trio.to_thread.run_sync(q.build_quilt, list(patches), client.config)
    result = await client.store(built.data, progress=progress, epochs=epochs, deletable=deletable)
    return StoredQuilt(result, built)


def _invalid(quilt_id: BlobId, exc: QuiltError, what: str = "") -> InvalidQuilt:
    return InvalidQuilt(f"blob {quilt_id} {what or 'is not a valid quilt'}: {exc}")


def _row_length(client: Client, quilt_id: BlobId, metadata: BlobMetadata) -> int:
    try:
        return q.row_length(client.config, metadata.unencoded_length)
    except QuiltError as exc:
        raise _invalid(quilt_id, exc) from None


async def read_index(client: Client, quilt_id: BlobId, *, metadata: BlobMetadata | None = None) -> QuiltIndex:
    """The quilt's index, from the index's own rows (verified); ``InvalidQuilt`` if it is not a quilt."""
    metadata = metadata or await client.get_metadata(quilt_id)
    length = metadata.unencoded_length
    row = _row_length(client, quilt_id, metadata)
    first = await client.read(quilt_id, 0, row, metadata=metadata)
    try:
        total = q.index_length(first)
    except QuiltError as exc:
        raise _invalid(quilt_id, exc) from None
    rows = -(-total // row)
    if rows * row > length:
        raise InvalidQuilt(f"blob {quilt_id} is not a valid quilt: its index claims {total} bytes, "
                           f"more than the blob's {length}")
    prefix = first + (await client.read(quilt_id, row, (rows - 1) * row, metadata=metadata) if rows > 1 else b"")
    try:
        return await trio.to_thread.run_sync(q.decode_index, prefix, client.config, length)
    except QuiltError as exc:
        raise _invalid(quilt_id, exc) from None


async def read_patch(
    client: Client, quilt_id: BlobId, patch: PatchRef, *, metadata: BlobMetadata | None = None,
) -> Patch:
    """One patch of quilt ``quilt_id``, read from its own rows (and the index's, given an identifier).

    A patch ID is trusted for where the patch is, as Walrus does: its rows must hold one
    whole patch, else ``InvalidQuilt``; an identifier is looked up in the index
    (``PatchNotFound`` if absent) and the patch found there must carry that identifier.
    """
    if isinstance(patch, PatchId) and patch.quilt_id != quilt_id:
        raise ReadError(f"patch ID {patch} belongs to quilt {patch.quilt_id}, not {quilt_id}")
    metadata = metadata or await client.get_metadata(quilt_id)
    row = _row_length(client, quilt_id, metadata)
    entry: PatchEntry | None = patch if isinstance(patch, PatchEntry) else None
    if isinstance(patch, str):
        index = await read_index(client, quilt_id, metadata=metadata)
        entry = index.find(patch)
        if entry is None:
            raise PatchNotFound(f"quilt {quilt_id} has no patch named {patch!r} ({len(index.entries)} patches; "
                                "`walrusfs list-quilt` shows them)")
    where = entry if entry is not None else patch
    assert isinstance(where, (PatchId, PatchEntry))
    try:
        offset, size = q.patch_range(client.config, metadata.unencoded_length, where)
    except QuiltError as exc:
        raise _invalid(quilt_id, exc, f"holds no patch at rows {where.start}..{where.end}") from None
    region = await client.read(quilt_id, offset, size, metadata=metadata)
    try:
        found = await trio.to_thread.run_sync(q.decode_patch, region, row)
        if entry is not None:
            q.check_patch_matches(found, entry)
    except QuiltError as exc:
        raise _invalid(quilt_id, exc, f"holds no valid patch at rows {where.start}..{where.end}") from None
    return found


async def read_quilt(client: Client, quilt_id: BlobId, *, metadata: BlobMetadata | None = None) -> DecodedQuilt:
    """Every patch of a quilt: the whole blob read once (p rows), decoded and checked canonical."""
    metadata = metadata or await client.get_metadata(quilt_id)
    _row_length(client, quilt_id, metadata)
    data = await client.read(quilt_id, metadata=metadata)
    try:
        return await trio.to_thread.run_sync(q.decode_quilt, data, client.config)
    except QuiltError as exc:
        raise _invalid(quilt_id, exc) from None
