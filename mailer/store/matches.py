"""Matches: which paper matched which subscriber, and how, until a digest
claims them (``Outbox.enqueue_many``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, String, cast, select, update
from sqlalchemy.exc import DBAPIError

from mailer.analysis import Stats
from mailer.papers import Paper
from mailer.store.papers import add_statistics
from mailer.store.schema import (
    MATCHES,
    PAPER_COLUMNS,
    PAPERS,
    Transaction,
    paper_from_row,
    sqlite_cache,
)


class NewMatch(NamedTuple):
    """One paper matched for one subscriber, as recorded: the subscriptions
    it matched, each one's terms and score, and all terms heaviest first. A
    named tuple: a pass builds hundreds of thousands, in a third of the time
    a frozen dataclass takes."""

    subscriber_id: int
    paper_id: int
    subscriptions: tuple[str, ...]
    subscription_terms: tuple[tuple[str, ...], ...]
    scores: tuple[float, ...]
    terms: tuple[str, ...]


# A match row's fields in ``NewMatch``'s order as a plain tuple, as a
# worker process that matched them hands them back: plain tuples pickle
# five times faster than named ones, whose constructor is Python.
MatchFields = tuple[
    int, int, tuple[str, ...], tuple[tuple[str, ...], ...], tuple[float, ...], tuple[str, ...]
]


class PendingMatch(NamedTuple):
    """A recorded match not yet claimed by a digest, as composing reads it
    (a named tuple: a pass reads hundreds of thousands)."""

    id: int
    paper: Paper
    subscriptions: tuple[str, ...]
    subscription_terms: tuple[tuple[str, ...], ...]
    scores: tuple[float, ...]
    first_seen_at: datetime
    paper_id: int | None = None
    # All its terms, heaviest first, and the papers the statistics of its
    # scores had counted (``MatchRow.scored_papers``; None: unknown).
    terms: tuple[str, ...] = ()
    scored_papers: int | None = None


class Matches:
    """Reads and writes of the matches table (and papers' ``matched`` flag)."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def record_matches(
        self,
        paper_ids: Sequence[int],
        matches: Iterable[MatchFields],
        now: datetime,
        counted: Stats | None = None,
        scored_papers: int | None = None,
    ) -> int:
        """Store matches, mark the papers matched and add ``counted`` (those
        papers' statistics) to the corpus, together, so no paper is matched
        or counted twice or never. ``scored_papers``: how many papers the
        statistics the matches were scored against had counted."""
        with self._transaction() as conn:
            recorded = _insert_matches(conn, matches, now, scored_papers)
            for start in range(0, len(paper_ids), 1000):
                chunk = paper_ids[start : start + 1000]
                conn.execute(update(PAPERS).where(PAPERS.c.id.in_(chunk)).values(matched=True))
            if counted is not None:
                add_statistics(conn, counted)
        return recorded

    def add_matches(
        self,
        subscriber_id: int,
        matches: Iterable[NewMatch],
        now: datetime,
        scored_papers: int | None = None,
    ) -> int:
        """Record matches for one subscriber, skipping papers they already
        have a match for (``scored_papers`` as for ``record_matches``)."""
        with self._transaction() as conn:
            have = set(
                conn.execute(
                    select(MATCHES.c.paper_id).where(MATCHES.c.subscriber_id == subscriber_id)
                ).scalars()
            )
            new = []
            for m in matches:
                if m.paper_id not in have:
                    new.append(m)
                    have.add(m.paper_id)
            return _insert_matches(conn, new, now, scored_papers)

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
                        MATCHES.c.scored_papers,
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
                for match_id, subscriber_id, paper_id, subs, terms, scores, each, n in matches:
                    paper, first_seen = papers[paper_id]
                    names = _json_tuple(subs)
                    found[subscriber_id].append(
                        PendingMatch(
                            id=match_id,
                            paper=paper,
                            subscriptions=names,
                            subscription_terms=_subscription_terms(each, terms, len(names)),
                            scores=_json_tuple(scores),
                            first_seen_at=first_seen,
                            paper_id=paper_id,
                            terms=_json_tuple(terms),
                            scored_papers=n,
                        )
                    )
        return found


@lru_cache(maxsize=16384)
def _json_tuple(raw: str) -> tuple[Any, ...]:
    """A JSON list column read as text, decoded once per distinct value:
    subscription names and matched terms repeat row after row, and so do
    half the scores (a term weighs the same in a paper for every reader)."""
    return tuple(json.loads(raw))


