"""The gateway's ASGI application: Walrus's publisher and aggregator routes over a walrusfs client.

A plain ASGI 3 app (no framework): a table of routes, each a method, a path template, a
handler and the role (publisher or aggregator) it belongs to. Adding a route is one
``Route`` line and a handler (the quilt routes' handlers are in ``quilts.py``).

Reads stream: a blob is fetched one primary sliver (one row of the blob, 1/p of it) at a
time through the client's verified range reads (as the buffers the row arrived in), and
each row is sent once it verified, each buffer let go once sent; the
first row is fetched before the status line, so a blob that cannot be read gets an error
answer, never a 200 with no bytes. A later row that fails closes the connection short of
``Content-Length``: no unverified byte is ever sent.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

import trio

from .. import __version__
from ..client.blob import (
    AccessDenied,
    BlobGone,
    ChallengedError,
    Client,
    InvalidBlobError,
    ReadError,
    StoreError,
)
from ..core import sealing
from ..core.capabilities import BlobCap, CapabilityError, parse_capability
from ..core.errors import CodecError
from ..core.lifecycle import MAX_EPOCHS_AHEAD
from ..core.metadata import BlobId, BlobMetadata
from ..core.redstuff import encode_blob
from .errors import ApiError
from .ranges import ByteRange, RangeError, byte_range, parse_range

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("walrusfs.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PUBLISHER = "publisher"
AGGREGATOR = "aggregator"

#: What Walrus's aggregator sends with every blob: caches may keep it a day (a blob ID
#: names its bytes for ever) and revalidate with the ETag.
CACHE_PUBLIC = "public, max-age=86400, stale-while-revalidate=3600"
#: Plaintext read with a capability: no shared cache may keep it.
CACHE_PRIVATE = "private, no-store"
#: Header carrying a blob capability (the other way is the capability in place of the blob ID).
CAPABILITY_HEADER = "x-walrusfs-capability"
#: A response body is handed to the server in pieces of this size.
SEND_CHUNK = 1 << 20
#: A read or store gets ``patience`` seconds plus one second per this many bytes.
TRANSFER_RATE = 2_000_000
#: Query strings with more fields than this are refused unread.
MAX_QUERY_FIELDS = 20
#: IDs and capabilities are far shorter; longer path segments are refused without parsing.
MAX_ID_TEXT = 300


@dataclass(frozen=True)
class Settings:
    """What ``walrusfs gateway`` was told: roles, limits, patience, token."""

    publisher: bool = True
    aggregator: bool = True
    #: Largest request body (a PUT), and largest blob a read holds whole (capability, strict).
    max_body: int = 64 << 20
    #: Requests in flight at once (``/status`` and ``/v1/api`` not counted); more get 429.
    max_requests: int = 64
    #: Stores in flight at once (each holds its body and encoding); more get 429.
    max_stores: int = 4
    #: Seconds a request waits for peers (plus time for its bytes) before answering 503.
    patience: float = 30.0
    #: Rows fetched ahead of the one being sent (each holds one row of the blob).
    read_ahead: int = 0
    #: Verified reads (a row, or a whole blob) in progress at once across all requests:
    #: each costs several times what it reads while it is verified; more wait their turn.
    max_fetches: int = 4
    #: Epochs a PUT stores for when it does not say (as ``walrusfs store``).
    default_epochs: int = 5
    #: Bearer token PUT must carry (None: none needed).
    token: str | None = None


@dataclass(frozen=True)
class Route:
    """One route: ``method`` and ``template`` to ``handler``.

    ``{name}`` matches one path segment; ``{name:path}`` the rest of the path, slashes and all
    (a quilt patch's identifier may hold ``/``, sent as ``%2F`` or as it is).
    """

    method: str
    template: str
    handler: Callable[[Request], Awaitable[None]]
    role: str | None = None
    #: Counted against ``max_requests``.
    limited: bool = True

    @property
    def pattern(self) -> re.Pattern[str]:
        """The template as an anchored regular expression."""
        regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", self.template)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        return re.compile(f"^{regex}$")


class Request:
    """One HTTP exchange: the request's parts and the means to answer it."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.params = params
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.started = False
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """The query parameters; 400 for a repeated or malformed one."""
        if self._query is None:
            text = self.scope.get("query_string", b"").decode("latin-1")
            try:
                pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
            except ValueError:
                raise ApiError(400, "INVALID_QUERY", f"the query string has more than {MAX_QUERY_FIELDS} fields") from None
            query: dict[str, str] = {}
            for name, value in pairs:
                if name in query:
                    raise ApiError(400, "INVALID_QUERY", f"query parameter {name!r} is given twice")
                query[name] = value
            self._query = query
        return self._query

    def flag(self, name: str) -> bool | None:
        """A boolean query parameter (true/false; empty means true), None when absent."""
        value = self.query.get(name)
        if value is None:
            return None
        lowered = value.lower()
        if lowered in ("", "true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ApiError(400, "INVALID_QUERY", f"query parameter {name} must be true or false, got {value[:40]!r}")

    def integer(self, name: str, required: bool = False) -> int | None:
        """A non-negative integer query parameter."""
        value = self.query.get(name)
        if value is None:
            if required:
                raise ApiError(400, "INVALID_QUERY", f"query parameter {name} is required")
            return None
        if not value.isdigit() or len(value) > 20:
            raise ApiError(400, "INVALID_QUERY", f"query parameter {name} must be a non-negative integer, got {value[:40]!r}")
        return int(value)

    async def start(self, status: int, headers: dict[str, str]) -> None:
        """Send the status line and headers."""
        self.started = True
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"server", f"walrusfs-gateway/{__version__}".encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def body(self, data: bytes, more: bool = False) -> None:
        """Send (part of) the body."""
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        """Answer with a JSON body."""
        data = json.dumps(value).encode()
        await self.start(status, {"content-type": "application/json", "content-length": str(len(data)),
                                  **(headers or {})})
        await self.body(data)

    async def error(self, error: ApiError) -> None:
        """Answer with Walrus's error envelope."""
        data = error.body()
        await self.start(error.code, {"content-type": "application/json", "content-length": str(len(data)),
                                      "x-content-type-options": "nosniff", **error.headers})
        await self.body(data)

    async def read_body(self, limit: int, idle: float) -> bytes:
        """The request body, at most ``limit`` bytes (413 past it, checked on Content-Length before reading).

        A body that stops arriving for ``idle`` seconds gets 408, so a client cannot hold
        a request (and store) slot by never finishing its upload.
        """
        declared = self.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ApiError(400, "INVALID_REQUEST", "Content-Length is not a number")
            if int(declared) > limit:
                raise _too_large(int(declared), limit)
        buffer = bytearray()
        message: dict[str, Any] | None = None
        while True:
            message = None
            with trio.move_on_after(idle):
                message = await self.receive()
            if message is None:
                raise ApiError(408, "BODY_TIMEOUT", f"no body bytes arrived for {idle:.0f} s (--patience); "
                               f"{len(buffer)} of the body arrived")
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            buffer += message.get("body", b"")
            if len(buffer) > limit:
                raise _too_large(len(buffer), limit, at_least=True)
            if not message.get("more_body", False):
                return bytes(buffer)


class _Disconnected(Exception):
    """The client went away; nothing more is sent."""


def _too_large(size: int, limit: int, at_least: bool = False) -> ApiError:
    return ApiError(413, "BODY_TOO_LARGE",
                    f"the request body is {'more than ' if at_least else ''}{size if not at_least else limit} bytes; "
                    f"this gateway takes at most {limit} (--max-body-size)",
                    {"limit": limit})


def _object_id(raw: bytes) -> str:
    """A registration ID written as Walrus writes Sui object IDs."""
    return "0x" + raw.hex()


class Gateway:
    """The ASGI app: routes requests to the publisher and aggregator handlers over one client."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.committee = client.committee
        self.config = client.committee.config
        self.requests = 0
        self.stores = 0
        self.fetches = trio.Semaphore(settings.max_fetches)
        self.api_document = resources.files(__package__).joinpath("openapi.json").read_bytes()
        quilts = _quilt_routes(self)
        # The route table: more specific templates before /v1/blobs/{blob_id}/..., whose
        # {blob_id} would also match "by-quilt-patch-id".
        self.routes = [
            Route("GET", "/status", self.status, limited=False),
            Route("GET", "/v1/api", self.api, limited=False),
            Route("PUT", "/v1/quilts", quilts.put_quilt, PUBLISHER),
            Route("GET", "/v1/quilts/{quilt_id}/patches", quilts.list_patches, AGGREGATOR),
            Route("GET", "/v1/blobs/by-quilt-id/{quilt_id}/{identifier:path}", quilts.get_by_identifier, AGGREGATOR),
            Route("GET", "/v1/blobs/by-quilt-patch-id/{quilt_patch_id}", quilts.get_by_patch_id, AGGREGATOR),
            Route("PUT", "/v1/blobs", self.put_blob, PUBLISHER),
            Route("GET", "/v1/blobs/{blob_id}/byte-range", self.get_byte_range, AGGREGATOR),
            Route("GET", "/v1/blobs/{blob_id}", self.get_blob, AGGREGATOR),
        ]
        self._compiled = [(route, route.pattern) for route in self.routes]

    # ------------------------------------------------------------------ dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served (the server closes them)
        request = Request(scope, receive, send, {})
        try:
            route = self._route(request)
            await self._dispatch(route, request)
        except Exception as exc:
            error = _leaf(exc)  # raised inside a nursery, it comes wrapped in a group
            if isinstance(error, _Disconnected):
                return
            if not isinstance(error, ApiError):
                log.error("%s %s failed", request.method, _redacted(request.path), exc_info=exc)
                error = ApiError(500, "INTERNAL", "the gateway failed to handle this request (see its log)")
            if not request.started:
                await request.error(error)
            else:
                # Headers (and maybe bytes) are out: ending the body short of Content-Length
                # is the only way left to say it failed; no unverified byte was sent.
                log.warning("%s %s: %s after the response began; connection closed", request.method,
                            _redacted(request.path), error.message)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _route(self, request: Request) -> Route:
        allowed = []
        for route, pattern in self._compiled:
            match = pattern.match(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            if route.role == PUBLISHER and not self.settings.publisher:
                raise ApiError(404, "PUBLISHER_DISABLED", "this gateway does not store blobs (started with --aggregator only)")
            if route.role == AGGREGATOR and not self.settings.aggregator:
                raise ApiError(404, "AGGREGATOR_DISABLED", "this gateway does not serve blobs (started with --publisher only)")
            request.params = match.groupdict()
            return route
        if allowed:
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here; use {', '.join(allowed)}",
                           headers={"allow": ", ".join(allowed)})
        raise ApiError(404, "ROUTE_NOT_FOUND", f"no route {_redacted(request.path)[:100]!r}; GET /v1/api lists the routes")

    async def _dispatch(self, route: Route, request: Request) -> None:
        if not route.limited:
            await route.handler(request)
            return
        if self.requests >= self.settings.max_requests:
            raise ApiError(429, "TOO_MANY_REQUESTS", f"this gateway serves {self.settings.max_requests} requests at once "
                           "(--max-requests); retry shortly", headers={"retry-after": "1"})
        self.requests += 1
        try:
            await route.handler(request)
        finally:
            self.requests -= 1

    # ------------------------------------------------------------------ status, api

    async def status(self, request: Request) -> None:
        """GET /status: 200 while the gateway is up, with what it serves."""
        await request.json(200, {
            "status": "ok", "version": __version__,
            "publisher": self.settings.publisher, "aggregator": self.settings.aggregator,
            "nShards": self.committee.n_shards, "quorum": self.committee.quorum,
            "maxBodySize": self.settings.max_body, "maxBlobSize": self.config.max_blob_size,
            "requestsInFlight": self.requests, "storesInFlight": self.stores,
        })

    async def api(self, request: Request) -> None:
        """GET /v1/api: the OpenAPI document of these routes."""
        await request.start(200, {"content-type": "application/json", "content-length": str(len(self.api_document))})
        await request.body(self.api_document)

    # ------------------------------------------------------------------ publisher

    def _check_token(self, request: Request) -> None:
        token = self.settings.token
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(401, "UNAUTHENTICATED", "storing through this gateway needs 'Authorization: Bearer TOKEN' "
                           "(the gateway's --token-file)",
                           headers={"www-authenticate": 'Bearer realm="walrusfs-gateway"'})

    def _store_options(self, request: Request) -> tuple[int, bool, bool, bool]:
        """(epochs, deletable, force, encrypt) from a PUT's query, or 400 saying what is wrong."""
        query = request.query
        epochs_text = query.get("epochs")
        if epochs_text is None:
            epochs = self.settings.default_epochs
        elif epochs_text == "max":
            epochs = MAX_EPOCHS_AHEAD
        elif epochs_text.isdigit() and 1 <= int(epochs_text) <= MAX_EPOCHS_AHEAD:
            epochs = int(epochs_text)
        else:
            raise ApiError(400, "INVALID_EPOCHS", f"epochs must be 1..{MAX_EPOCHS_AHEAD} or max, got {epochs_text[:40]!r}")
        permanent, deletable = request.flag("permanent"), request.flag("deletable")
        if permanent and deletable:
            raise ApiError(400, "INVALID_LIFETIME", "a blob cannot be both permanent and deletable")
        encoding = query.get("encoding_type")
        if encoding is not None and encoding.upper() != "RS2":
            raise ApiError(400, "INVALID_ENCODING", f"walrusfs encodes with RS2 only, not {encoding[:40]!r}")
        for name in ("send_object_to", "share"):
            if name in query:
                raise ApiError(400, "UNSUPPORTED_PARAMETER", f"{name} is not supported: walrusfs has no Sui objects; "
                               "a blob is held by the gateway's writer key")
        return epochs, not permanent, bool(request.flag("force")), bool(request.flag("encrypt"))

    @asynccontextmanager
    async def store_slot(self) -> AsyncIterator[None]:
        """One of the --max-stores store slots (429 when none is free), for a store's whole run."""
        if self.client.authority is None:
            raise ApiError(403, "NOT_AUTHORIZED", "this gateway has no writer key")
        if self.stores >= self.settings.max_stores:
            raise ApiError(429, "TOO_MANY_STORES", f"this gateway runs {self.settings.max_stores} stores at once "
                           "(--max-stores); retry shortly", headers={"retry-after": "1"})
        self.stores += 1
        try:
            yield
        finally:
            self.stores -= 1

    async def put_blob(self, request: Request) -> None:
        """PUT /v1/blobs: store the body as a blob; Walrus's BlobStoreResult."""
        self._check_token(request)
        epochs, deletable, force, encrypt = self._store_options(request)
        async with self.store_slot():
            await self._put_blob(request, epochs, deletable, force, encrypt)

    async def _put_blob(self, request: Request, epochs: int, deletable: bool, force: bool, encrypt: bool) -> None:
        limit = self.config.max_blob_size - (sealing.BLOB_OVERHEAD if encrypt else 0)
        data = await request.read_body(min(self.settings.max_body, limit), self.settings.patience)
        plaintext_length = len(data)
        key = None
        if encrypt:
            key = sealing.new_key()
            data = await trio.to_thread.run_sync(sealing.seal_blob, key, data)
        # A fresh key makes a fresh blob: nothing to find.
        blob_id, result = await self.store_data(data, epochs, deletable, check_existing=not force and not encrypt)
        if key is not None:
            result["newlyCreated"]["walrusfs"].update(capability=str(BlobCap(blob_id, key)),
                                                     plaintextLength=plaintext_length)
        await request.json(200, result)

    async def store_data(self, data: bytes, epochs: int, deletable: bool,
                         check_existing: bool) -> tuple[BlobId, dict[str, Any]]:
        """Store ``data`` as a blob: its ID and Walrus's BlobStoreResult, or an ApiError.

        With ``check_existing``, a blob the log certifies invalid answers ``markedInvalid``
        and one this writer already holds long enough ``alreadyCertified``, unstored.
        """
        encoded = await trio.to_thread.run_sync(encode_blob, data, self.config)
        blob_id = encoded.blob_id
        deadline = self.settings.patience + len(data) / TRANSFER_RATE
        if check_existing:
            existing = await self._existing(blob_id, epochs, deletable, deadline)
            if existing is not None:
                return blob_id, existing
        with trio.move_on_after(deadline) as scope:
            try:
                result = await self.client.store_encoded(encoded, len(data), epochs=epochs, deletable=deletable)
            except AccessDenied as exc:
                raise ApiError(403, exc.code.upper().replace("-", "_"), str(exc), {"blobId": str(blob_id)}) from None
            except StoreError as exc:
                raise ApiError(503, "STORE_FAILED", str(exc), {"blobId": str(blob_id)},
                               headers={"retry-after": "5"}) from None
        if scope.cancelled_caught:
            raise ApiError(503, "PEERS_UNRESPONSIVE", f"peers did not certify blob {blob_id} within {deadline:.0f} s; "
                           "retry later", {"blobId": str(blob_id)}, headers={"retry-after": "5"})
        registration = result.registration
        assert registration is not None
        cert = result.certificate
        encoded_length = self.config.encoded_blob_length(len(data))
        start = registration.end_epoch - epochs
        created: dict[str, Any] = {
            "blobObject": {
                "id": _object_id(registration.id), "registeredEpoch": start, "blobId": str(blob_id),
                "size": len(data), "encodingType": "RS2", "certifiedEpoch": start,
                "storage": {"id": _object_id(registration.id), "startEpoch": start,
                            "endEpoch": registration.end_epoch, "storageSize": encoded_length},
                "deletable": registration.deletable,
            },
            "resourceOperation": {"registerFromScratch": {"encodedLength": encoded_length, "epochsAhead": epochs}},
            "cost": 0,
            "walrusfs": {
                "registrationId": registration.id.hex(), "owner": registration.writer.owner.hex(),
                "account": registration.writer.account.hex(),
                "certificate": {"epoch": cert.epoch, "signers": [self.committee.peers[i].peer_id for i in cert.signers],
                                "shards": self.committee.weight(cert.signers), "quorum": self.committee.quorum,
                                "signatures": [sig.hex() for sig in cert.signatures]},
                "entryId": result.entry.id.hex() if result.entry else None,
                "loggedBy": result.logged_by, "failures": result.failures,
            },
        }
        return blob_id, {"newlyCreated": created}

    async def _existing(self, blob_id: BlobId, epochs: int, deletable: bool, deadline: float) -> dict[str, Any] | None:
        """``markedInvalid`` or ``alreadyCertified`` when the log says so; None when the blob must be stored."""
        from ..cli.blobs import (
            lifetimes,  # the lifetime rules `walrusfs blob-status` shows
        )
        from ..cli.common import at_once

        with trio.move_on_after(deadline):
            try:
                (_, invalid), (registrations, views), epoch = await at_once(
                    lambda: self.client.blob_entries(blob_id), lambda: self.client.registrations(blob_id),
                    lambda: self.client.storage_epoch())
            except Exception as exc:
                if not isinstance(_leaf(exc), (StoreError, ReadError, CodecError)):
                    raise
                return None  # could not tell: storing again is always safe
            if invalid is not None:
                return {"markedInvalid": {"blobId": str(blob_id), "event": {"txDigest": invalid.id.hex(), "eventSeq": "0"}}}
            assert self.client.authority is not None
            owner = self.client.authority.writer.owner.hex()
            held = [r for r in lifetimes(self.committee, registrations, views, epoch)
                    if r["owner"] == owner and r["state"] == "live" and r["deletable"] == deletable
                    and r["endEpoch"] >= epoch + epochs]
            if held:
                best = max(held, key=lambda r: r["endEpoch"])
                return {"alreadyCertified": {"blobId": str(blob_id), "object": _object_id(bytes.fromhex(best["registrationId"])),
                                             "endEpoch": best["endEpoch"]}}
        return None

    # ------------------------------------------------------------------ aggregator

    def _blob_target(self, request: Request) -> tuple[BlobId, BlobCap | None]:
        """The blob ID (and capability, if any) a read names; 400 if malformed."""
        text = request.params["blob_id"]
        cap: BlobCap | None = None
        if len(text) > MAX_ID_TEXT:
            raise ApiError(400, "INVALID_BLOB_ID", f"a blob ID is 43 characters, got {len(text)}")
        if ":" in text:
            cap = _parse_cap(text)
            blob_id = cap.blob_id
        else:
            try:
                blob_id = BlobId.parse(text)
            except CodecError as exc:
                raise ApiError(400, "INVALID_BLOB_ID", str(exc), {"blobId": text}) from None
        header = request.headers.get(CAPABILITY_HEADER)
        if header is not None:
            given = _parse_cap(header)
            if given.blob_id != blob_id or (cap is not None and cap.key != given.key):
                raise ApiError(400, "CAPABILITY_MISMATCH", f"the capability in {CAPABILITY_HEADER} is for blob "
                               f"{given.blob_id}, not {blob_id}")
            cap = given
        return blob_id, cap

    def _consistency(self, request: Request) -> bool:
        """Whether the read is strict; 400 when both consistency flags are set."""
        strict, skip = request.flag("strict_consistency_check"), request.flag("skip_consistency_check")
        if strict and skip:
            raise ApiError(400, "INVALID_CONSISTENCY_OPTIONS", "strict_consistency_check and skip_consistency_check "
                           "exclude each other")
        return bool(strict)

    async def _metadata(self, blob_id: BlobId) -> BlobMetadata:
        with trio.move_on_after(self.settings.patience):
            try:
                return await self.client.get_metadata(blob_id)
            except ReadError as exc:
                raise _read_failure(exc, blob_id) from None
        raise _unresponsive(blob_id, self.settings.patience)

    async def _read(self, blob_id: BlobId, metadata: BlobMetadata, offset: int, size: int,
                    strict: bool) -> list[bytes]:
        """Bytes [offset, offset + size) as buffers, verified (``strict``: the whole blob's ID recomputed), or an ApiError.

        The buffers are the ones the rows arrived in (``Client.read_parts``), and this
        request holds the only references to them.
        """
        limit = self.settings.patience + (metadata.unencoded_length if strict else size) / TRANSFER_RATE
        async with self.fetches:  # waiting for a turn is not the peers' silence: not timed
            with trio.move_on_after(limit):
                try:
                    return await self.client.read_parts(blob_id, offset, size, strict=strict, metadata=metadata,
                                                        challenge_wait=self.settings.patience)
                except ReadError as exc:
                    raise _read_failure(exc, blob_id) from None
        raise _unresponsive(blob_id, limit)

    async def _send(self, request: Request, data: bytes | list[bytes]) -> None:
        """Send ``data`` in pieces, each once the client took the last (hypercorn's sends wait for the socket).

        A list of buffers is emptied as it is sent: each buffer is let go once it went out,
        so memory falls as the answer goes and the next row can reuse it.
        """
        parts = data if isinstance(data, list) else [data]
        parts.reverse()  # popped from the end: O(1) each
        while parts:
            part = parts.pop()
            if len(part) <= SEND_CHUNK:
                await request.body(part, more=True)
                continue
            for k in range(0, len(part), SEND_CHUNK):
                await request.body(part[k : k + SEND_CHUNK], more=True)
            del part

    def _check_whole(self, blob_id: BlobId, length: int, why: str) -> None:
        if length > self.settings.max_body:
            raise ApiError(403, "BLOB_TOO_LARGE", f"blob {blob_id} is {length} bytes; {why} holds the whole blob, "
                           f"which this gateway does for at most {self.settings.max_body} bytes (--max-body-size)",
                           {"blobId": str(blob_id), "limit": self.settings.max_body})

    async def get_blob(self, request: Request) -> None:
        """GET /v1/blobs/{blob_id}: the blob's verified bytes (206 for a Range), streamed row by row."""
        blob_id, cap = self._blob_target(request)
        strict = self._consistency(request)
        metadata = await self._metadata(blob_id)
        length = metadata.unencoded_length
        if cap is not None:
            await self._get_sealed(request, blob_id, cap, metadata)
            return
        etag = f'"{blob_id}"'
        headers = {"etag": etag, "cache-control": CACHE_PUBLIC, "x-content-type-options": "nosniff",
                   "accept-ranges": "bytes", "content-type": "application/octet-stream"}
        if _matches(request.headers.get("if-none-match"), etag):
            await request.start(304, {k: v for k, v in headers.items() if k in ("etag", "cache-control")})
            await request.body(b"")
            return
        wanted = _requested_range(request, length)
        if strict:
            self._check_whole(blob_id, length, "a strict read")
        status = 206 if wanted is not None else 200
        if wanted is not None:
            headers["content-range"] = wanted.content_range()
        start, size = (wanted.start, wanted.length) if wanted is not None else (0, length)
        await self._stream(request, blob_id, metadata, start, size, strict, status, headers)

    async def get_byte_range(self, request: Request) -> None:
        """GET /v1/blobs/{blob_id}/byte-range?start=&length=: those bytes, 200 (cacheable), as Walrus answers."""
        blob_id, cap = self._blob_target(request)
        if cap is not None:
            raise ApiError(400, "CAPABILITY_NOT_SUPPORTED", "byte-range reads take a blob ID; read a capability with "
                           "GET /v1/blobs/{capability} and a Range header")
        start = request.integer("start", required=True)
        length = request.integer("length", required=True)
        assert start is not None and length is not None
        metadata = await self._metadata(blob_id)
        try:
            wanted = byte_range(start, length, metadata.unencoded_length)
        except RangeError as exc:
            raise ApiError(400, "INVALID_BYTE_RANGE", str(exc), {"blobId": str(blob_id),
                                                                "blobSize": metadata.unencoded_length}) from None
        headers = {"etag": f'"{blob_id}-{start}-{length}"', "cache-control": CACHE_PUBLIC,
                   "x-content-type-options": "nosniff", "content-type": "application/octet-stream"}
        await self._stream(request, blob_id, metadata, wanted.start, wanted.length, False, 200, headers)

    async def _get_sealed(self, request: Request, blob_id: BlobId, cap: BlobCap, metadata: BlobMetadata) -> None:
        """The plaintext of a blob stored with ``--encrypt``: the whole ciphertext is fetched and opened first."""
        sealed_length = metadata.unencoded_length
        self._check_whole(blob_id, sealed_length, "a capability read (the AEAD tag covers all of it)")
        plain_length = max(sealed_length - sealing.BLOB_OVERHEAD, 0)
        wanted = _requested_range(request, plain_length)
        parts = await self._read(blob_id, metadata, 0, sealed_length, False)
        data = await trio.to_thread.run_sync(b"".join, parts)
        del parts
        try:
            plaintext = await trio.to_thread.run_sync(sealing.open_blob, cap.key, data)
        except sealing.SealError:
            raise ApiError(403, "CAPABILITY_DOES_NOT_OPEN", f"the key in this capability does not open blob {blob_id}",
                           {"blobId": str(blob_id)}) from None
        del data
        headers = {"cache-control": CACHE_PRIVATE, "x-content-type-options": "nosniff",
                   "content-type": "application/octet-stream", "accept-ranges": "bytes"}
        status = 200
        if wanted is not None:
            plaintext = plaintext[wanted.start : wanted.start + wanted.length]
            headers["content-range"] = wanted.content_range()
            status = 206
        headers["content-length"] = str(len(plaintext))
        await request.start(status, headers)
        await self._send(request, plaintext)
        await request.body(b"")

    def _segments(self, metadata: BlobMetadata, start: int, size: int, strict: bool) -> list[tuple[int, int]]:
        """The row-aligned pieces [start, start + size) is read in (one piece for a strict read)."""
        if size == 0:
            return []
        if strict:
            return [(start, size)]
        row = self.config.primary_sliver_size(metadata.unencoded_length)
        pieces = []
        position, end = start, start + size
        while position < end:
            stop = min(end, (position // row + 1) * row)
            pieces.append((position, stop - position))
            position = stop
        return pieces

    async def _stream(self, request: Request, blob_id: BlobId, metadata: BlobMetadata, start: int, size: int,
                      strict: bool, status: int, headers: dict[str, str]) -> None:
        """Fetch the rows of [start, start + size) and send each once verified; the first before the status line."""
        pieces = self._segments(metadata, start, size, strict)
        headers = {**headers, "content-length": str(size)}
        if not pieces:
            await request.start(status, headers)
            await request.body(b"")
            return
        ahead = max(0, self.settings.read_ahead)
        send_piece, receive_piece = trio.open_memory_channel[Any](max(0, ahead - 1))

        async def produce() -> None:
            async with send_piece:
                for offset, count in pieces:
                    try:
                        data: Any = await self._read(blob_id, metadata, offset, count, strict)
                    except ApiError as error:
                        data = error
                    await send_piece.send(data)
                    if isinstance(data, ApiError):
                        return

        async def watch_disconnect(cancel: trio.CancelScope) -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    cancel.cancel()
                    return

        async def next_piece(k: int) -> list[bytes]:
            if ahead == 0:
                offset, count = pieces[k]
                return await self._read(blob_id, metadata, offset, count, strict)
            data = await receive_piece.receive()
            if isinstance(data, ApiError):
                raise data
            return data  # type: ignore[no-any-return]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, nursery.cancel_scope)
            if ahead:
                nursery.start_soon(produce)
            for k in range(len(pieces)):
                data = await next_piece(k)
                if k == 0:
                    await request.start(status, headers)
                await self._send(request, data)  # empties the list: the row is let go as it is sent
                del data
            await request.body(b"")
            nursery.cancel_scope.cancel()


def _quilt_routes(gateway: Gateway) -> Any:
    """The quilt routes' handlers (``quilts.py`` builds on this module's Request and helpers: imported late)."""
    from .quilts import QuiltRoutes

    return QuiltRoutes(gateway)


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _parse_cap(text: str) -> BlobCap:
    try:
        cap = parse_capability(text)
    except CapabilityError as exc:
        raise ApiError(400, "INVALID_CAPABILITY", str(exc)) from None
    if not isinstance(cap, BlobCap):
        raise ApiError(400, "INVALID_CAPABILITY", "only blob capabilities (walrusfs-blob:...) read blobs")
    return cap


def _requested_range(request: Request, total: int) -> ByteRange | None:
    header = request.headers.get("range")
    if header is None:
        return None
    try:
        return parse_range(header, total)
    except RangeError as exc:
        raise ApiError(416, "INVALID_BYTE_RANGE", str(exc), {"blobSize": total},
                       headers={"content-range": f"bytes */{total}"}) from None


def _matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    return any(tag.strip() in (etag, f"W/{etag}", "*") for tag in header.split(","))


def _redacted(path: str) -> str:
    """A path fit for logs: a capability's key never reaches them."""
    return re.sub(r"walrusfs-blob:[^/]*", "walrusfs-blob:(capability)", path)


def _unresponsive(blob_id: BlobId, seconds: float) -> ApiError:
    return ApiError(503, "PEERS_UNRESPONSIVE", f"too few peers answered for blob {blob_id} within {seconds:.0f} s; "
                    "retry later", {"blobId": str(blob_id)}, headers={"retry-after": "5"})


def _read_failure(exc: ReadError, blob_id: BlobId) -> ApiError:
    """The answer for a read the client could not complete."""
    meta: dict[str, Any] = {"blobId": str(blob_id)}
    if isinstance(exc, InvalidBlobError):
        if exc.entry is not None:
            meta.update(entryId=exc.entry.id.hex(), attestations=len(exc.entry.payload["signers"]))
        return ApiError(410, "BLOB_INVALID", str(exc), meta)
    if isinstance(exc, BlobGone):
        return ApiError(404, "BLOB_EXPIRED", str(exc), meta)
    if isinstance(exc, ChallengedError):
        return ApiError(503, "BLOB_CHALLENGED", str(exc), meta, headers={"retry-after": "5"})
    if "does not exist" in str(exc):
        return ApiError(404, "BLOB_NOT_FOUND", str(exc), meta)
    return ApiError(503, "BLOB_UNAVAILABLE", str(exc), meta, headers={"retry-after": "5"})
