"""Matches: which paper matched which subscriber, and how, until a digest
claims them (``Outbox.enqueue_many``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import String, cast, insert, select, update

from mailer.analysis import Stats
from mailer.papers import Paper
from mailer.store.papers import add_statistics
from mailer.store.schema import MATCHES, PAPER_COLUMNS, PAPERS, Transaction, paper_from_row


@dataclass(frozen=True, slots=True)
class NewMatch:
    """One paper matched for one subscriber, as recorded: the subscriptions
    it matched, each one's terms and score, and all terms heaviest first."""

    subscriber_id: int
    paper_id: int
    subscriptions: tuple[str, ...]
    subscription_terms: tuple[tuple[str, ...], ...]
    scores: tuple[float, ...]
    terms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PendingMatch:
    id: int
    paper: Paper
    subscriptions: tuple[str, ...]
    subscription_terms: tuple[tuple[str, ...], ...]
    scores: tuple[float, ...]
    first_seen_at: datetime
    paper_id: int | None = None


class Matches:
    """Reads and writes of the matches table (and papers' ``matched`` flag)."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def record_matches(
        self,
        paper_ids: Sequence[int],
        matches: Iterable[NewMatch],
        now: datetime,
        counted: Stats | None = None,
    ) -> int:
        """Store matches, mark the papers matched and add ``counted`` (those
        papers' statistics) to the corpus, together, so no paper is matched
        or counted twice or never."""
        with self._transaction() as conn:
            rows = [_match_values(m, now) for m in matches]
            if rows:
                conn.execute(insert(MATCHES), rows)
            for start in range(0, len(paper_ids), 1000):
                chunk = paper_ids[start : start + 1000]
                conn.execute(update(PAPERS).where(PAPERS.c.id.in_(chunk)).values(matched=True))
            if counted is not None:
                add_statistics(conn, counted)
        return len(rows)

    def add_matches(self, subscriber_id: int, matches: Iterable[NewMatch], now: datetime) -> int:
        """Record matches for one subscriber, skipping papers they already
        have a match for."""
        with self._transaction() as conn:
            have = set(
                conn.execute(
                    select(MATCHES.c.paper_id).where(MATCHES.c.subscriber_id == subscriber_id)
                ).scalars()
            )
            rows = []
            for m in matches:
                if m.paper_id not in have:
                    rows.append(_match_values(m, now))
                    have.add(m.paper_id)
            if rows:
                conn.execute(insert(MATCHES), rows)
            return len(rows)

    def pending_matches(self, subscriber_id: int) -> list[PendingMatch]:
        """One subscriber's unclaimed matches, oldest first."""
        return self.pending_matches_for([subscriber_id])[subscriber_id]

    def pending_matches_for(
        self,
        subscriber_ids: Sequence[int],
        papers: dict[int, tuple[Paper, datetime]] | None = None,
    ) -> dict[int, list[PendingMatch]]:
        """Unclaimed matches of many subscribers at once, oldest first. Plain
        column queries, JSON read as text and decoded once per distinct value
        (``_json_tuple``), each paper read once: this runs for every digest.
        ``papers`` (id: paper, first seen), when given, holds papers already
        read, and gets those read now: the chunks of one compose stage share
        most of their papers, which do not change while it runs."""
        found: dict[int, list[PendingMatch]] = {i: [] for i in subscriber_ids}
        papers = {} if papers is None else papers
        with self._transaction() as conn:
            for start in range(0, len(subscriber_ids), 500):
                chunk = subscriber_ids[start : start + 500]
                matches = conn.execute(
                    select(
                        MATCHES.c.id,
                        MATCHES.c.subscriber_id,
                        MATCHES.c.paper_id,
                        cast(MATCHES.c.subscriptions, String),
                        cast(MATCHES.c.terms, String),
                        cast(MATCHES.c.scores, String),
                        cast(MATCHES.c.subscription_terms, String),
                    )
                    .where(MATCHES.c.subscriber_id.in_(chunk), MATCHES.c.delivery_id.is_(None))
                    .order_by(MATCHES.c.id)
                ).all()
                wanted = sorted({m[2] for m in matches} - papers.keys())
                for at in range(0, len(wanted), 1000):
                    for row in conn.execute(
                        select(PAPERS.c.id, *PAPER_COLUMNS, PAPERS.c.first_seen_at).where(
                            PAPERS.c.id.in_(wanted[at : at + 1000])
                        )
                    ).mappings():
                        papers[row["id"]] = (paper_from_row(row), row["first_seen_at"])
                for match_id, subscriber_id, paper_id, subs, terms, scores, each in matches:
                    paper, first_seen = papers[paper_id]
                    names = _json_tuple(subs)
                    found[subscriber_id].append(
                        PendingMatch(
                            id=match_id,
                            paper=paper,
                            subscriptions=names,
                            subscription_terms=_subscription_terms(each, terms, len(names)),
                            scores=tuple(json.loads(scores)),
                            first_seen_at=first_seen,
                            paper_id=paper_id,
                        )
                    )
        return found


@lru_cache(maxsize=4096)
def _json_tuple(raw: str) -> tuple[Any, ...]:
    """A JSON list column read as text, decoded once per distinct value:
    subscription names and matched terms repeat row after row (scores don't)."""
    return tuple(json.loads(raw))


def _subscription_terms(each: str | None, terms: str, count: int) -> tuple[tuple[str, ...], ...]:
    """Each subscription's terms of a match row; rows recorded before these
    were kept have only all terms, which then stand for each subscription."""
    if each is None or each == "null":
        return (_json_tuple(terms),) * count
    return tuple(tuple(t) for t in json.loads(each))


def _match_values(m: NewMatch, now: datetime) -> dict[str, Any]:
    return {
        "subscriber_id": m.subscriber_id,
        "paper_id": m.paper_id,
        "subscriptions": list(m.subscriptions),
        "terms": list(m.terms),
        "scores": list(m.scores),
        "subscription_terms": [list(t) for t in m.subscription_terms],
        "created_at": now,
        "delivery_id": None,
    }
