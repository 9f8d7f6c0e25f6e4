"""The tables, their Core handles, and opening a database.

Every part of the store reads and writes through the Core ``Table`` handles
below (``DUMPS``, ``PAPERS``, ...); the SQLModel classes define the schema and
are the row objects some reads return to callers.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    Interval,
    LargeBinary,
    Select,
    UniqueConstraint,
    event,
    func,
    literal,
    text,
    type_coerce,
)
from sqlalchemy.engine import Connection, Engine, RowMapping, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError
from sqlalchemy.schema import Table
from sqlmodel import Field, Session, SQLModel, create_engine
from sqlmodel.sql.sqltypes import UTCDateTime

from mailer.errors import StoreError
from mailer.migrate import database_error, upgrade
from mailer.outbox_states import DeliveryStatus as DeliveryStatus  # re-exported
from mailer.outbox_states import OutboxState as OutboxState  # re-exported by mailer.store
from mailer.papers import Paper
from mailer.store.records import Origin as Origin  # re-exported
from mailer.store.records import utc as utc  # re-exported


class DumpStatus(StrEnum):
    """What became of a dump file."""

    INGESTED = "ingested"
    EMPTY = "empty"  # a dump with no records
    REFUSED = "refused"  # not a dump; the reason is kept


class DeliveryKind(StrEnum):
    """A digest, or a notice the web pages send (a confirmation, a manage
    link): notices are never cancelled by an unsubscribe and never count as
    a subscriber's last digest."""

    DIGEST = "digest"
    NOTICE = "notice"


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


class SubscriberRow(SQLModel, table=True):
    __tablename__ = "subscribers"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)
    # How the address is compared (mailer.addresses.address_key): Unicode
    # casefolding, which SQLite's lower() does not do.
    email_key: str = Field(index=True)
    name: str = ""
    active: bool = True  # false once removed from the config
    created_at: datetime
    unsubscribed_at: datetime | None = None
    origin: str = Field(
        default=Origin.CONFIG, max_length=16, sa_column_kwargs={"server_default": Origin.CONFIG}
    )


class WebSubscriberRow(SQLModel, table=True):
    """What a subscriber who signed up on the web pages chose, besides the
    subscriptions (in ``subscriptions``, as for config subscribers)."""

    __tablename__ = "web_subscribers"

    subscriber_id: int = Field(foreign_key="subscribers.id", primary_key=True)
    schedule: str = Field(max_length=64)
    timezone: str = Field(max_length=64)
    max_papers: int | None = None
    paused_until: date | None = None  # no digests before this day (the subscriber's zone)
    confirmed_at: datetime | None = None  # None: the sign-up waits for its confirmation
    confirm_nonce: str | None = Field(default=None, max_length=64)  # None once used
    signed_up_at: datetime
    updated_at: datetime


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
    # The node that claimed it for sending (kept once sent: who sent it), and
    # until when by the database's clock; another node takes it after that.
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    kind: str = Field(
        default=DeliveryKind.DIGEST,
        max_length=16,
        sa_column_kwargs={"server_default": DeliveryKind.DIGEST},
    )


