"""The outbox: composed messages, each claiming its matches, and what
became of every attempt to send them.

A node sends only the messages it has claimed (``claim_due``): a claim names
the node and runs out ``lease`` seconds later by the database's clock unless
renewed, and another node may take a message only once its claim has run
out, so two live nodes never send one message at once."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, insert, literal, or_, select, update
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import NoResultFound

from mailer.errors import StoreError
from mailer.store.schema import (
    DELIVERIES,
    MATCHES,
    SUBSCRIBERS,
    SUPPRESSIONS,
    DeliveryKind,
    DeliveryRow,
    DeliveryStatus,
    Transaction,
    db_time,
    row_objects,
    sqlite_cache,
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A composed message on its way into the outbox."""

    subscriber_id: int
    recipient: str
    message_id: str
    subject: str
    message: bytes
    match_ids: Sequence[int]
    failed: str | None = None  # no message could be built: queued as failed, with why
    kind: str = DeliveryKind.DIGEST


class Outbox:
    """Reads and writes of the deliveries table (and matches' claims)."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def enqueue_many(self, messages: Sequence[Outgoing], now: datetime) -> list[int]:
        """Put many composed messages in the outbox, each claiming its matches,
        in one transaction: all of them are queued, or none and no match claimed.
        Three statements whatever the count: the rows inserted in one batch,
        their ids read back by Message-ID (unique; SQLite cannot return them
        in order from a batch, and would insert one row per statement), and
        every match claimed in one batch."""
        if not messages:
            return []
        with self._transaction() as conn:
            conn.execute(
                insert(DELIVERIES),
                [
                    {
                        "subscriber_id": m.subscriber_id,
                        "recipient": m.recipient,
                        "message_id": m.message_id,
                        "subject": m.subject,
                        "papers": len(m.match_ids),
                        "message": m.message,
                        "created_at": now,
                        "next_attempt_at": None if m.failed else now,
                        "status": DeliveryStatus.FAILED if m.failed else DeliveryStatus.PENDING,
                        "last_reply": m.failed,
                        "kind": m.kind,
                    }
                    for m in messages
                ],
            )
            c = DELIVERIES.c
            found: dict[str, int] = {}
            for start in range(0, len(messages), 1000):
                chunk = [m.message_id for m in messages[start : start + 1000]]
                found.update(
                    conn.execute(select(c.message_id, c.id).where(c.message_id.in_(chunk))).all()
                )
            ids = [found[m.message_id] for m in messages]
            claims = [
                (delivery_id, match_id)
                for m, delivery_id in zip(messages, ids, strict=True)
                for match_id in m.match_ids
            ]
            claimed = _claim_matches(conn, claims)
            if claimed != len(claims):
                raise StoreError(
                    f"outbox: {len(claims) - claimed} of the matches for "
                    f"{len(messages)} messages were already claimed by another message",
                    hint="is a second mailer running on the same database?",
                )
        return ids

    def due_deliveries(self, now: datetime, limit: int | None = None) -> list[DeliveryRow]:
        """Pending messages due by ``now``, oldest first, as row objects (``row_objects``)."""
        query = (
            select(DeliveryRow)
            .where(
                DELIVERIES.c.status == DeliveryStatus.PENDING, DELIVERIES.c.next_attempt_at <= now
            )
            .order_by(DELIVERIES.c.id)
        )
        return self._rows(query.limit(limit) if limit else query)

    def claim_due(
        self,
        node: str,
        now: datetime,
        *,
        lease: float,
        limit: int,
        exclude: Collection[int] = (),
    ) -> list[DeliveryRow]:
        """Claim for ``node``, for ``lease`` seconds, up to ``limit`` pending
        messages due by ``now`` (oldest first, none of ``exclude``): those
        unclaimed and those whose claim ran out. Rows another node is claiming
        at this moment are skipped, not waited for (FOR UPDATE SKIP LOCKED on
        PostgreSQL; SQLite has one writer at a time and one node)."""
        with self._transaction() as conn:
            return _claim(conn, node, now, lease, limit, exclude)

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
        """One sender's step, in one transaction: record ``sent`` (delivery
        id, server reply) as sent at ``sent_at`` (``mark_sent_many``), claim
        the next ``limit`` due messages (``claim_due``) and cancel those among
        them no longer wanted (``cancel_unwanted``). Without ``in_database``
        (a node alone on the database, holding its claims in memory) the
        rows are only read, and the sent ones name ``node`` instead: on
        SQLite, writing a claim to a row rewrites the message's bytes too."""
        with self._transaction() as conn:
            _mark_sent(conn, sent, sent_at, None if in_database else node)
            if in_database:
                rows = _claim(conn, node, now, lease, limit, exclude)
            else:
                free = _claimable(conn, now, exclude).order_by(DELIVERIES.c.id).limit(limit)
                rows = row_objects(
                    conn,
                    select(DeliveryRow).where(DELIVERIES.c.id.in_(free)).order_by(DELIVERIES.c.id),
                )
            cancelled = _cancel_unwanted(conn, [r.id for r in rows if r.id is not None])
            return Claimed(rows, cancelled)

    def claimable(self, now: datetime, *, limit: int, exclude: Collection[int] = ()) -> int:
        """How many messages ``claim_due`` would find now, counting up to ``limit``."""
        with self._transaction() as conn:
            free = _claimable(conn, now, exclude)
            found: int = conn.execute(
                select(func.count()).select_from(free.limit(limit).subquery())
            ).scalar_one()
            return found

    def renew_claims(self, node: str, ids: Collection[int], *, lease: float) -> set[int]:
        """Extend ``node``'s claims among ``ids`` that have not run out, to
        ``lease`` seconds from now; returns those extended. A claim that ran
        out stays out: another node may have the message by now."""
        if not ids:
            return set()
        c = DELIVERIES.c
        with self._transaction() as conn:
            return set(
                conn.execute(
                    update(DELIVERIES)
                    .where(
                        c.id.in_(list(ids)),
                        c.claimed_by == node,
                        c.status == DeliveryStatus.PENDING,
                        c.claimed_until > db_time(conn),
                    )
                    .values(claimed_until=db_time(conn, lease))
                    .returning(c.id)
                ).scalars()
            )

    def release_claims(self, node: str | None, ids: Collection[int] | None = None) -> int:
        """Give back the claims on pending messages held by ``node`` (by any
        node when None), only on ``ids`` when given; returns how many. Looks
        before it writes: usually there are none, and a write would wait for
        SQLite's write lock."""
        if ids is not None and not ids:
            return 0
        c = DELIVERIES.c
        held = and_(c.status == DeliveryStatus.PENDING, c.claimed_until.is_not(None))
        if node is not None:
            held = and_(held, c.claimed_by == node)
        if ids is not None:
            held = and_(held, c.id.in_(list(ids)))
        with self._transaction() as conn:
            if conn.execute(select(c.id).where(held).limit(1)).first() is None:
                return 0
            return conn.execute(update(DELIVERIES).where(held).values(claimed_until=None)).rowcount

    def sent_by_node(self, since: datetime) -> dict[str, int]:
        """Messages sent since ``since``, by the node that sent them."""
        c = DELIVERIES.c
        with self._transaction() as conn:
            rows = conn.execute(
                select(c.claimed_by, func.count())
                .where(c.status == DeliveryStatus.SENT, c.sent_at >= since)
                .group_by(c.claimed_by)
            )
            return {node: count for node, count in rows if node is not None}

    def deliveries(self) -> list[DeliveryRow]:
        """Every message, oldest first, as row objects (``row_objects``)."""
        return self._rows(select(DeliveryRow).order_by(DELIVERIES.c.id))

    def delivery(self, delivery_id: int) -> DeliveryRow | None:
        found = self._rows(select(DeliveryRow).where(DELIVERIES.c.id == delivery_id))
        return found[0] if found else None

    def delivery_by_message_id(self, message_id: str) -> DeliveryRow | None:
        """The message with this Message-ID (with or without its <>)."""
        wanted = f"<{message_id.strip().strip('<>')}>"
        found = self._rows(select(DeliveryRow).where(DELIVERIES.c.message_id == wanted))
        return found[0] if found else None

    def _rows(self, query: Select[DeliveryRow]) -> list[DeliveryRow]:
        with self._transaction() as conn:
            return row_objects(conn, query)

    def mark_sent(self, delivery_id: int, *, reply: str, now: datetime) -> None:
        with self._transaction() as conn:
            _one(
                conn.execute(
                    _SENT, {"b_id": delivery_id, "b_reply": reply, "b_now": now, "b_node": None}
                ),
                delivery_id,
            )

    def mark_sent_many(
        self, sent: Sequence[tuple[int, str]], now: datetime, *, node: str | None = None
    ) -> None:
        """Record many accepted messages, (delivery id, server reply), in one
        transaction: a per-message commit costs more than sending it. With
        ``node``, they name it as their sender (its claims were in memory)."""
        if not sent:
            return
        with self._transaction() as conn:
            _mark_sent(conn, sent, now, node)

    def mark_attempt_failed(
        self,
        delivery_id: int,
        *,
        reply: str,
        permanent: bool,
        retry_at: datetime | None,
        now: datetime | None = None,
    ) -> None:
        """Count a failed attempt: a permanent failure ends the message; a
        temporary one defers it to ``retry_at``, keeping the first deferral."""
        c = DELIVERIES.c
        values: dict[str, Any] = {
            "attempts": c.attempts + 1,
            "last_reply": reply,
            "claimed_until": None,
        }
        if permanent:
            values["status"] = DeliveryStatus.FAILED
        else:
            values["next_attempt_at"] = retry_at
            values["deferred_since"] = func.coalesce(
                c.deferred_since, literal(now or retry_at, c.deferred_since.type)
            )
        with self._transaction() as conn:
            _one(
                conn.execute(update(DELIVERIES).where(c.id == delivery_id).values(values)),
                delivery_id,
            )

    def cancel_unwanted(self, delivery_ids: Sequence[int]) -> dict[int, str]:
        """Cancel those pending messages among ``delivery_ids`` whose recipient
        has unsubscribed, been removed from the config or been suppressed
        (mailer.store.suppressions) since they were composed; a notice goes
        to an unsubscribed reader (it may be how they resubscribe) but not to
        a suppressed address. Returns them with the reason. One query when, as
        usual, nobody has."""
        if not delivery_ids:
            return {}
        with self._transaction() as conn:
            return _cancel_unwanted(conn, delivery_ids)

    def retry_deliveries(self, ids: Sequence[int] | None, now: datetime) -> int:
        """Make deferred or failed messages due now (``ids``, or all of them when
        None); sent ones, and pending ones never tried, are left alone. Returns
        how many were changed."""
        c = DELIVERIES.c
        query = update(DELIVERIES).where(
            c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.FAILED)),
            or_(c.status == DeliveryStatus.FAILED, c.attempts != 0),
            func.length(c.message) > 0,  # one never composed has nothing to send
        )
        if ids is not None:
            query = query.where(c.id.in_(list(ids)))
        with self._transaction() as conn:
            result = conn.execute(
                query.values(
                    status=DeliveryStatus.PENDING, next_attempt_at=now, deferred_since=None
                )
            )
            return result.rowcount

    def last_digest_at(self, subscriber_id: int) -> datetime | None:
        with self._transaction() as conn:
            last: datetime | None = conn.execute(
                select(func.max(DELIVERIES.c.created_at)).where(
                    DELIVERIES.c.subscriber_id == subscriber_id,
                    DELIVERIES.c.kind == DeliveryKind.DIGEST,
                )
            ).scalar()
            return last

    def digest_state(
        self, subscriber_ids: Sequence[int]
    ) -> dict[int, tuple[datetime, datetime | None]]:
        """(subscribed since, last digest composed) per subscriber, in two
        queries per thousand subscribers."""
        state: dict[int, tuple[datetime, datetime | None]] = {}
        with self._transaction() as conn:
            for start in range(0, len(subscriber_ids), 1000):
                chunk = subscriber_ids[start : start + 1000]
                last: dict[int, datetime] = dict(
                    conn.execute(
                        select(DELIVERIES.c.subscriber_id, func.max(DELIVERIES.c.created_at))
                        .where(
                            DELIVERIES.c.subscriber_id.in_(chunk),
                            DELIVERIES.c.kind == DeliveryKind.DIGEST,
                        )
                        .group_by(DELIVERIES.c.subscriber_id)
                    ).all()
                )
                for subscriber_id, created in conn.execute(
                    select(SUBSCRIBERS.c.id, SUBSCRIBERS.c.created_at).where(
                        SUBSCRIBERS.c.id.in_(chunk)
                    )
                ):
                    state[subscriber_id] = (created, last.get(subscriber_id))
        return state

    def outbox_counts(self) -> dict[str, int]:
        """Messages by status: pending, sent, failed."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(DELIVERIES.c.status, func.count()).group_by(DELIVERIES.c.status)
            )
            return dict(rows.all())


@dataclass(frozen=True, slots=True)
class Claimed:
    """What ``settle_and_claim`` claimed: every row, and the ids among them
    it cancelled, with why (``cancel_unwanted``)."""

    rows: list[DeliveryRow]
    cancelled: dict[int, str]


def _mark_sent(
    conn: Connection, sent: Sequence[tuple[int, str]], now: datetime, node: str | None
) -> None:
    if sent:
        conn.execute(
            _SENT,
            [{"b_id": i, "b_reply": reply, "b_now": now, "b_node": node} for i, reply in sent],
        )


def _claim(
    conn: Connection,
    node: str,
    now: datetime,
    lease: float,
    limit: int,
    exclude: Collection[int],
) -> list[DeliveryRow]:
    """``Outbox.claim_due`` in the caller's transaction."""
    c = DELIVERIES.c
    free = (
        _claimable(conn, now, exclude).order_by(c.id).limit(limit).with_for_update(skip_locked=True)
    )
    claimed = list(
        conn.execute(
            update(DELIVERIES)
            .where(c.id.in_(free))
            .values(claimed_by=node, claimed_until=db_time(conn, lease))
            .returning(c.id)
        ).scalars()
    )
    if not claimed:
        return []
    return row_objects(conn, select(DeliveryRow).where(c.id.in_(claimed)).order_by(c.id))


