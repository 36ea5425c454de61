"""The gateway's quilt routes, as Walrus's publisher and aggregator serve them.

- ``PUT /v1/quilts``: a ``multipart/form-data`` body, one field per file (the field name is
  the identifier; names starting with ``_`` are reserved) and an optional ``_metadata``
  field, a JSON array ``[{"identifier", "tags": {...}}]``; the files are packed into one
  quilt (``core.quilt.build_quilt``, the same quilt ``walrusfs store-quilt`` makes of the
  same files in the same order) and stored as one blob. The answer is Walrus's
  ``{"blobStoreResult", "storedQuiltBlobs": [{"identifier", "quiltPatchId", "range"}]}``.
- ``GET /v1/quilts/{quilt_id}/patches``: the index (identifier, patch_id, tags), read from
  the index's own rows.
- ``GET /v1/blobs/by-quilt-id/{quilt_id}/{identifier}`` and
  ``GET /v1/blobs/by-quilt-patch-id/{quilt_patch_id}``: that file's bytes only.

A file is read from its own rows (primary slivers), each verified against its commitment
before a byte of it is sent. Its header (identifier, tags, data length) comes from its
first rows, fetched before the status line, so a missing or malformed patch gets an error
answer; a patch that fits those rows is checked whole (as ``walrusfs read-quilt`` checks
it) before it is answered. A longer one streams row by row like a blob; its last row's
padding is checked before that row's bytes are sent, and if it is not all zeros (a quilt
no honest writer makes) the connection closes short of ``Content-Length``.
"""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import quote

import trio

from ..client.blob import ReadError, slice_parts
from ..client.quilts import InvalidQuilt, read_index
from ..core import quilt as q
from ..core.errors import CodecError
from ..core.metadata import BlobId, BlobMetadata
from ..core.quilt import PatchEntry, PatchHeader, PatchId, QuiltError, QuiltIndex
from .app import (
    CACHE_PUBLIC,
    MAX_ID_TEXT,
    TRANSFER_RATE,
    Gateway,
    Request,
    _matches,
    _read_failure,
    _unresponsive,
)
from .errors import ApiError
from .multipart import MultipartError, TooManyParts, boundary_of, parse_form

#: The form field holding the files' tags (Walrus's name); other names starting with "_" are reserved.
METADATA_FIELD = "_metadata"
#: Walrus's quilt_version values for QuiltV1.
QUILT_VERSIONS = ("v1", "V1", "1")
#: An identifier goes in a header as it is when it is visible ASCII, else percent-encoded (UTF-8).
_HEADER_SAFE = "".join(c for c in string.punctuation if c != "%")