class MatchRow(SQLModel, table=True):
    __tablename__ = "matches"
    __table_args__ = (
        # Also how a reader's matches are found (it leads with subscriber_id).
        UniqueConstraint("subscriber_id", "paper_id"),
        # Each reader's unclaimed matches: what composing reads and claims
        # and ``subs list`` counts. Partial, so it holds only the backlog
        # and a claim takes one entry out: with a plain index on delivery_id,
        # SQLite read every reader's unclaimed matches for each chunk of
        # digests, and a claim moved an entry from NULL to its message.
        Index(
            "ix_matches_pending",
            "subscriber_id",
            sqlite_where=text("delivery_id IS NULL"),
            postgresql_where=text("delivery_id IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscribers.id")
    paper_id: int = Field(foreign_key="papers.id")
    subscriptions: list[str] = Field(sa_column=Column(JSON, nullable=False))
    # Every matched term, heaviest first when matched.
    terms: list[str] = Field(sa_column=Column(JSON, nullable=False))
    scores: list[float] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime
    delivery_id: int | None = Field(default=None, foreign_key="deliveries.id")
    # The terms of each subscription, parallel to ``subscriptions``, so a
    # digest can weigh them again against today's statistics (NULL in rows
    # recorded before they were kept: ``terms`` then stands for each).
    subscription_terms: list[list[str]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    # How many papers the statistics the scores were worked out against had
    # counted (the store identifies statistics by that count, see
    # ``Papers.stats``): a digest composed against the same count takes the
    # scores as recorded instead of weighing every term again. NULL: unknown.
    scored_papers: int | None = None


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


class BounceRow(SQLModel, table=True):
    """A bounce that named one of our messages, hard or soft: suppression
    counts these per address (``address_key``)."""

    __tablename__ = "bounces"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("deliveries.id", name="fk_bounces_delivery_id"), index=True
        ),
    )
    address_key: str = Field(index=True)
    hard: bool
    status: str = Field(max_length=16)  # the RFC 3463 status, e.g. 5.1.1
    reason: str
    received_at: datetime


class SuppressionRow(SQLModel, table=True):
    """An address that gets nothing (hard bounces, soft ones piling up, or a
    5.1.x at RCPT) until lifted; a lifted row is kept, with ``lifted_at``, so
    only bounces after the lift count again."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("address_key", name="uq_suppressions_address_key"),)

    id: int | None = Field(default=None, primary_key=True)
    address: str
    address_key: str  # mailer.addresses.address_key
    reason: str
    source: str = Field(max_length=16)  # bounce | smtp
    since: datetime
    lifted_at: datetime | None = None


class StateRow(SQLModel, table=True):
    """Small facts about the running service, such as the last pass."""

    __tablename__ = "state"

    key: str = Field(primary_key=True, max_length=64)
    value: str
    updated_at: datetime


class NodeRow(SQLModel, table=True):
    """A daemon sharing the database (mailer.cluster), with its last heartbeat
    by the database's clock."""

    __tablename__ = "nodes"

    id: str = Field(primary_key=True, max_length=200)
    host: str
    pid: int
    role: str = Field(max_length=16)  # leader, follower, stopped
    started_at: datetime
    heartbeat_at: datetime


class SendRateRow(SQLModel, table=True):
    """One row: when the next message may go, so ``[smtp] rate_per_minute``
    holds for all the nodes together."""

    __tablename__ = "send_rate"

    id: int = Field(primary_key=True)
    next_at: datetime


class MarkKind(StrEnum):
    """What a reader said about a paper from a digest's feedback links."""

    MORE = "more"  # "more like this"
    LESS = "less"  # "not for me"


class FeedbackRow(SQLModel, table=True):
    """A reader's mark on a paper, as given; the newest per paper counts, so
    changing one's mind adds a row and the history stays."""

    __tablename__ = "feedback"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscribers.id", index=True)
    paper_id: int = Field(foreign_key="papers.id")
    kind: str = Field(max_length=8)  # a MarkKind
    created_at: datetime


class ReaderModelRow(SQLModel, table=True):
    """A reader's linear model over TF-IDF features, trained from their
    marks: its heaviest weights by stem, and the newest mark it saw (so it
    is trained again only when marks arrive)."""

    __tablename__ = "reader_models"

    subscriber_id: int = Field(foreign_key="subscribers.id", primary_key=True)
    trained_on: int  # the id of the newest feedback row it learned from
    positives: int
    negatives: int
    weights: dict[str, float] = Field(sa_column=Column(JSON, nullable=False))
    intercept: float
    # What a new paper must score to be suggested: above nearly every stored paper.
    cutoff: float
    trained_at: datetime


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


DUMPS = _table(DumpRow)
PAPERS = _table(PaperRow)
SUBSCRIBERS = _table(SubscriberRow)
SUBSCRIPTIONS = _table(SubscriptionRow)
WEB_SUBSCRIBERS = _table(WebSubscriberRow)
DELIVERIES = _table(DeliveryRow)
MATCHES = _table(MatchRow)
CORPUS = _table(CorpusRow)
TERMS = _table(TermRow)
STATE = _table(StateRow)
NODES = _table(NodeRow)
SEND_RATE = _table(SendRateRow)
BOUNCES = _table(BounceRow)
SUPPRESSIONS = _table(SuppressionRow)
FEEDBACK = _table(FeedbackRow)
READER_MODELS = _table(ReaderModelRow)

# A transaction on the store's engine: committed on success, rolled back on
# any error, database errors raised as StoreError (``Store.transaction``).
Transaction = Callable[[], AbstractContextManager[Connection]]

Model = TypeVar("Model", bound=SQLModel)


def row_objects(conn: Connection, query: Select[Model]) -> list[Model]:
    """Row objects for callers that read attributes (``deliveries()`` and the
    like): the one ORM read, in the caller's transaction. Building SQLModel
    objects from Core rows costs three times as much (their ``__init__``
    validates), and ``model_construct`` leaves objects SQLAlchemy can't track."""
    with Session(bind=conn, expire_on_commit=False) as session:
        return list(session.scalars(query))


# --- a paper in and out of the papers table: the one place naming its fields ---

PAPER_COLUMNS = (
    PAPERS.c.title,
    PAPERS.c.abstract,
    PAPERS.c.authors,
    PAPERS.c.organization,
    PAPERS.c.published,
    PAPERS.c.upvotes,
)


def paper_from_row(row: RowMapping) -> Paper:
    """The paper of a row selected with ``PAPER_COLUMNS`` (by column name)."""
    return Paper(
        title=row["title"],
        abstract=row["abstract"],
        authors=row["authors"],
        organization=row["organization"],
        published=row["published"],
        upvotes=row["upvotes"],
    )


def paper_values(key: str, paper: Paper, now: datetime, dump_id: int) -> dict[str, Any]:
    """The papers-table row of a paper first seen now, in dump ``dump_id``."""
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


def db_time(conn: Connection, seconds: float = 0.0) -> ColumnElement[datetime]:
    """Now plus ``seconds``. On PostgreSQL by the server's clock, so nodes on
    hosts whose clocks differ agree on when a lease ends; SQLite has one
    node, and this host's clock. The one place where the dialects differ."""
    if conn.dialect.name == "postgresql":
        now: ColumnElement[datetime] = type_coerce(func.statement_timestamp(), UTCDateTime())
        return now + literal(timedelta(seconds=seconds), Interval()) if seconds else now
    return literal(datetime.now(UTC) + timedelta(seconds=seconds), UTCDateTime())


def hide_password(url: str) -> str:
    """A database URL fit for logs and errors: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


SQLITE_CACHE_KIB = -65536  # negative: in KiB, SQLite's convention


@contextmanager
def sqlite_cache(conn: Connection) -> Iterator[None]:
    """A larger page cache for a batch that touches rows or index entries
    all over a table (matches recorded, matches claimed): with SQLite's
    default 2 MB the pages touched spill and are read again; 64 MB took a
    third off recording matches. Only the pages used are allocated, and the
    connection gets its size back."""
    size = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
    conn.exec_driver_sql(f"PRAGMA cache_size={SQLITE_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(size)}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    _wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _wal(cursor: Any) -> None:
    """Switch the file to WAL, once per database (the mode is kept in the
    file). Switching takes the file's lock without waiting on the busy
    timeout, so a mailer opening a new database while another one creates
    its tables tries again for a while instead of failing."""
    deadline = time.monotonic() + 10
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _connect(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        upgrade(engine)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(
            f"database URL {hide_password(url)!r} is not usable: {exc}",
            hint="use sqlite:///path.db or postgresql+psycopg://user@host/db "
            "(pip install 'mailer[postgres]')",
        ) from exc
    except (DatabaseError, ModuleNotFoundError) as exc:
        safe = hide_password(url)
        raise database_error(
            safe,
            exc,
            f"cannot open database {safe!r}",
            hint="check the [database] url, that the folder exists and the server is running",
        ) from exc
    return engine
