"""One mailer at a time per database.

Two processes draining one outbox could both send a message before either
records it, so a second one refuses to start. SQLite: an exclusive ``flock``
on ``<database>.lock`` next to the file (released by the kernel when the
process dies, even by SIGKILL). PostgreSQL: ``pg_try_advisory_lock`` on a
dedicated connection held while running (released when that session ends).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailer.errors import AlreadyRunningError, StoreError

# pg_try_advisory_lock key: "mailer" in ASCII, so other applications' locks do not collide.
ADVISORY_KEY = 0x6D61696C6572
HINT = "stop the other mailer first (or wait for it to finish); only one may use a database"


@contextmanager
def database_lock(url: str) -> Iterator[None]:
    """Hold the database's lock for the duration, or raise AlreadyRunningError."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            yield
            return
        with _file_lock(Path(database)):
            yield
    else:
        with _advisory_lock(url):
            yield


@contextmanager
def _file_lock(database: Path) -> Iterator[None]:
    path = database.with_name(database.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot create the lock file {path}: {exc.strerror}",
            hint="check that the database folder is writable",
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise AlreadyRunningError(
                f"database {database} is in use by another mailer (pid {holder}; lock {path})",
                hint=HINT,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    name = f"mailer pid {os.getpid()}"
    engine = create_engine(url, connect_args={"application_name": name})
    safe = engine.url.render_as_string(hide_password=True)
    try:
        conn = engine.connect()
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(
            f"cannot open database {safe!r} to take the lock: {exc}",
            hint="check the [database] url and that the server is running",
        ) from exc
    try:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar()
        conn.commit()
        if not got:
            holder = conn.execute(
                text(
                    "SELECT a.application_name, a.pid FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"
                ),
                {"k": ADVISORY_KEY},
            ).first()
            who = f"{holder[0] or 'unknown'}, server pid {holder[1]}" if holder else "unknown"
            raise AlreadyRunningError(
                f"database {safe} is in use by another mailer ({who})", hint=HINT
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            conn.commit()
    finally:
        conn.close()
        engine.dispose()
