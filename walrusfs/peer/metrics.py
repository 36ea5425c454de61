"""A peer's Prometheus metrics (``walrusfs peer --metrics ADDR``).

Requests and bytes are counted by the handler wrapper as each request is answered. The
rest is read at scrape time from counters the peer's parts already keep (the healer's,
the scrubber's, log replication's, the challenges'): plain integers, read from the
metrics server's thread. Stored bytes, pairs and blobs are SQLite sums, also computed in
that thread (never on the trio loop), at most once per rendering of the page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from ..core import messages as m
from ..core.wire import decode
from ..metrics import ScrapeCollector, new_registry, replace_collector

if TYPE_CHECKING:
    from .service import PeerService

log = logging.getLogger("walrusfs.peer.metrics")

#: An error reply's first bytes: m.error's header is canonical CBOR {"v": 1, "ok": false, "error": ...},
#: so a reply is an error exactly when it starts with them (an ok reply has "ok": true there).
_ERROR_START = m.error("x", "")[:8]
#: Error codes counted under their own name; anything else is "other" (labels stay few).
_CODES = frozenset({m.MALFORMED, m.NOT_FOUND, m.INVALID, m.NOT_ASSIGNED, m.INTERNAL, m.BLOB_INVALID, m.CHALLENGED,
                    m.DISK_FULL, m.BUSY, m.NOT_AUTHORIZED, m.QUOTA_EXCEEDED, m.EXPIRED, m.TOO_EARLY})


def outcome_of(header: bytes) -> str:
    """A reply header's outcome: ``ok``, or its error code (``other`` for a code not in the protocol)."""
    if header[:8] != _ERROR_START:
        return "ok"
    try:
        code = decode(header, m.MAX_HEADER)["error"]["code"]
    except Exception:  # noqa: BLE001 - our own header; a label is all that is at stake
        return "other"
    return code if code in _CODES else "other"


class PeerMetrics:
    """The metrics of one peer: its own registry, the request counters, and a collector over its parts."""

    def __init__(self) -> None:
        self.registry = new_registry()
        self.requests = Counter("walrusfs_peer_requests", "Requests answered, by protocol and outcome (ok or the "
                                "error code).", ["protocol", "outcome"], registry=self.registry)
        self.received = Counter("walrusfs_peer_received_bytes", "Bytes received on request streams (frames, headers "
                                "and bodies), by protocol.", ["protocol"], registry=self.registry)
        self.sent = Counter("walrusfs_peer_sent_bytes", "Bytes of replies sent (headers and bodies), by protocol.",
                            ["protocol"], registry=self.registry)
        self._collector: Collector | None = None

    def arrived(self, protocol: str, count: int) -> None:
        """Count bytes received on a ``protocol`` stream."""
        if count:
            self.received.labels(protocol).inc(count)

    def answered(self, protocol: str, header: bytes, body: Any) -> None:
        """Count one answered request: its outcome and its reply's bytes."""
        self.requests.labels(protocol, outcome_of(header)).inc()
        self.sent.labels(protocol).inc(len(header) + len(body) + 12)  # + the two length prefixes

    def refused(self, protocol: str, outcome: str) -> None:
        """Count a request the framing layer refused (over a limit: busy; malformed)."""
        self.requests.labels(protocol, outcome).inc()

    def watch(self, service: PeerService) -> None:
        """Also report ``service``'s storage, healing, scrubbing, log and challenge figures."""
        self._collector = replace_collector(self.registry, self._collector, _PeerCollector(service))


def _counter(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels) if labels else None)
    family.add_metric(list(labels.values()) if labels else [], value)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by(family: CounterMetricFamily | GaugeMetricFamily, values: dict[str, int]) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in dict(values).items():  # a copy: the trio thread updates the dict meanwhile
        family.add_metric([label], value)
    return family