def _cancel_unwanted(conn: Connection, delivery_ids: Sequence[int]) -> dict[int, str]:
    """``Outbox.cancel_unwanted`` in the caller's transaction."""
    if not delivery_ids:
        return {}
    suppressed = SUPPRESSIONS.c
    found = conn.execute(
        select(
            DELIVERIES.c.id,
            DELIVERIES.c.kind,
            SUBSCRIBERS.c.unsubscribed_at,
            SUBSCRIBERS.c.active,
            suppressed.since,
            suppressed.reason,
        )
        .join(SUBSCRIBERS, SUBSCRIBERS.c.id == DELIVERIES.c.subscriber_id)
        .outerjoin(
            SUPPRESSIONS,
            and_(
                suppressed.address_key == SUBSCRIBERS.c.email_key,
                suppressed.lifted_at.is_(None),
            ),
        )
        .where(
            DELIVERIES.c.id.in_(list(delivery_ids)),
            DELIVERIES.c.status == DeliveryStatus.PENDING,
            or_(
                and_(
                    DELIVERIES.c.kind == DeliveryKind.DIGEST,
                    or_(
                        SUBSCRIBERS.c.unsubscribed_at.is_not(None),
                        SUBSCRIBERS.c.active.is_(False),
                    ),
                ),
                suppressed.id.is_not(None),
            ),
        )
    )
    cancelled = {
        i: _unwanted(kind, unsubscribed_at, active, since, reason)
        for i, kind, unsubscribed_at, active, since, reason in found
    }
    if cancelled:
        conn.execute(
            _CANCEL,
            [{"b_id": i, "b_reply": f"not sent: recipient {why}"} for i, why in cancelled.items()],
        )
    return cancelled


