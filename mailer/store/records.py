"""What the store hands back as plain data, and the stored values it is made
of, without SQLAlchemy: ``mailer subs list`` reads the database through the
DB-API driver alone (mailer.store.listing) and builds these too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any


class Origin(StrEnum):
    """Who owns a subscriber: the operator's config.toml, or the reader's own
    web pages (mailer.selfservice). The config sync never touches web ones."""

    CONFIG = "config"
    WEB = "web"


def utc(value: datetime) -> datetime:
    """Times come back naive from SQLite and PostgreSQL timestamp columns;
    they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def moment(value: datetime | str | None) -> datetime | None:
    """A stored time in UTC, as the store's column type reads it back
    (sqlmodel's UTCDateTime), from what either driver hands over raw: text
    from SQLite, a datetime from PostgreSQL (naive for a column without a
    time zone)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


def day(value: date | str | None) -> date | None:
    """A stored date: text from SQLite, a date from PostgreSQL."""
    return date.fromisoformat(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Profile:
    """What a reader chooses for themselves; validated by the caller with
    the rules of ``check-config`` (mailer.selfservice.profile)."""

    email: str
    name: str
    schedule: str
    timezone: str
    max_papers: int | None
    subscriptions: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class WebSubscriber:
    """A subscriber as their own page shows them. Config subscribers come
    back too (origin ``config``), with no web choices: the pages read those
    from config.toml."""

    id: int
    email: str
    email_key: str
    name: str
    origin: str
    active: bool
    created_at: datetime
    unsubscribed_at: datetime | None
    subscriptions: tuple[tuple[str, str], ...]
    schedule: str | None = None
    timezone: str | None = None
    max_papers: int | None = None
    paused_until: date | None = None
    confirmed_at: datetime | None = None
    signed_up_at: datetime | None = None
    awaiting: bool = False  # a confirmation link is outstanding

    @property
    def web(self) -> bool:
        return self.origin == Origin.WEB

    @property
    def confirmed(self) -> bool:
        """A web subscriber whose sign-up was confirmed and not removed since."""
        return self.web and self.active and self.confirmed_at is not None

    @property
    def status(self) -> str:
        """pending, active, paused (as of the last saved pause), unsubscribed or removed."""
        if self.web and self.confirmed_at is None:
            return "pending" if self.awaiting else "removed"
        if not self.active:
            return "removed"
        if self.unsubscribed_at is not None:
            return "unsubscribed"
        return "paused" if self.paused_until is not None else "active"

    def profile(self) -> Profile:
        return Profile(
            self.email,
            self.name,
            self.schedule or "instant",
            self.timezone or "UTC",
            self.max_papers,
            self.subscriptions,
        )


def web_subscriber(
    row: Mapping[Any, Any], subscriptions: Iterable[tuple[str, str]]
) -> WebSubscriber:
    """A subscriber from a row of ``subscribers`` outer-joined with
    ``web_subscribers`` (``awaiting``: whether its confirm_nonce is set), by
    column name, whether SQLAlchemy typed the values or the driver handed
    them over raw."""
    created_at = moment(row["created_at"])
    assert created_at is not None, "subscribers.created_at is NOT NULL"
    return WebSubscriber(
        id=row["id"],
        email=row["email"],
        email_key=row["email_key"],
        name=row["name"],
        origin=row["origin"],
        active=bool(row["active"]),
        created_at=created_at,
        unsubscribed_at=moment(row["unsubscribed_at"]),
        subscriptions=tuple(subscriptions),
        schedule=row["schedule"],
        timezone=row["timezone"],
        max_papers=row["max_papers"],
        paused_until=day(row["paused_until"]),
        confirmed_at=moment(row["confirmed_at"]),
        signed_up_at=moment(row["signed_up_at"]),
        awaiting=bool(row["awaiting"]),
    )
