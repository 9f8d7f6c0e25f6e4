"""Bring a database's schema up to this mailer's, with Alembic, whenever it is opened.

The daemon and every command call :func:`upgrade` through ``Store``, so a
database made by an older mailer is migrated in place on first use. Alembic is
configured in code (no ``alembic.ini`` to ship or find): the scripts live in
the ``mailer.migrations`` package next to this module.

``python -m mailer.migrate revision -m "what changes"`` starts a new revision
file, numbered after the newest one (``alembic revision`` needs an ini file).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from mailer.errors import StoreError

if TYPE_CHECKING:
    # Alembic is imported where it works: opening a database already at head
    # (every command, nearly every time) reads one row and never loads it,
    # a fifth of a second of ``mailer subs list``. SQLAlchemy too, as
    # ``subs list`` checks the revision of a database it reads with the
    # driver alone (VERSION_QUERY, from mailer.store.listing).
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("mailer")

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001_baseline"
# What mailer 0.1.0 created with create_all, before there was an alembic_version table.
BASELINE_TABLES = frozenset(
    {"dumps", "papers", "subscribers", "subscriptions", "deliveries", "matches", "state"}
)
# pg_advisory_xact_lock key for migrating: "mailmg" in ASCII. Not mailer.lock's key,
# which a running daemon holds for its whole life (a CLI command would wait forever).
MIGRATION_LOCK_KEY = 0x6D61696C6D67
# Alembic's `context` and `op` are module-level proxies: one migration per process at a time.
_ALEMBIC = threading.Lock()
HINT = (
    "the upgrade runs in one transaction, so nothing was changed; "
    "check that the database is reachable and writable"
)


# SQLite's result codes for a file that is not a database or is damaged.
_CORRUPT = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


def database_error(
    safe_url: str, exc: Exception, failed: str | None = None, hint: str = HINT
) -> StoreError:
    """A database error as one StoreError naming the database: a damaged
    SQLite file says so and what to do; anything else is ``failed`` (what
    could not be done) with the driver's own words, without SQLAlchemy's
    background link."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlite_errorname", None) in _CORRUPT:
        path = safe_url.removeprefix("sqlite:///")
        return StoreError(
            f"database file {path} is damaged or not a SQLite database ({orig}); "
            "mailer did not change it",
            hint="restore it from a backup and start mailer again; or, to start afresh, "
            "move it aside (mailer then creates an empty database, ingests every dump in "
            "the watch folder again and mails their papers as new)",
        )
    return StoreError(f"{failed or f'cannot open database {safe_url}'}: {orig}", hint=hint)


def alembic_config(connection: Connection | None = None, *, location: Path | None = None) -> Config:
    """Alembic's configuration without an ini file; env.py migrates ``connection``."""
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates '%', which a folder name may contain.
    script_location = str(location or MIGRATIONS)
    config.set_main_option("script_location", script_location.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=4)
