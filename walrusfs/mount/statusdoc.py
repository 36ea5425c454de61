"""The status document of a mount, in pieces that fit extended attributes.

The kernel refuses an extended attribute over 64 KiB (E2BIG), and one pending upload takes
about 300 bytes of JSON, so a few hundred pending files used to make ``walrusfs status``
fail. ``user.walrus.status`` now stays under ``SUMMARY_LIMIT``: every count and the first
pending uploads, with ``pending_count`` the total. When the list does not fit, the document
names a snapshot and its number of pages; ``user.walrus.status.SNAPSHOT.K`` (K from 1) is
page K of that snapshot's whole pending list, served from memory, so the pages a reader
fetches one by one belong together. The last few snapshots are kept; a reader that asks
for an evicted one gets ENODATA and starts again from the summary.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import OrderedDict
from typing import Any

#: The summary and every page stay well below the kernel's 64 KiB (XATTR_SIZE_MAX).
SUMMARY_LIMIT = 48 << 10
PAGE_LIMIT = 56 << 10
KEPT_SNAPSHOTS = 8
#: One pending item never carries more than this many failed chunks, nor errors longer than this.
ITEM_FAILED_CHUNKS = 8
ITEM_TEXT = 1000
PAGE_NAME = re.compile(r"^status\.(\d+)\.(\d+)$")


def _short(text: Any) -> Any:
    if isinstance(text, str) and len(text) > ITEM_TEXT:
        return text[:ITEM_TEXT] + "…"
    return text


def trim_item(item: dict[str, Any]) -> dict[str, Any]:
    """A pending item of bounded size (a file of 1,900 failed chunks would not fit a page)."""
    out = {key: _short(value) for key, value in item.items()}
    failed = item.get("failed_chunks") or {}
    if len(failed) > ITEM_FAILED_CHUNKS:
        out["failed_chunks"] = {k: _short(v) for k, v in itertools.islice(failed.items(), ITEM_FAILED_CHUNKS)}
        out["failed_chunk_count"] = len(failed)
    elif failed:
        out["failed_chunks"] = {k: _short(v) for k, v in failed.items()}
    return out


class StatusPages:
    """Renders status documents for ``user.walrus.status`` and keeps their pages for a while."""

    def __init__(self) -> None:
        self._snapshots: OrderedDict[int, list[bytes]] = OrderedDict()
        self._ids = itertools.count(1)

    def render(self, status: dict[str, Any]) -> bytes:
        """The summary document of ``status`` (its ``pending`` list cut to fit, pages kept if cut)."""
        pending = [json.dumps(trim_item(item)) for item in status.get("pending", [])]
        rest = {k: v for k, v in status.items() if k != "pending"}
        rest["pending_count"] = len(pending)
        whole = json.dumps({**rest, "pending": []})[:-3]  # ends in '[]}': the items go between
        if len(whole) + sum(len(p) + 2 for p in pending) + 3 <= SUMMARY_LIMIT:
            return (whole + "[" + ", ".join(pending) + "]}").encode()
        pages: list[list[str]] = [[]]
        size = 0
        for item in pending:
            if pages[-1] and size + len(item) + 2 > PAGE_LIMIT:
                pages.append([])
                size = 0
            pages[-1].append(item)
            size += len(item) + 2
        snapshot = next(self._ids)
        self._snapshots[snapshot] = [("[" + ", ".join(page) + "]").encode() for page in pages]
        while len(self._snapshots) > KEPT_SNAPSHOTS:
            self._snapshots.popitem(last=False)
        rest.update(pending_pages=len(pages), status_snapshot=snapshot)
        head = json.dumps({**rest, "pending": []})[:-3]
        shown: list[str] = []
        budget = SUMMARY_LIMIT - len(head) - 3
        for item in pending:
            if len(item) + 2 > budget:
                break
            shown.append(item)
            budget -= len(item) + 2
        return (head + "[" + ", ".join(shown) + "]}").encode()

    def page(self, name: str) -> bytes | None:
        """The attribute ``status.SNAPSHOT.K`` (without the ``user.walrus.`` prefix), or None."""
        match = PAGE_NAME.match(name)
        if match is None:
            return None
        pages = self._snapshots.get(int(match.group(1)))
        index = int(match.group(2))
        if pages is None or not 1 <= index <= len(pages):
            return None
        return pages[index - 1]


def incomplete_note(note: dict[str, Any]) -> str:
    """The ``user.walrus.incomplete`` text of a file a stopped mount left half written."""
    noticed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(note.get("noticed") or 0))
    return (f"open for writing when the mount stopped (noticed at its restart, {noticed}): it holds the "
            f"{note.get('size')} bytes that had reached the mount, maybe not all that was written; "
            "remove this attribute once checked (setfattr -x user.walrus.incomplete FILE)")
