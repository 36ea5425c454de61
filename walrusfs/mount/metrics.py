"""A mount's Prometheus metrics (``walrusfs mount --metrics ADDR``).

Counters and histograms are updated where the mount learns the outcome (a read answered,
a chunk found in a cache or fetched, a blob certified, a file's write signed); the gauges
(pending uploads, cache size) are read from the mount's state at scrape time, in the
metrics server's thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..metrics import ScrapeCollector, new_registry, replace_collector

if TYPE_CHECKING:
    from .contents import Contents

#: Seconds: from a cached read (well under a millisecond) to a large chunk fetched from slow peers.
_READ_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class MountMetrics:
    """The metrics of one mount, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = new_registry()
        self.read_seconds = Histogram("walrusfs_mount_read_seconds", "Time to answer a read of a file (staged, "
                                      "cached or fetched).", buckets=_READ_BUCKETS, registry=registry)
        self.read_bytes = Counter("walrusfs_mount_read_bytes", "Bytes returned to reads of files.", registry=registry)
        self.read_errors = Counter("walrusfs_mount_read_errors", "Reads that failed (invalid blob, too few peers, ...).",
                                   registry=registry)
        self.cache_hits = Counter("walrusfs_mount_cache_hits", "Chunk lookups answered from a cache (memory: recent "
                                  "chunks; disk: the verified chunk cache).", ["cache"], registry=registry)
        self.cache_misses = Counter("walrusfs_mount_cache_misses", "Chunk lookups that had to fetch from the peers.",
                                    registry=registry)
        self.fetch_seconds = Histogram("walrusfs_mount_fetch_seconds", "Time of one verified read from the peers "
                                       "(a chunk, a range of one, or rows of a pack).", buckets=_READ_BUCKETS,
                                       registry=registry)
        self.fetched_bytes = Counter("walrusfs_mount_fetched_bytes", "Verified bytes fetched from the peers.",
                                     registry=registry)
        self.upload_seconds = Histogram("walrusfs_mount_upload_seconds", "Time to store one blob (a chunk or a pack) "
                                        "until it is certified.", buckets=_UPLOAD_BUCKETS, registry=registry)
        self.stored_blobs = Counter("walrusfs_mount_stored_blobs", "Blobs stored (chunks and packs).",
                                    registry=registry)
        self.stored_bytes = Counter("walrusfs_mount_stored_bytes", "Bytes of the blobs stored (before encoding).",
                                    registry=registry)
        self.deduplicated_blobs = Counter("walrusfs_mount_deduplicated_blobs", "Chunks not stored because the volume "
                                          "holds their blob already.", registry=registry)
        self.uploads = Counter("walrusfs_mount_uploads", "Files uploaded: their version stored and its write signed.",
                               registry=registry)
        self.upload_failures = Counter("walrusfs_mount_upload_failures", "File uploads that failed (retried later).",
                                       registry=registry)
        self._collector: Collector | None = None

    def watch(self, contents: Contents) -> None:
        """Also report ``contents``' pending uploads and cache size."""
        self._collector = replace_collector(self.registry, self._collector, _MountCollector(contents))


class _MountCollector(ScrapeCollector):
    """Reads a mount's gauges at scrape time (in the metrics server's thread)."""

    def __init__(self, contents: Contents) -> None:
        self.contents = contents

    def collect(self) -> Iterator[Any]:
        """The gauges, as metric families."""
        c = self.contents
        yield GaugeMetricFamily("walrusfs_mount_pending_uploads", "Files staged here and not uploaded yet.",
                                value=len(c.staged))
        yield GaugeMetricFamily("walrusfs_mount_uploading", "Files being uploaded now.", value=len(c.progress))
        yield GaugeMetricFamily("walrusfs_mount_refused_uploads", "Staged files the peers refused for want of a grant "
                                "or quota (retried).", value=len(c.denied))
        yield GaugeMetricFamily("walrusfs_mount_cache_bytes", "Bytes in the verified chunk cache on disk.",
                                value=c.cache.total)
        yield CounterMetricFamily("walrusfs_mount_packs", "Packs stored (several small files in one blob).",
                                  value=c.packs_stored)
        yield CounterMetricFamily("walrusfs_mount_packed_files", "Files stored in packs.", value=c.files_packed)
