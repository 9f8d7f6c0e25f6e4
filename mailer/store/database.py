"""The ``Store``: it opens the database (migrating it to this mailer's schema)
and hands each call to the part that owns its tables (see mailer.store)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from mailer.errors import DatabaseReplacedError, StoreError
from mailer.store.listing import Listing, connection_query
from mailer.store.listing import read as read_listing
from mailer.store.people import People, SubscriberState
from mailer.store.schema import (
    STATE,
    DeliveryRow,
    DumpRow,
    MarkKind,
    NodeRow,
    StateRow,
    _connect,
    row_objects,
)
from mailer.store.selfservice import WebSubscribers

if TYPE_CHECKING:
    from mailer.analysis import Stats
    from mailer.papers import Paper
    from mailer.store.feedback import Feedback, Mark, MarkOutcome, ReaderModel
    from mailer.store.matches import Matches, MatchFields, NewMatch, PendingMatch
    from mailer.store.nodes import NodeBeat, Nodes
    from mailer.store.outbox import Claimed, Outbox, Outgoing
    from mailer.store.papers import IngestOutcome, Papers
    from mailer.store.suppressions import BounceLimits, BounceRecord, Suppression, Suppressions

LAST_PASS = "last_pass"  # noqa: S105 - a state key, not a password


def _sqlite_file(database: str | None, backend: str) -> Path | None:
    """The SQLite database's file, absolute (the process may change folder);
    None for PostgreSQL and in-memory databases."""
    if backend != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).absolute()


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's device and inode, None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Store:
    """All reads and writes of mailer's state; the only package that speaks SQL.
    The methods below hand each call to the part that owns its tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _connect(url)
        self.people = People(self.transaction)
        self.web = WebSubscribers(self.transaction)  # sign-ups on the web pages
        self._file = _sqlite_file(self.engine.url.database, self.engine.url.get_backend_name())
        self._identity = _identity(self._file) if self._file else None

    # The other parts, made on first use, their modules with them (a quick
    # command that reads subscribers touches people and web sign-ups only).
    # A part holds nothing but the transaction helper, so one made twice by
    # threads racing to it first is harmless.

    @cached_property
    def papers(self) -> Papers:
        from mailer.store.papers import Papers

        return Papers(self.transaction)

    @cached_property
    def matches(self) -> Matches:
        from mailer.store.matches import Matches

        return Matches(self.transaction)

    @cached_property
    def outbox(self) -> Outbox:
        from mailer.store.outbox import Outbox

        return Outbox(self.transaction)

    @cached_property
    def nodes(self) -> Nodes:
        from mailer.store.nodes import Nodes

        return Nodes(self.transaction)

    @cached_property
    def suppressions(self) -> Suppressions:
        from mailer.store.suppressions import Suppressions

        return Suppressions(self.transaction)

    @cached_property
    def feedback(self) -> Feedback:
        from mailer.store.feedback import Feedback

        return Feedback(self.transaction)

    def close(self) -> None:
        self.engine.dispose()

    def verify(self) -> None:
        """Raise DatabaseReplacedError when the SQLite file is no longer the
        one opened (deleted, or another file in its place): writing on would
        go to a file no one can open, and a restart would find an empty
        database and mail everything again. Only a stat: never creates it."""
        if self._file is None:
            return
        now = _identity(self._file)
        if now == self._identity:
            return
        what = "deleted" if now is None else "replaced by another file"
        raise DatabaseReplacedError(
            f"database file {self._file} was {what} while mailer was running; stopped, "
            "so that nothing more is written to the old file",
            hint="put the database back (or restore it from a backup) and start mailer "
            "again; starting without it creates an empty database that ingests every "
            "dump again and mails every paper again",
        )

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core transaction: committed on success, rolled back on any error."""
        with self._named_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session in one transaction, for callers that want to change
        row objects (tests do); the store's own code uses ``transaction``."""
        with self._named_errors(), Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """Database errors as StoreError naming the database."""
        try:
            yield
        except SQLAlchemyError as exc:
            raise StoreError(
                f"database {self.safe_url}: {exc.__class__.__name__}: {exc.orig or exc}"
                if hasattr(exc, "orig")
                else f"database {self.safe_url}: {exc}",
                hint="check that the database is reachable and writable",
            ) from exc

    # --- state: small facts about the running service ------------------------

    def set_state(self, key: str, value: str, now: datetime) -> None:
        with self.transaction() as conn:
            changed = conn.execute(
                update(STATE).where(STATE.c.key == key).values(value=value, updated_at=now)
            )
            if changed.rowcount == 0:
                conn.execute(insert(STATE).values(key=key, value=value, updated_at=now))

    def get_state(self, key: str) -> StateRow | None:
        with self.transaction() as conn:
            found = row_objects(conn, select(StateRow).where(STATE.c.key == key))
        return found[0] if found else None

    def record_pass(self, summary: str, now: datetime) -> None:
        self.set_state(LAST_PASS, summary, now)

    # --- dumps and papers: ``Papers`` ---------------------------------------

    def dump_by_hash(self, sha256: str) -> DumpRow | None:
        return self.papers.dump_by_hash(sha256)

    def record_refused(
        self, *, path: str, sha256: str, size: int, error: str, now: datetime
    ) -> None:
        self.papers.record_refused(path=path, sha256=sha256, size=size, error=error, now=now)

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
        return self.papers.ingest(
            path=path,
            sha256=sha256,
            size=size,
            page_date=page_date,
            papers=papers,
            warnings=warnings,
            now=now,
            batch=batch,
        )

    def unmatched_papers(self, limit: int = 5000, after: int = 0) -> list[tuple[int, Paper]]:
        return self.papers.unmatched_papers(limit, after)

    def papers_since(self, since: datetime) -> list[tuple[int, Paper]]:
        return self.papers.papers_since(since)

    def backfill_candidates(self, subscriber_id: int, since: datetime) -> list[tuple[int, Paper]]:
        return self.papers.backfill_candidates(subscriber_id, since)

    def stats(self) -> Stats:
        return self.papers.stats()

    def papers_by_keys(self, keys: Collection[str]) -> dict[str, Paper]:
        return self.papers.papers_by_keys(keys)

    def titles(self) -> list[str]:
        return self.papers.titles()

    def paper(self, paper_id: int) -> Paper | None:
        return self.papers.paper(paper_id)

    def sample_papers(self, n: int, seed: int) -> list[tuple[int, Paper]]:
        return self.papers.sample(n, seed)

    # --- readers' marks and models: ``Feedback`` ------------------------------

    def record_mark(self, email: str, paper_id: int, kind: MarkKind, now: datetime) -> MarkOutcome:
        return self.feedback.record(email, paper_id, kind, now)

    def marks(self, subscriber_ids: Sequence[int]) -> dict[int, list[Mark]]:
        return self.feedback.marks(subscriber_ids)

    def marks_of(self, email: str) -> list[Mark] | None:
        """An address's standing marks, newest first; None if it is not a subscriber."""
        subscriber_id = self.feedback.subscriber_id(email)
        return (
            None if subscriber_id is None else self.feedback.marks([subscriber_id])[subscriber_id]
        )

    def subscriber_id(self, email: str) -> int | None:
        """The id of the subscriber with this address (however it is spelt)."""
        return self.feedback.subscriber_id(email)

    def newest_marks(self) -> dict[int, int]:
        return self.feedback.newest_marks()

    def model_versions(self) -> dict[int, int]:
        return self.feedback.model_versions()

    def reader_models(self, subscriber_ids: Sequence[int] | None = None) -> dict[int, ReaderModel]:
        return self.feedback.models(subscriber_ids)

    def save_reader_model(self, model: ReaderModel) -> None:
        self.feedback.save_model(model)

    def delete_reader_model(self, subscriber_id: int) -> None:
        self.feedback.delete_model(subscriber_id)

    def dumps(self) -> list[DumpRow]:
        return self.papers.dumps()

    def refused_dumps(self) -> list[DumpRow]:
        return self.papers.refused_dumps()

    def dump_counts(self) -> dict[str, int]:
        return self.papers.dump_counts()

    def count_papers(self) -> int:
        return self.papers.count_papers()

    # --- subscribers: ``People`` --------------------------------------------

    def sync_subscribers(
        self, subscribers: Iterable[tuple[str, str, Sequence[tuple[str, str]]]], now: datetime
    ) -> dict[str, int]:
        return self.people.sync_subscribers(subscribers, now)

    def subscriber_since(self, subscriber_id: int) -> datetime | None:
        return self.people.subscriber_since(subscriber_id)

    def active_subscriber_ids(self) -> dict[str, int]:
        return self.people.active_subscriber_ids()

    def unsubscribe(self, email: str, now: datetime) -> bool:
        return self.people.unsubscribe(email, now)

    def resubscribe(self, email: str) -> bool:
        return self.people.resubscribe(email)

    def lift_unsubscribes(self, resubscribed: Mapping[str, datetime]) -> list[str]:
        return self.people.lift_unsubscribes(resubscribed)

    def unsubscribed_at(self, email: str) -> datetime | None:
        return self.people.unsubscribed_at(email)

    def subscriber_states(self) -> dict[str, SubscriberState]:
        return self.people.subscriber_states()

    def listing(self) -> Listing:
        """What ``mailer subs list`` shows from the database, in one transaction
        (mailer.store.listing, whose driver path reads the same)."""
        with self.transaction() as conn:
            return read_listing(connection_query(conn))

    # --- matches: ``Matches`` -----------------------------------------------

    def record_matches(
        self,
        paper_ids: Sequence[int],
        matches: Iterable[MatchFields],
        now: datetime,
        counted: Stats | None = None,
        scored_papers: int | None = None,
    ) -> int:
        recorded = self.matches.record_matches(paper_ids, matches, now, counted, scored_papers)
        if counted is not None:
            self.papers.counted(counted)
        return recorded

    def add_matches(
        self,
        subscriber_id: int,
        matches: Iterable[NewMatch],
        now: datetime,
        scored_papers: int | None = None,
    ) -> int:
        return self.matches.add_matches(subscriber_id, matches, now, scored_papers)

    def pending_matches(self, subscriber_id: int) -> list[PendingMatch]:
        return self.matches.pending_matches(subscriber_id)

    def pending_matches_for(
        self,
        subscriber_ids: Sequence[int],
        papers: dict[int, tuple[Paper, datetime]] | None = None,
    ) -> dict[int, list[PendingMatch]]:
        return self.matches.pending_matches_for(subscriber_ids, papers)

    # --- the outbox: ``Outbox`` ---------------------------------------------

    def enqueue_many(self, messages: Sequence[Outgoing], now: datetime) -> list[int]:
        return self.outbox.enqueue_many(messages, now)

    def due_deliveries(self, now: datetime, limit: int | None = None) -> list[DeliveryRow]:
        return self.outbox.due_deliveries(now, limit)

    def deliveries(self) -> list[DeliveryRow]:
        return self.outbox.deliveries()

    def mark_sent(self, delivery_id: int, *, reply: str, now: datetime) -> None:
        self.outbox.mark_sent(delivery_id, reply=reply, now=now)

    def mark_sent_many(
        self, sent: Sequence[tuple[int, str]], now: datetime, *, node: str | None = None
    ) -> None:
        self.outbox.mark_sent_many(sent, now, node=node)

    def mark_attempt_failed(
        self,
        delivery_id: int,
        *,
        reply: str,
        permanent: bool,
        retry_at: datetime | None,
        now: datetime | None = None,
    ) -> None:
        self.outbox.mark_attempt_failed(
            delivery_id, reply=reply, permanent=permanent, retry_at=retry_at, now=now
        )

    def cancel_unwanted(self, delivery_ids: Sequence[int]) -> dict[int, str]:
        return self.outbox.cancel_unwanted(delivery_ids)

    def retry_deliveries(self, ids: Sequence[int] | None, now: datetime) -> int:
        return self.outbox.retry_deliveries(ids, now)

    def last_digest_at(self, subscriber_id: int) -> datetime | None:
        return self.outbox.last_digest_at(subscriber_id)

    def digest_state(
        self, subscriber_ids: Sequence[int]
    ) -> dict[int, tuple[datetime, datetime | None]]:
        return self.outbox.digest_state(subscriber_ids)

    def outbox_counts(self) -> dict[str, int]:
        return self.outbox.outbox_counts()

    # --- claims and nodes: ``Outbox``, ``Nodes`` -------------------------------

    def claim_due(
        self,
        node: str,
        now: datetime,
        *,
        lease: float,
        limit: int,
        exclude: Collection[int] = (),
    ) -> list[DeliveryRow]:
        return self.outbox.claim_due(node, now, lease=lease, limit=limit, exclude=exclude)

    def settle_and_claim(
        self,
        sent: Sequence[tuple[int, str]],
        sent_at: datetime,
        node: str,
        now: datetime,
        *,
        lease: float,
        limit: int,
        exclude: Collection[int] = (),
        in_database: bool = True,
    ) -> Claimed:
        return self.outbox.settle_and_claim(
            sent,
            sent_at,
            node,
            now,
            lease=lease,
            limit=limit,
            exclude=exclude,
            in_database=in_database,
        )

    def claimable(self, now: datetime, *, limit: int, exclude: Collection[int] = ()) -> int:
        return self.outbox.claimable(now, limit=limit, exclude=exclude)

    def renew_claims(self, node: str, ids: Collection[int], *, lease: float) -> set[int]:
        return self.outbox.renew_claims(node, ids, lease=lease)

    def release_claims(self, node: str | None, ids: Collection[int] | None = None) -> int:
        return self.outbox.release_claims(node, ids)

    def sent_by_node(self, since: datetime) -> dict[str, int]:
        return self.outbox.sent_by_node(since)

    def node_beat(self, node: NodeBeat, *, lease: float) -> int:
        return self.nodes.beat(node, lease=lease)

    def node_stopped(self, node_id: str) -> None:
        self.nodes.stopped(node_id)

    def node_rows(self) -> tuple[list[NodeRow], datetime]:
        return self.nodes.nodes()

    def take_send_slot(self, interval: float) -> float:
        return self.nodes.take_send_slot(interval)

    def delivery(self, delivery_id: int) -> DeliveryRow | None:
        return self.outbox.delivery(delivery_id)

    def delivery_by_message_id(self, message_id: str) -> DeliveryRow | None:
        return self.outbox.delivery_by_message_id(message_id)

    # --- bounces and suppressions: ``Suppressions`` -------------------------

    def record_bounce(
        self,
        delivery_id: int,
        *,
        hard: bool,
        status: str,
        reason: str,
        now: datetime,
        limits: BounceLimits,
    ) -> BounceRecord | None:
        return self.suppressions.record_bounce(
            delivery_id, hard=hard, status=status, reason=reason, now=now, limits=limits
        )

    def suppress(self, address: str, *, reason: str, source: str, now: datetime) -> bool:
        return self.suppressions.suppress(address, reason=reason, source=source, now=now)

    def lift_suppression(self, address: str, now: datetime) -> bool:
        return self.suppressions.lift(address, now)

    def suppressed(self) -> list[Suppression]:
        return self.suppressions.suppressed()

    def suppressed_keys(self) -> set[str]:
        return self.suppressions.suppressed_keys()
