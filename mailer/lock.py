"""One mailer at a time per database.

Two processes draining one outbox could both send a message before either
records it, so a second one refuses to start. SQLite: an exclusive ``flock``
on ``<database>.lock`` next to the file (released by the kernel when the
process dies, even by SIGKILL). PostgreSQL: ``pg_try_advisory_lock`` on a
dedicated connection held while running (released when that session ends).

Holding the lock at start is not enough: a PostgreSQL session cut by the
network loses its advisory lock while the process runs on, and a second
mailer may then take it. So the lock is a fence: ``held()`` is checked before
every send and before composing, and a holder that lost it stops sending and
takes it back (``reacquire``) or, if another mailer has it, gives up.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from mailer.errors import AlreadyRunningError, LockLostError, StoreError

# pg_try_advisory_lock key: "mailer" in ASCII, so other applications' locks do not collide.
ADVISORY_KEY = 0x6D61696C6572
HINT = "stop the other mailer first (or wait for it to finish); only one may use a database"
# libpq settings for the lock connection: a cut network is noticed within seconds,
# not after the kernel's default two hours of TCP keepalive.
LIBPQ_LIVENESS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 5000,
}
_HOLDER = text(
    "SELECT a.application_name, a.pid FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"
)
_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = :k)"
)


class DatabaseLock:
    """The lock on one database while this process holds it.

    ``name`` is the database as messages show it; ``lost`` says why ``held()``
    last found the lock gone."""

    name: str = "memory"
    lost: str = ""

    def held(self) -> bool:
        """Whether this process still holds the lock; cheap enough to ask per send."""
        return True

    def reacquire(self) -> None:
        """Take the lock again after losing it: AlreadyRunningError if another
        mailer has it, StoreError if the database cannot be reached."""

    def release(self) -> None:
        """Give the lock up (on exit)."""


def lock_lost(lock: DatabaseLock) -> LockLostError:
    """The error that stops a pass whose process no longer holds ``lock``."""
    return LockLostError(
        f"lost the lock on database {lock.name} ({lock.lost or 'reason unknown'}): "
        "stopped sending; the next pass takes the lock back, or exits if another "
        "mailer has taken it",
        hint="check the network to the database server",
    )


@contextmanager
def database_lock(url: str) -> Iterator[DatabaseLock]:
    """Hold the database's lock for the duration, or raise AlreadyRunningError."""
    parsed = make_url(url)
    lock: DatabaseLock
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        lock = (
            DatabaseLock() if not database or database == ":memory:" else FileLock(Path(database))
        )
    else:
        lock = AdvisoryLock(url)
    lock.reacquire()
    try:
        yield lock
    finally:
        lock.release()


class FileLock(DatabaseLock):
    """SQLite: ``flock`` on ``<database>.lock``, which names our pid. Held while
    that file is still the one we locked (same device and inode) and names us."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.name = str(database)
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def reacquire(self) -> None:
        self.release()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot create the lock file {self.path}: {exc.strerror}",
                hint="check that the database folder is writable",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"database {self.database} is in use by another mailer "
                f"(pid {holder}; lock {self.path})",
                hint=HINT,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._mine(), 0)
        self._fd, self.lost = fd, ""

    def _mine(self) -> bytes:
        return f"{os.getpid()}\n".encode()

    def held(self) -> bool:
        fd = self._fd
        if fd is None:
            return False
        try:
            ours, there = os.fstat(fd), self.path.stat()
        except OSError as exc:
            self.lost = f"lock file {self.path}: {exc.strerror}"
            return False
        if (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
            self.lost = f"lock file {self.path} was replaced"
            return False
        if os.pread(fd, 32, 0) != self._mine():
            self.lost = f"lock file {self.path} no longer names pid {os.getpid()}"
            return False
        return True

    def release(self) -> None:
        fd, ours = self._fd, self.held()
        self._fd = None
        if fd is None:
            return
        try:
            if ours:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class AdvisoryLock(DatabaseLock):
    """PostgreSQL: a session-level advisory lock on a connection of its own.
    Held while that connection answers and the server lists its session as
    holding the lock; one round trip, serialised across the sending threads."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        args: dict[str, Any] = {"application_name": f"mailer pid {os.getpid()}"}
        if parsed.get_driver_name() in ("psycopg", "psycopg2"):
            args |= LIBPQ_LIVENESS
        self.engine = create_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=args
        )
        self.name = self.engine.url.render_as_string(hide_password=True)
        self._conn: Connection | None = None
        self._mutex = threading.Lock()

    def reacquire(self) -> None:
        with self._mutex:
            self._drop()
            try:
                conn = self.engine.connect()
            except SQLAlchemyError as exc:
                raise StoreError(
                    f"cannot open database {self.name!r} to take the lock: {_first_line(exc)}",
                    hint="check the [database] url and that the server is running",
                ) from exc
            try:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}
                ).scalar()
                if not got:
                    holder = conn.execute(_HOLDER, {"k": ADVISORY_KEY}).first()
                    who = (
                        f"{holder[0] or 'unknown'}, server pid {holder[1]}" if holder else "unknown"
                    )
                    raise AlreadyRunningError(
                        f"database {self.name} is in use by another mailer ({who})", hint=HINT
                    )
            except AlreadyRunningError:
                conn.close()
                raise
            except SQLAlchemyError as exc:
                conn.close()
                raise StoreError(
                    f"cannot take the lock on database {self.name}: {_first_line(exc)}"
                ) from exc
            self._conn, self.lost = conn, ""

    def held(self) -> bool:
        with self._mutex:
            if self._conn is None:
                return False
            try:
                still = bool(self._conn.execute(_HELD, {"k": ADVISORY_KEY}).scalar())
            except SQLAlchemyError as exc:
                self.lost = f"the lock's connection failed: {_first_line(exc)}"
                self._drop()
                return False
            if not still:
                self.lost = "the server no longer lists this session as holding it"
                self._drop()
            return still

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(SQLAlchemyError):
                conn.close()

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None:
                # If the session is gone, its lock went with it.
                with suppress(SQLAlchemyError):
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            self._drop()
        self.engine.dispose()


def _first_line(exc: SQLAlchemyError) -> str:
    cause: BaseException = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
