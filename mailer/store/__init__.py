"""The database: dumps ingested, papers seen, subscribers, matches and the outbox.

Every state change a crash could interrupt happens in one transaction:
a dump and its papers together; matches together with the papers they cover;
a composed message together with the matches it claims. SQLite (WAL) by
default; the same code runs on PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    LargeBinary,
    String,
    UniqueConstraint,
    bindparam,
    cast,
    event,
    func,
    or_,
    text,
)
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.schema import Table
from sqlalchemy.sql.expression import insert, update
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from mailer.analysis import Stats
from mailer.errors import StoreError
from mailer.papers import Paper, paper_key


class DumpStatus(StrEnum):
    """What became of a dump file."""

    INGESTED = "ingested"
    EMPTY = "empty"  # a dump with no records
    REFUSED = "refused"  # not a dump; the reason is kept


class DeliveryStatus(StrEnum):
    """Where a message in the outbox stands. A pending message with attempts
    is what an operator calls deferred (see ``display_status``)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # recipient unsubscribed or removed before sending


class DumpRow(SQLModel, table=True):
    __tablename__ = "dumps"

    id: int | None = Field(default=None, primary_key=True)
    path: str
    sha256: str = Field(unique=True, max_length=64)
    size: int
    ingested_at: datetime
    page_date: date | None = None
    records: int = 0
    new_papers: int = 0
    seen_papers: int = 0
    warnings: int = 0
    status: str = Field(max_length=16)  # a DumpStatus
    error: str | None = None


class PaperRow(SQLModel, table=True):
    __tablename__ = "papers"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True)
    title: str
    abstract: str
    authors: int | None = None
    organization: str | None = None
    published: date | None = None
    upvotes: int = 0
    first_seen_at: datetime = Field(index=True)
    first_dump_id: int | None = Field(default=None, foreign_key="dumps.id")
    matched: bool = Field(default=False, index=True)

    def paper(self) -> Paper:
        return Paper(
            title=self.title,
            abstract=self.abstract,
            authors=self.authors,
            organization=self.organization,
            published=self.published,
            upvotes=self.upvotes,
        )


class SubscriberRow(SQLModel, table=True):
    __tablename__ = "subscribers"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)
    name: str = ""
    active: bool = True  # false once removed from the config
    created_at: datetime
    unsubscribed_at: datetime | None = None


class SubscriptionRow(SQLModel, table=True):
    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("subscriber_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscribers.id", index=True)
    name: str
    query: str
    active: bool = True


class DeliveryRow(SQLModel, table=True):
    """One composed message in the outbox, with the bytes that go on the wire."""

    __tablename__ = "deliveries"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscribers.id", index=True)
    recipient: str
    message_id: str = Field(unique=True)
    subject: str
    papers: int
    message: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    status: str = Field(default=DeliveryStatus.PENDING, max_length=16, index=True)
    attempts: int = 0
    created_at: datetime
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    last_reply: str | None = None
    deferred_since: datetime | None = None  # first temporary failure; give-up counts from here


