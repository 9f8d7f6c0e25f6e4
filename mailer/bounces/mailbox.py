"""The bounce mailbox: a local Maildir folder, or a folder over IMAP with TLS.

Both show mailer the messages not yet seen and not flagged, oldest first,
and take them off that list one by one: ``done`` marks a message seen (it
was acted on), ``keep`` flags it and leaves it unseen for a person to read.
So no message is acted on twice, and one mailer cannot understand is never
lost. The Maildir is changed by renames only, as Maildir wants (into cur/
with the ``S`` or ``F`` flag); over IMAP by ``\\Seen`` and ``\\Flagged``.
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import unquote, urlsplit

from mailer.config import BouncesConfig
from mailer.errors import MailboxError

MAX_MESSAGE_BYTES = 10 * 2**20  # a bounce is small; a larger message is kept unread
IMAP_TIMEOUT_SECONDS = 30.0
_INFO = ":2,"  # Maildir: the flags follow this in a file name in cur/
_ATOM = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Letter:
    """One message in the mailbox: ``key`` to mark it, ``name`` for the log."""

    key: str
    name: str
    data: bytes | None  # None: too large to read (see MAX_MESSAGE_BYTES)


class Mailbox(Protocol):
    where: str

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def unread(self, limit: int) -> Iterator[Letter]:
        """Messages neither seen nor flagged, oldest first, at most ``limit``."""
        ...

    def done(self, key: str) -> None:
        """Mark the message seen: it was acted on."""
        ...

    def keep(self, key: str) -> None:
        """Flag the message and leave it unseen, for a person."""
        ...


def open_mailbox(config: BouncesConfig) -> Mailbox | None:
    """The configured bounce mailbox, None when there is none."""
    if config.maildir is not None:
        return MaildirBox(config.maildir)
    if config.imap_url:
        return ImapBox(config)
    return None


# --- Maildir ----------------------------------------------------------------------


class MaildirBox:
    """A Maildir folder on this machine, as a local delivery agent fills it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"Maildir {path}"

    def __enter__(self) -> Self:
        for sub in ("new", "cur"):
            if not (self.path / sub).is_dir():
                raise MailboxError(
                    f"bounce Maildir {self.path} has no {sub}/ folder",
                    hint="point [bounces] maildir at the Maildir your mail server delivers "
                    "bounces to (a folder with new/, cur/ and tmp/)",
                )
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def unread(self, limit: int) -> Iterator[Letter]:
        names: list[tuple[str, str]] = []
        for sub in ("new", "cur"):
            try:
                entries = [entry.name for entry in (self.path / sub).iterdir()]
            except OSError as exc:
                raise MailboxError(
                    f"cannot read bounce Maildir {self.path / sub}: {exc.strerror}",
                    hint="check [bounces] maildir and its permissions",
                ) from exc
            names.extend(
                (sub, name)
                for name in entries
                if not name.startswith(".") and not _flags(name) & {"S", "F"}
            )
        names.sort(key=lambda found: found[1])
        for sub, name in names[:limit]:
            path = self.path / sub / name
            try:
                size = path.stat().st_size
                data = path.read_bytes() if size <= MAX_MESSAGE_BYTES else None
            except FileNotFoundError:
                continue  # taken meanwhile (a mail client moved it)
            except OSError as exc:
                raise MailboxError(
                    f"cannot read {path}: {exc.strerror}",
                    hint="check the permissions of [bounces] maildir",
                ) from exc
            yield Letter(f"{sub}/{name}", str(path), data)

    def done(self, key: str) -> None:
        self._flag(key, "S")

    def keep(self, key: str) -> None:
        self._flag(key, "F")

    def _flag(self, key: str, flag: str) -> None:
        """Move the message into cur/ with ``flag`` added to its name."""
        sub, _, name = key.partition("/")
        base, _, flags = name.partition(_INFO)
        target = self.path / "cur" / f"{base}{_INFO}{''.join(sorted(set(flags) | {flag}))}"
        try:
            (self.path / sub / name).rename(target)
        except FileNotFoundError:
            return  # moved meanwhile by a mail client; it is no longer new to us either way
        except OSError as exc:
            raise MailboxError(
                f"cannot mark {self.path / sub / name} as read: {exc.strerror}",
                hint="mailer needs write access to [bounces] maildir's new/ and cur/",
            ) from exc


def _flags(name: str) -> set[str]:
    _, info, flags = name.partition(_INFO)
    return set(flags) if info else set()


# --- IMAP ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImapAddress:
    user: str
    host: str
    port: int
    mailbox: str

    @classmethod
    def parse(cls, url: str) -> ImapAddress:
        """``imaps://user@host[:port][/mailbox]`` (checked by the config)."""
        parts = urlsplit(url)
        assert parts.hostname
        assert parts.username is not None
        mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
        return cls(unquote(parts.username), parts.hostname, parts.port or 993, mailbox)


