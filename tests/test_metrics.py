"""Prometheus metrics (``--metrics``) of real peers, mounts and the gateway, scraped over HTTP.

One devnet of 4 peer processes (``devnet up`` gives each a metrics port) serves the module.
The tests scrape /metrics before and after real work (files written through one FUSE mount
and read back through another, a blob stored and read through the gateway) and check that
the counters moved by the right amounts, parsed with prometheus-client's own parser. The
metrics server itself is tested in-process: it serves only /metrics, renders at most once
a second, serves at most MAX_RATE requests a second, and an idle connection holds it only
for its timeout.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from tests.mounting import MountedVolume, wait_for
from tests.test_gateway import GatewayProcess
from tests.test_network import EXE
from walrusfs import devnet as dn
from walrusfs import metrics as wm
from walrusfs.core import messages as m

PEERS = 4
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample on a metrics page: (name, sorted labels) -> value."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 if absent: a labelled counter appears once first counted)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have))


def families(url: str, prefix: str) -> set[str]:
    """The metric names a page shows under ``prefix``, as the README lists them (counters with _total)."""
    text = httpx.get(url, timeout=10).text
    return {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(text)
            if f.name.startswith(prefix)}


def readme_metrics(prefix: str) -> set[str]:
    """The metric names the README's Metrics tables list under ``prefix``."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return set(re.findall(rf"^\| `({prefix}[a-z_]+)` \|", text, re.M))


def metrics_url_in(log: Path, limit: float = 30.0) -> str:
    """The metrics URL a process printed to its log."""
    found: list[str] = []

    def printed() -> bool:
        found[:] = re.findall(r"metrics on (http://\S+/metrics)", log.read_text() if log.exists() else "")
        return bool(found)

    assert wait_for(printed, limit), f"no metrics URL in {log}: {log.read_text() if log.exists() else ''}"
    return found[-1]


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedVolume]:
    volume = MountedVolume(tmp_path_factory.mktemp("metrics"), PEERS, volume_options=("--public",))
    yield volume
    volume.close()


def peer_urls(vol: MountedVolume) -> list[str]:
    """Each peer's metrics URL, as the devnet recorded them."""
    addresses = dn.metrics_addresses(vol.net.directory)
    assert sorted(addresses) == list(range(PEERS))
    return [f"http://{addresses[k]}/metrics" for k in range(PEERS)]


def test_devnet_gives_every_peer_a_metrics_port(vol: MountedVolume) -> None:
    addresses = dn.metrics_addresses(vol.net.directory)
    assert len(set(addresses.values())) == PEERS
    assert all(a.startswith("127.0.0.1:") for a in addresses.values())
    for k, url in enumerate(peer_urls(vol)):
        samples = scrape(url)
        info = [labels for (name, labels), _ in samples.items() if name == "walrusfs_peer_info"]
        assert dict(info[0])["index"] == str(k)
        assert value(samples, "process_resident_memory_bytes") > 0


