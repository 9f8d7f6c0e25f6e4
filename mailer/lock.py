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
from collections.abc import Collection, Iterator
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
_HOLDER = text(
    "SELECT a.application_name, a.pid FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k"
)
_HELD = text(
    "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
    "WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid() "
    "AND ((classid::bigint << 32) | objid::bigint) = ANY(:k)"
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


class AdvisorySession:
    """A PostgreSQL session of its own for advisory locks (this module's
    one-mailer lock; mailer.cluster's leadership and connection slots).

    The locks last as long as the session, so they go when the process dies;
    when the network is cut, the server ends the session once its keepalives
    fail (``liveness``). Every call is one round trip, serialised across threads.
    """

    def __init__(self, url: str, *, label: str | None = None, lease: float = 30.0) -> None:
        parsed = make_url(url)
        args: dict[str, Any] = {"application_name": label or f"mailer pid {os.getpid()}"}
        if parsed.get_driver_name() in ("psycopg", "psycopg2"):
            args |= liveness(lease)
        self.engine = create_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=args
        )
        self.name = self.engine.url.render_as_string(hide_password=True)
        self.lost = ""
        self._conn: Connection | None = None
        self._mutex = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self, *, fresh: bool = False) -> None:
        """Open the session unless it is open (``fresh``: open a new one);
        StoreError when the database cannot be reached."""
        with self._mutex:
            if fresh:
                self._drop()
            if self._conn is not None:
                return
            try:
                self._conn = self.engine.connect()
            except SQLAlchemyError as exc:
                raise StoreError(
                    f"cannot open database {self.name!r} to take the lock: {_first_line(exc)}",
                    hint="check the [database] url and that the server is running",
                ) from exc
            self.lost = ""

    def try_lock(self, key: int) -> bool:
        """Take advisory lock ``key`` if no other session has it."""
        return bool(self._run(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))

    def unlock(self, key: int) -> None:
        with suppress(StoreError):
            self._run(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def held(self, keys: Collection[int]) -> set[int] | None:
        """Which of ``keys`` this session holds; None when the session is gone
        (``lost`` says why), and then it holds none."""
        try:
            rows = self._run(_HELD, {"k": list(keys)}, many=True)
        except StoreError:
            return None
        return {int(k) for k in rows}

    def holder(self, key: int) -> str:
        """Who holds ``key``: the application name and server pid of its session."""
        try:
            found = self._run(_HOLDER, {"k": key}, first=True)
        except StoreError:
            return "unknown"
        return f"{found[0] or 'unknown'}, server pid {found[1]}" if found else "unknown"

    def _run(
        self, query: Any, params: dict[str, Any], *, many: bool = False, first: bool = False
    ) -> Any:
        with self._mutex:
            if self._conn is None:
                raise StoreError(f"no session on database {self.name}: {self.lost}")
            try:
                result = self._conn.execute(query, params)
                if many:
                    return result.scalars().all()
                return result.first() if first else result.scalar()
            except SQLAlchemyError as exc:
                self.lost = f"the lock's connection failed: {_first_line(exc)}"
                self._drop()
                raise StoreError(f"database {self.name}: {self.lost}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(SQLAlchemyError):
                conn.close()

    def close(self) -> None:
        """End the session, and with it every lock it holds."""
        with self._mutex:
            self._drop()
        self.engine.dispose()


def liveness(lease: float) -> dict[str, Any]:
    """libpq settings for a lock's session: both ends probe an idle connection
    and give up on unacknowledged data within about a third of ``lease``, so
    a cut network ends the session (and frees its locks) well within the
    lease, not after the kernel's default two hours of TCP keepalive."""
    third = max(3, int(lease / 3))
    idle, interval, count, user_ms = max(1, third // 2), max(1, third // 4), 2, third * 1000
    return {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": user_ms,
        # The server's side of the same (PostgreSQL 12 and later).
        "options": f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count={count} -c tcp_user_timeout={user_ms}",
    }


class AdvisoryLock(DatabaseLock):
    """PostgreSQL: a session-level advisory lock on a session of its own,
    held while that session answers and the server lists it as holding the lock."""

    def __init__(self, url: str) -> None:
        self.session = AdvisorySession(url)
        self.name = self.session.name

    def reacquire(self) -> None:
        self.session.connect(fresh=True)
        try:
            got = self.session.try_lock(ADVISORY_KEY)
        except StoreError as exc:
            raise StoreError(
                f"cannot take the lock on database {self.name}: {self.session.lost}"
            ) from exc
        if not got:
            who = self.session.holder(ADVISORY_KEY)
            self.session.close()
            raise AlreadyRunningError(
                f"database {self.name} is in use by another mailer ({who})", hint=HINT
            )
        self.lost = ""

    def held(self) -> bool:
        if not self.session.connected:
            return False
        keys = self.session.held([ADVISORY_KEY])
        if keys is None:
            self.lost = self.session.lost
            return False
        if not keys:
            self.lost = "the server no longer lists this session as holding it"
            self.session.connect(fresh=True)
            return False
        return True

    def release(self) -> None:
        if self.session.connected:
            self.session.unlock(ADVISORY_KEY)  # if the session is gone, its lock went with it
        self.session.close()


def _first_line(exc: SQLAlchemyError) -> str:
    cause: BaseException = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
