"""Prometheus metrics over HTTP for peers, mounts and the gateway (``--metrics ADDR``).

Each process keeps its own ``CollectorRegistry`` (never prometheus-client's global one, so
tests and in-process uses do not collide) and serves it on the one address the operator
gives, from a thread of its own: a scrape never runs on the trio loop. The server answers
one request at a time, at most ``MAX_RATE`` a second, each connection given ``TIMEOUT`` to
send its request, and renders the page at most once per ``RENDER_INTERVAL`` (later
requests within it get the same bytes), so whoever hammers /metrics costs the process a
bounded amount of CPU and the collectors' work (a SQLite sum on a peer) runs at most once
a second.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

#: The page is rendered at most this often; requests in between get the last rendering.
RENDER_INTERVAL = 1.0
#: Requests served per second at most (one at a time); more wait in the listen queue.
MAX_RATE = 20
#: Seconds a connection has to send its request line and headers.
TIMEOUT = 5.0


class MetricsAddressError(ValueError):
    """An address for --metrics that is not HOST:PORT."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:9101``) as (host, port); port 0 picks a free one."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise MetricsAddressError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9101)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsAddressError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise MetricsAddressError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9101")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsAddressError(f"{port_text!r} is not a port number (0-65535)")
    return host, int(port_text)


def new_registry() -> CollectorRegistry:
    """A registry of this process's own, holding the standard process metrics (CPU, memory, open files)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class ScrapeCollector(Collector):
    """Figures read at scrape time, in the metrics server's thread (subclasses define ``collect``)."""

    def describe(self) -> list[Any]:
        """Nothing up front: the registry then never calls ``collect`` outside a scrape."""
        return []


def replace_collector(registry: CollectorRegistry, old: Collector | None, new: Collector) -> Collector:
    """Register ``new`` in ``registry`` in place of ``old`` (if any), and return it."""
    if old is not None:
        registry.unregister(old)
    registry.register(new)
    return new


class _Page:
    """The rendered page, made again only once RENDER_INTERVAL has passed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.body = b""
        self.made = -RENDER_INTERVAL
        self.last_request = 0.0

    def get(self) -> bytes:
        now = time.monotonic()
        if now - self.made >= RENDER_INTERVAL:
            self.body = generate_latest(self.registry)
            self.made = time.monotonic()
        return self.body


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics; anything else is 404 or 405."""

    server: _Server
    timeout = TIMEOUT  # applied to the connection's socket by StreamRequestHandler
    protocol_version = "HTTP/1.0"  # one request per connection: nobody holds the server with keep-alive

    def handle(self) -> None:
        # Space requests out (sleeping releases the GIL): a flood of scrapes waits in the
        # kernel's listen queue instead of taking the process's CPU.
        server = self.server
        wait = server.page.last_request + 1 / MAX_RATE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        server.page.last_request = time.monotonic()
        super().handle()

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        """Serve the metrics page."""
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self._answer(404, b"not found: the metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.page.get()
        except Exception as exc:  # noqa: BLE001 - a collector's failure is the scrape's, never the process's
            self._answer(500, f"collecting the metrics failed: {type(exc).__name__}: {exc}\n".encode(),
                         "text/plain; charset=utf-8")
            return
        self._answer(200, body, CONTENT_TYPE_LATEST)

    def do_HEAD(self) -> None:  # noqa: N802
        """Answer like GET, without the body."""
        self._answer(200 if self.path.split("?", 1)[0] in ("/metrics", "/") else 404, b"", CONTENT_TYPE_LATEST)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Refuse methods other than GET and HEAD (and malformed requests) briefly."""
        if code == 501:
            code = 405  # an unsupported method: GET /metrics is all there is
        self._answer(code, f"{code}: {message or ''}\n".encode(), "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the name http.server uses
        """Keep quiet: a scrape every few seconds would fill the log."""


class _Server(HTTPServer):
    """A single-threaded HTTP server (requests one after another)."""

    allow_reuse_address = True
    page: _Page

    def __init__(self, address: tuple[str, int], family: int, registry: CollectorRegistry) -> None:
        self.address_family = family
        self.page = _Page(registry)
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or broke the protocol is not worth a traceback."""


class MetricsServer:
    """The metrics page of one process, served from a daemon thread on ``address``."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host!r}: {exc.strerror}") from None
        family, _, _, _, sockaddr = infos[0]
        disable_created_metrics()  # no *_created series beside every counter: half the page for nothing
        self._server = _Server(sockaddr[:2], family, registry)
        bound = self._server.server_address
        bound_host = bound[0] if family != socket.AF_INET6 else f"[{bound[0]}]"
        #: HOST:PORT actually bound (with port 0, the port picked).
        self.address = f"{bound_host}:{bound[1]}"
        self.url = f"http://{self.address}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="walrusfs-metrics", daemon=True)

    def start(self) -> MetricsServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


def serve_metrics(registry: CollectorRegistry, address: str) -> MetricsServer:
    """Serve ``registry`` on ``address`` (HOST:PORT) until ``close``; OSError if it cannot be bound."""
    return MetricsServer(registry, address).start()