def _claimable(conn: Connection, now: datetime, exclude: Collection[int]) -> Select[tuple[int]]:
    """Pending messages due by ``now`` that no live claim holds."""
    c = DELIVERIES.c
    free = select(c.id).where(
        c.status == DeliveryStatus.PENDING,
        c.next_attempt_at <= now,
        or_(c.claimed_until.is_(None), c.claimed_until < db_time(conn)),
    )
    return free.where(c.id.not_in(list(exclude))) if exclude else free


def _unwanted(
    kind: str,
    unsubscribed_at: datetime | None,
    active: bool,
    since: datetime | None,
    reason: str | None,
) -> str:
    """Why a composed message must not go to its recipient. A notice (a
    sign-up confirmation, a manage link) is wanted whatever the subscriber's
    state, but not by an address that bounces."""
    if since is not None and (kind != DeliveryKind.DIGEST or unsubscribed_at is None):
        return f"suppressed since {since} ({reason})"
    if unsubscribed_at is not None:
        return f"unsubscribed at {unsubscribed_at}"
    if not active:
        return "removed from the config"
    return f"suppressed since {since} ({reason})"


def _one(result: CursorResult[Any], delivery_id: int) -> None:
    """Fail the transaction when the message to update does not exist."""
    if result.rowcount != 1:
        raise NoResultFound(f"no message {delivery_id} in the outbox")


