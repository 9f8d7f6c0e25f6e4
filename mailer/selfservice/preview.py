"""Trying a query on the last 30 days' papers, as ``mailer subs try`` does,
for the pages' live checks and previews.

The papers of the window are read and analysed once, then kept for
``REFRESH_SECONDS``: a check is then a parse and one pass of the plain
evaluator over analysed papers (ops.try_query, the function ``subs try``
uses), not a database read and an analysis per keystroke.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.errors import QueryError
from mailer.matching import Doc, parse_query
from mailer.ops import try_query
from mailer.papers import Paper

WINDOW_DAYS = 30
SHOWN = 5  # papers listed under a query; the rest are counted
REFRESH_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ShownPaper:
    """A matched paper's title in pieces, each marked or not (the template
    escapes each piece), and its date."""

    title: tuple[tuple[str, bool], ...]
    published: str | None
    terms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """A query as the pages show it: the parser's error with its position,
    or how many of the window's papers it matches and the newest of them."""

    query: str
    error: str | None = None
    position: int | None = None
    matched: int = 0
    of: int = 0
    papers: tuple[ShownPaper, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def around(self, width: int = 30) -> tuple[str, str, str]:
        """(before, at, after) the error's position, a window of the query."""
        pos = self.position if self.position is not None else len(self.query)
        start = max(0, pos - width)
        at = self.query[pos : pos + 1] or " "
        before = ("…" if start else "") + self.query[start:pos]
        tail = self.query[pos + 1 : pos + 1 + width]
        after = tail + ("…" if pos + 1 + width < len(self.query) else "")
        return before, at, after


def marked(text: str, marks: Sequence[tuple[int, int]]) -> tuple[tuple[str, bool], ...]:
    """``text`` cut at ``marks``: (piece, marked) in order."""
    pieces: list[tuple[str, bool]] = []
    at = 0
    for start, end in sorted(marks):
        if start < at:
            continue
        if start > at:
            pieces.append((text[at:start], False))
        pieces.append((text[start:end], True))
        at = end
    if at < len(text):
        pieces.append((text[at:], False))
    return tuple(pieces)


def check_query(query: str, docs: Sequence[Paper | Doc]) -> Check:
    """``query`` tried on ``docs`` (oldest first); the newest matches are shown."""
    try:
        parsed = parse_query(query)
    except QueryError as exc:
        return Check(query, error=exc.message, position=exc.position)
    found = try_query(parsed, docs)
    shown = tuple(
        ShownPaper(
            marked(t.paper.title, t.title_marks),
            t.paper.published.isoformat() if t.paper.published else None,
            t.terms,
        )
        for t in reversed(found[-SHOWN:])
    )
    return Check(query, matched=len(found), of=len(docs), papers=shown)


class RecentPapers:
    """The last ``WINDOW_DAYS`` days' papers, analysed, reread at most every
    ``REFRESH_SECONDS``; safe to call from several threads."""

    def __init__(
        self,
        load: Callable[[datetime], list[tuple[int, Paper]]],
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._docs: list[Doc] = []
        self._read_at: float | None = None

    def docs(self) -> list[Doc]:
        with self._lock:
            now = self._monotonic()
            if self._read_at is None or now - self._read_at >= REFRESH_SECONDS:
                since = self._clock() - timedelta(days=WINDOW_DAYS)
                self._docs = [Doc(paper) for _, paper in self._load(since)]
                self._read_at = now
            return self._docs