class MatchRow(SQLModel, table=True):
    __tablename__ = "matches"
    __table_args__ = (UniqueConstraint("subscriber_id", "paper_id"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscribers.id", index=True)
    paper_id: int = Field(foreign_key="papers.id")
    subscriptions: list[str] = Field(sa_column=Column(JSON, nullable=False))
    # Every matched term, heaviest first when matched.
    terms: list[str] = Field(sa_column=Column(JSON, nullable=False))
    scores: list[float] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime
    delivery_id: int | None = Field(default=None, foreign_key="deliveries.id", index=True)
    # The terms of each subscription, parallel to ``subscriptions``, so a
    # digest can weigh them again against today's statistics (NULL in rows
    # recorded before they were kept: ``terms`` then stands for each).
    subscription_terms: list[list[str]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )


class CorpusRow(SQLModel, table=True):
    """Corpus statistics for BM25 (one row, id 1): papers stored and the
    total length of their titles and abstracts in words. Kept up to date in
    the transaction that stores new papers, with ``TermRow``."""

    __tablename__ = "corpus"

    id: int = Field(primary_key=True)
    papers: int = 0
    title_tokens: int = 0
    abstract_tokens: int = 0


class TermRow(SQLModel, table=True):
    """Document frequency of a stem: how many stored papers hold it in their
    title or abstract."""

    __tablename__ = "terms"

    term: str = Field(primary_key=True)
    df: int = 0


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    dump_id: int
    new_papers: int
    seen_papers: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A composed message on its way into the outbox."""

    subscriber_id: int
    recipient: str
    message_id: str
    subject: str
    message: bytes
    match_ids: Sequence[int]


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    """All reads and writes of mailer's state; the only module that speaks SQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _connect(url)
        self._stats: Stats | None = None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise StoreError(
                    f"database {self.safe_url}: {exc.__class__.__name__}: {exc.orig or exc}"
                    if hasattr(exc, "orig")
                    else f"database {self.safe_url}: {exc}",
                    hint="check that the database is reachable and writable",
                ) from exc
            except BaseException:
                session.rollback()
                raise

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # --- dumps and papers -------------------------------------------------

    def dump_by_hash(self, sha256: str) -> DumpRow | None:
        with self.session() as s:
            return s.exec(select(DumpRow).where(DumpRow.sha256 == sha256)).first()

    def record_refused(
        self, *, path: str, sha256: str, size: int, error: str, now: datetime
    ) -> None:
        with self.session() as s:
            s.add(
                DumpRow(
                    path=path,
                    sha256=sha256,
                    size=size,
                    ingested_at=now,
                    status=DumpStatus.REFUSED,
                    error=error,
                )
            )

    def ingest(
        self,
        *,
        path: str,
        sha256: str,
        size: int,
        page_date: date | None,
        papers: Sequence[Paper],
        warnings: int,
        now: datetime,
        batch: int = 1000,
    ) -> IngestOutcome:
        """Record a dump and its papers in one transaction: a crash leaves
        either all of it or none, so the file is simply read again.

        Core statements on the tables, not ORM objects: building a SQLModel
        object per paper cost more than the database did (bench/ingest.py).
        Per batch, one query finds the keys already known, one executemany
        inserts the rest and one updates the known papers that changed.
        """
        unique: dict[str, Paper] = {}
        for paper in papers:
            unique.setdefault(paper_key(paper.title), paper)
        keys = list(unique)
        with self.session() as s:
            conn = s.connection()
            inserted = conn.execute(
                insert(_DUMPS).values(
                    path=path,
                    sha256=sha256,
                    size=size,
                    ingested_at=now,
                    page_date=page_date,
                    records=len(papers),
                    new_papers=0,
                    seen_papers=0,
                    warnings=warnings,
                    status=DumpStatus.INGESTED if papers else DumpStatus.EMPTY,
                    error=None,
                )
            ).inserted_primary_key
            assert inserted is not None
            dump_id: int = inserted[0]
            new = seen = 0
            added = Stats()
            for start in range(0, len(keys), batch):
                chunk = keys[start : start + batch]
                known: dict[str, _Known] = {
                    key: (paper_id, authors, organization, published, upvotes)
                    for paper_id, key, authors, organization, published, upvotes in conn.execute(
                        sa_select(
                            _PAPERS.c.id,
                            _PAPERS.c.key,
                            _PAPERS.c.authors,
                            _PAPERS.c.organization,
                            _PAPERS.c.published,
                            _PAPERS.c.upvotes,
                        ).where(_PAPERS.c.key.in_(chunk))
                    )
                }
                rows: list[dict[str, Any]] = []
                changes: list[dict[str, Any]] = []
                for key in chunk:
                    paper = unique[key]
                    row = known.get(key)
                    if row is None:
                        rows.append(_paper_values(key, paper, now, dump_id))
                        added.observe_paper(paper)
                    elif (change := _refreshed(row, paper)) is not None:
                        changes.append(change)
                new += len(rows)
                seen += len(chunk) - len(rows)
                if rows:
                    conn.execute(insert(_PAPERS), rows)
                if changes:
                    conn.execute(_REFRESH, changes)
            conn.execute(
                update(_DUMPS)
                .where(_DUMPS.c.id == dump_id)
                .values(new_papers=new, seen_papers=seen)
            )
            add_statistics(conn, added)
            return IngestOutcome(dump_id, new, seen)

    def unmatched_papers(self, limit: int = 5000) -> list[tuple[int, Paper]]:
        with self.session() as s:
            rows = s.exec(
                select(PaperRow)
                .where(col(PaperRow.matched).is_(False))
                .order_by(col(PaperRow.id))
                .limit(limit)
            ).all()
            return [(r.id, r.paper()) for r in rows if r.id is not None]

    def papers_since(self, since: datetime) -> list[tuple[int, Paper]]:
        """(id, paper) of the papers first seen since ``since``, oldest first."""
        with self.session() as s:
            rows = s.exec(
                select(PaperRow).where(PaperRow.first_seen_at >= since).order_by(col(PaperRow.id))
            ).all()
            return [(r.id, r.paper()) for r in rows if r.id is not None]

    def stats(self) -> Stats:
        """The corpus statistics every score is computed against. Read again
        only when papers were added since the last read (one small query
        otherwise); callers must not change what they get."""
        with self.session() as s:
            conn = s.connection()
            corpus = conn.execute(
                sa_select(_CORPUS.c.papers, _CORPUS.c.title_tokens, _CORPUS.c.abstract_tokens)
            ).first()
            if corpus is None:
                return Stats()
            papers, title_tokens, abstract_tokens = corpus
            cached = self._stats
            if cached is not None and cached.papers == papers:
                return cached
            df: Counter[str] = Counter(
                dict(conn.execute(sa_select(_TERMS.c.term, _TERMS.c.df)).all())
            )
        self._stats = Stats(papers, df, title_tokens, abstract_tokens)
        return self._stats

    # --- subscribers ------------------------------------------------------

    def sync_subscribers(
        self, subscribers: Iterable[tuple[str, str, Sequence[tuple[str, str]]]], now: datetime
    ) -> dict[str, int]:
        """Mirror the configured subscribers (email, name, [(name, query)]):
        new ones start now, removed ones are deactivated, history is kept."""
        wanted = {email.lower(): (email, name, subs) for email, name, subs in subscribers}
        ids: dict[str, int] = {}
        with self.session() as s:
            rows = {r.email.lower(): r for r in s.exec(select(SubscriberRow))}
            for low, row in rows.items():
                if low not in wanted and row.active:
                    row.active = False
            for low, (email, name, subs) in wanted.items():
                found = rows.get(low)
                if found is None:
                    row = SubscriberRow(email=email, name=name, created_at=now)
                    s.add(row)
                    s.flush()
                else:
                    row = found
                    row.active, row.name = True, name
                assert row.id is not None
                ids[email] = row.id
                existing = {
                    q.name: q
                    for q in s.exec(
                        select(SubscriptionRow).where(SubscriptionRow.subscriber_id == row.id)
                    )
                }
                names = {n for n, _ in subs}
                for q in existing.values():
                    q.active = q.name in names
                for sub_name, query in subs:
                    current = existing.get(sub_name)
                    if current is None:
                        s.add(SubscriptionRow(subscriber_id=row.id, name=sub_name, query=query))
                    else:
                        current.query = query
        return ids

    def subscriber_since(self, subscriber_id: int) -> datetime | None:
        with self.session() as s:
            row = s.get(SubscriberRow, subscriber_id)
            return None if row is None else row.created_at

    def active_subscriber_ids(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(
                select(SubscriberRow).where(
                    col(SubscriberRow.active).is_(True),
                    col(SubscriberRow.unsubscribed_at).is_(None),
                )
            )
            return {r.email: r.id for r in rows if r.id is not None}

    # --- unsubscribing (RFC 8058) ------------------------------------------

    def unsubscribe(self, email: str, now: datetime) -> bool:
        """Stop all mail to ``email`` until resubscribed; False if unknown.
        A repeated unsubscribe keeps the first time, so replays change nothing."""
        with self.session() as s:
            row = self._subscriber_by_email(s, email)
            if row is None:
                return False
            if row.unsubscribed_at is None:
                row.unsubscribed_at = now
            return True

    def resubscribe(self, email: str) -> bool:
        """Lift an unsubscribe; False if the address is unknown."""
        with self.session() as s:
            row = self._subscriber_by_email(s, email)
            if row is None:
                return False
            row.unsubscribed_at = None
            return True

    def lift_unsubscribes(self, resubscribed: Mapping[str, datetime]) -> list[str]:
        """Re-enable each address whose unsubscribe predates its given time;
        returns the addresses re-enabled."""
        lifted: list[str] = []
        with self.session() as s:
            for email, when in resubscribed.items():
                row = self._subscriber_by_email(s, email)
                if row is None or row.unsubscribed_at is None:
                    continue
                if utc(row.unsubscribed_at) < when:
                    row.unsubscribed_at = None
                    lifted.append(row.email)
        return lifted

    def unsubscribed_at(self, email: str) -> datetime | None:
        with self.session() as s:
            row = self._subscriber_by_email(s, email)
            return None if row is None else row.unsubscribed_at

    @staticmethod
    def _subscriber_by_email(s: Session, email: str) -> SubscriberRow | None:
        return s.exec(
            select(SubscriberRow).where(func.lower(SubscriberRow.email) == email.lower())
        ).first()

    # --- matches and the outbox --------------------------------------------

    def record_matches(
        self, paper_ids: Sequence[int], matches: Iterable[NewMatch], now: datetime
    ) -> int:
        """Store matches and mark the papers matched, together, so no paper
        is matched twice or never."""
        count = 0
        with self.session() as s:
            rows = [_match_values(m, now) for m in matches]
            count = len(rows)
            conn = s.connection()
            if rows:
                conn.execute(insert(_MATCHES), rows)
            for start in range(0, len(paper_ids), 1000):
                chunk = paper_ids[start : start + 1000]
                conn.execute(update(_PAPERS).where(_PAPERS.c.id.in_(chunk)).values(matched=True))
        return count

    def pending_matches(self, subscriber_id: int) -> list[PendingMatch]:
        """One subscriber's unclaimed matches, oldest first."""
        return self.pending_matches_for([subscriber_id])[subscriber_id]

    def last_digest_at(self, subscriber_id: int) -> datetime | None:
        with self.session() as s:
            return s.exec(
                select(func.max(DeliveryRow.created_at)).where(
                    DeliveryRow.subscriber_id == subscriber_id
                )
            ).one()

    def due_deliveries(self, now: datetime, limit: int | None = None) -> list[DeliveryRow]:
        with self.session() as s:
            query = (
                select(DeliveryRow)
                .where(
                    DeliveryRow.status == DeliveryStatus.PENDING,
                    col(DeliveryRow.next_attempt_at) <= now,
                )
                .order_by(col(DeliveryRow.id))
            )
            return list(s.exec(query.limit(limit) if limit else query).all())

    def mark_sent(self, delivery_id: int, *, reply: str, now: datetime) -> None:
        with self.session() as s:
            row = s.get_one(DeliveryRow, delivery_id)
            row.status, row.sent_at, row.last_reply = DeliveryStatus.SENT, now, reply
            row.attempts += 1

    def mark_sent_many(self, sent: Sequence[tuple[int, str]], now: datetime) -> None:
        """Record many accepted messages, (delivery id, server reply), in one
        transaction: a per-message commit costs more than sending it."""
        if not sent:
            return
        with self.session() as s:
            s.connection().execute(
                text(
                    "UPDATE deliveries SET status = :sent, sent_at = :now, "
                    "last_reply = :reply, attempts = attempts + 1 WHERE id = :id"
                ),
                [
                    {"id": i, "reply": reply, "now": now, "sent": DeliveryStatus.SENT}
                    for i, reply in sent
                ],
            )

    def cancel_unwanted(self, delivery_ids: Sequence[int]) -> dict[int, str]:
        """Cancel those pending messages among ``delivery_ids`` whose recipient
        has unsubscribed or been removed from the config since they were
        composed; returns them with the reason. One query when, as usual,
        nobody has."""
        if not delivery_ids:
            return {}
        with self.session() as s:
            found = s.exec(
                select(DeliveryRow.id, SubscriberRow.unsubscribed_at)
                .join(SubscriberRow, col(SubscriberRow.id) == col(DeliveryRow.subscriber_id))
                .where(
                    col(DeliveryRow.id).in_(list(delivery_ids)),
                    DeliveryRow.status == DeliveryStatus.PENDING,
                    or_(
                        col(SubscriberRow.unsubscribed_at).is_not(None),
                        col(SubscriberRow.active).is_(False),
                    ),
                )
            ).all()
            cancelled = {
                i: f"unsubscribed at {at}" if at is not None else "removed from the config"
                for i, at in found
                if i is not None
            }
            for delivery_id, why in cancelled.items():
                row = s.get_one(DeliveryRow, delivery_id)
                row.status = DeliveryStatus.CANCELLED
                row.last_reply = f"not sent: recipient {why}"
                row.next_attempt_at = None
            return cancelled

    def mark_attempt_failed(
        self,
        delivery_id: int,
        *,
        reply: str,
        permanent: bool,
        retry_at: datetime | None,
        now: datetime | None = None,
    ) -> None:
        with self.session() as s:
            row = s.get_one(DeliveryRow, delivery_id)
            row.attempts += 1
            row.last_reply = reply
            if permanent:
                row.status = DeliveryStatus.FAILED
            else:
                row.next_attempt_at = retry_at
                if row.deferred_since is None:
                    row.deferred_since = now or retry_at

    # --- the outbox in bulk (compose many digests per transaction) -------------

    def digest_state(
        self, subscriber_ids: Sequence[int]
    ) -> dict[int, tuple[datetime, datetime | None]]:
        """(subscribed since, last digest composed) per subscriber, in two queries."""
        state: dict[int, tuple[datetime, datetime | None]] = {}
        with self.session() as s:
            for start in range(0, len(subscriber_ids), 1000):
                chunk = subscriber_ids[start : start + 1000]
                last = dict(
                    s.exec(
                        select(DeliveryRow.subscriber_id, func.max(DeliveryRow.created_at))
                        .where(col(DeliveryRow.subscriber_id).in_(chunk))
                        .group_by(col(DeliveryRow.subscriber_id))
                    ).all()
                )
                for row_id, created in s.exec(
                    select(SubscriberRow.id, SubscriberRow.created_at).where(
                        col(SubscriberRow.id).in_(chunk)
                    )
                ).all():
                    if row_id is not None:
                        state[row_id] = (created, last.get(row_id))
        return state

    def pending_matches_for(self, subscriber_ids: Sequence[int]) -> dict[int, list[PendingMatch]]:
        """Unclaimed matches of many subscribers at once, oldest first. Plain
        column queries, each paper read once: this runs for every digest."""
        found: dict[int, list[PendingMatch]] = {i: [] for i in subscriber_ids}
        with self.session() as s:
            conn = s.connection()
            for start in range(0, len(subscriber_ids), 500):
                chunk = subscriber_ids[start : start + 500]
                matches = conn.execute(
                    sa_select(
                        col(MatchRow.id),
                        col(MatchRow.subscriber_id),
                        col(MatchRow.paper_id),
                        cast(col(MatchRow.subscriptions), String),
                        cast(col(MatchRow.terms), String),
                        cast(col(MatchRow.scores), String),
                        cast(col(MatchRow.subscription_terms), String),
                    )
                    .where(
                        col(MatchRow.subscriber_id).in_(chunk),
                        col(MatchRow.delivery_id).is_(None),
                    )
                    .order_by(col(MatchRow.id))
                ).all()
                papers: dict[int, tuple[Paper, datetime]] = {}
                wanted = sorted({m[2] for m in matches})
                for at in range(0, len(wanted), 1000):
                    for row in conn.execute(
                        sa_select(
                            col(PaperRow.id),
                            col(PaperRow.title),
                            col(PaperRow.abstract),
                            col(PaperRow.authors),
                            col(PaperRow.organization),
                            col(PaperRow.published),
                            col(PaperRow.upvotes),
                            col(PaperRow.first_seen_at),
                        ).where(col(PaperRow.id).in_(wanted[at : at + 1000]))
                    ).all():
                        assert row[0] is not None
                        papers[row[0]] = (Paper(*row[1:7]), row[7])
                for match_id, subscriber_id, paper_id, subs, terms, scores, each in matches:
                    if match_id is None:
                        continue
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
                        )
                    )
        return found

    def enqueue_many(self, messages: Sequence[Outgoing], now: datetime) -> list[int]:
        """Put many composed messages in the outbox, each claiming its matches,
        in one transaction: all of them are queued, or none and no match claimed."""
        with self.session() as s:
            rows = [
                DeliveryRow(
                    subscriber_id=m.subscriber_id,
                    recipient=m.recipient,
                    message_id=m.message_id,
                    subject=m.subject,
                    papers=len(m.match_ids),
                    message=m.message,
                    created_at=now,
                    next_attempt_at=now,
                )
                for m in messages
            ]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows if r.id is not None]
            # One statement per message claiming all its matches; its row
            # count says whether another message had claimed any of them.
            claim = text(
                "UPDATE matches SET delivery_id = :delivery "
                "WHERE id IN :matches AND delivery_id IS NULL"
            ).bindparams(bindparam("matches", expanding=True))
            conn = s.connection()
            wanted = claimed = 0
            for m, row in zip(messages, rows, strict=True):
                if m.match_ids:
                    wanted += len(m.match_ids)
                    result = conn.execute(claim, {"delivery": row.id, "matches": list(m.match_ids)})
                    claimed += result.rowcount
            if claimed != wanted:
                raise StoreError(
                    f"outbox: {wanted - claimed} of the matches for "
                    f"{len(messages)} messages were already claimed by another message",
                    hint="is a second mailer running on the same database?",
                )
        return ids

    def retry_deliveries(self, ids: Sequence[int] | None, now: datetime) -> int:
        """Make deferred or failed messages due now (``ids``, or all of them when
        None); sent ones are left alone. Returns how many were changed."""
        with self.session() as s:
            query = select(DeliveryRow).where(
                col(DeliveryRow.status).in_((DeliveryStatus.PENDING, DeliveryStatus.FAILED))
            )
            if ids is not None:
                query = query.where(col(DeliveryRow.id).in_(list(ids)))
            count = 0
            for row in s.exec(query):
                if row.status == DeliveryStatus.PENDING and row.attempts == 0:
                    continue
                row.status, row.next_attempt_at, row.deferred_since = (
                    DeliveryStatus.PENDING,
                    now,
                    None,
                )
                count += 1
            return count

    def deliveries(self) -> list[DeliveryRow]:
        with self.session() as s:
            return list(s.exec(select(DeliveryRow).order_by(col(DeliveryRow.id))).all())

    def dumps(self) -> list[DumpRow]:
        with self.session() as s:
            return list(s.exec(select(DumpRow).order_by(col(DumpRow.id))).all())

    def count_papers(self) -> int:
        with self.session() as s:
            return s.exec(select(func.count()).select_from(PaperRow)).one()

    # --- operator read-queries and small records (status, subs, preview) ----------

    def subscriber_states(self) -> dict[str, SubscriberState]:
        """Every subscriber the database knows, by lower-cased email."""
        with self.session() as s:
            pending = dict(
                s.exec(
                    select(MatchRow.subscriber_id, func.count())
                    .where(col(MatchRow.delivery_id).is_(None))
                    .group_by(col(MatchRow.subscriber_id))
                ).all()
            )
            last = dict(
                s.exec(
                    select(DeliveryRow.subscriber_id, func.max(DeliveryRow.created_at)).group_by(
                        col(DeliveryRow.subscriber_id)
                    )
                ).all()
            )
            return {
                r.email.lower(): SubscriberState(
                    id=r.id,
                    email=r.email,
                    active=r.active,
                    created_at=r.created_at,
                    unsubscribed_at=r.unsubscribed_at,
                    pending=pending.get(r.id, 0),
                    last_digest_at=last.get(r.id),
                )
                for r in s.exec(select(SubscriberRow).order_by(col(SubscriberRow.id)))
                if r.id is not None
            }

    def dump_counts(self) -> dict[str, int]:
        """Dumps by status: ingested, empty, refused."""
        with self.session() as s:
            rows = s.exec(select(DumpRow.status, func.count()).group_by(col(DumpRow.status)))
            return dict(rows.all())

    def refused_dumps(self) -> list[DumpRow]:
        with self.session() as s:
            return list(
                s.exec(
                    select(DumpRow)
                    .where(DumpRow.status == DumpStatus.REFUSED)
                    .order_by(col(DumpRow.id))
                ).all()
            )

    def outbox_counts(self) -> dict[str, int]:
        """Messages by status: pending, sent, failed."""
        with self.session() as s:
            rows = s.exec(
                select(DeliveryRow.status, func.count()).group_by(col(DeliveryRow.status))
            )
            return dict(rows.all())

    def backfill_candidates(self, subscriber_id: int, since: datetime) -> list[tuple[int, Paper]]:
        """Papers first seen since ``since`` that were already matched (so the
        regular pass will not look at them again) but not for this subscriber."""
        with self.session() as s:
            done = select(MatchRow.paper_id).where(MatchRow.subscriber_id == subscriber_id)
            rows = s.exec(
                select(PaperRow)
                .where(
                    col(PaperRow.matched).is_(True),
                    PaperRow.first_seen_at >= since,
                    col(PaperRow.id).not_in(done),
                )
                .order_by(col(PaperRow.id))
            ).all()
            return [(r.id, r.paper()) for r in rows if r.id is not None]

    def add_matches(self, subscriber_id: int, matches: Iterable[NewMatch], now: datetime) -> int:
        """Record matches for one subscriber, skipping papers they already
        have a match for."""
        with self.session() as s:
            have = set(
                s.exec(select(MatchRow.paper_id).where(MatchRow.subscriber_id == subscriber_id))
            )
            rows = []
            for m in matches:
                if m.paper_id not in have:
                    rows.append(_match_values(m, now))
                    have.add(m.paper_id)
            if rows:
                s.connection().execute(insert(_MATCHES), rows)
            return len(rows)

    def set_state(self, key: str, value: str, now: datetime) -> None:
        with self.session() as s:
            row = s.get(StateRow, key)
            if row is None:
                s.add(StateRow(key=key, value=value, updated_at=now))
            else:
                row.value, row.updated_at = value, now

    def record_pass(self, summary: str, now: datetime) -> None:
        self.set_state(LAST_PASS, summary, now)

    def get_state(self, key: str) -> StateRow | None:
        with self.session() as s:
            return s.get(StateRow, key)


