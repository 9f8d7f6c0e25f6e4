"""Subscribers who signed up on the web pages (mailer.selfservice): their
double opt-in, their choices, their pause, and what the pages show them.

A web subscriber is a row of ``subscribers`` with origin ``web`` (so
matching, digests, unsubscribing and the outbox treat them as any other),
its subscriptions in ``subscriptions``, and the rest in ``web_subscribers``.
A sign-up is stored inactive until its confirmation link is used. Every
change bumps the ``web_subscribers`` state key, so a pass rereads them only
when something changed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from mailer.addresses import address_key
from mailer.store.listing import connection_query, web_subscribers
from mailer.store.people import _sync_subscriptions
from mailer.store.records import Profile, WebSubscriber, web_subscriber
from mailer.store.schema import (
    DELIVERIES,
    STATE,
    SUBSCRIBERS,
    SUBSCRIPTIONS,
    WEB_SUBSCRIBERS,
    DeliveryKind,
    DeliveryStatus,
    Origin,
    Transaction,
    utc,
)

VERSION_KEY = "web_subscribers"  # state key: changes whenever a web subscriber does


@dataclass(frozen=True, slots=True)
class SignUp:
    """What a sign-up became: a new (or renewed) sign-up waiting for the
    confirmation mail, or an address that already subscribes, which gets
    its manage link instead."""

    kind: Literal["confirm", "manage"]
    subscriber_id: int
    email: str
    nonce: str | None = None


@dataclass(frozen=True, slots=True)
class SentDigest:
    at: datetime
    papers: int
    message_id: str


Confirmation = Literal["confirmed", "used", "unknown"]


class WebSubscribers:
    """Reads and writes of web subscribers (``subscribers`` rows of origin
    web, their ``subscriptions`` and ``web_subscribers``)."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def version(self) -> str | None:
        """Changes whenever a web subscriber does; None before the first."""
        with self._transaction() as conn:
            value: str | None = conn.execute(
                select(STATE.c.value).where(STATE.c.key == VERSION_KEY)
            ).scalar()
            return value

    def sign_up(self, profile: Profile, now: datetime, nonce: str) -> SignUp:
        """Store a sign-up waiting for confirmation by ``nonce``, unless the
        address already subscribes (then nothing changes). A pending or
        removed sign-up, or an address config.toml no longer has, is
        replaced by this one."""
        key = address_key(profile.email)
        with self._transaction() as conn:
            row = conn.execute(
                select(
                    SUBSCRIBERS.c.id,
                    SUBSCRIBERS.c.email,
                    SUBSCRIBERS.c.active,
                    SUBSCRIBERS.c.origin,
                )
                .where(SUBSCRIBERS.c.email_key == key)
                .order_by(SUBSCRIBERS.c.id)
            ).first()
            if row is None:
                inserted = conn.execute(
                    insert(SUBSCRIBERS).values(
                        email=profile.email,
                        email_key=key,
                        name=profile.name,
                        active=False,
                        created_at=now,
                        origin=Origin.WEB,
                    )
                ).inserted_primary_key
                assert inserted is not None
                subscriber_id: int = inserted[0]
            else:
                subscriber_id = row.id
                confirmed = conn.execute(
                    select(WEB_SUBSCRIBERS.c.confirmed_at).where(
                        WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id
                    )
                ).scalar()
                if row.active and (row.origin == Origin.CONFIG or confirmed is not None):
                    return SignUp("manage", subscriber_id, row.email)
                conn.execute(
                    update(SUBSCRIBERS)
                    .where(SUBSCRIBERS.c.id == subscriber_id)
                    .values(email=profile.email, name=profile.name, active=False, origin=Origin.WEB)
                )
                conn.execute(
                    delete(WEB_SUBSCRIBERS).where(WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id)
                )
            conn.execute(
                insert(WEB_SUBSCRIBERS).values(
                    subscriber_id=subscriber_id,
                    schedule=profile.schedule,
                    timezone=profile.timezone,
                    max_papers=profile.max_papers,
                    confirm_nonce=nonce,
                    signed_up_at=now,
                    updated_at=now,
                )
            )
            _sync_subscriptions(conn, {subscriber_id: profile.subscriptions})
            _bump(conn, now)
        return SignUp("confirm", subscriber_id, profile.email, nonce)

    def confirm(self, subscriber_id: int, nonce: str, now: datetime) -> Confirmation:
        """Use a confirmation: the sign-up becomes an active subscriber whose
        digests hold papers from now on. A link used before answers "used";
        one replaced by a later sign-up, or never made, "unknown"."""
        with self._transaction() as conn:
            row = conn.execute(
                select(WEB_SUBSCRIBERS.c.confirm_nonce, WEB_SUBSCRIBERS.c.confirmed_at)
                .join(SUBSCRIBERS, SUBSCRIBERS.c.id == WEB_SUBSCRIBERS.c.subscriber_id)
                .where(
                    WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id,
                    SUBSCRIBERS.c.origin == Origin.WEB,
                )
            ).first()
            if row is None:
                return "unknown"
            if row.confirm_nonce is None or not secrets.compare_digest(row.confirm_nonce, nonce):
                return "used" if row.confirm_nonce is None and row.confirmed_at else "unknown"
            conn.execute(
                update(WEB_SUBSCRIBERS)
                .where(WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id)
                .values(confirmed_at=now, confirm_nonce=None, updated_at=now)
            )
            conn.execute(
                update(SUBSCRIBERS)
                .where(SUBSCRIBERS.c.id == subscriber_id)
                .values(active=True, created_at=now, unsubscribed_at=None)
            )
            _bump(conn, now)
        return "confirmed"

    def pending(self, subscriber_id: int, nonce: str) -> WebSubscriber | None:
        """The sign-up ``nonce`` would confirm, if it still would."""
        found = self._load(
            and_(SUBSCRIBERS.c.id == subscriber_id, WEB_SUBSCRIBERS.c.confirm_nonce == nonce)
        )
        return found[0] if found else None

    def find(self, email_key: str) -> WebSubscriber | None:
        """The subscriber with this ``address_key``, of either origin."""
        found = self._load(SUBSCRIBERS.c.email_key == email_key, limit=1)
        return found[0] if found else None

    def get(self, subscriber_id: int) -> WebSubscriber | None:
        found = self._load(SUBSCRIBERS.c.id == subscriber_id)
        return found[0] if found else None

    def roster(self) -> list[WebSubscriber]:
        """Every confirmed web subscriber still active (unsubscribed ones
        included: the store's active ids leave those out of matching)."""
        return self._load(
            and_(
                SUBSCRIBERS.c.origin == Origin.WEB,
                SUBSCRIBERS.c.active.is_(True),
                WEB_SUBSCRIBERS.c.confirmed_at.is_not(None),
            )
        )

    def listing(self) -> list[WebSubscriber]:
        """Every web subscriber in any state, for the operator (``mailer subs
        list`` reads them with the driver alone, mailer.store.listing)."""
        with self._transaction() as conn:
            return web_subscribers(connection_query(conn))

    def counts(self) -> dict[str, int]:
        """Web subscribers by state: active, paused, pending, unsubscribed, removed."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    SUBSCRIBERS.c.active,
                    WEB_SUBSCRIBERS.c.confirmed_at.is_not(None),
                    WEB_SUBSCRIBERS.c.confirm_nonce.is_not(None),
                    SUBSCRIBERS.c.unsubscribed_at.is_not(None),
                    WEB_SUBSCRIBERS.c.paused_until.is_not(None),
                    func.count(),
                )
                .select_from(SUBSCRIBERS)
                .join(WEB_SUBSCRIBERS, WEB_SUBSCRIBERS.c.subscriber_id == SUBSCRIBERS.c.id)
                .where(SUBSCRIBERS.c.origin == Origin.WEB)
                .group_by(
                    SUBSCRIBERS.c.active,
                    WEB_SUBSCRIBERS.c.confirmed_at.is_not(None),
                    WEB_SUBSCRIBERS.c.confirm_nonce.is_not(None),
                    SUBSCRIBERS.c.unsubscribed_at.is_not(None),
                    WEB_SUBSCRIBERS.c.paused_until.is_not(None),
                )
            ).all()
        counts = dict.fromkeys(("active", "paused", "pending", "unsubscribed", "removed"), 0)
        for active, confirmed, awaiting, unsubscribed, paused, n in rows:
            if not confirmed:
                state = "pending" if awaiting else "removed"
            elif not active:
                state = "removed"
            elif unsubscribed:
                state = "unsubscribed"
            else:
                state = "paused" if paused else "active"
            counts[state] += n
        return counts

    def save(self, subscriber_id: int, profile: Profile, now: datetime) -> bool:
        """A confirmed web subscriber's new choices (not their address: see
        ``change_email``); False when there is no such subscriber."""
        with self._transaction() as conn:
            changed = conn.execute(
                update(SUBSCRIBERS)
                .where(SUBSCRIBERS.c.id == subscriber_id, SUBSCRIBERS.c.origin == Origin.WEB)
                .values(name=profile.name)
            ).rowcount
            if not changed:
                return False
            conn.execute(
                update(WEB_SUBSCRIBERS)
                .where(WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id)
                .values(
                    schedule=profile.schedule,
                    timezone=profile.timezone,
                    max_papers=profile.max_papers,
                    updated_at=now,
                )
            )
            _sync_subscriptions(conn, {subscriber_id: profile.subscriptions})
            _bump(conn, now)
        return True

    def pause(self, subscriber_id: int, until: date | None, now: datetime) -> bool:
        """No digests before ``until`` (None: resume now); papers that arrive
        meanwhile are not kept for later."""
        return self._set(subscriber_id, now, paused_until=until)

    def remove(self, subscriber_id: int, now: datetime) -> bool:
        """Stop a web subscriber for good (the operator's ``subs remove``), or
        void a pending sign-up's link; history stays, and the address may
        sign up again."""
        with self._transaction() as conn:
            changed = conn.execute(
                update(SUBSCRIBERS)
                .where(SUBSCRIBERS.c.id == subscriber_id, SUBSCRIBERS.c.origin == Origin.WEB)
                .values(active=False)
            ).rowcount
            if changed:
                conn.execute(
                    update(WEB_SUBSCRIBERS)
                    .where(WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id)
                    .values(confirm_nonce=None, updated_at=now)
                )
                _bump(conn, now)
            return bool(changed)

    def change_email(self, subscriber_id: int, email: str, now: datetime) -> bool:
        """The operator's ``subs set EMAIL email NEW`` for a web subscriber;
        the caller checks that no other subscriber has the address."""
        with self._transaction() as conn:
            changed = conn.execute(
                update(SUBSCRIBERS)
                .where(SUBSCRIBERS.c.id == subscriber_id, SUBSCRIBERS.c.origin == Origin.WEB)
                .values(email=email, email_key=address_key(email))
            ).rowcount
            if changed:
                _bump(conn, now)
            return bool(changed)

    def recent_digests(self, subscriber_id: int, limit: int = 10) -> list[SentDigest]:
        """The last digests sent to this subscriber, newest first."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(DELIVERIES.c.sent_at, DELIVERIES.c.papers, DELIVERIES.c.message_id)
                .where(
                    DELIVERIES.c.subscriber_id == subscriber_id,
                    DELIVERIES.c.kind == DeliveryKind.DIGEST,
                    DELIVERIES.c.status == DeliveryStatus.SENT,
                )
                .order_by(DELIVERIES.c.id.desc())
                .limit(limit)
            ).all()
        return [SentDigest(utc(at), papers, mid) for at, papers, mid in rows]

    # --- helpers -------------------------------------------------------------------

    def _set(self, subscriber_id: int, now: datetime, **values: Any) -> bool:
        with self._transaction() as conn:
            changed = conn.execute(
                update(WEB_SUBSCRIBERS)
                .where(WEB_SUBSCRIBERS.c.subscriber_id == subscriber_id)
                .values(updated_at=now, **values)
            ).rowcount
            if changed:
                _bump(conn, now)
            return bool(changed)

    def _load(self, where: Any, limit: int | None = None) -> list[WebSubscriber]:
        """Subscribers (with their web choices, if any) and their active
        subscriptions, in two queries."""
        query = (
            select(
                SUBSCRIBERS.c.id,
                SUBSCRIBERS.c.email,
                SUBSCRIBERS.c.email_key,
                SUBSCRIBERS.c.name,
                SUBSCRIBERS.c.origin,
                SUBSCRIBERS.c.active,
                SUBSCRIBERS.c.created_at,
                SUBSCRIBERS.c.unsubscribed_at,
                WEB_SUBSCRIBERS.c.schedule,
                WEB_SUBSCRIBERS.c.timezone,
                WEB_SUBSCRIBERS.c.max_papers,
                WEB_SUBSCRIBERS.c.paused_until,
                WEB_SUBSCRIBERS.c.confirmed_at,
                WEB_SUBSCRIBERS.c.signed_up_at,
                WEB_SUBSCRIBERS.c.confirm_nonce.is_not(None).label("awaiting"),
            )
            .select_from(SUBSCRIBERS)
            .outerjoin(WEB_SUBSCRIBERS, WEB_SUBSCRIBERS.c.subscriber_id == SUBSCRIBERS.c.id)
            .where(where)
            .order_by(SUBSCRIBERS.c.id)
        )
        with self._transaction() as conn:
            rows = conn.execute(query if limit is None else query.limit(limit)).all()
            subscriptions = _subscriptions(conn, [r.id for r in rows])
        return [web_subscriber(r._mapping, subscriptions.get(r.id, ())) for r in rows]


