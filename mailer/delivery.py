"""Transports: how a composed message leaves mailer.

``smtp`` hands messages to a mail server with aiosmtplib, reusing one
connection for a batch, over SMTPUTF8 when an address has a non-ASCII local
part (a server without it fails that message alone); ``maildir`` writes them
to a local Maildir folder, so mailer works with no mail server at all. Both
raise DeliveryError, marked permanent when retrying cannot help.

A refusal of the session itself (connect, EHLO/HELO, STARTTLS, AUTH, MAIL
FROM, or a RCPT reply that blames the client, its HELO name or the sender
rather than the recipient) is TransportUnavailableError: every message would
get it, so sending pauses and the messages stay queued. Only what a RCPT or
DATA reply says about one message fails that message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mailbox
import os
import re
import socket
import ssl
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import aiosmtplib

from mailer.addresses import needs_smtputf8
from mailer.config import Config, SmtpConfig
from mailer.errors import DeliveryError


class TransportUnavailableError(DeliveryError):
    """The transport itself is down (connection, TLS, login): the whole batch waits."""


class RecipientRefusedError(DeliveryError):
    """The server refused the recipient at RCPT TO, with ``code`` and ``reply``
    (a 5.1.x reply there says the address does not exist: mailer.pipeline.send
    suppresses it)."""

    def __init__(self, message: str, *, code: int, reply: str) -> None:
        super().__init__(message, permanent=500 <= code < 600)
        self.code = code
        self.reply = reply


# RCPT replies that refuse the session, not the recipient: Postfix delays its
# client, HELO and sender restrictions to RCPT TO (smtpd_delay_reject), so
# "504 5.5.2 <host>: Helo command rejected" arrives as a reply to RCPT.
_SESSION_REFUSAL = re.compile(
    r"helo command rejected|client host rejected|sender address rejected", re.IGNORECASE
)


class Transport(Protocol):
    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Deliver one message; return the server's reply, or raise DeliveryError."""
        ...


class MaildirTransport:
    """Writes each message into ``path`` (a Maildir: tmp/, new/, cur/)."""

    name = "maildir"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._count = itertools.count(1)

    async def __aenter__(self) -> Self:
        try:
            mailbox.Maildir(self.path, create=True)
        except OSError as exc:
            raise TransportUnavailableError(
                f"cannot open Maildir {self.path}: {exc.strerror}",
                hint="check [delivery] maildir points to a writable folder",
            ) from exc
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """Stores ``message`` with a Return-Path line for ``sender``, as a
        local delivery agent writes the envelope sender."""
        return_path = b"Return-Path: <" + sender.encode("utf-8") + b">\n"
        try:
            key = await asyncio.to_thread(self._add, return_path, message)
        except OSError as exc:
            raise DeliveryError(f"cannot write to Maildir {self.path}: {exc.strerror}") from exc
        return f"stored as {self.path / 'new' / key}"

    def _add(self, *parts: bytes) -> str:
        """What ``mailbox.Maildir.add`` does (a unique name written in tmp/,
        flushed to disk, then linked into new/), in a third of its system
        calls and without copying the message."""
        while True:
            now = time.time()
            key = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._count)}.{self._host}"
            tmp = self.path / "tmp" / key
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            break
        try:
            try:
                _write_all(fd, parts)
                os.fsync(fd)
            finally:
                os.close(fd)
            (self.path / "new" / key).hardlink_to(tmp)
        finally:
            tmp.unlink()
        return key


def _write_all(fd: int, parts: tuple[bytes, ...]) -> None:
    views = [memoryview(p) for p in parts if p]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][written:]


