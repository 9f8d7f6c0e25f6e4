"""Subscribers, their subscriptions, and unsubscribing (RFC 8058)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Row

from mailer.addresses import address_key
from mailer.collector import gc_paused
from mailer.store.schema import (
    DELIVERIES,
    MATCHES,
    SUBSCRIBERS,
    SUBSCRIPTIONS,
    SUPPRESSIONS,
    DeliveryKind,
    Origin,
    Transaction,
    utc,
)


@dataclass(frozen=True, slots=True)
class SubscriberState:
    id: int
    email: str
    active: bool
    created_at: datetime
    unsubscribed_at: datetime | None
    pending: int
    last_digest_at: datetime | None
    origin: str = Origin.CONFIG


class People:
    """Reads and writes of the subscribers and subscriptions tables."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def sync_subscribers(
        self, subscribers: Iterable[tuple[str, str, Sequence[tuple[str, str]]]], now: datetime
    ) -> dict[str, int]:
        """Mirror the configured subscribers (email, name, [(name, query)]):
        new ones start now, removed ones are deactivated, history is kept.
        Subscribers who signed up on the web are left alone, unless the
        operator configures their address: then config.toml owns them.
        Reads both tables once and writes only what changed, in batches."""
        # Rows of every subscriber and subscription beside the configuration's
        # models: the cycle collector would walk them all and find nothing.
        with gc_paused():
            return self._sync_subscribers(subscribers, now)

    def _sync_subscribers(
        self, subscribers: Iterable[tuple[str, str, Sequence[tuple[str, str]]]], now: datetime
    ) -> dict[str, int]:
        wanted = {address_key(email): (email, name, subs) for email, name, subs in subscribers}
        ids: dict[str, int] = {}
        with self._transaction() as conn:
            # key: (id, email, name, active, origin), as plain tuples.
            rows = {
                key: (row_id, email, name, active, origin)
                for row_id, email, key, name, active, origin in conn.execute(
                    select(
                        SUBSCRIBERS.c.id,
                        SUBSCRIBERS.c.email,
                        SUBSCRIBERS.c.email_key,
                        SUBSCRIBERS.c.name,
                        SUBSCRIBERS.c.active,
                        SUBSCRIBERS.c.origin,
                    )
                )
            }
            changed = [
                {"b_id": row_id, "b_email": email, "b_name": name, "b_active": False}
                for key, (row_id, email, name, active, origin) in rows.items()
                if key not in wanted and active and origin == Origin.CONFIG
            ]
            ids.update(_insert_subscribers(conn, wanted, rows.keys(), now))
            for key, (email, name, _) in wanted.items():
                found = rows.get(key)
                if found is not None:
                    ids[email] = found[0]
                    # The configured spelling is the one mail goes to.
                    if found[1:] != (email, name, True, Origin.CONFIG):
                        changed.append(
                            {"b_id": found[0], "b_email": email, "b_name": name, "b_active": True}
                        )
            if changed:
                conn.execute(_SET_SUBSCRIBER, changed)
            _sync_subscriptions(conn, {ids[email]: subs for email, _, subs in wanted.values()})
        return ids

    def subscriber_since(self, subscriber_id: int) -> datetime | None:
        with self._transaction() as conn:
            since: datetime | None = conn.execute(
                select(SUBSCRIBERS.c.created_at).where(SUBSCRIBERS.c.id == subscriber_id)
            ).scalar()
            return since

    def active_subscriber_ids(self) -> dict[str, int]:
        """The subscribers papers are matched and digests composed for: not
        removed, unsubscribed or suppressed (mailer.store.suppressions)."""
        suppressed = select(SUPPRESSIONS.c.address_key).where(SUPPRESSIONS.c.lifted_at.is_(None))
        with self._transaction() as conn:
            rows = conn.execute(
                select(SUBSCRIBERS.c.email, SUBSCRIBERS.c.id).where(
                    SUBSCRIBERS.c.active.is_(True),
                    SUBSCRIBERS.c.unsubscribed_at.is_(None),
                    SUBSCRIBERS.c.email_key.not_in(suppressed),
                )
            )
            return dict(rows.all())

    def unsubscribe(self, email: str, now: datetime) -> bool:
        """Stop all mail to ``email`` until resubscribed; False if unknown.
        A repeated unsubscribe keeps the first time, so replays change nothing."""
        with self._transaction() as conn:
            row = _by_email(conn, email)
            if row is None:
                return False
            if row.unsubscribed_at is None:
                _set_unsubscribed(conn, row.id, now)
            return True

    def resubscribe(self, email: str) -> bool:
        """Lift an unsubscribe; False if the address is unknown."""
        with self._transaction() as conn:
            row = _by_email(conn, email)
            if row is None:
                return False
            if row.unsubscribed_at is not None:
                _set_unsubscribed(conn, row.id, None)
            return True

    def lift_unsubscribes(self, resubscribed: Mapping[str, datetime]) -> list[str]:
        """Re-enable each address whose unsubscribe predates its given time;
        returns the addresses re-enabled."""
        lifted: list[str] = []
        with self._transaction() as conn:
            for email, when in resubscribed.items():
                row = _by_email(conn, email)
                if row is None or row.unsubscribed_at is None:
                    continue
                if utc(row.unsubscribed_at) < when:
                    _set_unsubscribed(conn, row.id, None)
                    lifted.append(row.email)
        return lifted

    def unsubscribed_at(self, email: str) -> datetime | None:
        with self._transaction() as conn:
            row = _by_email(conn, email)
            return None if row is None else row.unsubscribed_at

    def subscriber_states(self) -> dict[str, SubscriberState]:
        """Every subscriber the database knows, by ``address_key``."""
        with self._transaction() as conn:
            pending: dict[int, int] = dict(
                conn.execute(
                    select(MATCHES.c.subscriber_id, func.count())
                    .where(MATCHES.c.delivery_id.is_(None))
                    .group_by(MATCHES.c.subscriber_id)
                ).all()
            )
            last: dict[int, datetime] = dict(
                conn.execute(
                    select(DELIVERIES.c.subscriber_id, func.max(DELIVERIES.c.created_at))
                    .where(DELIVERIES.c.kind == DeliveryKind.DIGEST)
                    .group_by(DELIVERIES.c.subscriber_id)
                ).all()
            )
            return {
                r.email_key: SubscriberState(
                    id=r.id,
                    email=r.email,
                    active=r.active,
                    created_at=r.created_at,
                    unsubscribed_at=r.unsubscribed_at,
                    pending=pending.get(r.id, 0),
                    last_digest_at=last.get(r.id),
                    origin=r.origin,
                )
                for r in conn.execute(select(SUBSCRIBERS).order_by(SUBSCRIBERS.c.id))
            }


