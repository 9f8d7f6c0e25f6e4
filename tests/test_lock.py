"""The one-mailer-per-database lock is a fence on every send, not only a check
at start: a daemon whose PostgreSQL connection is cut loses its advisory lock
while it runs on, so it must stop sending at once, and a second daemon that
takes the lock meanwhile must be the only one sending."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, make_url, text

from mailer.errors import AlreadyRunningError
from mailer.lock import database_lock
from mailer.pipeline.send import SEND_CHUNK
from tests.conftest import Received, SmtpServer, running_smtp_server
from tests.process import Mailer
from tests.proxy import TcpProxy
from tests.test_cli import copy_seeds
from tests.test_faults import config_text
from tests.waiting import wait_for

READERS = 40
HELD_FROM = 5  # the SMTP server holds its replies from this message on, until released


@pytest.fixture
def fresh_postgres(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied."""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return postgres_url


@pytest.fixture
def second_smtp_server() -> Iterator[SmtpServer]:
    """Another server, so each daemon's messages are told apart by where they landed."""
    with running_smtp_server() as server:
        yield server


def daemon_config(folder: Path, smtp_port: int, database_url: str) -> Path:
    folder.mkdir(exist_ok=True)
    subs = [(f"reader{i:02d}@example.org", "instant", "UTC") for i in range(READERS)]
    body = config_text(folder, smtp_port, subscribers=subs, interval=0.3)
    body = body.replace(f'url = "sqlite:///{folder / "mailer.db"}"', f'url = "{database_url}"')
    path = folder / "config.toml"
    path.write_text(body, encoding="utf-8")
    return path


def ids(messages: list[Received]) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for m in messages)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_daemon_cut_off_from_postgresql_stops_sending_and_the_next_holder_alone_sends(
    tmp_path: Path,
    fresh_postgres: str,
    smtp_server: SmtpServer,
    second_smtp_server: SmtpServer,
) -> None:
    url = make_url(fresh_postgres)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    sink = smtp_server.sink
    original = sink.handle_DATA
    held, release = threading.Semaphore(0), threading.Event()

    async def slowed(server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await original(server, session, envelope)
        if len(sink.messages) >= HELD_FROM:
            held.release()
            await asyncio.to_thread(release.wait, 30)
        return reply

    sink.handle_DATA = slowed  # type: ignore[method-assign]
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(host="127.0.0.1", port=proxy.port)
        first_config = daemon_config(
            tmp_path / "first", smtp_server.port, via_proxy.render_as_string(hide_password=False)
        )
        second_config = daemon_config(tmp_path / "second", second_smtp_server.port, fresh_postgres)
        for config in (first_config, second_config):
            (config.parent / "dumps").symlink_to(dumps)
        first = Mailer(first_config, "run")
        second: Mailer | None = None
        try:
            copy_seeds(dumps)
            wait_for(lambda: held.acquire(timeout=0.05), timeout=60, what="a held message")
            proxy.cut()
            at_cut = len(sink.messages)
            release.set()  # the sends on the wire get their reply; none may follow
            first.wait_logged("lost the lock on database")
            assert f"127.0.0.1:{proxy.port}" in first.log
            after_loss = len(sink.messages)
            assert after_loss - at_cut <= 1, "at most a send already past the check"

            second = Mailer(second_config, "run")
            everyone = {f"reader{i:02d}@example.org" for i in range(READERS)}
            wait_for(
                lambda: (
                    {m.recipients[0] for m in sink.messages + second_smtp_server.messages}
                    == everyone
                ),
                timeout=60,
                what="every reader's digest from either daemon",
            )
            proxy.restore()
            first_code = first.finish(timeout=30)
            assert len(sink.messages) == after_loss, "the first daemon sent after losing the lock"
            second.proc.send_signal(signal.SIGTERM)
            second_code = second.finish()
        finally:
            release.set()
            first.kill()
            if second is not None:
                second.kill()
    assert first_code == 1, first.log
    assert "in use by another mailer" in first.log
    assert f"pid {second.proc.pid}" in first.log
    assert second_code == 0, second.log
    by_first, by_second = ids(sink.messages), ids(second_smtp_server.messages)
    assert max(by_first.values()) == max(by_second.values()) == 1
    assert len(by_first + by_second) == READERS, "one Message-ID per reader"
    # What the first daemon sent but could not record once the database was
    # gone goes again from the second, with its Message-ID (as after a crash).
    repeated = by_first.keys() & by_second.keys()
    assert len(repeated) <= SEND_CHUNK * 2  # 2 connections


@pytest.mark.parametrize("how", ["removed", "taken over"])
def test_a_sqlite_lock_file_removed_or_taken_over_is_no_longer_held(
    tmp_path: Path, how: str
) -> None:
    database = tmp_path / "mailer.db"
    with database_lock(f"sqlite:///{database}") as lock:
        assert lock.held()
        lock_file = tmp_path / "mailer.db.lock"
        lock_file.unlink()
        if how == "taken over":
            lock_file.write_text(f"{os.getpid() + 1}\n", encoding="ascii")
        assert not lock.held()
        assert "mailer.db.lock" in lock.lost
        if how == "removed":
            lock.reacquire()
            assert lock.held()


def test_a_postgresql_lock_taken_back_after_a_cut_refuses_when_another_holds_it(
    fresh_postgres: str,
) -> None:
    url = make_url(fresh_postgres)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(host="127.0.0.1", port=proxy.port)
        with database_lock(via_proxy.render_as_string(hide_password=False)) as lock:
            assert lock.held()
            proxy.cut()
            assert not lock.held()
            assert "connection" in lock.lost
            proxy.restore()
            with (
                database_lock(fresh_postgres),
                pytest.raises(AlreadyRunningError, match="in use by another mailer"),
            ):
                lock.reacquire()
            lock.reacquire()
            assert lock.held()