# --- operator records: a key-value state table and subscriber summaries -------


@lru_cache(maxsize=4096)
def _json_tuple(raw: str) -> tuple[Any, ...]:
    """A JSON list column read as text, decoded once per distinct value:
    subscription names and matched terms repeat row after row (scores don't)."""
    return tuple(json.loads(raw))


def hide_password(url: str) -> str:
    """A database URL fit for logs and errors: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


LAST_PASS = "last_pass"  # noqa: S105 - a state key, not a password


class StateRow(SQLModel, table=True):
    """Small facts about the running service, such as the last pass."""

    __tablename__ = "state"

    key: str = Field(primary_key=True, max_length=64)
    value: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SubscriberState:
    id: int
    email: str
    active: bool
    created_at: datetime
    unsubscribed_at: datetime | None
    pending: int
    last_digest_at: datetime | None


_DUMPS: Table = SQLModel.metadata.tables["dumps"]
_PAPERS: Table = SQLModel.metadata.tables["papers"]
_MATCHES: Table = SQLModel.metadata.tables["matches"]
_CORPUS: Table = SQLModel.metadata.tables["corpus"]
_TERMS: Table = SQLModel.metadata.tables["terms"]
# What ingest reads of a known paper: id, authors, organization, published, upvotes.
_Known = tuple[int, int | None, str | None, date | None, int]
# A known paper's counters, set by id; bind names differ from the columns
# because SQLAlchemy reserves those for the SET clause.
_REFRESH = (
    update(_PAPERS)
    .where(_PAPERS.c.id == bindparam("b_id"))
    .values(
        upvotes=bindparam("b_upvotes"),
        authors=bindparam("b_authors"),
        organization=bindparam("b_organization"),
        published=bindparam("b_published"),
    )
)


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


def _subscription_terms(each: str | None, terms: str, count: int) -> tuple[tuple[str, ...], ...]:
    """Each subscription's terms of a match row; rows recorded before these
    were kept have only all terms, which then stand for each subscription."""
    if each is None or each == "null":
        return (_json_tuple(terms),) * count
    return tuple(tuple(t) for t in json.loads(each))


def add_statistics(conn: Connection, added: Stats) -> None:
    """Add new papers' counts to the stored corpus statistics (in the
    caller's transaction: with the papers, or not at all)."""
    if not added.papers:
        return
    conn.execute(
        text(
            "INSERT INTO corpus (id, papers, title_tokens, abstract_tokens) "
            "VALUES (1, :papers, :title, :abstract) ON CONFLICT (id) DO UPDATE SET "
            "papers = corpus.papers + excluded.papers, "
            "title_tokens = corpus.title_tokens + excluded.title_tokens, "
            "abstract_tokens = corpus.abstract_tokens + excluded.abstract_tokens"
        ),
        {"papers": added.papers, "title": added.title_length, "abstract": added.abstract_length},
    )
    conn.execute(
        text(
            "INSERT INTO terms (term, df) VALUES (:term, :df) "
            "ON CONFLICT (term) DO UPDATE SET df = terms.df + excluded.df"
        ),
        [{"term": term, "df": df} for term, df in sorted(added.df.items())],
    )