class _PeerCollector(ScrapeCollector):
    """Reads a running peer's figures at scrape time (in the metrics server's thread)."""

    def __init__(self, service: PeerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        """Every figure, as metric families."""
        s = self.service
        info = GaugeMetricFamily("walrusfs_peer_info", "This peer: its ID, index in the committee and version (always 1).",
                                 labels=["peer_id", "index", "version"])
        info.add_metric([s.identity.peer_id, str(s.index), __version__], 1)
        yield info
        yield from self._storage()
        yield from self._healing()
        yield from self._log()
        yield from self._challenges()

    def _storage(self) -> Iterator[Any]:
        store = self.service.store
        try:
            blobs, stored = store.stats()
            pairs = store.count_pairs()
            free = store.free_bytes()
            reclaimed = store.counter("reclaimed")
        except Exception as exc:  # noqa: BLE001 - the store closing at shutdown; the rest of the page still helps
            log.debug("metrics: storage figures unavailable: %s", exc)
            return
        yield _gauge("walrusfs_peer_stored_bytes", "Bytes of sliver pairs stored.", stored)
        yield _gauge("walrusfs_peer_stored_pairs", "Sliver pairs stored.", pairs)
        yield _gauge("walrusfs_peer_stored_blobs", "Blobs whose metadata is stored.", blobs)
        yield _gauge("walrusfs_peer_free_bytes", "Free space on the disk holding the peer's data.", free)
        yield _gauge("walrusfs_peer_disk_full", "1 while uploads are refused for want of disk space (below --min-free).",
                     int(free < store.min_free))
        yield _counter("walrusfs_peer_reclaimed_bytes", "Bytes freed by blobs no registration holds any more "
                       "(kept across restarts).", reclaimed)

    def _healing(self) -> Iterator[Any]:
        healer = self.service.healer
        h = healer.stats
        queued, healing = healer.backlog()
        yield _gauge("walrusfs_peer_heal_queue", "Blobs waiting to be healed (scheduled or retrying).", queued)
        yield _gauge("walrusfs_peer_healing", "Blobs being healed now.", healing)
        yield _counter("walrusfs_peer_healed_blobs", "Blobs whose missing or damaged pairs were rebuilt.", h.healed_blobs)
        yield _counter("walrusfs_peer_healed_pairs", "Sliver pairs rebuilt.", h.healed_pairs)
        yield _counter("walrusfs_peer_rebuilt_bytes", "Bytes of sliver pairs rebuilt.", h.rebuilt_bytes)
        yield _counter("walrusfs_peer_heal_downloaded_bytes", "Bytes received to rebuild pairs (recovery symbols, "
                       "proofs, metadata).", h.downloaded_bytes + h.metadata_bytes)
        yield _counter("walrusfs_peer_heal_failures", "Heal attempts that failed and were retried later.",
                       h.failed_attempts)
        yield _counter("walrusfs_peer_inconsistent_blobs", "Blobs healing found inconsistently encoded.",
                       h.inconsistent)
        yield _counter("walrusfs_peer_scrub_passes", "Completed scrub passes over every stored pair.", h.scrub_passes)
        yield _gauge("walrusfs_peer_scrub_checked_pairs", "Pairs verified so far in the current scrub pass.",
                     h.scrub_checked)
        yield _gauge("walrusfs_peer_scrub_pass_pairs", "Pairs the current scrub pass covers.", h.scrub_total)
        yield _counter("walrusfs_peer_scrub_bytes", "Bytes the scrubber read and verified.", h.scrub_bytes)
        yield _counter("walrusfs_peer_scrub_damaged_pairs", "Pairs the scrubber found missing or damaged.",
                       h.scrub_damaged)

    def _log(self) -> Iterator[Any]:
        replica = self.service.log
        yield _gauge("walrusfs_peer_log_entries", "Log entries accepted into this replica.", replica.state.size)
        yield _by(CounterMetricFamily("walrusfs_peer_log_offered_entries", "Log entries offered to this replica "
                                      "(pushed, submitted or pulled), by outcome.", labels=["outcome"]),
                  replica.offered)
        yield _by(CounterMetricFamily("walrusfs_peer_anti_entropy_exchanges", "Anti-entropy exchanges with another "
                                      "peer, by outcome (ok, failed, silent).", labels=["outcome"]), replica.exchanges)
        yield _counter("walrusfs_peer_anti_entropy_pulled_entries", "Log entries fetched by anti-entropy.",
                       replica.pulled_entries)
        yield _gauge("walrusfs_peer_anti_entropy_lag_entries", "Entries new to this replica that the last completed "
                     "anti-entropy exchange brought (0: it was caught up).", replica.lag_entries)
        yield _gauge("walrusfs_peer_anti_entropy_last_success_timestamp_seconds", "When the last anti-entropy "
                     "exchange completed (Unix time; 0: none yet).", replica.last_exchange)

    def _challenges(self) -> Iterator[Any]:
        challenges = self.service.challenges
        yield _gauge("walrusfs_peer_challenge_round", "The newest valid storage challenge round (0: none yet).",
                     challenges.newest_round)
        yield _by(CounterMetricFamily("walrusfs_peer_challenge_rounds_ended", "Challenge rounds that ended since "
                                      "start-up, by this peer's result (passed, failed, unproven; void: the start "
                                      "never counted).", labels=["result"]), challenges.rounds_ended)
        yield _by(CounterMetricFamily("walrusfs_peer_challenge_proofs_checked", "Other peers' possession proofs this "
                                      "peer checked, by verdict (attested, refused).", labels=["verdict"]),
                  challenges.proofs_checked)
        yield _counter("walrusfs_peer_challenge_refused_reads", "Reads refused because a round challenges the blob.",
                       challenges.refused_reads)
