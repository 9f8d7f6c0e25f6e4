"""Bounces and the suppression list: addresses that get nothing until lifted.

A bounce is recorded on the message it names (status ``bounced``, with the
reason) and counted against its recipient's address; an address is suppressed
when its hard bounces reach ``BounceLimits.hard``, or its soft bounces within
the window reach ``BounceLimits.soft``. Bounces are counted per message, so two
reports about one message count once, and only those since the last lift.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import distinct, func, insert, select, update
from sqlalchemy.engine import Connection

from mailer.addresses import address_key
from mailer.store.schema import (
    BOUNCES,
    DELIVERIES,
    SUPPRESSIONS,
    DeliveryStatus,
    Transaction,
    utc,
)


@dataclass(frozen=True, slots=True)
class BounceLimits:
    """When bounces suppress an address (``[bounces]`` hard_limit, soft_limit,
    soft_window_days)."""

    hard: int = 1
    soft: int = 3
    window: timedelta = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: str
    source: str  # "bounce": read from the bounce mailbox; "smtp": refused at RCPT
    since: datetime


@dataclass(frozen=True, slots=True)
class BounceRecord:
    """What recording one bounce did: the message it named and, when this
    bounce tipped the count, the address now suppressed."""

    recipient: str
    message_id: str
    suppressed: Suppression | None


class Suppressions:
    """Reads and writes of the bounces and suppressions tables (and a
    bounced message's status in the outbox)."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

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
        """Record a bounce of message ``delivery_id`` (None if there is no
        such message) and suppress its recipient if the limits are reached,
        in one transaction."""
        with self._transaction() as conn:
            found = conn.execute(
                select(DELIVERIES.c.recipient, DELIVERIES.c.message_id).where(
                    DELIVERIES.c.id == delivery_id
                )
            ).first()
            if found is None:
                return None
            recipient, message_id = found
            key = address_key(recipient)
            conn.execute(
                insert(BOUNCES).values(
                    delivery_id=delivery_id,
                    address_key=key,
                    hard=hard,
                    status=status,
                    reason=reason,
                    received_at=now,
                )
            )
            kind = "hard" if hard else "soft"
            conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id == delivery_id)
                .values(
                    status=DeliveryStatus.BOUNCED,
                    last_reply=f"bounced ({kind}, {status}): {reason}",
                    next_attempt_at=None,
                )
            )
            why = _over_limit(conn, key, now, limits, f"{status}: {reason}")
            if why is None or _active(conn, key) is not None:
                return BounceRecord(recipient, message_id, None)
            return BounceRecord(
                recipient, message_id, _suppress(conn, recipient, why, "bounce", now)
            )

    def suppress(self, address: str, *, reason: str, source: str, now: datetime) -> bool:
        """Put ``address`` on the list; False if it already was."""
        with self._transaction() as conn:
            if _active(conn, address_key(address)) is not None:
                return False
            _suppress(conn, address, reason, source, now)
            return True

    def lift(self, address: str, now: datetime) -> bool:
        """Take ``address`` off the list; False if it was not on it. Bounces
        until now no longer count towards suppressing it again."""
        with self._transaction() as conn:
            changed = conn.execute(
                update(SUPPRESSIONS)
                .where(
                    SUPPRESSIONS.c.address_key == address_key(address),
                    SUPPRESSIONS.c.lifted_at.is_(None),
                )
                .values(lifted_at=now)
            )
            return bool(changed.rowcount)

    def suppressed(self) -> list[Suppression]:
        """The addresses on the list, longest-standing first."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    SUPPRESSIONS.c.address,
                    SUPPRESSIONS.c.reason,
                    SUPPRESSIONS.c.source,
                    SUPPRESSIONS.c.since,
                )
                .where(SUPPRESSIONS.c.lifted_at.is_(None))
                .order_by(SUPPRESSIONS.c.since, SUPPRESSIONS.c.id)
            )
            return [Suppression(a, r, s, utc(t)) for a, r, s, t in rows]

    def suppressed_keys(self) -> set[str]:
        """``address_key`` of every address on the list."""
        with self._transaction() as conn:
            return set(
                conn.execute(
                    select(SUPPRESSIONS.c.address_key).where(SUPPRESSIONS.c.lifted_at.is_(None))
                ).scalars()
            )


def _active(conn: Connection, key: str) -> Any:
    return conn.execute(
        select(SUPPRESSIONS.c.id).where(
            SUPPRESSIONS.c.address_key == key, SUPPRESSIONS.c.lifted_at.is_(None)
        )
    ).first()


def _over_limit(
    conn: Connection, key: str, now: datetime, limits: BounceLimits, last: str
) -> str | None:
    """Why the bounces of ``key`` since its last lift suppress it, or None."""
    lifted = conn.execute(
        select(SUPPRESSIONS.c.lifted_at).where(SUPPRESSIONS.c.address_key == key)
    ).scalar()

    def count(hard: bool, since: datetime | None) -> int:
        query = select(func.count(distinct(BOUNCES.c.delivery_id))).where(
            BOUNCES.c.address_key == key, BOUNCES.c.hard.is_(hard)
        )
        if since is not None:
            query = query.where(BOUNCES.c.received_at > since)
        return int(conn.execute(query).scalar() or 0)

    hard = count(True, lifted)
    if hard >= limits.hard:
        return f"{hard} hard bounce{'s' if hard != 1 else ''}; last {last}"
    window_start = now - limits.window
    soft = count(False, max(window_start, utc(lifted)) if lifted else window_start)
    if soft >= limits.soft:
        days = limits.window / timedelta(days=1)
        return f"{soft} soft bounces within {days:g} days; last {last}"
    return None


def _suppress(
    conn: Connection, address: str, reason: str, source: str, now: datetime
) -> Suppression:
    """On the list from ``now``: a new row, or a lifted one put back."""
    values = {"address": address, "reason": reason, "source": source, "since": now}
    changed = conn.execute(
        update(SUPPRESSIONS)
        .where(SUPPRESSIONS.c.address_key == address_key(address))
        .values(**values, lifted_at=None)
    )
    if not changed.rowcount:
        conn.execute(insert(SUPPRESSIONS).values(**values, address_key=address_key(address)))
    return Suppression(address, reason, source, now)