def utc(value: datetime) -> datetime:
    """Times come back naive from SQLite and PostgreSQL timestamp columns;
    they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _paper_values(key: str, paper: Paper, now: datetime, dump_id: int) -> dict[str, Any]:
    return {
        "key": key,
        "title": paper.title,
        "abstract": paper.abstract,
        "authors": paper.authors,
        "organization": paper.organization,
        "published": paper.published,
        "upvotes": paper.upvotes,
        "first_seen_at": now,
        "first_dump_id": dump_id,
        "matched": False,
    }


def _refreshed(row: _Known, paper: Paper) -> dict[str, Any] | None:
    """A paper seen again keeps its identity; its counters move on. The new
    values for `_REFRESH`, or None when nothing changed."""
    paper_id, had_authors, had_organization, had_published, had_upvotes = row
    upvotes = max(had_upvotes, paper.upvotes)
    authors = had_authors if had_authors is not None else paper.authors
    organization = had_organization or paper.organization
    published = had_published or paper.published
    if (authors, organization, published, upvotes) == row[1:]:
        return None
    return {
        "b_id": paper_id,
        "b_upvotes": upvotes,
        "b_authors": authors,
        "b_organization": organization,
        "b_published": published,
    }


def _connect(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        SQLModel.metadata.create_all(engine)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(
            f"database URL {hide_password(url)!r} is not usable: {exc}",
            hint="use sqlite:///path.db or postgresql+psycopg://user@host/db "
            "(pip install 'mailer[postgres]')",
        ) from exc
    except (OperationalError, ModuleNotFoundError) as exc:
        raise StoreError(
            f"cannot open database {hide_password(url)!r}: {exc}",
            hint="check the [database] url, that the folder exists and the server is running",
        ) from exc
    return engine