def _claim_matches(conn: Connection, claims: list[tuple[int, int]]) -> int:
    """Claim matches for their messages ((delivery id, match id) pairs),
    each only if unclaimed; how many were claimed, which tells whether
    another message had any. A chunk of digests claims tens of thousands of
    matches spread over the table (rows come paper by paper): through the
    driver, without Core's per-row bind processing; on SQLite with a larger
    page cache, on PostgreSQL in one statement."""
    if not claims:
        return 0
    if conn.dialect.name == "postgresql":
        deliveries, matches = zip(*claims, strict=True)
        return conn.exec_driver_sql(_POSTGRES_CLAIM, (list(deliveries), list(matches))).rowcount
    with sqlite_cache(conn):
        return conn.exec_driver_sql(_SQLITE_CLAIM, claims).rowcount


_SQLITE_CLAIM = f"UPDATE {MATCHES.name} SET delivery_id = ? WHERE id = ? AND delivery_id IS NULL"
_POSTGRES_CLAIM = (
    f"UPDATE {MATCHES.name} AS m SET delivery_id = c.delivery_id"
    " FROM unnest(%s::bigint[], %s::bigint[]) AS c(delivery_id, id)"
    " WHERE m.id = c.id AND m.delivery_id IS NULL"
)
# Bind names differ from the columns because SQLAlchemy reserves those for SET.
_SENT = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"))
    .values(
        status=DeliveryStatus.SENT,
        sent_at=bindparam("b_now"),
        last_reply=bindparam("b_reply"),
        attempts=DELIVERIES.c.attempts + 1,
        claimed_by=func.coalesce(bindparam("b_node"), DELIVERIES.c.claimed_by),
        claimed_until=None,
    )
)
_CANCEL = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"))
    .values(
        status=DeliveryStatus.CANCELLED,
        last_reply=bindparam("b_reply"),
        next_attempt_at=None,
        claimed_until=None,
    )
)