class SmtpTransport:
    """One SMTP connection per batch, opened on first use and reopened if dropped."""

    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._client: aiosmtplib.SMTP | None = None

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.security == "tls",
            start_tls=cfg.security == "starttls",
            timeout=cfg.timeout_seconds,
            local_hostname=cfg.local_hostname or None,
            tls_context=ssl.create_default_context() if cfg.security != "none" else None,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # so the extensions (SMTPUTF8) are known
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            if cfg.username:
                await client.login(cfg.username, cfg.password.get_secret_value())
        except aiosmtplib.SMTPHeloError as exc:
            client.close()
            raise TransportUnavailableError(
                f"SMTP server {self.where} refused the greeting EHLO/HELO "
                f"{client.local_hostname}: {exc.code} {exc.message}",
                hint="set [smtp] local_hostname to this machine's public name "
                "(one whose DNS A/AAAA record exists); mailer retries on the next pass",
            ) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise TransportUnavailableError(
                f"SMTP server {self.where} refused the login for {cfg.username!r}: "
                f"{exc.code} {exc.message}",
                hint="check [smtp] username and MAILER_SMTP__PASSWORD",
            ) from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            client.close()
            raise TransportUnavailableError(
                f"cannot connect to SMTP server {self.where}: {exc}",
                hint="check [smtp] host, port and security, and that the server is up; "
                "mailer retries on the next pass",
            ) from exc
        return client

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """One mail transaction: MAIL FROM, RCPT TO, DATA, as ``SMTP.sendmail``
        runs it for one recipient, but with the SIZE parameter counted here
        (``wire_size``): sendmail rewrites the whole message's line endings
        with a regular expression to count it, once more than DATA does."""
        if self._client is None or not self._client.is_connected:
            self._client = await self._connect()
        client = self._client
        options = []
        encoding = "ascii"
        if needs_smtputf8(sender) or needs_smtputf8(recipient):
            if not client.supports_extension("smtputf8"):
                raise DeliveryError(
                    f"{self.where} does not offer SMTPUTF8, which a message to {recipient} "
                    f"from {sender} needs (an address with a non-ASCII local part)",
                    permanent=True,
                    hint="send through a server that offers SMTPUTF8, or ask the subscriber "
                    "for an ASCII address",
                )
            options.append("SMTPUTF8")
            encoding = "utf-8"
        if not message.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if client.supports_extension("size"):
            options.insert(0, f"SIZE={wire_size(message)}")
        try:
            try:
                await client.mail(sender, options=options, encoding=encoding)
                await client.rcpt(recipient, encoding=encoding)
                response = await client.data(message)
            except (aiosmtplib.SMTPResponseException, ValueError):
                await _reset(client)  # the next message starts a clean envelope
                raise
        except UnicodeError as exc:
            raise DeliveryError(
                f"cannot send to {recipient} through {self.where}: {exc}", permanent=True
            ) from exc
        except aiosmtplib.SMTPRecipientRefused as exc:
            if _SESSION_REFUSAL.search(exc.message):
                raise self._refused_session("RCPT TO", exc.code, exc.message) from exc
            raise RecipientRefusedError(
                f"{self.where} refused {recipient}: {exc.code} {exc.message}",
                code=exc.code,
                reply=exc.message,
            ) from exc
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPHeloError) as exc:
            step = "MAIL FROM" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "EHLO/HELO"
            raise self._refused_session(step, exc.code, exc.message) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"{self.where} answered {exc.code} {exc.message} for {recipient}",
                permanent=500 <= exc.code < 600,
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._client = None
            raise TransportUnavailableError(
                f"lost the connection to {self.where} while sending to {recipient}: {exc}"
            ) from exc
        return response.message

    def _refused_session(self, step: str, code: int, text: str) -> TransportUnavailableError:
        """The server refused this client or its sender, not one message: the
        connection is dropped and the whole batch waits, every message queued."""
        cfg = self.config
        client, self._client = self._client, None
        name = cfg.local_hostname
        if client is not None:
            name = client.local_hostname or name
            client.close()
        return TransportUnavailableError(
            f"{self.where} refused the session at {step}: {code} {text}",
            hint=f"check that the server accepts EHLO {name} ([smtp] local_hostname) and the "
            f"sender {cfg.return_path or cfg.sender_address} ([smtp] return_path, sender); "
            "mailer retries on the next pass",
        )


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal, as ``SMTP.sendmail`` does; a server gone or
    refusing it too is left to the next command to find."""
    with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
        await client.rset()


def wire_size(message: bytes) -> int:
    """The length of ``message`` as DATA carries it (every line ending CRLF,
    a final one added), for the SIZE parameter (RFC 1870): what aiosmtplib
    counts with a regular expression over the whole message, by byte counts."""
    if b"\r" in message:
        crlf = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return wire_size(crlf)
    size = len(message) + message.count(b"\n")
    return size if message.endswith(b"\n") else size + 2


def make_transport(config: Config) -> Transport:
    if config.delivery.transport == "smtp":
        return SmtpTransport(config.smtp)
    return MaildirTransport(config.delivery.maildir)
