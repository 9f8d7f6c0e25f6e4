"""Who gets mail, as ``mailer subs list`` shows them: config.toml's
subscribers with what the database knows of them, then those who signed up
on the web pages, as rows of plain values (mailer.cli.listing prints them).

The configured part of a row is made from the validated configuration once,
and kept in the configuration's cache (mailer.config_cache), so a listing
from a warm cache loads no models (mailer.cli.quick); both ways call these
functions. Values in, values out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from mailer.addresses import address_key

if TYPE_CHECKING:
    from mailer.config import Config, SubscriptionConfig
    from mailer.store.records import WebSubscriber


def config_rows(config: Config) -> list[dict[str, object]]:
    """config.toml's subscribers as listed, before the database has its say."""
    return [
        {
            "email": sub.email,
            "name": sub.name,
            "schedule": sub.schedule,
            "timezone": sub.timezone,
            "subscriptions": [_subscription_row(q) for q in sub.subscriptions],
        }
        for sub in config.subscribers
    ]


def _subscription_row(q: SubscriptionConfig) -> dict[str, object]:
    row: dict[str, object] = {"name": q.name, "query": q.query}
    if q.similar:
        row.update(like=list(q.like), like_text=q.like_text, described=q.described)
    return row


def subscriber_rows(
    configured: Sequence[Mapping[str, object]],
    unsubscribed: Mapping[str, datetime],
    web: Sequence[WebSubscriber] = (),
) -> list[dict[str, object]]:
    """Every subscriber: the ``configured`` rows (``config_rows``), with when
    the database has them unsubscribed (by address key), then those who
    signed up on the web pages (``origin``: config or web; ``status``:
    active, unsubscribed, and for web ones pending, paused or removed)."""
    rows: list[dict[str, object]] = []
    keys: set[str] = set()
    for row in configured:
        key = address_key(str(row["email"]))
        keys.add(key)
        gone = unsubscribed.get(key)
        rows.append(
            {
                **row,
                "unsubscribed": gone is not None,
                "unsubscribed_at": gone.isoformat() if gone else None,
                "origin": "config",
                "status": "unsubscribed" if gone else "active",
            }
        )
    for w in web:
        if w.email_key in keys:
            continue  # config.toml owns the address now
        rows.append(
            {
                "email": w.email,
                "name": w.name,
                "schedule": w.schedule,
                "timezone": w.timezone,
                "subscriptions": [{"name": n, "query": q} for n, q in w.subscriptions],
                "unsubscribed": w.unsubscribed_at is not None,
                "unsubscribed_at": w.unsubscribed_at.isoformat() if w.unsubscribed_at else None,
                "origin": "web",
                "status": w.status,
                "paused_until": w.paused_until.isoformat() if w.paused_until else None,
                "max_papers": w.max_papers,
            }
        )
    return rows