def test_peer_and_mount_counters_follow_a_store_and_a_read(vol: MountedVolume, tmp_path: Path) -> None:
    urls = peer_urls(vol)
    sizes = [300 << 10, 1536 << 10]  # each above --pack-below and within one chunk: one blob per file
    files = [random.Random(k).randbytes(size) for k, size in enumerate(sizes)]
    before = [scrape(url) for url in urls]

    writer = vol.mount("writer", "--metrics", "127.0.0.1:0")
    writer_url = metrics_url_in(writer.log)
    w0 = scrape(writer_url)
    for k, data in enumerate(files):
        (writer.path / f"f{k}").write_bytes(data)
    writer.sync()  # every upload certified and its write in the log

    def writer_settled() -> bool:
        return value(scrape(writer_url), "walrusfs_mount_uploads_total") - value(w0, "walrusfs_mount_uploads_total") >= 2

    assert wait_for(writer_settled, 10, 0.3)  # the page is rendered at most once a second
    w1 = scrape(writer_url)
    assert value(w1, "walrusfs_mount_uploads_total") - value(w0, "walrusfs_mount_uploads_total") == 2
    assert value(w1, "walrusfs_mount_stored_blobs_total") - value(w0, "walrusfs_mount_stored_blobs_total") == 2
    assert value(w1, "walrusfs_mount_stored_bytes_total") - value(w0, "walrusfs_mount_stored_bytes_total") == sum(sizes)
    assert value(w1, "walrusfs_mount_upload_seconds_count") - value(w0, "walrusfs_mount_upload_seconds_count") == 2
    assert value(w1, "walrusfs_mount_upload_seconds_sum") > value(w0, "walrusfs_mount_upload_seconds_sum")
    assert value(w1, "walrusfs_mount_pending_uploads") == 0
    assert value(w1, "walrusfs_mount_upload_failures_total") == 0

    # Every peer holds one sliver pair of each blob (one shard each); the writer returns at
    # the quorum and delivers the rest in the background, so wait for the last pairs.
    def stored(k: int) -> float:
        return value(scrape(urls[k]), "walrusfs_peer_stored_pairs") - value(before[k], "walrusfs_peer_stored_pairs")

    assert wait_for(lambda: all(stored(k) == 2 for k in range(PEERS)), 30, 0.5), [stored(k) for k in range(PEERS)]
    after = [scrape(url) for url in urls]
    for k in range(PEERS):
        b, a = before[k], after[k]
        grew = value(a, "walrusfs_peer_stored_bytes") - value(b, "walrusfs_peer_stored_bytes")
        assert grew > 0
        assert value(a, "walrusfs_peer_stored_blobs") - value(b, "walrusfs_peer_stored_blobs") == 2
        put_ok = (value(a, "walrusfs_peer_requests_total", protocol=m.PUT_PAIR, outcome="ok")
                  - value(b, "walrusfs_peer_requests_total", protocol=m.PUT_PAIR, outcome="ok"))
        healed = value(a, "walrusfs_peer_healed_pairs_total") - value(b, "walrusfs_peer_healed_pairs_total")
        assert put_ok + healed >= 2, (k, put_ok, healed)
        put_in = (value(a, "walrusfs_peer_received_bytes_total", protocol=m.PUT_PAIR)
                  - value(b, "walrusfs_peer_received_bytes_total", protocol=m.PUT_PAIR))
        if not healed:
            assert put_in >= grew  # the pairs' bytes, plus headers and framing
    # Certificates and the files' writes reached the log (every replica soon; some already).
    assert sum(value(a, "walrusfs_peer_log_entries") - value(b, "walrusfs_peer_log_entries")
               for a, b in zip(after, before)) > 0

    # A second mount (its own empty cache) reads both files back: each is one chunk fetched.
    reader = vol.mount("reader", "--metrics", "127.0.0.1:0")
    reader_url = metrics_url_in(reader.log)
    assert wait_for(lambda: (reader.path / "f1").exists(), 30)
    r0 = scrape(reader_url)
    for k, data in enumerate(files):
        assert (reader.path / f"f{k}").read_bytes() == data

    def reader_settled() -> bool:
        return value(scrape(reader_url), "walrusfs_mount_read_bytes_total") - value(r0, "walrusfs_mount_read_bytes_total") >= sum(sizes)

    assert wait_for(reader_settled, 10, 0.3)
    r1 = scrape(reader_url)
    assert value(r1, "walrusfs_mount_read_bytes_total") - value(r0, "walrusfs_mount_read_bytes_total") == sum(sizes)
    reads = value(r1, "walrusfs_mount_read_seconds_count") - value(r0, "walrusfs_mount_read_seconds_count")
    assert reads >= len(files)  # the kernel splits each file's read into several
    assert value(r1, "walrusfs_mount_cache_misses_total") - value(r0, "walrusfs_mount_cache_misses_total") == 2
    assert value(r1, "walrusfs_mount_fetch_seconds_count") - value(r0, "walrusfs_mount_fetch_seconds_count") == 2
    assert value(r1, "walrusfs_mount_fetched_bytes_total") - value(r0, "walrusfs_mount_fetched_bytes_total") == sum(sizes)
    # Every read looked its chunk up once: the first of each file fetched it, the rest found it in memory.
    hits = total(r1, "walrusfs_mount_cache_hits_total") - total(r0, "walrusfs_mount_cache_hits_total")
    assert hits == reads - 2
    assert value(r1, "walrusfs_mount_read_errors_total") == 0
    # The README lists exactly what the pages show.
    assert families(reader_url, "walrusfs_mount_") == readme_metrics("walrusfs_mount_")
    assert families(urls[0], "walrusfs_peer_") == readme_metrics("walrusfs_peer_")

    # The peers sent at least the files' bytes as slivers (the primary slivers hold the data).
    served = [scrape(url) for url in urls]
    sliver_bytes = sum(total(s, "walrusfs_peer_sent_bytes_total", protocol=m.GET_SLIVER)
                       - total(a, "walrusfs_peer_sent_bytes_total", protocol=m.GET_SLIVER) for s, a in zip(served, after))
    assert sliver_bytes >= sum(sizes)

    # An unknown blob: the peers answer not-found, counted under that outcome.
    missing = walrus_read_missing(vol, tmp_path)
    assert missing.returncode == 4, missing.stderr
    refused = [scrape(url) for url in urls]
    assert sum(total(r, "walrusfs_peer_requests_total", outcome=m.NOT_FOUND)
               - total(s, "walrusfs_peer_requests_total", outcome=m.NOT_FOUND) for r, s in zip(refused, served)) >= 1


