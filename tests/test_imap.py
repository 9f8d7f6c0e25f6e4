"""The bounce mailbox over IMAP with TLS, against a real Dovecot on loopback
(Debian's ``dovecot-imapd``). `.ci/run` installs it and sets
MAILER_TEST_REQUIRE_DOVECOT, so there these tests must run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from mailer.bounces.mailbox import ImapBox
from mailer.config import BouncesConfig
from mailer.errors import MailboxError
from mailer.store import DeliveryStatus
from tests.bounce_mail import drop, dsn, reply
from tests.conftest import SmtpServer
from tests.dovecot import PASSWORD, Dovecot, dovecot_binary, running_dovecot
from tests.test_bounces import Cli, Harness


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    binary = dovecot_binary()
    if binary is None:
        reason = "dovecot is not installed (apt-get install dovecot-imapd)"
        if os.environ.get("MAILER_TEST_REQUIRE_DOVECOT"):
            pytest.fail(reason + ", but MAILER_TEST_REQUIRE_DOVECOT is set")
        pytest.skip(reason)
    with running_dovecot(binary) as server:
        yield server


@pytest.fixture
def inbox(dovecot: Dovecot) -> Iterator[Path]:
    """The IMAP user's INBOX as a Maildir, emptied after each test."""
    yield dovecot.maildir
    for sub in ("new", "cur"):
        for path in (dovecot.maildir / sub).iterdir():
            path.unlink()


def imap_settings(dovecot: Dovecot, *, ca_file: Path | None = None) -> str:
    ca = f'ca_file = "{ca_file}"' if ca_file else ""
    return f'imap_url = "{dovecot.url}"\n{ca}'


def flags(inbox: Path) -> list[str]:
    """Each message's Maildir flags as Dovecot keeps them ('' while in new/)."""
    found = [""] * len(list((inbox / "new").iterdir()))
    found += [p.name.partition(":2,")[2] for p in (inbox / "cur").iterdir()]
    return sorted(found)


def test_mailer_ingest_reads_bounces_and_replies_over_imaps(
    tmp_path: Path, smtp_server: SmtpServer, dovecot: Dovecot, inbox: Path
) -> None:
    cli = Cli(
        tmp_path,
        smtp_server,
        f"sqlite:///{tmp_path / 'mailer.db'}",
        bounces=imap_settings(dovecot, ca_file=dovecot.ca_file),
    )
    cli.env["MAILER_BOUNCES__PASSWORD"] = PASSWORD
    cli.ingest_new_papers()
    [first] = cli.received("ada@example.org")
    drop(inbox, dsn(bounce_to=first.sender, recipient="ada@example.org", original=first.data))
    drop(inbox, reply(sender="grace@example.org", subject="Re: unsubscribe grace@example.org"))
    drop(inbox, reply(sender="grace@example.org", subject="Thanks", body="for the digest"))
    cli.ingest_new_papers()
    assert len(cli.received("ada@example.org")) == 1
    assert len(cli.received("grace@example.org")) == 1
    assert flags(inbox) == ["F", "S", "S"]
    listed = cli("suppressions", "list")
    assert "ada@example.org" in listed.stdout


def test_imap_marks_what_was_read_so_a_second_pass_reads_nothing(
    tmp_path: Path,
    smtp_server: SmtpServer,
    database_url: str,
    dovecot: Dovecot,
    inbox: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILER_BOUNCES__PASSWORD", PASSWORD)
    h = Harness(
        tmp_path,
        smtp_server,
        database_url,
        bounces=imap_settings(dovecot, ca_file=dovecot.ca_file),
    )
    try:
        h.digest()
        [first] = h.received("ada@example.org")
        drop(inbox, dsn(bounce_to=first.sender, recipient="ada@example.org", original=first.data))
        h.run()
        assert h.status_of(first)[0] == DeliveryStatus.BOUNCED
        assert [s.address for s in h.store.suppressed()] == ["ada@example.org"]
        h.store.lift_suppression("ada@example.org", h.now)
        h.run()
        assert h.store.suppressed() == []
        assert flags(inbox) == ["S"]
    finally:
        h.store.close()


def test_the_servers_certificate_is_verified_by_default(
    tmp_path: Path,
    smtp_server: SmtpServer,
    dovecot: Dovecot,
    inbox: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MAILER_BOUNCES__PASSWORD", PASSWORD)
    h = Harness(
        tmp_path, smtp_server, f"sqlite:///{tmp_path / 'm.db'}", bounces=imap_settings(dovecot)
    )
    try:
        drop(inbox, reply(sender="ada@example.org"))
        with caplog.at_level(logging.ERROR, logger="mailer"):
            report = h.digest()
        assert report.sent == 2
        assert "certificate is not trusted" in caplog.text
        assert "[bounces] ca_file" in caplog.text
        assert h.store.unsubscribed_at("ada@example.org") is None
        assert flags(inbox) == [""]
    finally:
        h.store.close()


def test_a_wrong_password_is_refused_naming_the_key_and_never_shown(
    dovecot: Dovecot, inbox: Path
) -> None:
    config = BouncesConfig(
        imap_url=dovecot.url, ca_file=dovecot.ca_file, password=SecretStr("not-the-password")
    )
    with pytest.raises(MailboxError) as info, ImapBox(config):
        pass
    said = str(info.value)
    assert "log in" in said
    assert "MAILER_BOUNCES__PASSWORD" in said
    assert "not-the-password" not in said


def test_a_mailbox_that_does_not_exist_is_named(dovecot: Dovecot, inbox: Path) -> None:
    config = BouncesConfig(
        imap_url=dovecot.url.replace("/INBOX", "/Nowhere"),
        ca_file=dovecot.ca_file,
        password=SecretStr(PASSWORD),
    )
    with pytest.raises(MailboxError, match="Nowhere"), ImapBox(config):
        pass