def _sync_subscriptions(conn: Connection, wanted: Mapping[int, Sequence[tuple[str, str]]]) -> None:
    """Each given subscriber's subscriptions as configured: new ones added,
    changed queries updated, the ones no longer configured deactivated.
    Rows are read as plain tuples and a subscriber whose stored
    subscriptions are all active and as configured is passed over whole:
    at every start-up, that is nearly everyone (ten thousand at most)."""
    existing: dict[int, dict[str, tuple[int, str, bool]]] = {}
    query = select(
        SUBSCRIPTIONS.c.id,
        SUBSCRIPTIONS.c.subscriber_id,
        SUBSCRIPTIONS.c.name,
        SUBSCRIPTIONS.c.query,
        SUBSCRIPTIONS.c.active,
    )
    if len(wanted) <= 100:  # one reader's save: their rows, not everyone's
        query = query.where(SUBSCRIPTIONS.c.subscriber_id.in_(list(wanted)))
    for row_id, subscriber_id, name, stored, active in conn.execute(query):
        if subscriber_id in wanted:
            existing.setdefault(subscriber_id, {})[name] = (row_id, stored, active)
    added: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for subscriber_id, subs in wanted.items():
        have = existing.get(subscriber_id, {})
        queries = dict(subs)
        if len(have) == len(queries) and all(
            active and queries.get(name) == stored for name, (_, stored, active) in have.items()
        ):
            continue
        for name, (row_id, stored, active) in have.items():
            now_as = (name in queries, queries.get(name, stored))
            if now_as != (active, stored):
                changed.append({"b_id": row_id, "b_active": now_as[0], "b_query": now_as[1]})
        added.extend(
            {"subscriber_id": subscriber_id, "name": name, "query": query, "active": True}
            for name, query in subs
            if name not in have
        )
    if changed:
        conn.execute(_SET_SUBSCRIPTION, changed)
    if added:
        conn.execute(insert(SUBSCRIPTIONS), added)


def _by_email(conn: Connection, email: str) -> Row[Any, Any, Any] | None:
    """The subscriber with this address, however its case or domain is spelt."""
    return conn.execute(
        select(SUBSCRIBERS.c.id, SUBSCRIBERS.c.email, SUBSCRIBERS.c.unsubscribed_at)
        .where(SUBSCRIBERS.c.email_key == address_key(email))
        .order_by(SUBSCRIBERS.c.id)
    ).first()


def _set_unsubscribed(conn: Connection, subscriber_id: int, at: datetime | None) -> None:
    conn.execute(
        update(SUBSCRIBERS).where(SUBSCRIBERS.c.id == subscriber_id).values(unsubscribed_at=at)
    )


# Bind names differ from the columns because SQLAlchemy reserves those for SET.
_SET_SUBSCRIBER = (
    update(SUBSCRIBERS)
    .where(SUBSCRIBERS.c.id == bindparam("b_id"))
    .values(
        email=bindparam("b_email"),
        name=bindparam("b_name"),
        active=bindparam("b_active"),
        origin=Origin.CONFIG,
    )
)
_SET_SUBSCRIPTION = (
    update(SUBSCRIPTIONS)
    .where(SUBSCRIPTIONS.c.id == bindparam("b_id"))
    .values(active=bindparam("b_active"), query=bindparam("b_query"))
)


def _insert_subscribers(
    conn: Connection,
    wanted: Mapping[str, tuple[str, str, Sequence[tuple[str, str]]]],
    stored: Collection[str],
    now: datetime,
) -> dict[str, int]:
    """Add the wanted subscribers not ``stored`` in one statement (not one
    per subscriber); their ids by email."""
    new = [(key, email, name) for key, (email, name, _) in wanted.items() if key not in stored]
    if not new:
        return {}
    conn.execute(
        insert(SUBSCRIBERS),
        [{"email": e, "email_key": k, "name": n, "created_at": now} for k, e, n in new],
    )
    ids: dict[str, int] = {}
    keys = [k for k, _, _ in new]
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        for row in conn.execute(
            select(SUBSCRIBERS.c.id, SUBSCRIBERS.c.email).where(SUBSCRIBERS.c.email_key.in_(chunk))
        ):
            ids[row.email] = row.id
    return ids
