"""Transports against a real SMTP server on loopback, and a real Maildir."""

from __future__ import annotations

import asyncio
import mailbox
import os
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.protocol import normalize_message_line_endings

from mailer.config import SmtpConfig
from mailer.delivery import (
    MaildirTransport,
    SmtpTransport,
    TransportUnavailableError,
    wire_size,
)
from mailer.errors import DeliveryError
from tests.conftest import SMTP_LOGIN, Logins, Sink, SmtpServer, free_port, running_smtp_server

MESSAGE = b"From: d@example.org\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def smtp(server_port: int, **settings: object) -> SmtpTransport:
    options: dict[str, object] = {"security": "none", "timeout_seconds": 5, **settings}
    return SmtpTransport(
        SmtpConfig.model_validate({"host": "127.0.0.1", "port": server_port, **options})
    )


async def send_one(transport: SmtpTransport, message: bytes) -> str:
    async with transport as t:
        return await t.send("d@example.org", "a@example.org", message)


async def send_all(transport: SmtpTransport | MaildirTransport, recipients: list[str]) -> list[str]:
    async with transport as t:
        return [await t.send("d@example.org", r, MESSAGE) for r in recipients]


def test_smtp_delivers_to_the_server(smtp_server: SmtpServer) -> None:
    replies = asyncio.run(send_all(smtp(smtp_server.port), ["a@example.org"]))
    assert replies[0].startswith("Message accepted") or "accepted" in replies[0]
    (got,) = smtp_server.messages
    assert got.recipients == ["a@example.org"]
    assert got.message["Subject"] == "hi"


def test_smtp_reuses_one_connection_for_a_batch(smtp_server: SmtpServer) -> None:
    sessions: list[object] = []
    original = smtp_server.sink.handle_DATA

    async def counting(server, session, envelope):  # type: ignore[no-untyped-def]
        sessions.append(session)
        return await original(server, session, envelope)

    smtp_server.sink.handle_DATA = counting  # type: ignore[method-assign]
    asyncio.run(send_all(smtp(smtp_server.port), ["a@example.org", "b@example.org"]))
    assert len(smtp_server.messages) == 2
    assert sessions[0] is sessions[1]


def test_refused_recipient_is_a_permanent_failure(smtp_server: SmtpServer) -> None:
    smtp_server.sink.refuse["gone@example.org"] = "550 5.1.1 no such user"
    with pytest.raises(DeliveryError) as info:
        asyncio.run(send_all(smtp(smtp_server.port), ["gone@example.org"]))
    assert info.value.permanent
    assert "550" in info.value.message
    assert "gone@example.org" in info.value.message


def test_after_a_refused_recipient_the_next_message_goes_on_the_same_connection(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.sink.refuse["gone@example.org"] = "550 5.1.1 no such user"

    async def refused_then_sent() -> str:
        async with smtp(smtp_server.port) as t:
            with pytest.raises(DeliveryError):
                await t.send("d@example.org", "gone@example.org", MESSAGE)
            return await t.send("d@example.org", "a@example.org", MESSAGE)

    asyncio.run(refused_then_sent())
    (got,) = smtp_server.messages
    assert got.recipients == ["a@example.org"]


def test_smtp_declares_the_size_of_the_message_as_sent() -> None:
    declared: list[list[str]] = []

    class Recording(Sink):
        async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            address: str,
            options: list[str],
        ) -> str:
            declared.append(options)
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return "250 OK"

    message = b"Subject: hi\n\n.dot\nbody"
    with running_smtp_server(Recording()) as server:
        asyncio.run(send_one(smtp(server.port), message))
    assert declared == [[f"SIZE={len(normalize_message_line_endings(message))}"]]


@pytest.mark.parametrize(
    "message",
    [b"", b"a", b"a\n", b"a\r\n", b"a\rb", b"a\r\r\nb\n\r", b"x\ny\r\n\r\n.z", b"\r", b"\n\n"],
)
def test_wire_size_counts_as_aiosmtplib_normalises_line_endings(message: bytes) -> None:
    assert wire_size(message) == len(normalize_message_line_endings(message))


def test_temporary_refusal_is_not_permanent(smtp_server: SmtpServer) -> None:
    smtp_server.sink.refuse["busy@example.org"] = "451 4.3.0 try later"
    with pytest.raises(DeliveryError) as info:
        asyncio.run(send_all(smtp(smtp_server.port), ["busy@example.org"]))
    assert not info.value.permanent