def walrus_read_missing(vol: MountedVolume, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``walrusfs read`` of a blob nobody stored."""
    from walrusfs.core.metadata import BlobId

    blob = str(BlobId(os.urandom(32)))
    return subprocess.run([EXE, "read", "--committee", str(vol.net.committee), "-o", str(tmp_path / "out"), "--", blob],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_gateway_counts_requests_by_route_and_status_and_bytes(vol: MountedVolume, tmp_path: Path) -> None:
    gateway = GatewayProcess(vol.net.committee, tmp_path / "gateway.log", "--metrics", "127.0.0.1:0")
    try:
        url = metrics_url_in(tmp_path / "gateway.log")
        data = random.Random(7).randbytes(1 << 20)
        before = scrape(url)
        with httpx.Client(base_url=gateway.url, timeout=120) as http:
            put = http.put("/v1/blobs", content=data)
            assert put.status_code == 200, put.text
            document = put.json()
            blob_id = (document.get("newlyCreated") or {}).get("blobObject", {}).get("blobId") \
                or document["alreadyCertified"]["blobId"]
            got = http.get(f"/v1/blobs/{blob_id}")
            assert got.status_code == 200 and got.content == data
            assert http.get("/no/such/route").status_code == 404
            assert http.request("BREW", "/v1/blobs").status_code == 405  # a made-up method: one label, "other"
        assert wait_for(lambda: value(scrape(url), "walrusfs_gateway_requests_total", method="other",
                                      route="/v1/blobs", status="405") == 1, 10, 0.3)
        after = scrape(url)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("walrusfs_gateway_requests_total", method="PUT", route="/v1/blobs", status="200") == 1
        assert moved("walrusfs_gateway_requests_total", method="GET", route="/v1/blobs/{blob_id}", status="200") == 1
        assert moved("walrusfs_gateway_requests_total", method="GET", route="unmatched", status="404") == 1
        assert moved("walrusfs_gateway_received_bytes_total", route="/v1/blobs") == len(data)
        assert moved("walrusfs_gateway_sent_bytes_total", route="/v1/blobs/{blob_id}") == len(data)
        assert moved("walrusfs_gateway_request_seconds_count", route="/v1/blobs") == 2  # the PUT and the BREW
        assert value(after, "walrusfs_gateway_requests_in_progress") == 0
        # Labels come from fixed sets: the page names no path or method a client made up.
        page = httpx.get(url, timeout=10).text
        assert "/no/such/route" not in page and "BREW" not in page
        assert families(url, "walrusfs_gateway_") == readme_metrics("walrusfs_gateway_")
    finally:
        gateway.close()


def test_a_metrics_address_that_cannot_be_served_is_one_line(vol: MountedVolume, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([EXE, "gateway", "--bind", "127.0.0.1:0", "--committee", str(vol.net.committee),
                                 "--metrics", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    for bad in ("nonsense", "127.0.0.1:99999"):
        result = subprocess.run([EXE, "gateway", "--committee", str(vol.net.committee), "--metrics", bad],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 2 and "--metrics" in result.stderr, (bad, result.stderr)


# ---------------------------------------------------------------------------- the server, in-process


def test_addresses_parse_or_say_why() -> None:
    assert wm.parse_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert wm.parse_address("[::1]:0") == ("::1", 0)
    assert wm.parse_address("localhost:80") == ("localhost", 80)
    for bad in ("", ":80", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:65536", "::1:80", "[zz]:80"):
        with pytest.raises(wm.MetricsAddressError):
            wm.parse_address(bad)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[wm.MetricsServer, Counter]]:
    monkeypatch.setattr(wm._Handler, "timeout", 0.5)
    registry = CollectorRegistry()
    counter = Counter("walrusfs_test_events", "Events.", registry=registry)
    server = wm.serve_metrics(registry, "127.0.0.1:0")
    yield server, counter
    server.close()


def test_server_serves_only_metrics_and_renders_at_most_once_a_second(served: tuple[wm.MetricsServer, Counter]) -> None:
    server, counter = served
    counter.inc()
    assert value(scrape(server.url), "walrusfs_test_events_total") == 1
    assert "walrusfs_test_events_created" not in httpx.get(server.url).text
    counter.inc()
    start = time.monotonic()
    seen = value(scrape(server.url), "walrusfs_test_events_total")
    if time.monotonic() - start < wm.RENDER_INTERVAL * 0.9:
        assert seen == 1  # the cached page
    assert wait_for(lambda: value(scrape(server.url), "walrusfs_test_events_total") == 2, 5, 0.2)
    base = server.url.removesuffix("/metrics")
    assert httpx.get(base + "/other").status_code == 404
    assert httpx.post(server.url).status_code == 405


def test_a_flood_of_scrapes_is_paced_and_an_idle_connection_only_delays(
        served: tuple[wm.MetricsServer, Counter]) -> None:
    server, _ = served
    count = 30
    cpu = time.process_time()
    start = time.monotonic()
    with httpx.Client() as http:
        for _ in range(count):
            assert http.get(server.url).status_code == 200
    # Paced at MAX_RATE a second: the flood waits, sleeping, instead of taking the CPU.
    assert time.monotonic() - start >= (count - 1) / wm.MAX_RATE * 0.95
    assert time.process_time() - cpu < 2.0
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port))):  # says nothing: held only for the (patched) timeout
        start = time.monotonic()
        assert httpx.get(server.url, timeout=10).status_code == 200
        assert time.monotonic() - start < 5