class ImapBox:
    """A folder on an IMAP server, over TLS (IMAPS), with the server's
    certificate verified against the system's CAs (and ``ca_file``)."""

    def __init__(self, config: BouncesConfig) -> None:
        self.address = ImapAddress.parse(config.imap_url)
        self.password = config.password
        self.ca_file = config.ca_file
        a = self.address
        self.where = f"IMAP {a.user}@{a.host}:{a.port}/{a.mailbox}"
        self._client: imaplib.IMAP4_SSL | None = None

    def __enter__(self) -> Self:
        a = self.address
        context = ssl.create_default_context()
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise MailboxError(
                    f"cannot load bounces.ca_file {self.ca_file}: {exc}",
                    hint="give a PEM file with the CA certificate(s) to trust",
                ) from exc
        with self._errors("connect to"):
            client = imaplib.IMAP4_SSL(
                a.host, a.port, ssl_context=context, timeout=IMAP_TIMEOUT_SECONDS
            )
        self._client = client
        try:
            with self._errors(
                "log in to", hint="check [bounces] imap_url and MAILER_BOUNCES__PASSWORD"
            ):
                client.login(a.user, self.password.get_secret_value())
            with self._errors("open the folder on"):
                kind, said = client.select(_quoted(a.mailbox))
                if kind != "OK":
                    raise imaplib.IMAP4.error(_said(said))
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        client = self._client
        if client is not None:
            with suppress(imaplib.IMAP4.error, OSError):
                client.close()
                client.logout()
        self._close()

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with suppress(OSError):
                client.shutdown()

    def unread(self, limit: int) -> Iterator[Letter]:
        client = self._connected()
        with self._errors("search"):
            kind, said = client.uid("SEARCH", "UNSEEN", "UNFLAGGED")
            if kind != "OK":
                raise imaplib.IMAP4.error(_said(said))
        uids = [
            u for u in b" ".join(x for x in said if isinstance(x, bytes)).split() if u.isdigit()
        ]
        for uid in sorted(uids, key=int)[:limit]:
            key = uid.decode()
            with self._errors("fetch a message from"):
                kind, said = client.uid("FETCH", key, "(RFC822.SIZE)")
                size = _size(said)
                data: bytes | None = None
                if size is None or size <= MAX_MESSAGE_BYTES:
                    kind, said = client.uid("FETCH", key, "(BODY.PEEK[])")
                    if kind != "OK":
                        raise imaplib.IMAP4.error(_said(said))
                    data = _body(said)
            if data is None and (size is None or size <= MAX_MESSAGE_BYTES):
                continue  # expunged meanwhile
            yield Letter(key, f"{self.where} UID {key}", data)

    def done(self, key: str) -> None:
        self._store(key, r"(\Seen)")

    def keep(self, key: str) -> None:
        self._store(key, r"(\Flagged)")

    def _store(self, key: str, flags: str) -> None:
        client = self._connected()
        with self._errors("flag a message on"):
            kind, said = client.uid("STORE", key, "+FLAGS.SILENT", flags)
            if kind != "OK":
                raise imaplib.IMAP4.error(_said(said))

    def _connected(self) -> imaplib.IMAP4_SSL:
        if self._client is None:
            raise MailboxError(f"{self.where} is not open")
        return self._client

    @contextmanager
    def _errors(self, doing: str, *, hint: str | None = None) -> Iterator[None]:
        """IMAP, TLS and network errors as MailboxError naming the server,
        never the password."""
        a = self.address
        try:
            yield
        except ssl.SSLCertVerificationError as exc:
            raise MailboxError(
                f"cannot {doing} {self.where}: its certificate is not trusted: "
                f"{exc.verify_message}",
                hint="the server needs a certificate for "
                f"{a.host} from a CA this machine trusts; for a private CA set [bounces] ca_file",
            ) from exc
        except (imaplib.IMAP4.error, ssl.SSLError, OSError) as exc:
            raise MailboxError(
                f"cannot {doing} {self.where}: {_reason(exc)}",
                hint=hint
                or "check [bounces] imap_url and that the server is up; "
                "mailer tries again on the next pass",
            ) from exc


def _reason(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text


def _said(said: Sequence[object]) -> str:
    return " ".join(
        x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in said
    )


def _quoted(mailbox: str) -> str:
    """A mailbox name as an IMAP atom or quoted string."""
    if _ATOM.fullmatch(mailbox):
        return mailbox
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _size(said: Sequence[object]) -> int | None:
    for item in said:
        if isinstance(item, bytes):
            found = re.search(rb"RFC822\.SIZE (\d+)", item)
            if found:
                return int(found.group(1))
    return None


def _body(said: Sequence[object]) -> bytes | None:
    """The literal of a ``FETCH (BODY[])`` reply: imaplib gives (prefix, data) pairs."""
    for item in said:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
            return item[1]
    return None