def _subscriptions(conn: Connection, ids: Sequence[int]) -> dict[int, tuple[tuple[str, str], ...]]:
    """The active subscriptions of each of ``ids``, in the order they were added."""
    found: dict[int, list[tuple[str, str]]] = {}
    if not ids:
        return {}
    query = (
        select(SUBSCRIPTIONS.c.subscriber_id, SUBSCRIPTIONS.c.name, SUBSCRIPTIONS.c.query)
        .where(SUBSCRIPTIONS.c.active.is_(True))
        .order_by(SUBSCRIPTIONS.c.id)
    )
    if len(ids) <= 500:  # more: read them all rather than bind thousands of ids
        query = query.where(SUBSCRIPTIONS.c.subscriber_id.in_(ids))
    wanted = set(ids)
    for subscriber_id, name, query_text in conn.execute(query):
        if subscriber_id in wanted:
            found.setdefault(subscriber_id, []).append((name, query_text))
    return {k: tuple(v) for k, v in found.items()}


def _bump(conn: Connection, now: datetime) -> None:
    """A new version of the web subscribers, in the transaction that changed them."""
    value = secrets.token_hex(8)
    done = conn.execute(
        update(STATE).where(STATE.c.key == VERSION_KEY).values(value=value, updated_at=now)
    ).rowcount
    if done:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(STATE).values(key=VERSION_KEY, value=value, updated_at=now))
        return
    except IntegrityError:  # another first change inserted it meanwhile: update that
        pass
    conn.execute(
        update(STATE).where(STATE.c.key == VERSION_KEY).values(value=value, updated_at=now)
    )
