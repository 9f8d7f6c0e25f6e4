"""Shared fixtures: a real SMTP server on loopback, real databases, sample dumps."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
POSTGRES_ENV = "MAILER_TEST_POSTGRES_URL"


def pytest_configure(config: pytest.Config) -> None:
    """Processes started with a copy of the environment taken when the test
    modules are imported (after this) get a cache of validated
    configurations of this run, not the user's, removed when the run ends."""
    folder = tempfile.mkdtemp(prefix="mailer-test-config-cache-")
    config.add_cleanup(partial(shutil.rmtree, folder, ignore_errors=True))
    environment = pytest.MonkeyPatch()
    environment.setenv("MAILER_CACHE_DIR", folder)
    config.add_cleanup(environment.undo)


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Sink:
    """aiosmtpd handler that keeps every message and can be told to refuse."""

    messages: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply
    data_reply: str | None = None

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or b""
        self.messages.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
        )
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    sink: Sink
    controller: Controller

    @property
    def messages(self) -> list[Received]:
        return self.sink.messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_smtp_server(sink: Sink | None = None) -> Iterator[SmtpServer]:
    """An aiosmtpd server on a free loopback port, stopped on exit; ``sink``
    handles its commands (default: a plain ``Sink`` that accepts everything)."""
    sink = sink or Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, sink, controller)
    finally:
        controller.stop()


@pytest.fixture(autouse=True)
def config_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own cache of validated configurations (mailer.config), for
    it and the mailer processes it starts: never the user's, never shared."""
    folder = tmp_path_factory.mktemp("config-cache")
    monkeypatch.setenv("MAILER_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with running_smtp_server() as server:
        yield server


SMTP_LOGIN = ("digest", "right-password")


@dataclass
class Logins:
    """aiosmtpd authenticator that accepts only SMTP_LOGIN and counts attempts."""

    attempts: int = 0

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.attempts += 1
        ok = (
            isinstance(data, LoginPassword)
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == SMTP_LOGIN
        )
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def auth_smtp_server() -> Iterator[tuple[SmtpServer, Logins]]:
    """A server that offers AUTH (over plain text, as loopback tests may)."""
    sink, logins = Sink(), Logins()
    port = free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, authenticator=logins, auth_require_tls=False
    )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, sink, controller), logins
    finally:
        controller.stop()


# --- databases ----------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, when one is configured.

    Where MAILER_TEST_POSTGRES_URL is set (as .ci/run does) the server must be
    reachable: a failure to connect fails the tests instead of skipping them.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set; PostgreSQL store tests skipped")
    name = f"mailer_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailer.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    yield url


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
def seeds(tmp_path: Path) -> Path:
    """A copy of the bundled sample dumps, safe to modify."""
    target = tmp_path / "seeds"
    shutil.copytree(SEEDS, target)
    return target