@lru_cache(maxsize=16384)
def _json_nested(raw: str) -> tuple[tuple[str, ...], ...]:
    """A JSON list of lists of terms, decoded once per distinct value."""
    return tuple(tuple(t) for t in json.loads(raw))


def _subscription_terms(each: str | None, terms: str, count: int) -> tuple[tuple[str, ...], ...]:
    """Each subscription's terms of a match row; rows recorded before these
    were kept have only all terms, which then stand for each subscription."""
    if each is None or each == "null":
        return (_json_tuple(terms),) * count
    return _json_nested(each)


# The matches table's columns as ``_insert_matches`` fills them, in order.
_COLUMNS = (
    "subscriber_id, paper_id, subscriptions, terms, scores, subscription_terms, created_at,"
    " scored_papers"
)
_SQLITE_INSERT = (
    f"INSERT INTO {MATCHES.name} ({_COLUMNS}, delivery_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)"
)
_POSTGRES_COPY = f"COPY {MATCHES.name} ({_COLUMNS}) FROM STDIN"


def _insert_matches(
    conn: Connection, matches: Iterable[MatchFields], now: datetime, scored_papers: int | None
) -> int:
    """Insert match rows, in order, with their JSON columns holding the text
    SQLAlchemy's JSON type would have written (``json.dumps``), so every
    reader sees the same values. Bypasses Core's per-row bind processing,
    which cost 20 us a row (four JSON encodings each): a pass records
    hundreds of thousands. The JSON of names and terms repeats from row to
    row and is encoded once per distinct value; so do half the scores (the
    subscribers of one word share its weight in a paper). On PostgreSQL by
    COPY into the json columns; on SQLite by the driver's executemany."""
    # The time as the column's type binds it (UTCDateTime: aware, in UTC).
    process = MATCHES.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    at = process(now) if process else now
    encoded: dict[Any, str] = {}
    numbers: dict[tuple[float, ...], str] = {}
    rows = []
    for subscriber_id, paper_id, subs, each, scores, terms in matches:
        # (JSON text is never empty, so ``or`` falls through on a miss alone.)
        subs_json = encoded.get(subs) or encoded.setdefault(subs, json.dumps(list(subs)))
        terms_json = encoded.get(terms) or encoded.setdefault(terms, json.dumps(list(terms)))
        if len(each) == 1 and each[0] == terms:
            each_json = f"[{terms_json}]"  # one subscription: what json.dumps gives
        else:
            each_json = encoded.get(each) or encoded.setdefault(
                each, json.dumps([list(t) for t in each])
            )
        scores_json = numbers.get(scores)
        if scores_json is None:
            scores_json = _scores_json(scores)
            if all(scores):  # 0.0 == -0.0: zeros are written out each time
                numbers[scores] = scores_json
        rows.append(
            (
                subscriber_id,
                paper_id,
                subs_json,
                terms_json,
                scores_json,
                each_json,
                at,
                scored_papers,
            )
        )
    if not rows:
        return 0
    # Each subscriber's rows together (in their order), so that a table
    # kept in insertion order holds them on a few pages: a digest reads and
    # claims them all, which otherwise touches a page per match, rewriting
    # most of the table for every hundred digests.
    rows.sort(key=itemgetter(0))
    if conn.dialect.name == "postgresql":
        _copy(conn, _POSTGRES_COPY, rows)
    else:
        with sqlite_cache(conn):
            conn.exec_driver_sql(_SQLITE_INSERT, rows)
    return len(rows)


def _copy(conn: Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    """COPY ``rows`` in through psycopg, in ``conn``'s transaction; its errors
    raised as SQLAlchemy's, as a Core statement's would be (the store names
    those, see ``Store.transaction``)."""
    dbapi = conn.dialect.loaded_dbapi
    driver: Any = conn.connection.driver_connection
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=conn.dialect) from exc


def _scores_json(scores: tuple[float, ...]) -> str:
    """``json.dumps`` of the scores, written out directly for finite floats
    (their JSON is their repr): the one column that does not repeat."""
    try:
        if len(scores) == 1:
            text = f"[{float.__repr__(scores[0])}]"
        else:
            text = "[" + ", ".join(map(float.__repr__, scores)) + "]"
    except TypeError:
        return json.dumps(list(scores))
    return json.dumps(list(scores)) if "n" in text else text