def test_server_down_names_host_and_port() -> None:
    port = free_port()
    with pytest.raises(TransportUnavailableError) as info:
        asyncio.run(send_all(smtp(port), ["a@example.org"]))
    assert f"127.0.0.1:{port}" in info.value.message


def test_login_is_used_when_a_username_is_set(
    auth_smtp_server: tuple[SmtpServer, Logins],
) -> None:
    server, logins = auth_smtp_server
    user, password = SMTP_LOGIN
    asyncio.run(send_all(smtp(server.port, username=user, password=password), ["a@example.org"]))
    assert logins.attempts == 1
    assert len(server.messages) == 1


def test_refused_login_names_server_and_user_and_hides_the_password(
    auth_smtp_server: tuple[SmtpServer, Logins],
) -> None:
    server, _ = auth_smtp_server
    transport = smtp(server.port, username="digest", password="wrong-secret")
    with pytest.raises(TransportUnavailableError) as info:
        asyncio.run(send_all(transport, ["a@example.org"]))
    message = info.value.message
    assert f"127.0.0.1:{server.port}" in message
    assert "refused the login for 'digest'" in message
    assert "535" in message
    assert "wrong-secret" not in str(info.value)
    assert "MAILER_SMTP__PASSWORD" in (info.value.hint or "")
    assert server.messages == []


def test_tls_handshake_failure_is_unavailable(smtp_server: SmtpServer) -> None:
    with pytest.raises(TransportUnavailableError) as info:
        asyncio.run(send_all(smtp(smtp_server.port, security="tls"), ["a@example.org"]))
    assert f"cannot connect to SMTP server 127.0.0.1:{smtp_server.port}" in info.value.message
    assert "security" in (info.value.hint or "")
    assert smtp_server.messages == []


def test_starttls_not_offered_is_unavailable(smtp_server: SmtpServer) -> None:
    with pytest.raises(TransportUnavailableError, match="cannot connect"):
        asyncio.run(send_all(smtp(smtp_server.port, security="starttls"), ["a@example.org"]))
    assert smtp_server.messages == []


def test_maildir_stores_message_in_new(tmp_path: Path) -> None:
    asyncio.run(send_all(MaildirTransport(tmp_path / "box"), ["a@example.org"]))
    box = mailbox.Maildir(tmp_path / "box", create=False)
    (stored,) = list(box)
    assert stored["Subject"] == "hi"
    assert len(list((tmp_path / "box" / "new").iterdir())) == 1


def test_maildir_file_is_the_return_path_line_then_the_message_bytes(tmp_path: Path) -> None:
    async def store() -> str:
        async with MaildirTransport(tmp_path / "box") as t:
            return await t.send("bounce+1.ab@example.org", "a@example.org", MESSAGE)

    reply = asyncio.run(store())
    (written,) = (tmp_path / "box" / "new").iterdir()
    assert reply == f"stored as {written}"
    assert written.read_bytes() == b"Return-Path: <bounce+1.ab@example.org>\n" + MESSAGE
    assert list((tmp_path / "box" / "tmp").iterdir()) == []


def test_unwritable_maildir_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TransportUnavailableError, match="Maildir"):
        asyncio.run(send_all(MaildirTransport(blocker / "box"), ["a@example.org"]))


# --- the outbox's rules ---------------------------------------------------------------


def test_backoff_doubles_from_initial_with_jitter_up_to_the_maximum() -> None:
    import random

    from mailer.pipeline.send import backoff_seconds

    rng = random.Random(7)
    delays = [backoff_seconds(n, initial=60, maximum=3600, rng=rng) for n in range(1, 10)]
    assert 48 <= delays[0] <= 72
    assert 96 <= delays[1] <= 144
    assert 192 <= delays[2] <= 288
    assert max(delays) <= 3600
    assert delays[-1] >= 3600 * 0.8


def test_rate_limit_spaces_sends_across_connections() -> None:
    from mailer.pipeline.send import RateLimiter

    async def three() -> float:
        limiter = RateLimiter(per_minute=600)  # one every 0.1 s
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(limiter.wait() for _ in range(3)))
        return loop.time() - start

    assert 0.18 <= asyncio.run(three()) < 1.0


def test_a_second_mailer_on_the_same_database_is_refused(database_url: str) -> None:
    from mailer.errors import AlreadyRunningError
    from mailer.lock import database_lock

    with database_lock(database_url):
        with pytest.raises(AlreadyRunningError) as info, database_lock(database_url):
            pass
        assert "in use by another mailer" in info.value.message
        assert str(os.getpid()) in info.value.message
    with database_lock(database_url):
        pass  # released when the first holder ended