class QuiltRoutes:
    """Handlers of the quilt routes over one ``Gateway`` (its client, settings and helpers)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config

    # ------------------------------------------------------------------ publisher

    async def put_quilt(self, request: Request) -> None:
        """PUT /v1/quilts: pack the form's files into one quilt and store it; Walrus's QuiltStoreResult."""
        gateway = self.gateway
        gateway._check_token(request)
        epochs, deletable, force, encrypt = gateway._store_options(request)
        if encrypt:
            raise ApiError(400, "UNSUPPORTED_PARAMETER", "quilts are not encrypted: store each file with "
                           "PUT /v1/blobs?encrypt=true")
        version = request.query.get("quilt_version")
        if version is not None and version not in QUILT_VERSIONS:
            raise ApiError(400, "INVALID_QUILT_VERSION", f"quilt_version must be v1 (or V1, 1), got {version[:40]!r}")
        try:
            boundary = boundary_of(request.headers.get("content-type"))
        except MultipartError as exc:
            raise ApiError(400, "INVALID_MULTIPART", str(exc)) from None
        async with gateway.store_slot():
            body = await request.read_body(gateway.settings.max_body, gateway.settings.patience)
            built = await trio.to_thread.run_sync(self._build, body, boundary)
            del body
            quilt_id, result = await gateway.store_data(built.data, epochs, deletable, check_existing=not force)
        stored = [{"identifier": entry.identifier, "quiltPatchId": str(entry.patch_id(quilt_id)),
                   "range": [entry.start, entry.end]} for entry in built.index.entries]
        await request.json(200, {"blobStoreResult": result, "storedQuiltBlobs": stored})

    def _build(self, body: bytes, boundary: bytes) -> q.BuiltQuilt:
        """The quilt of a form body's files (blocking: runs in a worker thread); 400 or 413 saying what is wrong."""
        limit = q.max_patches(self.config)
        try:
            parts = parse_form(body, boundary, max_parts=limit + 1)  # the files and _metadata
        except TooManyParts:
            raise _too_many(limit) from None
        except MultipartError as exc:
            raise ApiError(400, "INVALID_MULTIPART", str(exc)) from None
        files = []
        metadata = None
        for part in parts:
            if part.name == METADATA_FIELD:
                if metadata is not None:
                    raise ApiError(400, "INVALID_QUILT_METADATA", f"the form has two {METADATA_FIELD} fields")
                metadata = part
            elif part.name.startswith("_"):
                raise ApiError(400, "INVALID_IDENTIFIER", f"field {part.name[:80]!r}: identifiers starting with '_' "
                               f"are reserved ({METADATA_FIELD} holds the tags)")
            else:
                files.append(part)
        if not files:
            raise ApiError(400, "EMPTY_QUILT", "the form holds no file: a quilt needs at least one")
        if len(files) > limit:
            raise _too_many(limit, len(files))
        names: set[str] = set()
        for part in files:
            try:
                q.check_identifier(part.name)
            except QuiltError as exc:
                raise ApiError(400, "INVALID_IDENTIFIER", str(exc)) from None
            if part.name in names:
                raise ApiError(400, "DUPLICATE_IDENTIFIER", f"identifier {part.name[:80]!r} is given twice; "
                               "identifiers are unique in a quilt")
            names.add(part.name)
        tags = _tags(bytes(metadata.content) if metadata is not None else None, names)
        try:
            patches = [q.Patch(part.name, part.content, tags.get(part.name, {})) for part in files]
            for patch in patches:
                q.encode_tags(patch.tags, patch.identifier)
        except QuiltError as exc:
            raise ApiError(400, "INVALID_TAGS", str(exc)) from None
        del parts, files
        try:
            return q.build_quilt(patches, self.config)
        except QuiltError as exc:
            # Identifiers and tags passed above: what is left are the size limits.
            raise ApiError(413, "QUILT_TOO_LARGE", str(exc), {"maxBlobSize": self.config.max_blob_size}) from None

    # ------------------------------------------------------------------ aggregator

    def _quilt_id(self, request: Request) -> BlobId:
        text = request.params["quilt_id"]
        if len(text) > MAX_ID_TEXT:
            raise ApiError(400, "INVALID_QUILT_ID", f"a quilt ID is a blob ID, 43 characters; got {len(text)}")
        try:
            return BlobId.parse(text)
        except CodecError as exc:
            raise ApiError(400, "INVALID_QUILT_ID", str(exc), {"quiltId": text}) from None

    async def _index(self, quilt_id: BlobId, metadata: BlobMetadata) -> QuiltIndex:
        """The quilt's index, read from its own rows (verified); 404 NOT_A_QUILT if the blob is not a quilt."""
        gateway = self.gateway
        limit = gateway.settings.patience + metadata.unencoded_length / TRANSFER_RATE
        async with gateway.fetches:
            with trio.move_on_after(limit):
                try:
                    return await read_index(gateway.client, quilt_id, metadata=metadata)
                except InvalidQuilt as exc:
                    raise _not_a_quilt(quilt_id, str(exc)) from None
                except ReadError as exc:
                    raise _read_failure(exc, quilt_id) from None
        raise _unresponsive(quilt_id, limit)

    async def list_patches(self, request: Request) -> None:
        """GET /v1/quilts/{quilt_id}/patches: every patch's identifier, patch ID and tags (Walrus's QuiltPatchItem)."""
        quilt_id = self._quilt_id(request)
        metadata = await self.gateway._metadata(quilt_id)
        index = await self._index(quilt_id, metadata)
        items = [{"identifier": e.identifier, "patch_id": str(e.patch_id(quilt_id)), "tags": dict(e.tags)}
                 for e in index.entries]
        await request.json(200, items, {"cache-control": CACHE_PUBLIC, "x-content-type-options": "nosniff"})

    async def get_by_identifier(self, request: Request) -> None:
        """GET /v1/blobs/by-quilt-id/{quilt_id}/{identifier}: that file's bytes, from its own rows, verified."""
        quilt_id = self._quilt_id(request)
        identifier = request.params["identifier"]
        metadata = await self.gateway._metadata(quilt_id)
        index = await self._index(quilt_id, metadata)
        entry = index.find(identifier)
        if entry is None:
            raise ApiError(404, "QUILT_PATCH_NOT_FOUND", f"quilt {quilt_id} has no patch named {identifier[:200]!r} "
                           f"({len(index.entries)} patches; GET /v1/quilts/{quilt_id}/patches lists them)",
                           {"quiltId": str(quilt_id), "identifier": identifier[:200]})
        await self._serve(request, PatchId(quilt_id, entry.start, entry.end), metadata, entry)

    async def get_by_patch_id(self, request: Request) -> None:
        """GET /v1/blobs/by-quilt-patch-id/{quilt_patch_id}: the file at the rows the patch ID names, verified."""
        text = request.params["quilt_patch_id"]
        if len(text) > MAX_ID_TEXT:
            raise ApiError(400, "INVALID_QUILT_PATCH_ID", f"a quilt patch ID is {q.PATCH_ID_TEXT_LENGTH} characters, "
                           f"got {len(text)}")
        try:
            patch_id = PatchId.parse(text)
        except QuiltError as exc:
            raise ApiError(400, "INVALID_QUILT_PATCH_ID", str(exc), {"quiltPatchId": text}) from None
        metadata = await self.gateway._metadata(patch_id.quilt_id)
        await self._serve(request, patch_id, metadata, None)

    async def _serve(self, request: Request, patch_id: PatchId, metadata: BlobMetadata,
                     entry: PatchEntry | None) -> None:
        """Send the data of the patch on ``patch_id``'s rows: its header first, then its bytes row by row."""
        gateway = self.gateway
        quilt_id = patch_id.quilt_id
        try:
            row = q.row_length(self.config, metadata.unencoded_length)
        except QuiltError as exc:
            raise _not_a_quilt(quilt_id, str(exc)) from None
        try:
            offset, size = q.patch_range(self.config, metadata.unencoded_length, patch_id)
        except QuiltError as exc:  # an index entry's rows were checked against the geometry already
            raise _no_patch(patch_id, str(exc)) from None
        # The header is at most MAX_PATCH_HEADER_BYTES: the rows covering that much (one
        # row, unless rows are tiny) always hold it.
        head = min(size, -(-q.MAX_PATCH_HEADER_BYTES // row) * row)
        held = await gateway._read(quilt_id, metadata, offset, head, False)
        try:
            header = q.decode_patch_header(b"".join(slice_parts(held, 0, min(head, q.MAX_PATCH_HEADER_BYTES))))
            q.check_patch_extent(header, size, row)
            if entry is not None:
                q.check_patch_matches(q.Patch(header.identifier, b"", header.tags), entry)
            if head == size:  # the whole patch is here: check it whole before answering
                _check_padding(slice_parts(held, header.size + header.data_length, size), header)
        except QuiltError as exc:
            if entry is None:
                raise _no_patch(patch_id, str(exc)) from None
            raise _not_a_quilt(quilt_id, f"rows {patch_id.start}..{patch_id.end} hold no valid patch: {exc}") from None
        etag = f'"{patch_id}"'
        headers = {"etag": etag, "cache-control": CACHE_PUBLIC, "x-content-type-options": "nosniff",
                   "content-type": "application/octet-stream",
                   "x-quilt-patch-identifier": quote(header.identifier, safe=_HEADER_SAFE),
                   "x-quilt-patch-id": str(patch_id)}
        if _matches(request.headers.get("if-none-match"), etag):
            await request.start(304, {k: v for k, v in headers.items() if k in ("etag", "cache-control")})
            await request.body(b"")
            return
        start, end = header.size, header.size + header.data_length  # the data, within the patch's rows
        await request.start(200, {**headers, "content-length": str(header.data_length)})
        await gateway._send(request, slice_parts(held, start, min(end, head)))
        del held
        # A patch longer than its first rows: the rest row by row, each verified, each let go once sent.
        for position in range(head, size, row):
            parts = await gateway._read(quilt_id, metadata, offset + position, row, False)
            if position + row == size:
                _check_padding(slice_parts(parts, end - position, row), header)
            await gateway._send(request, slice_parts(parts, max(start - position, 0), min(end - position, row)))
            del parts  # the row goes before the next is fetched
        await request.body(b"")


def _check_padding(tail: list[bytes], header: PatchHeader) -> None:
    """Raise ``QuiltError`` unless ``tail``, the bytes after a patch's data to its last row's end, is all zeros."""
    if not all(part.count(0) == len(part) for part in tail):
        raise QuiltError(f"patch {header.identifier[:40]!r}: the padding after its data is not all zeros")


def _tags(raw: bytes | None, identifiers: set[str]) -> dict[str, dict[str, str]]:
    """The ``_metadata`` field's tags by identifier: a JSON array of ``{"identifier", "tags"}``; 400 if malformed."""
    if raw is None:
        return {}

    def bad(why: str) -> ApiError:
        return ApiError(400, "INVALID_QUILT_METADATA", f"{METADATA_FIELD}: {why}")

    try:
        value: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(value, list):
        raise bad("must be a JSON array of {\"identifier\", \"tags\"} objects")
    out: dict[str, dict[str, str]] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("identifier"), str) \
                or set(item) - {"identifier", "tags"}:
            raise bad("each entry is an object with a string identifier and optional tags")
        identifier = item["identifier"]
        if identifier not in identifiers:
            raise bad(f"{identifier[:80]!r} is none of the form's files")
        if identifier in out:
            raise bad(f"{identifier[:80]!r} appears twice")
        tags = item.get("tags", {})
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise bad(f"the tags of {identifier[:80]!r} must be an object of strings")
        out[identifier] = tags
    return out


def _too_many(limit: int, count: int | None = None) -> ApiError:
    given = f"{count} files" if count is not None else "more files"
    return ApiError(413, "TOO_MANY_PATCHES", f"{given} do not fit one quilt here: it holds at most {limit} (each file "
                    "takes whole rows of the committee's matrix, after the index's); store fewer per quilt",
                    {"limit": limit})


def _not_a_quilt(quilt_id: BlobId, why: str) -> ApiError:
    return ApiError(404, "NOT_A_QUILT", f"blob {quilt_id} is not a valid quilt: {why}" if str(quilt_id) not in why
                    else why, {"quiltId": str(quilt_id)})


def _no_patch(patch_id: PatchId, why: str) -> ApiError:
    return ApiError(404, "QUILT_PATCH_NOT_FOUND", f"quilt {patch_id.quilt_id} holds no patch at rows "
                    f"{patch_id.start}..{patch_id.end}: {why}",
                    {"quiltId": str(patch_id.quilt_id), "quiltPatchId": str(patch_id)})
