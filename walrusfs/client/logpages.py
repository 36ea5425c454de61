"""Walking a peer's log page by page: heads after a cursor, ranges in byte-bounded replies.

Peers answer ``log-heads`` and ``log-range`` in pages that fit a byte budget, so no log,
however many authors or however large their entries, makes a reply too large to send.
Callers (peer anti-entropy, the client's ``log_entries``, the mount's follower) walk the
pages with these helpers, which check that every page moves forward and holds what was
asked for: a page that does not is a ``MessageError``, that peer's failure. A
``RoundBudget`` caps what one round fetches; the caller keeps a cursor and resumes there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core import messages as m
from ..core.log import Entry, decode_entry
from ..core.messages import LOG_HEADS, LOG_RANGE
from ..core.wire import MessageError, field

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


#: (author, first seq wanted, last seq wanted)
Want = tuple[bytes, int, int]


def check_ranges(reply: dict[str, Any], wants: Sequence[Want]) -> list[list[Entry]]:
    """The entries of a ``log-range`` reply to ``wants``, one list per want answered; ``MessageError`` unless they are what was asked, in order, and at least one.

    ``counts`` gives how many entries each want got (fewer than asked: the peer has no
    more, or its byte budget ended the reply there); the entries follow back to back.
    """
    raw = field(reply, "entries", list)
    counts = field(reply, "counts", list)
    if len(counts) > len(wants) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise MessageError("log-range reply: 'counts' must be at most one count per want")
    if sum(counts) != len(raw) or not all(isinstance(e, bytes) for e in raw):
        raise MessageError("log-range reply: 'entries' must be as many byte strings as 'counts' adds up to")
    if not raw:
        raise MessageError("log-range reply: no entries, though the peer listed them (no progress)")
    out: list[list[Entry]] = []
    offset = 0
    for (author, start, end), count in zip(wants, counts):
        if count > end - start + 1:
            raise MessageError("log-range reply: more entries for an author than asked for")
        part = [decode_entry(e) for e in raw[offset : offset + count]]
        offset += count
        for k, entry in enumerate(part):
            if entry.author != author or entry.seq != start + k:
                raise MessageError(f"log-range reply: an entry is not seq {start + k} of the author asked for")
        out.append(part)
    return out


async def range_pages(call: Call, wants: Sequence[Want], budget: RoundBudget | None = None) -> AsyncIterator[list[Entry]]:
    """The entries ``wants`` name (several authors per request), one checked reply at a time, until done or ``budget`` is spent.

    An author whose entries stop short of what was asked before the reply's last answered
    want is one the peer does not have in full: it is not asked again (a peer that lists
    heads it cannot serve only withholds, and makes no progress once nothing else is left).
    """
    pending = [w for w in wants if w[1] <= w[2]]
    while pending:
        asked = pending[: m.MAX_WANTS]
        reply = await call(LOG_RANGE, wants=[[a, s, min(e - s + 1, 2**31 - 1)] for a, s, e in asked])
        got = check_ranges(reply, asked)
        entries = [e for part in got for e in part]
        if budget is not None:
            budget.charge(sum(len(e.encode()) for e in entries))
        yield entries
        # The last want answered may have been cut by the budget: ask for its rest again.
        author, start, end = asked[len(got) - 1]
        rest = [(author, start + len(got[-1]), end)] if got[-1] and start + len(got[-1]) <= end else []
        pending = rest + pending[len(got):]
        if budget is not None and budget.spent:
            return
