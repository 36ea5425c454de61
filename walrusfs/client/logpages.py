"""Walking a peer's log page by page: heads after a cursor, ranges in byte-bounded replies.

Peers answer ``log-heads`` and ``log-range`` in pages that fit a byte budget, so no log,
however many authors or however large their entries, makes a reply too large to send.
Callers (peer anti-entropy, the client's ``log_entries``, the mount's follower) walk the
pages with these helpers, which check that every page moves forward and holds what was
asked for: a page that does not is a ``MessageError``, that peer's failure. A
``RoundBudget`` caps what one round fetches; the caller keeps a cursor and resumes there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core import messages as m
from ..core.log import Entry, decode_entry
from ..core.messages import LOG_HEADS, LOG_RANGE
from ..core.wire import MessageError, field

#: Entries asked for per range request (a peer sends fewer when they exceed its byte budget).
BATCH = 500

#: call(protocol, **fields) -> the peer's parsed reply.
Call = Callable[..., Awaitable[dict[str, Any]]]


class RoundBudget:
    """Bytes one round of fetching may still take; callers stop and resume next round once it is spent."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def charge(self, size: int) -> None:
        """Count ``size`` fetched bytes."""
        self.left -= size

    @property
    def spent(self) -> bool:
        """Whether this round has fetched its share."""
        return self.left <= 0


@dataclass(frozen=True)
class HeadsPage:
    """One checked ``log-heads`` page: author -> (seq, head ID) in author order, and the reply's other fields."""

    heads: dict[bytes, tuple[int, bytes]]
    more: bool
    reply: dict[str, Any]

    @property
    def last(self) -> bytes | None:
        """The cursor for the next page (the last author listed)."""
        return next(reversed(self.heads), None) if self.heads else None


async def heads_page(call: Call, after: bytes | None) -> HeadsPage:
    """The page of heads after ``after`` (from the start if None), checked."""
    reply = await call(LOG_HEADS, **({} if after is None else {"after": after}))
    m.check_heads_reply(reply, after)
    heads = {bytes.fromhex(a): (h[0], h[1]) for a, h in sorted(reply["heads"].items())}
    return HeadsPage(heads, reply["more"], reply)


async def heads_pages(call: Call, after: bytes | None = None,
                      budget: RoundBudget | None = None) -> AsyncIterator[HeadsPage]:
    """Every heads page after ``after`` in turn, until the last page or ``budget`` is spent (checked after each page)."""
    while True:
        page = await heads_page(call, after)
        if budget is not None:
            budget.charge(len(page.heads) * m.HEAD_BYTES)
        yield page
        if not page.more or (budget is not None and budget.spent):
            return
        after = page.last


def check_range(reply: dict[str, Any], author: bytes, start: int, count: int) -> list[Entry]:
    """The entries of a ``log-range`` reply for ``count`` entries of ``author`` from ``start``; ``MessageError`` unless it holds 1..count of them, in order."""
    raw = field(reply, "entries", list)
    if not raw:
        raise MessageError(f"log-range reply: no entries from seq {start}, though the peer listed them (no progress)")
    if len(raw) > count or not all(isinstance(e, bytes) for e in raw):
        raise MessageError(f"log-range reply: more than the {count} entries asked for, or not byte strings")
    entries = [decode_entry(e) for e in raw]
    for k, entry in enumerate(entries):
        if entry.author != author or entry.seq != start + k:
            raise MessageError(f"log-range reply: entry {k} is not seq {start + k} of the author asked for")
    return entries


async def range_pages(call: Call, author: bytes, start: int, end: int,
                      budget: RoundBudget | None = None) -> AsyncIterator[list[Entry]]:
    """``author``'s entries ``start``..``end`` in checked, byte-bounded pages, until done or ``budget`` is spent."""
    while start <= end:
        count = min(BATCH, end - start + 1)
        entries = check_range(await call(LOG_RANGE, author=author, start=start, count=count), author, start, count)
        if budget is not None:
            budget.charge(sum(len(e.encode()) for e in entries))
        yield entries
        start += len(entries)
        if budget is not None and budget.spent:
            return
