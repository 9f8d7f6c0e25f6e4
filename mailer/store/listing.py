"""The reads ``mailer subs list`` makes, as plain SQL that any connection runs.

The store runs them through its own connection (``Store.listing``); the CLI
reads them with the DB-API driver alone (:func:`read_only`): the sqlite3
module on a file opened read-only, or psycopg. Importing the Store
(SQLAlchemy, the table models) costs as much as all the rest of ``subs list``
with 2,000 subscribers. The driver path reads only a database at this mailer's
schema revision (checked as the Store checks it, with mailer.migrate's
VERSION_QUERY) and gives up on anything else, for :func:`stored_listing` to
open the Store, which migrates the database or says what is wrong.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailer.migrate import VERSION_QUERY, is_head
from mailer.store.records import Origin, WebSubscriber, moment, web_subscriber

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Every stored subscriber's address key and unsubscribe time, oldest first (a
# later row with the same key stands, as in ``People.subscriber_states``).
UNSUBSCRIBED = "SELECT email_key, unsubscribed_at FROM subscribers ORDER BY id"
# The subscribers who signed up on the web pages, in any state, with their
# choices (the columns ``records.web_subscriber`` reads), and their active
# subscriptions in the order they were added.
WEB = f"""
SELECT s.id, s.email, s.email_key, s.name, s.origin, s.active, s.created_at,
       s.unsubscribed_at, w.schedule, w.timezone, w.max_papers, w.paused_until,
       w.confirmed_at, w.signed_up_at, w.confirm_nonce IS NOT NULL AS awaiting
FROM subscribers s LEFT OUTER JOIN web_subscribers w ON w.subscriber_id = s.id
WHERE s.origin = '{Origin.WEB.value}'
ORDER BY s.id
"""
WEB_SUBSCRIPTIONS = f"""
SELECT q.subscriber_id, q.name, q."query"
FROM subscriptions q JOIN subscribers s ON s.id = q.subscriber_id
WHERE q.active AND s.origin = '{Origin.WEB.value}'
ORDER BY q.id
"""

# Runs one statement without parameters: its column names and its rows, the
# values as the driver hands them over.
Query = Callable[[str], tuple[Sequence[str], Sequence[Sequence[Any]]]]


@dataclass(frozen=True, slots=True)
class Listing:
    """What the database adds to config.toml's subscribers for the listing."""

    # When each address (by ``address_key``) unsubscribed, for those who did.
    unsubscribed: dict[str, datetime] = field(default_factory=dict)
    # Everyone who signed up on the web pages, in any state.
    web: list[WebSubscriber] = field(default_factory=list)


def read(query: Query) -> Listing:
    """The listing, through ``query``."""
    return Listing(unsubscribed(query), web_subscribers(query))


def unsubscribed(query: Query) -> dict[str, datetime]:
    """When each address key unsubscribed, for those who did."""
    _, rows = query(UNSUBSCRIBED)
    latest: dict[str, Any] = {row[0]: row[1] for row in rows}
    return {key: at for key, when in latest.items() if (at := moment(when)) is not None}


def web_subscribers(query: Query) -> list[WebSubscriber]:
    """Everyone who signed up on the web pages, with their active subscriptions."""
    names, rows = query(WEB)
    if not rows:
        return []
    subscriptions: dict[int, list[tuple[str, str]]] = {}
    for subscriber_id, name, text in query(WEB_SUBSCRIPTIONS)[1]:
        subscriptions.setdefault(subscriber_id, []).append((name, text))
    found = [dict(zip(names, row, strict=True)) for row in rows]
    return [web_subscriber(r, subscriptions.get(r["id"], ())) for r in found]


def sqlite_missing(url: str) -> bool:
    """A SQLite database that does not exist yet: read-only commands don't create it."""
    return (
        url.startswith(SQLITE) and ":memory:" not in url and not Path(url[len(SQLITE) :]).exists()
    )


def stored_listing(url: str) -> Listing:
    """The listing of the database at ``url``: read with the driver alone
    when it can be, else through the Store (which migrates an older
    database, and raises StoreError for one it cannot open)."""
    found = read_only(url)
    if found is not None:
        return found
    from mailer.store.database import Store

    store = Store(url)
    try:
        return store.listing()
    finally:
        store.close()


def read_only(url: str) -> Listing | None:
    """The listing read with the DB-API driver, in one read-only transaction;
    None when that cannot be done (another kind of URL, no driver, a database
    not at this mailer's revision, any error), for the Store to try."""
    if url.startswith(SQLITE):
        return _sqlite(url.removeprefix(SQLITE))
    if url.startswith(PSYCOPG):
        return _postgres("postgresql://" + url.removeprefix(PSYCOPG))
    return None


SQLITE = "sqlite:///"
PSYCOPG = "postgresql+psycopg://"


def connection_query(conn: Connection) -> Query:
    """A Query on the store's connection: the statement goes to the driver as
    it is, and the values come back raw, as on the driver path."""

    def run(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        result = conn.exec_driver_sql(sql)
        return list(result.keys()), result.all()

    return run


def _cursor_query(conn: Any) -> Query:
    """A Query on a DB-API connection with an ``execute`` shortcut (sqlite3, psycopg)."""

    def run(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        cursor = conn.execute(sql)
        return [column[0] for column in cursor.description], cursor.fetchall()

    return run


def _at_head(query: Query) -> bool:
    return is_head([row[0] for row in query(VERSION_QUERY)[1]])


def _sqlite(path: str) -> Listing | None:
    # SQLAlchemy reads a URL's path percent-decoded, and takes options after
    # '?': those are left to it.
    if not path or path == ":memory:" or "%" in path or "?" in path:
        return None
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")  # one snapshot for every read
        query = _cursor_query(conn)
        return read(query) if _at_head(query) else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _postgres(conninfo: str) -> Listing | None:
    """psycopg takes the same URL as libpq, which names the same parts as
    SQLAlchemy's; anything it does not take fails here and goes to the Store."""
    try:
        import psycopg
    except ImportError:
        return None
    try:
        conn = psycopg.connect(conninfo)
    except psycopg.Error:
        return None
    try:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot
        query = _cursor_query(conn)
        return read(query) if _at_head(query) else None
    except psycopg.Error:
        return None
    finally:
        conn.close()
