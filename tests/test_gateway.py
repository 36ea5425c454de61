"""`walrusfs gateway` (Walrus's HTTP publisher and aggregator) against a real 7-peer devnet.

The gateway runs as its own process, as an operator would run it; the tests talk to it with
httpx (and curl in one test) and check every answer against the OpenAPI document the
gateway serves at /v1/api, with openapi-core. Faults are real: peers SIGSTOPped, a blob a
malicious writer encoded inconsistently.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.response.validators import V31ResponseHeadersValidator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from p2p.host import running_host
from p2p.rpc import PeerUnavailable
from tests.conftest import blob_bytes
from tests.test_network import EXE, Devnet, walrusfs
from walrusfs.client.blob import Client, InvalidBlobError
from walrusfs.core import messages as m
from walrusfs.core import sealing
from walrusfs.core.capabilities import BlobCap, parse_capability
from walrusfs.core.committee import parse_committee
from walrusfs.core.config import EncodingConfig
from walrusfs.core.metadata import BlobId
from walrusfs.core.quilt import PatchId
from walrusfs.core.redstuff import Axis, verify_parts
from walrusfs.gateway.multipart import (
    MultipartError,
    TooManyParts,
    boundary_of,
    parse_form,
)
from walrusfs.gateway.ranges import RangeError, parse_range
from walrusfs.testing import encode_inconsistent

N = 7
F = 2
BIG = 64 << 20
TOKEN = "s3cret-gateway-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_REQUESTS = 4
SMALL_BODY = 1 << 20
PATIENCE = 5


# ---------------------------------------------------------------------------- the gateway process


class GatewayProcess:
    """``walrusfs gateway`` on a free port, stopped with SIGTERM in ``close``."""

    def __init__(self, committee: Path, log: Path, *args: str) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [EXE, "gateway", "--bind", "127.0.0.1:0", "--committee", str(committee), *args],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        try:
            line = self._first_line(60.0)
        except BaseException:
            self.close()
            raise
        found = re.search(r"http://[0-9.]+:[0-9]+", line)
        assert found, f"no address in {line!r}; log: {self.log.read_text()}"
        self.url = found.group(0)
        self.pid = self.proc.pid

    def _first_line(self, limit: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = self.proc.stdout.readline()
                if line:
                    return line
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"the gateway did not start (exit {self.proc.poll()}): {self.log.read_text()}")

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM), MiB."""
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------- OpenAPI checking


class _OARequest:
    """An httpx request as openapi-core reads one."""

    def __init__(self, request: httpx.Request) -> None:
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body = None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(query=ImmutableMultiDict(parse_qs(url.query, keep_blank_values=True)),
                                            header=Headers(dict(request.headers)), cookie=ImmutableMultiDict())


