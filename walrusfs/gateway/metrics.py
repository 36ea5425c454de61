"""The gateway's Prometheus metrics (``walrusfs gateway --metrics ADDR``).

An ASGI wrapper around the gateway app counts every HTTP exchange by method, route
template and status, the body bytes each way, and how long it took. Labels come from fixed
sets only (the route table's templates, a few methods, the status code), so requests for
made-up paths or methods cannot grow the page.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..metrics import ScrapeCollector, new_registry, replace_collector

if TYPE_CHECKING:
    from .app import Gateway

_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
#: The route label of a path no route matches.
UNMATCHED = "unmatched"
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """The metrics of one gateway, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = new_registry()
        self.requests = Counter("walrusfs_gateway_requests", "HTTP requests answered, by method, route (the route's "
                                "template, or unmatched) and status (none: the client left before an answer began).",
                                ["method", "route", "status"], registry=registry)
        self.received = Counter("walrusfs_gateway_received_bytes", "Request body bytes received, by route.",
                                ["route"], registry=registry)
        self.sent = Counter("walrusfs_gateway_sent_bytes", "Response body bytes sent, by route.", ["route"],
                            registry=registry)
        self.seconds = Histogram("walrusfs_gateway_request_seconds", "Time from a request's arrival to the end of "
                                 "its answer, by route.", ["route"], buckets=_BUCKETS, registry=registry)
        self._collector: Collector | None = None

    def wrap(self, app: Gateway) -> Any:
        """``app`` as an ASGI app whose HTTP exchanges are counted (and its in-flight figures reported)."""
        self._collector = replace_collector(self.registry, self._collector, _GatewayCollector(app))
        routes = [(route.template, route.pattern) for route in app.routes]

        def route_of(path: str) -> str:
            return next((template for template, pattern in routes if pattern.match(path)), UNMATCHED)

        async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            route = route_of(scope.get("path", ""))
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            status = "none"
            received = sent = 0
            started = time.perf_counter()

            async def counting_receive() -> dict[str, Any]:
                nonlocal received
                message = await receive()
                if message.get("type") == "http.request":
                    received += len(message.get("body", b""))
                return message  # type: ignore[no-any-return]

            async def counting_send(message: dict[str, Any]) -> None:
                nonlocal status, sent
                if message["type"] == "http.response.start":
                    status = str(int(message["status"]))
                elif message["type"] == "http.response.body":
                    sent += len(message.get("body", b""))
                await send(message)

            try:
                await app(scope, counting_receive, counting_send)
            finally:
                self.requests.labels(method, route, status).inc()
                self.received.labels(route).inc(received)
                self.sent.labels(route).inc(sent)
                self.seconds.labels(route).observe(time.perf_counter() - started)

        return counted


class _GatewayCollector(ScrapeCollector):
    """The gateway's in-flight figures, read at scrape time."""

    def __init__(self, app: Gateway) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        """The gauges, as metric families."""
        yield GaugeMetricFamily("walrusfs_gateway_requests_in_progress", "Requests being served now, counted against "
                                "--max-requests.", value=self.app.requests)
        yield GaugeMetricFamily("walrusfs_gateway_stores_in_progress", "Stores in progress, counted against "
                                "--max-stores.", value=self.app.stores)