def _scripts(location: Path) -> tuple[ScriptDirectory, frozenset[str]]:
    """The revision scripts and their ids, read once per process, not on every open."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(location=location))
    return script, frozenset(revision.revision for revision in script.walk_revisions())


@lru_cache(maxsize=4)
def packaged_head(location: Path) -> str:
    """The newest revision, known from its file's name without loading Alembic:
    ``new_revision`` names each file after its revision, ``NNNN_slug.py``, one
    after another (tests/test_imports.py checks this is Alembic's head)."""
    names = [path.stem for path in (location / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")]
    assert names, f"{location} has no revisions"
    return max(names)


# The database's revision, in plain SQL any connection runs.
VERSION_QUERY = "SELECT version_num FROM alembic_version"


def is_head(found: Sequence[str], location: Path = MIGRATIONS) -> bool:
    """Whether the revisions VERSION_QUERY read are exactly the packaged head;
    anything else (another revision, several rows) is for the full check in
    :func:`upgrade`, which says what is wrong."""
    return list(found) == [packaged_head(location)]


def _at_head(conn: Connection, location: Path) -> bool:
    """Whether the database is at the packaged head, read with one plain
    query; no such table or an unreadable file is for the full check too.
    The connection is left with no transaction either way."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        found = conn.exec_driver_sql(VERSION_QUERY).scalars().all()
    except SQLAlchemyError:
        return False
    finally:
        conn.rollback()
    return is_head(found, location)


def head() -> str:
    """The revision this mailer's models correspond to."""
    revision = _scripts(MIGRATIONS)[0].get_current_head()
    assert revision is not None, "mailer.migrations has no revisions"
    return revision


def upgrade(engine: Engine) -> None:
    """Migrate the database to :func:`head`, creating it when empty.

    No ``alembic_version`` but mailer's tables means mailer 0.1.0 made it with
    ``create_all``: it is stamped as the baseline, then upgraded. Checked
    first without a lock (the usual case: already at head, nothing to write,
    and a long write elsewhere does not delay start-up), then again under the
    lock, in the transaction that migrates, so two mailers starting together
    migrate once. Connection failures propagate as SQLAlchemy errors for the
    caller to report; failures while migrating become StoreError. Either
    way the engine is disposed, as the caller cannot go on to use it.
    """
    try:
        _upgrade(engine)
    except BaseException:
        engine.dispose()  # the caller never gets the engine, so nothing else would close it
        raise


def _upgrade(engine: Engine) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from mailer.store.schema import hide_password  # here: it imports this module

    safe = hide_password(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        if _at_head(conn, MIGRATIONS):
            return
        from alembic import command
        from alembic.util import CommandError

        script, known = _scripts(MIGRATIONS)
        target = script.get_current_head()
        assert target is not None, "mailer.migrations has no revisions"
        if _current(conn, script, known, safe) == target:
            conn.rollback()
            return
        conn.rollback()
        try:
            with _migrating(conn):
                current = _current(conn, script, known, safe)
                if current == target:
                    return
                config = alembic_config(conn)
                if current is None and (legacy := _legacy_tables(conn)):
                    if missing := BASELINE_TABLES - legacy:
                        raise StoreError(
                            f"database {safe} has some of mailer's tables but not "
                            f"{', '.join(sorted(missing))}, and no alembic_version",
                            hint="it was not made by mailer, or its creation was cut short; "
                            "move it aside or restore a backup",
                        )
                    with _ALEMBIC:
                        command.stamp(config, BASELINE)
                with _ALEMBIC:
                    command.upgrade(config, target)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise database_error(
                safe, exc, f"cannot upgrade database {safe} to revision {target}"
            ) from exc
        except CommandError as exc:
            raise StoreError(
                f"cannot upgrade database {safe} to revision {target}: {exc}", hint=HINT
            ) from exc
    log.info("database %s upgraded to revision %s", safe, target)


def _current(
    conn: Connection, script: ScriptDirectory, known: frozenset[str], safe: str
) -> str | None:
    """The database's revision; None when it has no alembic_version."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.exc import SQLAlchemyError

    try:
        heads = MigrationContext.configure(conn).get_current_heads()
    except SQLAlchemyError as exc:
        raise database_error(
            safe, exc, f"cannot read the schema revision of database {safe}"
        ) from exc
    for revision in heads:
        if revision not in known:
            raise StoreError(
                f"database {safe} was migrated by a newer mailer (revision {revision}); "
                "upgrade mailer",
                hint="this mailer knows revisions up to "
                f"{script.get_current_head()}; install the release that made the database",
            )
    if len(heads) > 1:
        raise StoreError(
            f"database {safe} has several schema revisions ({', '.join(heads)})", hint=HINT
        )
    return heads[0] if heads else None


def _legacy_tables(conn: Connection) -> frozenset[str]:
    from sqlalchemy import inspect

    return BASELINE_TABLES & set(inspect(conn).get_table_names())


@contextmanager
def _migrating(conn: Connection) -> Iterator[None]:
    """One transaction, held by one process at a time, committed when the body succeeds.

    PostgreSQL: a transaction-scoped advisory lock (DDL is transactional).
    SQLite: ``BEGIN IMMEDIATE`` takes the write lock up front (a second mailer
    waits out the busy timeout, then sees the new revision); pysqlite would
    otherwise run DDL outside any transaction. Foreign keys are off while
    migrating, as SQLite's ALTER procedure asks, because batch mode drops and
    recreates tables that other tables refer to; ``foreign_key_check``
    confirms the result before committing.
    """
    from sqlalchemy import text

    if conn.dialect.name != "sqlite":
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            yield
        return
    dbapi = conn.connection.driver_connection
    assert isinstance(dbapi, sqlite3.Connection)
    isolation = dbapi.isolation_level
    dbapi.isolation_level = None  # we say where transactions begin
    try:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
            if broken is not None:
                raise StoreError(
                    f"migrating left a row of table {broken[0]} referring to a missing "
                    f"{broken[2]} row; nothing was changed",
                    hint="this is a bug in a migration; please report it",
                )
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        dbapi.isolation_level = isolation


# --- writing a new revision ---------------------------------------------------


def new_revision(message: str, *, autogenerate: bool = False) -> Path:
    """Start ``versions/NNNN_<slug>.py`` after the current head; returns its path.

    With ``autogenerate``, the ops are drafted by comparing the models with a
    scratch SQLite database upgraded to the current head (batch ops, which
    also run on PostgreSQL); review them, they are a draft.
    """
    import tempfile

    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    current = script.get_current_head()
    number = int(current.split("_", 1)[0]) + 1 if current else 1
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "change"
    revision_id = f"{number:04d}_{slug}"
    config.set_main_option("file_template", "%%(rev)s")
    if not autogenerate:
        made = command.revision(config, message=message, rev_id=revision_id)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            engine = create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
            try:
                upgrade(engine)
                with engine.connect() as conn:
                    config.attributes["connection"] = conn
                    made = command.revision(
                        config, message=message, rev_id=revision_id, autogenerate=True
                    )
            finally:
                engine.dispose()
    _scripts.cache_clear()  # there is a new head
    packaged_head.cache_clear()
    assert made is not None
    assert not isinstance(made, list)
    return Path(made.path)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mailer.migrate")
    commands = parser.add_subparsers(dest="command", required=True)
    revision = commands.add_parser("revision", help="start a new revision file after the head")
    revision.add_argument("-m", "--message", required=True, help="what the revision changes")
    revision.add_argument(
        "--autogenerate", action="store_true", help="draft the ops from the models' differences"
    )
    commands.add_parser("head", help="print the newest revision")
    args = parser.parse_args(argv)
    if args.command == "revision":
        print(new_revision(args.message, autogenerate=args.autogenerate))
    else:
        print(head())


if __name__ == "__main__":
    main()