class _OAResponse:
    """An httpx response as openapi-core reads one."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(dict(response.headers))
        self.data = response.content


class Api:
    """The gateway at ``url``, every answer validated against the OpenAPI document it serves."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)
        document = self.http.get("/v1/api")
        assert document.status_code == 200
        self.openapi = OpenAPI.from_dict(document.json())  # also checks the document is valid OpenAPI 3.1
        self.validated = 0

    def call(self, method: str, path: str, validate: bool = True, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if validate:
            self.check(response)
        return response

    def check(self, response: httpx.Response) -> None:
        request, answer = _OARequest(response.request), _OAResponse(response)
        if response.content == b"" and response.headers.get("content-type") == "application/octet-stream":
            # An empty blob: openapi-core takes an empty body for a missing one, so its
            # status and headers are checked alone.
            V31ResponseHeadersValidator(self.openapi.spec).validate(request, answer)
        else:
            self.openapi.validate_response(request, answer)
        self.validated += 1

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("GET", path, **kwargs)

    def put(self, data: bytes, query: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
        return self.call("PUT", f"/v1/blobs{query}", content=data, headers={**AUTH, **(headers or {})})

    def store(self, data: bytes, query: str = "") -> dict[str, Any]:
        response = self.put(data, query)
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self.http.close()


def reason(response: httpx.Response) -> str:
    """The error envelope's machine-readable reason (checking the envelope's shape on the way)."""
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == response.status_code, body
    return body["error"]["details"][0]["reason"]


def blob_id_of(result: dict[str, Any]) -> str:
    if "newlyCreated" in result:
        return result["newlyCreated"]["blobObject"]["blobId"]
    return next(iter(result.values()))["blobId"]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("gatewaynet"), N)
    yield devnet
    devnet.down()


@pytest.fixture(scope="module")
def gateway(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("gateway")
    token = directory / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    process = GatewayProcess(net.committee, directory / "gateway.log", "--token-file", str(token),
                             "--max-requests", str(MAX_REQUESTS), "--max-body-size", "64MiB",
                             "--patience", str(PATIENCE))
    yield process
    process.close()


@pytest.fixture(scope="module")
def api(gateway: GatewayProcess) -> Iterator[Api]:
    client = Api(gateway.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def big(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 64 MiB file stored with `walrusfs store` (the CLI's report)."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(random.Random(64).randbytes(BIG))
    return path, net.store_ok(path)


# ---------------------------------------------------------------------------- streaming


def test_a_64_mib_read_streams_row_by_row(net: Devnet, big: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A fresh gateway's peak RSS for the whole 64 MiB blob is about one row, well under the blob.

    A row (one primary sliver, 1/p of the blob: 21.3 MiB at n = 7) is the smallest piece a
    verified read fetches: its Merkle leaves are whole symbols, so no byte of it can be
    sent before all of it arrived. The client keeps a row as the chunks it arrived in and
    verifies it from them (expanded and hashed in windows, never joined or copied whole),
    and the gateway lets each chunk go once sent, so the whole blob costs one row plus
    transport buffers. The first read of anything costs a fixed amount more (the codec's
    multiplication tables, 8.4 MiB, and the first connections to the peers): it is
    measured apart, with a 1 MiB blob. Runs on its own gateway so its peak memory is this
    test's alone.
    """
    path, report = big
    data = path.read_bytes()
    row = EncodingConfig(N).primary_sliver_size(BIG)
    small_path = tmp_path / "small.bin"
    small_path.write_bytes(blob_bytes(12, 1 << 20))
    small = net.store_ok(small_path)["blobId"]
    process = GatewayProcess(net.committee, tmp_path / "gateway.log")
    try:
        with httpx.Client(base_url=process.url, timeout=120) as http:
            assert http.get("/status").status_code == 200
            idle = process.peak_rss_mib()
            assert http.get(f"/v1/blobs/{small}").content == small_path.read_bytes()
            base = process.peak_rss_mib()
            first = http.get(f"/v1/blobs/{report['blobId']}", headers={"Range": f"bytes=0-{row - 1}"})
            assert first.status_code == 206 and first.content == data[:row]
            one_row = process.peak_rss_mib() - base
            started = time.monotonic()
            got = bytearray()
            first_byte = None
            with http.stream("GET", f"/v1/blobs/{report['blobId']}") as response:
                assert response.status_code == 200 and int(response.headers["content-length"]) == BIG
                for piece in response.iter_bytes():
                    if first_byte is None:
                        first_byte = time.monotonic() - started
                    got += piece
            total = time.monotonic() - started
            assert got == data
            peak = process.peak_rss_mib()
            whole = peak - base
    finally:
        process.close()
    # The same read by the CLI, which holds the whole blob (its peak RSS from wait4).
    cli = subprocess.Popen([EXE, "read", report["blobId"], "-o", str(tmp_path / "out")], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, "WALRUSFS_COMMITTEE": str(net.committee)})
    _, status, usage = os.wait4(cli.pid, 0)
    cli.returncode = os.waitstatus_to_exitcode(status)
    assert cli.returncode == 0 and (tmp_path / "out").read_bytes() == data
    cli_peak = usage.ru_maxrss / 1024
    print(f"gateway peak RSS: {idle:.0f} MiB idle, +{base - idle:.0f} MiB for a first (1 MiB) read; then "
          f"+{one_row:.0f} MiB for one row ({row / 2**20:.1f} MiB), +{whole:.0f} MiB for the whole 64 MiB blob "
          f"(first byte after {first_byte:.2f} s of {total:.2f} s); `walrusfs read` peaks at {cli_peak:.0f} MiB")
    assert whole < row / 2**20 + 16, (row, whole)  # one row and transport buffers, not several rows
    assert whole < BIG / 2**21, whole  # under half the blob
    assert peak < 0.75 * cli_peak, (peak, cli_peak)


async def test_rows_arrive_as_chunks_and_a_longer_reply_is_refused_unread(
        net: Devnet, big: tuple[Path, dict[str, Any]]) -> None:
    """What the gateway's reads stand on: a row is handed over as the chunks it arrived in, never joined.

    A sliver's length is known from the metadata, so a reply longer than it (a malicious
    member's) is refused on its length prefix, before a byte of it is buffered, on a
    pooled stream (the gateway's) as on a fresh one.
    """
    path, report = big
    data = path.read_bytes()
    committee = parse_committee(net.committee.read_text())
    blob = BlobId.parse(report["blobId"])
    async with running_host(os.urandom(32)) as host:
        for pooled in (False, True):
            client = Client(host, committee, reuse_streams=pooled)
            metadata = await client.get_metadata(blob)
            length = committee.config.secondary_source_symbols * metadata.symbol_size
            peer = client._holders(blob, Axis.PRIMARY, 1)
            fields = {"blob_id": blob.raw, "axis": "primary", "index": 1}
            with pytest.raises(PeerUnavailable, match="exceeds the limit"):
                await client._call(peer, m.GET_SLIVER, parts=True, reply_limit=length - 1, **fields)
            _, parts = await client._call(peer, m.GET_SLIVER, parts=True, reply_limit=length, **fields)
            assert len(parts) > 1 and sum(len(part) for part in parts) == length
            await trio.to_thread.run_sync(verify_parts, metadata, Axis.PRIMARY, 1, parts)
            # A range across rows 0..2: the rows' own chunks, only the ends sliced.
            start, size = length - 1000, length + 2000
            got = await client.read_parts(blob, start, size, metadata=metadata)
            assert len(got) > 2 and b"".join(got) == data[start : start + size]
            if client.pool is not None:
                await client.pool.aclose()


# ---------------------------------------------------------------------------- store and read


@pytest.mark.parametrize("size", [0, 1 << 20], ids=["0B", "1MiB"])
def test_store_then_read_back(api: Api, net: Devnet, size: int) -> None:
    data = blob_bytes(size + 1, size)
    result = api.store(data, "?epochs=3")
    created = result["newlyCreated"]
    blob = created["blobObject"]
    assert blob["size"] == size and blob["deletable"] is True and blob["encodingType"] == "RS2"
    assert blob["storage"]["endEpoch"] - blob["registeredEpoch"] == 3
    assert created["resourceOperation"]["registerFromScratch"]["epochsAhead"] == 3
    assert created["walrusfs"]["certificate"]["shards"] >= parse_committee(net.committee.read_text()).quorum
    response = api.get(f"/v1/blobs/{blob['blobId']}")
    assert response.status_code == 200 and response.content == data
    assert response.headers["etag"] == f'"{blob["blobId"]}"'
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"].startswith("public, max-age=")
    # Stored again by the same writer for no longer: nothing new is stored.
    again = api.store(data, "?epochs=2")
    assert again == {"alreadyCertified": {"blobId": blob["blobId"], "object": blob["id"],
                                          "endEpoch": blob["storage"]["endEpoch"]}}
    # A permanent one is another kind of registration: stored.
    permanent = api.store(data, "?epochs=2&permanent=true")["newlyCreated"]
    assert permanent["blobObject"]["deletable"] is False and permanent["blobObject"]["id"] != blob["id"]
    # The blob ID is the one `walrusfs store` and `walrusfs blob-id` give.
    path = Path(net.directory) / f"same-{size}.bin"
    path.write_bytes(data)
    assert net.store_ok(path)["blobId"] == blob["blobId"]
    shown = walrusfs("blob-id", str(path), "--shards", str(N), "--json", check=True)
    assert json.loads(shown.stdout)["blobId"] == blob["blobId"]


def test_64_mib_through_the_gateway_has_the_cli_blob_id(api: Api, big: tuple[Path, dict[str, Any]]) -> None:
    path, report = big
    data = path.read_bytes()
    # `walrusfs store` already holds it for 5 epochs under the same writer key.
    assert api.store(data)["alreadyCertified"]["blobId"] == report["blobId"]
    created = api.store(data, "?force=true")["newlyCreated"]
    assert created["blobObject"]["blobId"] == report["blobId"]
    assert created["blobObject"]["id"] != "0x" + report["registrationId"]
    response = api.get(f"/v1/blobs/{report['blobId']}")
    assert response.status_code == 200 and response.content == data


def test_the_reference_vector_has_walrus_blob_id(api: Api, net: Devnet, tmp_path: Path) -> None:
    vector = b"walrus blob id v1 regression test"
    path = tmp_path / "vector"
    path.write_bytes(vector)
    expected = json.loads(walrusfs("blob-id", str(path), "--shards", str(N), "--json", check=True).stdout)
    assert expected["walrusCompatible"]
    assert blob_id_of(api.store(vector)) == expected["blobId"]


# ---------------------------------------------------------------------------- ranges


def test_ranges_of_every_form_are_bit_exact(api: Api, big: tuple[Path, dict[str, Any]]) -> None:
    data = blob_bytes(77, 1_000_003)
    blob = blob_id_of(api.store(data))
    big_path, report = big
    big_data = big_path.read_bytes()
    row = EncodingConfig(N).primary_sliver_size(BIG)
    cases = [
        (blob, data, "bytes=0-0"), (blob, data, "bytes=10-19"), (blob, data, "bytes=999999-2000000"),
        (blob, data, "bytes=500000-"), (blob, data, "bytes=-1"), (blob, data, "bytes=-4096"),
        (blob, data, "bytes=-5000000"), (blob, data, "bytes=0-"), (blob, data, "BYTES=3-7"),
        # Across row boundaries of the 64 MiB blob: several rows in one answer.
        (report["blobId"], big_data, f"bytes={row - 5}-{row + 4}"),
        (report["blobId"], big_data, f"bytes={row - 1}-{2 * row}"),
        (report["blobId"], big_data, "bytes=-3"),
    ]
    rng = random.Random(5)
    for _ in range(8):
        a = rng.randrange(len(data))
        cases.append((blob, data, f"bytes={a}-{rng.randrange(a, len(data) + 10)}"))
    for target, content, header in cases:
        expected = parse_range(header, len(content))
        response = api.get(f"/v1/blobs/{target}", headers={"Range": header})
        assert response.status_code == 206, (header, response.text)
        assert response.content == content[expected.start : expected.start + expected.length], header
        assert response.headers["content-range"] == f"bytes {expected.start}-{expected.end}/{len(content)}"
        assert response.headers["etag"] == f'"{target}"'
    for start, length in ((0, 1), (123, 4567), (len(data) - 10, 10)):
        response = api.get(f"/v1/blobs/{blob}/byte-range", params={"start": start, "length": length})
        assert response.status_code == 200 and response.content == data[start : start + length]
        assert response.headers["etag"] == f'"{blob}-{start}-{length}"'
    response = api.get(f"/v1/blobs/{report['blobId']}/byte-range", params={"start": row - 3, "length": 6})
    assert response.content == big_data[row - 3 : row + 3]
    for header in ("bytes=1000003-", "bytes=5-2", "bytes=-0", "bytes=0-1,5-6", "lines=0-1", "bytes=x-y", "bytes=-"):
        response = api.get(f"/v1/blobs/{blob}", headers={"Range": header})
        assert response.status_code == 416 and reason(response) == "INVALID_BYTE_RANGE", header
        assert response.headers["content-range"] == f"bytes */{len(data)}"
    for params in ({"start": 0, "length": 0}, {"start": len(data), "length": 1}, {"start": 0}, {"start": "a", "length": 1}):
        response = api.get(f"/v1/blobs/{blob}/byte-range", params=params)
        assert response.status_code == 400 and reason(response) in ("INVALID_BYTE_RANGE", "INVALID_QUERY"), params
    # An empty blob has no byte to range over.
    empty = blob_id_of(api.store(b""))
    response = api.get(f"/v1/blobs/{empty}", headers={"Range": "bytes=0-"})
    assert response.status_code == 416 and response.headers["content-range"] == "bytes */0"
    # If-None-Match with the ETag: 304, no body.
    response = api.get(f"/v1/blobs/{blob}", headers={"If-None-Match": f'"{blob}"'})
    assert response.status_code == 304 and response.content == b""


@given(total=st.integers(0, 5000), first=st.one_of(st.none(), st.integers(0, 6000)),
       last=st.one_of(st.none(), st.integers(0, 6000)))
def test_range_parsing_matches_rfc_9110(total: int, first: int | None, last: int | None) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    if first is None and last is None:
        expected = None
    elif first is None:  # the last `last` bytes
        expected = None if last == 0 or total == 0 else range(max(0, total - last), total)
    elif first >= total or (last is not None and last < first):
        expected = None
    else:
        expected = range(first, total if last is None else min(last, total - 1) + 1)
    if expected is None:
        with pytest.raises(RangeError):
            parse_range(header, total)
        return
    got = parse_range(header, total)
    assert range(got.start, got.start + got.length) == expected
    assert got.content_range() == f"bytes {expected.start}-{expected.stop - 1}/{total}"


def test_range_parsing_edges() -> None:
    for header, total in (("bytes=0-0", 0), ("bytes=" + "9" * 21 + "-", 10), ("bytes=1-2" + " " * 300, 10),
                          ("bytes=0-1,3-4", 10), ("items=0-1", 10)):
        with pytest.raises(RangeError):
            parse_range(header, total)


async def test_roles_route_and_refuse_without_peers(tmp_path: Path) -> None:
    """The ASGI app alone: an aggregator-only gateway refuses stores, unknown routes and methods get envelopes."""
    from walrusfs.devnet import create
    from walrusfs.gateway.app import Gateway, Settings

    committee = create(tmp_path / "net", 4)  # identities and a committee file, no peer started

    async def ask(app: Gateway, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}, receive, send)
        headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    reader = Gateway(Client(None, committee), Settings(publisher=False))  # type: ignore[arg-type]
    status, _, body = await ask(reader, "PUT", "/v1/blobs")
    assert status == 404 and json.loads(body)["error"]["details"][0]["reason"] == "PUBLISHER_DISABLED"
    status, _, body = await ask(reader, "GET", "/status")
    assert status == 200 and json.loads(body)["publisher"] is False and json.loads(body)["nShards"] == 4
    writer = Gateway(Client(None, committee), Settings(aggregator=False))  # type: ignore[arg-type]
    status, _, body = await ask(writer, "GET", f"/v1/blobs/{BlobId(bytes(32))}")
    assert status == 404 and json.loads(body)["error"]["details"][0]["reason"] == "AGGREGATOR_DISABLED"
    status, headers, body = await ask(writer, "POST", "/v1/blobs")
    assert status == 405 and headers["allow"] == "PUT"
    status, _, body = await ask(writer, "GET", "/v1/api")
    assert status == 200 and set(json.loads(body)["paths"]) == {
        "/status", "/v1/api", "/v1/blobs", "/v1/blobs/{blob_id}", "/v1/blobs/{blob_id}/byte-range", "/v1/quilts",
        "/v1/quilts/{quilt_id}/patches", "/v1/blobs/by-quilt-id/{quilt_id}/{identifier}",
        "/v1/blobs/by-quilt-patch-id/{quilt_patch_id}"}
    assert {route.template for route in writer.routes} >= {"/v1/quilts", "/v1/quilts/{quilt_id}/patches",
                                                           "/v1/blobs/by-quilt-id/{quilt_id}/{identifier:path}",
                                                           "/v1/blobs/by-quilt-patch-id/{quilt_patch_id}"}
    status, _, body = await ask(writer, "GET", f"/v1/quilts/{BlobId(bytes(32))}/patches")
    assert status == 404 and json.loads(body)["error"]["details"][0]["reason"] == "AGGREGATOR_DISABLED"
    status, _, body = await ask(reader, "PUT", "/v1/quilts")
    assert status == 404 and json.loads(body)["error"]["details"][0]["reason"] == "PUBLISHER_DISABLED"


# ---------------------------------------------------------------------------- errors


def test_unknown_and_malformed_blob_ids(api: Api) -> None:
    unknown = BlobId(os.urandom(32))
    response = api.get(f"/v1/blobs/{unknown}")
    assert response.status_code == 404 and reason(response) == "BLOB_NOT_FOUND"
    assert response.json()["error"]["status"] == "NOT_FOUND"
    response = api.get(f"/v1/blobs/{unknown}/byte-range", params={"start": 0, "length": 1})
    assert response.status_code == 404 and reason(response) == "BLOB_NOT_FOUND"
    good = str(BlobId(bytes(31) + b"\x01"))
    malformed = ["short", good[:-1] + "!", good + "A", good[:-1] + "B", "x" * 2000]  # ...B: non-canonical last character
    for text in malformed:
        response = api.get(f"/v1/blobs/{text}")
        assert response.status_code == 400 and reason(response) == "INVALID_BLOB_ID", text
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    response = api.get("/v1/blobs/walrusfs-blob:v1:nope")
    assert response.status_code == 400 and reason(response) == "INVALID_CAPABILITY"
    response = api.get(f"/v1/blobs/{unknown}", params={"strict_consistency_check": "true", "skip_consistency_check": "true"})
    assert response.status_code == 400 and reason(response) == "INVALID_CONSISTENCY_OPTIONS"
    # Not in the document: no route, and a method a route does not take.
    response = api.get("/v1/nothing", validate=False)
    assert response.status_code == 404 and reason(response) == "ROUTE_NOT_FOUND"
    response = api.call("DELETE", "/v1/blobs", validate=False)
    assert response.status_code == 405 and response.headers["allow"] == "PUT"
    for query in ("?epochs=0", "?epochs=54", "?permanent=true&deletable=true", "?share=true", "?encoding_type=RS3",
                  "?epochs=1&epochs=2", "?permanent=maybe"):
        response = api.put(b"x", query)
        assert response.status_code == 400, query


def test_an_invalid_blob_answers_its_entry_never_bytes(api: Api, net: Devnet) -> None:
    """A blob a malicious writer encoded inconsistently: 410 naming the blob-invalid log entry."""
    committee = parse_committee(net.committee.read_text())
    config = committee.config
    data = blob_bytes(31, 300_000)
    # A parity row is tampered yet committed to: a default read of the systematic rows
    # cannot tell; a strict read recomputes the blob ID and proves it.
    encoded = encode_inconsistent(data, config, config.primary_source_symbols + 1)
    blob = str(encoded.blob_id)

    async def store() -> None:
        async with running_host(os.urandom(32)) as host:
            await Client(host, committee, authority=net.authority).store_encoded(encoded, len(data))

    trio.run(store)
    response = api.get(f"/v1/blobs/{blob}", params={"strict_consistency_check": "true"})
    assert response.status_code == 410 and reason(response) == "BLOB_INVALID", response.text
    entry = response.json()["error"]["details"][0]["metadata"]["entryId"]
    assert entry and entry in response.json()["error"]["message"]
    # Every read after it, by anyone, gets the same answer once peers applied the entry.
    deadline = time.monotonic() + 60
    while True:
        response = api.get(f"/v1/blobs/{blob}")
        if response.status_code == 410 or time.monotonic() > deadline:
            break
        assert response.status_code == 200 and response.content == data  # the systematic rows, consistent
        time.sleep(0.5)
    assert response.status_code == 410 and reason(response) == "BLOB_INVALID"
    assert response.json()["error"]["details"][0]["metadata"]["entryId"] == entry
    response = api.get(f"/v1/blobs/{blob}", headers={"Range": "bytes=0-9"})
    assert response.status_code == 410 and reason(response) == "BLOB_INVALID"
    response = api.get(f"/v1/blobs/{blob}/byte-range", params={"start": 0, "length": 10})
    assert response.status_code == 410 and reason(response) == "BLOB_INVALID"

    async def read() -> str:
        async with running_host(os.urandom(32)) as host:
            try:
                await Client(host, committee).read(encoded.blob_id)
            except InvalidBlobError as exc:
                return str(exc)
        return "the client read bytes"

    assert entry in trio.run(read)  # the client says the same


# ---------------------------------------------------------------------------- quilts


def put_quilt(api: Api, files: list[tuple[str, bytes]], tags: list[dict[str, Any]] | None = None,
              query: str = "", validate: bool = True) -> httpx.Response:
    """PUT /v1/quilts with a multipart form: one field per file (name = identifier), tags in _metadata."""
    form: list[tuple[str, Any]] = [(name, (name.rsplit("/", 1)[-1], data, "application/octet-stream"))
                                   for name, data in files]
    if tags is not None:
        form.append(("_metadata", (None, json.dumps(tags).encode())))
    return api.call("PUT", f"/v1/quilts{query}", validate=validate, files=form, headers=AUTH)


def read_quilt_cli(net: Devnet, tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / f"patch-{random.randrange(1 << 30)}"
    walrusfs("read-quilt", *args, "-o", str(out), committee=net.committee, check=True)
    return out.read_bytes()


def test_quilts_through_the_gateway_and_the_cli(api: Api, net: Devnet, tmp_path: Path) -> None:
    """A quilt stored through the gateway reads back through it and through `walrusfs read-quilt`, and vice versa.

    At n = 7 a quilt holds two files (p - 1 rows). The first quilt's files share its rows
    with the index, one row each; the second holds one file of 3 MB on two rows of ~1.5
    MB, so its read streams (header from the first row, the second row's padding checked
    before it is sent).
    """
    small = blob_bytes(40, 2000)
    other = blob_bytes(41, 70_000)
    name = "docs/ünï code.txt"  # a '/' and non-ASCII: percent-encoded in the path and the header
    answer = put_quilt(api, [(name, small), ("b.bin", other)], [{"identifier": name, "tags": {"kind": "doc"}}],
                       "?epochs=2&quilt_version=v1")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    created = result["blobStoreResult"]["newlyCreated"]
    quilt = created["blobObject"]["blobId"]
    stored = result["storedQuiltBlobs"]
    assert [p["identifier"] for p in stored] == [name, "b.bin"] and [p["range"] for p in stored] == [[1, 2], [2, 3]]
    assert all(str(PatchId.parse(p["quiltPatchId"]).quilt_id) == quilt for p in stored)
    listed = api.get(f"/v1/quilts/{quilt}/patches")
    assert listed.status_code == 200
    assert listed.json() == [{"identifier": name, "patch_id": stored[0]["quiltPatchId"], "tags": {"kind": "doc"}},
                             {"identifier": "b.bin", "patch_id": stored[1]["quiltPatchId"], "tags": {}}]
    for (ident, data), entry in zip([(name, small), ("b.bin", other)], stored):
        for path in (f"/v1/blobs/by-quilt-id/{quilt}/{quote(ident, safe='')}",
                     f"/v1/blobs/by-quilt-patch-id/{entry['quiltPatchId']}"):
            response = api.get(path)
            assert response.status_code == 200 and response.content == data, path
            assert unquote(response.headers["x-quilt-patch-identifier"]) == ident
            assert response.headers["etag"] == f'"{entry["quiltPatchId"]}"'
            assert response.headers["x-quilt-patch-id"] == entry["quiltPatchId"]
            again = api.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        # The CLI reads what the gateway stored (one file by identifier, the other by patch ID).
        by_cli = (quilt, ident) if ident == name else ("--patch", entry["quiltPatchId"])
        assert read_quilt_cli(net, tmp_path, *by_cli) == data
    # An identifier's '/' may also come unencoded.
    assert api.get(f"/v1/blobs/by-quilt-id/{quilt}/docs/{quote('ünï code.txt')}", validate=False).content == small

    # The CLI's quilt of the same files in the same order is the same quilt: alreadyCertified.
    first, second = tmp_path / "c.bin", tmp_path / "d.bin"
    first.write_bytes(small)
    second.write_bytes(other)
    cli = json.loads(walrusfs("store-quilt", str(first), str(second), "--epochs", "3", "--json",
                              committee=net.committee, check=True).stdout)
    answer = put_quilt(api, [("c.bin", small), ("d.bin", other)], query="?epochs=2")
    assert answer.status_code == 200, answer.text
    assert answer.json()["blobStoreResult"] == {"alreadyCertified": {
        "blobId": cli["quiltId"], "object": "0x" + cli["registrationId"], "endEpoch": cli["endEpoch"]}}
    assert [p["quiltPatchId"] for p in answer.json()["storedQuiltBlobs"]] == [p["patchId"] for p in cli["patches"]]
    # And the gateway reads what the CLI stored.
    assert api.get(f"/v1/blobs/by-quilt-id/{cli['quiltId']}/d.bin").content == other
    assert api.get(f"/v1/blobs/by-quilt-patch-id/{cli['patches'][0]['patchId']}").content == small

    # One file of 3 MB: on two rows of the quilt, streamed; both ways again.
    large = blob_bytes(42, 3_000_001)
    answer = put_quilt(api, [("large.bin", large)], [{"identifier": "large.bin", "tags": {"a": "1", "b": "2"}}],
                       "?force=true")
    assert answer.status_code == 200, answer.text
    entry = answer.json()["storedQuiltBlobs"][0]
    assert entry["range"] == [1, 3]
    quilt_large = PatchId.parse(entry["quiltPatchId"]).quilt_id
    response = api.get(f"/v1/blobs/by-quilt-id/{quilt_large}/large.bin")
    assert response.status_code == 200 and response.content == large
    assert int(response.headers["content-length"]) == len(large)
    assert api.get(f"/v1/blobs/by-quilt-patch-id/{entry['quiltPatchId']}").content == large
    assert read_quilt_cli(net, tmp_path, "--patch", entry["quiltPatchId"]) == large


def test_quilt_errors_and_limits(api: Api, net: Devnet, tmp_path: Path) -> None:
    stored = put_quilt(api, [("a", b"one"), ("b", b"two")]).json()
    quilt, good = blob_id_of(stored["blobStoreResult"]), stored["storedQuiltBlobs"]
    # 413: more files than a quilt holds at n = 7 (p - 1 = 2), and more than the form parser takes.
    for count in (3, 4):
        response = put_quilt(api, [(f"f{k}", b"x") for k in range(count)])
        assert response.status_code == 413 and reason(response) == "TOO_MANY_PATCHES", response.text
        assert response.json()["error"]["details"][0]["metadata"]["limit"] == 2
    # 400: malformed forms, identifiers, metadata and options.
    cases = [
        ([("a", b"1"), ("a", b"2")], None, "", "DUPLICATE_IDENTIFIER"),
        ([("_secret", b"1")], None, "", "INVALID_IDENTIFIER"),
        ([("trailing ", b"1")], None, "", "INVALID_IDENTIFIER"),
        ([], [], "", "EMPTY_QUILT"),
        ([("a", b"1")], [{"identifier": "zzz", "tags": {}}], "", "INVALID_QUILT_METADATA"),
        ([("a", b"1")], [{"identifier": "a", "tags": {"k": 1}}], "", "INVALID_QUILT_METADATA"),
        ([("a", b"1")], [{"identifier": "a", "tags": {"": "empty key"}}], "", "INVALID_TAGS"),
        ([("a", b"1")], None, "?quilt_version=v2", "INVALID_QUILT_VERSION"),
        ([("a", b"1")], None, "?encrypt=true", "UNSUPPORTED_PARAMETER"),
        ([("a", b"1")], None, "?epochs=99", "INVALID_EPOCHS"),
    ]
    for form, tags, query, expected in cases:
        response = put_quilt(api, form, tags, query)
        assert response.status_code == 400 and reason(response) == expected, (form, tags, query, response.text)
    for body, content_type in ((b"a=1", "application/x-www-form-urlencoded"),
                               (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nno end", "multipart/form-data; boundary=x"),
                               (b"anything", "multipart/form-data")):
        response = api.call("PUT", "/v1/quilts", content=body, headers={**AUTH, "Content-Type": content_type})
        assert response.status_code == 400 and reason(response) == "INVALID_MULTIPART", response.text
    # Reads: malformed IDs (400), unknown quilt, identifier, rows, and a blob that is no quilt (404).
    for path, expected in ((f"/v1/quilts/{quilt[:-1]}/patches", "INVALID_QUILT_ID"),
                           (f"/v1/blobs/by-quilt-id/x{quilt}/a", "INVALID_QUILT_ID"),
                           (f"/v1/blobs/by-quilt-patch-id/{good[0]['quiltPatchId'][:-1]}", "INVALID_QUILT_PATCH_ID"),
                           ("/v1/blobs/by-quilt-patch-id/byte-range", "INVALID_QUILT_PATCH_ID")):
        response = api.get(path)
        assert response.status_code == 400 and reason(response) == expected, (path, response.text)
    unknown = BlobId(os.urandom(32))
    plain = blob_id_of(api.store(blob_bytes(43, 5000)))
    for path, expected in ((f"/v1/quilts/{unknown}/patches", "BLOB_NOT_FOUND"),
                           (f"/v1/blobs/by-quilt-id/{quilt}/nope", "QUILT_PATCH_NOT_FOUND"),
                           (f"/v1/blobs/by-quilt-patch-id/{PatchId(BlobId.parse(quilt), 1, 3)}", "QUILT_PATCH_NOT_FOUND"),
                           (f"/v1/blobs/by-quilt-patch-id/{PatchId(BlobId.parse(quilt), 2, 9)}", "QUILT_PATCH_NOT_FOUND"),
                           (f"/v1/quilts/{plain}/patches", "NOT_A_QUILT"),
                           (f"/v1/blobs/by-quilt-id/{plain}/a", "NOT_A_QUILT")):
        response = api.get(path)
        assert response.status_code == 404 and reason(response) == expected, (path, response.text)
    # 401 without the token.
    response = api.call("PUT", "/v1/quilts", files=[("a", ("a", b"1"))])
    assert response.status_code == 401 and reason(response) == "UNAUTHENTICATED"


field_names = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\%'), min_size=1,
                      max_size=20)


@settings(max_examples=60, deadline=None)
@given(fields=st.lists(st.tuples(field_names, st.binary(max_size=300)), min_size=1, max_size=5), filenames=st.booleans())
def test_the_form_parser_reads_what_httpx_writes(fields: list[tuple[str, bytes]], filenames: bool) -> None:
    form = [(name, (name if filenames else None, data)) for name, data in fields]
    request = httpx.Request("PUT", "http://gateway/v1/quilts", files=form)
    body = request.read()
    parts = parse_form(body, boundary_of(request.headers["content-type"]), max_parts=5)
    assert [(part.name, bytes(part.content)) for part in parts] == fields
    if len(parts) > 1:
        with pytest.raises(TooManyParts):
            parse_form(body, boundary_of(request.headers["content-type"]), max_parts=len(parts) - 1)


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_the_form_parser_raises_only_its_error(junk: bytes, cut: int, flip: int) -> None:
    request = httpx.Request("PUT", "http://gateway/v1/quilts", files=[("a", ("a", b"data\r\n--x")), ("b", b"")])
    body = bytearray(request.read())
    boundary = boundary_of(request.headers["content-type"])
    if flip < len(body):
        body[flip] ^= 0x41
    for candidate in (bytes(body[:cut]), bytes(body) + junk, junk, b"--" + boundary + b"\r\n" + junk):
        try:
            parse_form(candidate, boundary, max_parts=3)
        except MultipartError:
            pass
    for header in ("text/plain", "multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; boundary="x',
                   "multipart/form-data; boundary=" + "x" * 71, junk.decode("latin-1")):
        try:
            boundary_of(header)
        except MultipartError:
            pass


def test_the_form_parser_is_linear_in_the_body() -> None:
    """Near-boundaries everywhere and a body of 8 MiB still parse in one pass."""
    part = b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n"
    body = part + b"\r\n-\r\n--\r\n--a" * (8 << 20 >> 4) + b"\r\n--b--"
    started = time.monotonic()
    assert len(parse_form(body, b"b", max_parts=1)[0].content) == len(body) - len(part) - len(b"\r\n--b--")
    assert time.monotonic() - started < 2.0


# ---------------------------------------------------------------------------- encrypted blobs


def test_encrypted_blobs_need_their_capability(api: Api, net: Devnet, tmp_path: Path) -> None:
    plaintext = blob_bytes(9, 200_000)
    created = api.store(plaintext, "?encrypt=true")["newlyCreated"]
    cap_text = created["walrusfs"]["capability"]
    cap = parse_capability(cap_text)
    assert isinstance(cap, BlobCap) and str(cap.blob_id) == created["blobObject"]["blobId"]
    assert created["blobObject"]["size"] == len(plaintext) + sealing.BLOB_OVERHEAD
    # By blob ID: the stored ciphertext, as Walrus serves it.
    sealed = api.get(f"/v1/blobs/{cap.blob_id}")
    assert sealed.status_code == 200 and len(sealed.content) == len(plaintext) + 40 and plaintext[:64] not in sealed.content
    # With the capability, in the path or (preferred) a header: the plaintext, never cached.
    for path, headers in ((f"/v1/blobs/{cap_text}", {}), (f"/v1/blobs/{cap.blob_id}", {"X-Walrusfs-Capability": cap_text})):
        response = api.get(path, headers=headers)
        assert response.status_code == 200 and response.content == plaintext
        assert response.headers["cache-control"] == "private, no-store" and "etag" not in response.headers
        part = api.get(path, headers={**headers, "Range": "bytes=-100"})
        assert part.status_code == 206 and part.content == plaintext[-100:]
    # Another key for the same blob opens nothing; a capability for another blob is refused.
    wrong = str(BlobCap(cap.blob_id, os.urandom(32)))
    response = api.get(f"/v1/blobs/{wrong}")
    assert response.status_code == 403 and reason(response) == "CAPABILITY_DOES_NOT_OPEN"
    other = str(BlobCap(BlobId(os.urandom(32)), os.urandom(32)))
    response = api.get(f"/v1/blobs/{cap.blob_id}", headers={"X-Walrusfs-Capability": other})
    assert response.status_code == 400 and reason(response) == "CAPABILITY_MISMATCH"
    # The CLI reads what the gateway sealed, and the gateway what the CLI sealed.
    out = tmp_path / "out"
    walrusfs("read", cap_text, "-o", str(out), committee=net.committee, check=True)
    assert out.read_bytes() == plaintext
    source = tmp_path / "cli-secret"
    source.write_bytes(plaintext[::-1])
    cli_cap = json.loads(walrusfs("store", str(source), "--encrypt", "--json", committee=net.committee,
                                  check=True).stdout)["capability"]
    assert api.get(f"/v1/blobs/{cli_cap}").content == plaintext[::-1]


# ---------------------------------------------------------------------------- faults


def test_serves_with_f_peers_stalled(api: Api, net: Devnet) -> None:
    data = blob_bytes(3, 1 << 20)
    blob = blob_id_of(api.store(data, "?force=true"))
    paused: list[int] = []
    try:
        for peer in range(F):
            walrusfs("devnet", "pause", str(net.directory), "--peer", str(peer), check=True)
            paused.append(peer)
        started = time.monotonic()
        response = api.get(f"/v1/blobs/{blob}")
        assert response.status_code == 200 and response.content == data
        part = api.get(f"/v1/blobs/{blob}", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        response = api.get(f"/v1/blobs/{BlobId(os.urandom(32))}")
        assert response.status_code == 404 and reason(response) == "BLOB_NOT_FOUND"
        fresh = blob_bytes(4, 300_000)
        created = api.store(fresh)["newlyCreated"]
        assert api.get(f"/v1/blobs/{created['blobObject']['blobId']}").content == fresh
        print(f"with {F} of {N} peers stalled: read, range, unknown, store and read in {time.monotonic() - started:.1f} s")
        # One more stalled: too few peers answer to tell whether an unknown blob exists.
        walrusfs("devnet", "pause", str(net.directory), "--peer", str(F), check=True)
        paused.append(F)
        response = api.get(f"/v1/blobs/{BlobId(os.urandom(32))}")
        assert response.status_code == 503 and reason(response) in ("PEERS_UNRESPONSIVE", "BLOB_UNAVAILABLE")
        assert response.headers["retry-after"]
    finally:
        for peer in paused:
            walrusfs("devnet", "resume", str(net.directory), "--peer", str(peer))
    assert api.get(f"/v1/blobs/{blob}").content == data


# ---------------------------------------------------------------------------- limits


def _hold_requests(url: str, count: int) -> list[socket.socket]:
    """``count`` PUTs whose bodies never finish: each holds a request slot until its socket closes."""
    host, port = urlsplit(url).netloc.split(":")
    held = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=PATIENCE + 10)
        sock.sendall(f"PUT /v1/blobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 1000\r\n\r\nonly part of it".encode())
        held.append(sock)
    return held


def test_limits_answer_429_413_and_401(api: Api, gateway: GatewayProcess) -> None:
    held = _hold_requests(api.url, MAX_REQUESTS)
    try:
        deadline = time.monotonic() + 20
        while api.get("/status").json()["requestsInFlight"] < MAX_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.05)
        response = api.get(f"/v1/blobs/{BlobId(os.urandom(32))}")
        assert response.status_code == 429 and reason(response) == "TOO_MANY_REQUESTS"
        assert response.headers["retry-after"] == "1"
        response = api.put(b"abc")
        assert response.status_code == 429
        assert api.get("/status").status_code == 200 and api.get("/v1/api").status_code == 200  # never limited
        # An upload that stops is answered 408 after --patience seconds, and its slot freed.
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < PATIENCE + 10:
            piece = held[0].recv(65536)
            if not piece:
                break
            answer += piece
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert PATIENCE - 1 < time.monotonic() - started < PATIENCE + 10
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 20
    while api.get("/status").json()["requestsInFlight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.get("/status").json()["requestsInFlight"] == 0
    assert api.get(f"/v1/blobs/{BlobId(os.urandom(32))}").status_code == 404

    # 413 on the declared length, before a byte of the body is read or sent.
    host, port = urlsplit(api.url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("PUT", "/v1/blobs")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(BIG + 1))
    connection.endheaders()
    answer = connection.getresponse()
    body = json.loads(answer.read())
    assert answer.status == 413 and body["error"]["details"][0]["reason"] == "BODY_TOO_LARGE"
    assert body["error"]["details"][0]["metadata"]["limit"] == BIG
    connection.close()

    # 401 without the token, or with another.
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = api.call("PUT", "/v1/blobs", content=b"abc", headers=headers)
        assert response.status_code == 401 and reason(response) == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"].startswith("Bearer ")


def test_a_body_past_the_limit_without_content_length_is_refused(net: Devnet, tmp_path: Path) -> None:
    process = GatewayProcess(net.committee, tmp_path / "gateway.log", "--max-body-size", str(SMALL_BODY))
    try:
        with httpx.Client(base_url=process.url, timeout=60) as http:
            def chunks(total: int) -> Iterator[bytes]:
                for _ in range(total // 65536):
                    yield bytes(65536)
                yield b"!"
            response = http.put("/v1/blobs", content=chunks(SMALL_BODY))  # chunked: no Content-Length
            assert response.status_code == 413 and reason(response) == "BODY_TOO_LARGE"
            response = http.put("/v1/blobs", content=bytes(1000))
            assert response.status_code == 200 and "newlyCreated" in response.json()
    finally:
        process.close()


# ---------------------------------------------------------------------------- curl


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_stores_and_reads(api: Api, tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    data = blob_bytes(8, 300_001)
    source.write_bytes(data)
    stored = subprocess.run(["curl", "-sS", "-f", "-H", f"Authorization: Bearer {TOKEN}",
                             "--upload-file", str(source), f"{api.url}/v1/blobs?epochs=2"],
                            capture_output=True, text=True, timeout=120, check=True)
    blob = blob_id_of(json.loads(stored.stdout))
    out = tmp_path / "out.bin"
    subprocess.run(["curl", "-sS", "-f", "-o", str(out), f"{api.url}/v1/blobs/{blob}"], timeout=120, check=True)
    assert out.read_bytes() == data
    ranged = subprocess.run(["curl", "-sS", "-f", "-r", "100-199", f"{api.url}/v1/blobs/{blob}"],
                            capture_output=True, timeout=120, check=True)
    assert ranged.stdout == data[100:200]
    missing = subprocess.run(["curl", "-sS", "-w", "%{http_code}", "-o", "/dev/null",
                              f"{api.url}/v1/blobs/{BlobId(os.urandom(32))}"], capture_output=True, text=True, timeout=60)
    assert missing.stdout == "404"
    # A quilt as Walrus's docs store one: -F "identifier=@file", tags in _metadata.
    other = tmp_path / "logo.png"
    other.write_bytes(data[:5000])
    quilted = subprocess.run(["curl", "-sS", "-f", "-X", "PUT", "-H", f"Authorization: Bearer {TOKEN}",
                              "-F", f"manual=@{source}", "-F", f"logo-2025=@{other}",
                              "-F", '_metadata=[{"identifier": "logo-2025", "tags": {"type": "logo"}}]',
                              f"{api.url}/v1/quilts?epochs=2"], capture_output=True, text=True, timeout=120, check=True)
    patches = json.loads(quilted.stdout)["storedQuiltBlobs"]
    assert [p["identifier"] for p in patches] == ["manual", "logo-2025"]
    quilt = blob_id_of(json.loads(quilted.stdout)["blobStoreResult"])
    got = subprocess.run(["curl", "-sS", "-f", f"{api.url}/v1/blobs/by-quilt-id/{quilt}/logo-2025"],
                         capture_output=True, timeout=120, check=True)
    assert got.stdout == data[:5000]
    listed = subprocess.run(["curl", "-sS", "-f", f"{api.url}/v1/quilts/{quilt}/patches"], capture_output=True,
                            text=True, timeout=120, check=True)
    assert json.loads(listed.stdout)[1] == {"identifier": "logo-2025", "patch_id": patches[1]["quiltPatchId"],
                                            "tags": {"type": "logo"}}


def test_every_answer_was_checked_against_the_document(api: Api) -> None:
    status = api.get("/status").json()
    assert status["publisher"] and status["aggregator"] and status["nShards"] == N
    # The module's tests went through Api.call, which validates each answer it gets.
    assert api.validated > 50
