"""The bounce mailbox end to end: digests out over real SMTP (aiosmtpd),
bounces and replies dropped into a real Maildir as a mail server would
deliver them, read by the next pass, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import mailbox
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest

import mailer.bounces.mailbox as mailbox_module
from mailer.bounces.mailbox import ImapBox
from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.dumps import format_dump
from mailer.errors import ConfigError
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.store import DeliveryStatus, Store
from mailer.store.schema import BOUNCES
from mailer.verp import parse_bounce_address
from tests.bounce_mail import drop, dsn, out_of_office, qmail_bounce, reply
from tests.conftest import Received, SmtpServer, free_port
from tests.test_cli import ENV

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TODAY = NOW.date()
RETURN_PATH = "bounces@example.org"


def config_text(
    database_url: str, port: int, *, bounces: str = 'maildir = "bounces"', smtp: str = ""
) -> str:
    return f"""
[watch]
dir = "dumps"
settle_seconds = 0
[database]
url = "{database_url}"
[delivery]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout_seconds = 5
sender = "Paper Digest <digest@example.org>"
return_path = "{RETURN_PATH}"
{smtp}
[bounces]
{bounces}
[[subscribers]]
email = "ada@example.org"
name = "Ada"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model"'
[[subscribers]]
email = "grace@example.org"
name = "Grace"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model"'
"""


def new_dump(folder: Path, n: int) -> None:
    """Dump ``n``: a new paper both subscribers' query matches."""
    paper = Paper(
        f"A Diffusion Model for Task {n}",
        f"We train a diffusion model for task {n}.",
        authors=2,
        published=TODAY,
        upvotes=n,
    )
    (folder / f"day-{n}.txt").write_text(format_dump(TODAY, [paper]), encoding="utf-8")


class Harness:
    """A pipeline on a real database and a real SMTP server, with a clock the
    test moves and a bounce Maildir it drops messages into."""

    def __init__(self, tmp_path: Path, server: SmtpServer, database_url: str, **extra: str) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.dumps = tmp_path / "dumps"
        self.dumps.mkdir(exist_ok=True)
        self.bounces = tmp_path / "bounces"
        mailbox.Maildir(self.bounces, create=True)  # as the mail server keeps one
        self.now = NOW
        self.config = parse_config(
            config_text(database_url, server.port, **extra), source="t.toml", base_dir=tmp_path
        )
        self.store = Store(self.config.database.url)
        self.pipeline = Pipeline(
            self.config, self.store, lambda: make_transport(self.pipeline.config), clock=self.clock
        )
        self._papers = count(1)

    def clock(self) -> datetime:
        return self.now

    def run(self) -> PassReport:
        return asyncio.run(self.pipeline.run_pass())

    def new_papers(self) -> None:
        new_dump(self.dumps, next(self._papers))

    def digest(self) -> PassReport:
        """New papers, and a pass that mails them."""
        self.new_papers()
        return self.run()

    def received(self, email: str) -> list[Received]:
        return [m for m in self.server.messages if m.recipients == [email]]

    def bounce(self, message: Received, **kwargs: str) -> str:
        """The DSN a receiving server sends back for ``message``, to its
        envelope sender, delivered into the bounce Maildir."""
        return drop(
            self.bounces,
            dsn(
                bounce_to=message.sender,
                recipient=message.recipients[0],
                original=message.data,
                **kwargs,
            ),
        )

    def maildir_flags(self) -> list[str]:
        """The flags of every message in the bounce Maildir ('' for new/)."""
        flags = [""] * len(list((self.bounces / "new").iterdir()))
        flags += [p.name.partition(":2,")[2] for p in (self.bounces / "cur").iterdir()]
        return sorted(flags)

    def status_of(self, message: Received) -> tuple[str, str | None]:
        message_id = message.message["Message-ID"]
        [row] = [d for d in self.store.deliveries() if d.message_id == message_id]
        return row.status, row.last_reply


@pytest.fixture
def harness(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Iterator[Harness]:
    h = Harness(tmp_path, smtp_server, database_url)
    yield h
    h.store.close()


def suppressed(harness: Harness) -> list[str]:
    return [s.address for s in harness.store.suppressed()]


# --- bounces ---------------------------------------------------------------------------


def test_digests_go_out_with_a_verp_return_path_naming_their_message(harness: Harness) -> None:
    harness.digest()
    [message] = harness.received("ada@example.org")
    token = parse_bounce_address(message.sender, RETURN_PATH)
    assert token is not None
    assert token.names(message.message["Message-ID"])


def test_a_hard_bounce_suppresses_the_address_and_no_digest_follows(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    harness.bounce(first, status="5.1.1")
    report = harness.digest()
    assert suppressed(harness) == ["ada@example.org"]
    assert len(harness.received("ada@example.org")) == 1
    assert len(harness.received("grace@example.org")) == 2
    assert report.sent == 1


def test_a_bounce_is_recorded_on_its_message_with_the_reason(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    harness.bounce(first, status="5.1.1")
    harness.run()
    status, reason = harness.status_of(first)
    assert status == DeliveryStatus.BOUNCED
    assert reason is not None
    assert "5.1.1" in reason
    assert "User unknown" in reason
    assert "hard" in reason


def test_a_bounce_is_acted_on_once_and_marked_seen(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    harness.bounce(first, status="5.2.2")
    harness.run()
    harness.run()
    assert harness.maildir_flags() == ["S"]
    with harness.store.transaction() as conn:
        assert len(conn.execute(BOUNCES.select()).all()) == 1


def test_a_full_mailbox_is_a_soft_bounce_and_does_not_suppress_at_once(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    harness.bounce(first, status="5.2.2")
    harness.digest()
    assert suppressed(harness) == []
    assert len(harness.received("ada@example.org")) == 2
    status, reason = harness.status_of(first)
    assert status == DeliveryStatus.BOUNCED
    assert reason is not None
    assert "soft" in reason


def test_a_delay_warning_changes_nothing(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    harness.bounce(first, status="4.4.1", action="delayed")
    harness.run()
    assert harness.status_of(first)[0] == DeliveryStatus.SENT
    assert harness.maildir_flags() == ["S"]


def test_soft_bounces_suppress_when_enough_fall_within_the_window(harness: Harness) -> None:
    """soft_limit 3 within 14 days: one 20 days old does not count; the
    third within the window suppresses."""
    days = iter([0, 1, 20, 21, 22])
    harness.now = NOW + timedelta(days=next(days))
    harness.digest()
    for sent in range(1, 4):
        harness.bounce(harness.received("ada@example.org")[-1], status="4.2.2")
        harness.now = NOW + timedelta(days=next(days))
        harness.digest()
        assert suppressed(harness) == [], f"after {sent} soft bounces"
        assert len(harness.received("ada@example.org")) == sent + 1
    harness.bounce(harness.received("ada@example.org")[-1], status="4.2.2")
    harness.now = NOW + timedelta(days=next(days))
    harness.digest()
    assert suppressed(harness) == ["ada@example.org"]
    assert len(harness.received("ada@example.org")) == 4
    assert len(harness.received("grace@example.org")) == 5


def test_two_reports_about_one_message_count_once(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    for _ in range(3):
        harness.bounce(first, status="4.2.2")
    harness.digest()
    assert suppressed(harness) == []


def test_a_bounce_without_verp_is_matched_by_the_original_message_id(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str
) -> None:
    h = Harness(tmp_path, smtp_server, database_url, smtp="verp = false")
    try:
        h.digest()
        [first] = h.received("ada@example.org")
        assert first.sender == RETURN_PATH
        h.bounce(first, status="5.1.1")
        h.digest()
        assert suppressed(h) == ["ada@example.org"]
        assert h.status_of(first)[0] == DeliveryStatus.BOUNCED
    finally:
        h.store.close()


def test_a_qmail_bounce_is_understood_too(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    drop(
        harness.bounces,
        qmail_bounce(bounce_to=first.sender, recipient="ada@example.org", original=first.data),
    )
    harness.digest()
    assert suppressed(harness) == ["ada@example.org"]
    status, reason = harness.status_of(first)
    assert status == DeliveryStatus.BOUNCED
    assert "no mailbox here by that name" in (reason or "")


def test_a_forged_verp_address_names_no_message_and_is_kept(harness: Harness) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    token = parse_bounce_address(first.sender, RETURN_PATH)
    assert token is not None
    forged = f"bounces+{token.delivery_id}.0000000000@example.org"
    drop(
        harness.bounces,
        dsn(bounce_to=forged, recipient="ada@example.org", original=b"Subject: x\n\n"),
    )
    harness.digest()
    assert suppressed(harness) == []
    assert harness.status_of(first)[0] == DeliveryStatus.SENT
    assert harness.maildir_flags() == ["F"]


def test_garbage_in_the_bounce_mailbox_is_kept_and_the_pass_goes_on(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.digest()
    [first] = harness.received("ada@example.org")
    drop(harness.bounces, b"\x00\xff\xfe not a message at all \x00")
    drop(harness.bounces, b"Content-Type: multipart/report; boundary=\n\n--\n\x00")
    harness.bounce(first, status="5.1.1")
    with caplog.at_level(logging.INFO, logger="mailer"):
        report = harness.digest()
    assert report.sent == 1
    assert suppressed(harness) == ["ada@example.org"]
    assert harness.maildir_flags() == ["F", "F", "S"]
    assert "kept" in caplog.text


def test_a_missing_bounce_maildir_is_logged_and_mail_still_goes_out(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    for sub in ("new", "cur", "tmp"):
        (harness.bounces / sub).rmdir()
    with caplog.at_level(logging.ERROR, logger="mailer"):
        report = harness.digest()
    assert report.sent == 2
    assert "bounce mailbox not read" in caplog.text
    assert str(harness.bounces) in caplog.text


# --- replies ---------------------------------------------------------------------------


def test_an_unsubscribe_reply_unsubscribes_its_sender_and_no_digest_follows(
    harness: Harness,
) -> None:
    harness.digest()
    drop(
        harness.bounces, reply(sender="ada@example.org", subject="Re: unsubscribe ada@example.org")
    )
    harness.digest()
    assert harness.store.unsubscribed_at("ada@example.org") == NOW
    assert len(harness.received("ada@example.org")) == 1
    assert len(harness.received("grace@example.org")) == 2
    assert harness.maildir_flags() == ["S"]


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("unsubscribe", ""),
        ("  RE:  Unsubscribe  ", ""),
        ("Re: Fwd: UNSUBSCRIBE ADA@example.org", ""),
        ("Re: your digest", "\n  unsubscribe\n\nOn Monday, Paper Digest wrote:\n> ..."),
    ],
)
def test_unsubscribe_is_read_from_the_subject_or_the_first_line(
    harness: Harness, subject: str, body: str
) -> None:
    harness.run()
    drop(harness.bounces, reply(sender="ADA@example.org", subject=subject, body=body))
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is not None


def test_an_automatic_reply_never_unsubscribes(harness: Harness) -> None:
    harness.run()
    drop(harness.bounces, out_of_office(sender="ada@example.org", to="digest@example.org"))
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is None
    assert harness.maildir_flags() == ["S"]


def test_a_reply_from_the_null_sender_never_unsubscribes(harness: Harness) -> None:
    harness.run()
    message = reply(sender="ada@example.org").replace(
        b"Return-Path: <ada@example.org>", b"Return-Path: <>"
    )
    drop(harness.bounces, message)
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is None
    assert harness.maildir_flags() == ["F"]


def test_an_unsubscribe_from_a_stranger_is_kept_for_a_person(harness: Harness) -> None:
    harness.run()
    drop(
        harness.bounces, reply(sender="mallory@example.net", subject="unsubscribe ada@example.org")
    )
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is None
    assert harness.maildir_flags() == ["F"]


def test_a_message_for_a_person_is_kept_unread(harness: Harness) -> None:
    harness.run()
    drop(harness.bounces, reply(sender="ada@example.org", subject="Thanks!", body="Great digest."))
    harness.run()
    assert harness.maildir_flags() == ["F"]


# --- refusals at RCPT ---------------------------------------------------------------------


def test_a_5_1_1_at_rcpt_suppresses_the_address(harness: Harness) -> None:
    harness.server.sink.refuse["ada@example.org"] = (
        "550 5.1.1 <ada@example.org>: Recipient address rejected: User unknown"
    )
    report = harness.digest()
    assert (report.sent, report.failed) == (1, 1)
    [entry] = harness.store.suppressed()
    assert (entry.address, entry.source) == ("ada@example.org", "smtp")
    assert "550 5.1.1" in entry.reason
    del harness.server.sink.refuse["ada@example.org"]
    harness.digest()
    assert harness.received("ada@example.org") == []


@pytest.mark.parametrize(
    "refusal",
    ["450 4.1.1 <ada@example.org>: Recipient address rejected: try later", "550 5.7.1 blocked"],
)
def test_a_temporary_or_policy_refusal_at_rcpt_suppresses_nothing(
    harness: Harness, refusal: str
) -> None:
    harness.server.sink.refuse["ada@example.org"] = refusal
    harness.digest()
    assert suppressed(harness) == []


def test_a_refused_connection_suppresses_nothing(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str
) -> None:
    h = Harness(tmp_path, smtp_server, database_url)
    try:
        h.pipeline.transport = lambda: make_transport(
            h.config.model_copy(
                update={"smtp": h.config.smtp.model_copy(update={"port": free_port()})}
            )
        )
        report = h.digest()
        assert report.deferred == 2
        assert suppressed(h) == []
    finally:
        h.store.close()


# --- suppressed addresses get nothing ---------------------------------------------------


def test_a_digest_queued_before_the_suppression_is_cancelled_with_the_reason(
    harness: Harness,
) -> None:
    harness.new_papers()
    report = PassReport()
    harness.pipeline.sync()
    harness.pipeline.ingest(report)
    harness.pipeline.match(report)
    harness.pipeline.compose(report)
    assert report.digests == 2
    harness.store.suppress("ADA@example.org", reason="test", source="smtp", now=NOW)
    asyncio.run(harness.pipeline.deliver(report))
    assert harness.received("ada@example.org") == []
    [ada] = [d for d in harness.store.deliveries() if d.recipient == "ada@example.org"]
    assert ada.status == DeliveryStatus.CANCELLED
    assert "suppressed" in (ada.last_reply or "")


def test_a_lifted_suppression_gets_digests_again(harness: Harness) -> None:
    harness.store.suppress("ada@example.org", reason="test", source="smtp", now=NOW)
    harness.digest()
    assert harness.received("ada@example.org") == []
    assert harness.store.lift_suppression("Ada@Example.org", NOW)
    assert not harness.store.lift_suppression("ada@example.org", NOW)
    harness.digest()
    assert len(harness.received("ada@example.org")) == 1


def test_bounces_before_a_lift_do_not_count_again(harness: Harness) -> None:
    harness.digest()
    harness.bounce(harness.received("ada@example.org")[-1], status="5.1.1")
    harness.run()
    harness.now += timedelta(minutes=1)
    assert harness.store.lift_suppression("ada@example.org", harness.now)
    harness.now += timedelta(minutes=1)
    harness.digest()
    assert suppressed(harness) == []
    assert len(harness.received("ada@example.org")) == 2


def test_no_bounce_mailbox_configured_reads_nothing(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    text = config_text(url, smtp_server.port, bounces="")
    config: Config = parse_config(text, source="t.toml", base_dir=tmp_path)
    assert config.bounces.maildir is None
    store = Store(url)
    try:
        pipeline = Pipeline(config, store, lambda: make_transport(config), clock=lambda: NOW)
        assert asyncio.run(pipeline.run_pass()).errors == []
    finally:
        store.close()
    assert not (tmp_path / "bounces").exists()


# --- the command line, as an operator runs it ------------------------------------------


class Cli:
    """``mailer`` run as a process on a config file, a real database and the
    aiosmtpd server, with a bounce Maildir next to the config."""

    def __init__(self, tmp_path: Path, server: SmtpServer, database_url: str, **extra: str) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.config = tmp_path / "config.toml"
        self.config.write_text(config_text(database_url, server.port, **extra), encoding="utf-8")
        (tmp_path / "dumps").mkdir()
        self.bounces = tmp_path / "bounces"
        mailbox.Maildir(self.bounces, create=True)
        self.env: dict[str, str] = {}
        self._papers = count(1)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailer", "--config", str(self.config), *args],
            cwd=self.tmp_path,
            env={**ENV, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ingest_new_papers(self) -> None:
        new_dump(self.tmp_path / "dumps", next(self._papers))
        result = self("ingest")
        assert result.returncode == 0, result.stderr

    def received(self, email: str) -> list[Received]:
        return [m for m in self.server.messages if m.recipients == [email]]


@pytest.fixture
def cli(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Cli:
    return Cli(tmp_path, smtp_server, database_url)


def test_mailer_ingest_reads_a_dsn_suppresses_and_sends_that_address_nothing_more(
    cli: Cli,
) -> None:
    cli.ingest_new_papers()
    [first] = cli.received("ada@example.org")
    drop(
        cli.bounces,
        dsn(bounce_to=first.sender, recipient="ada@example.org", original=first.data),
    )
    cli.ingest_new_papers()
    cli.ingest_new_papers()
    assert len(cli.received("ada@example.org")) == 1
    assert len(cli.received("grace@example.org")) == 3
    listed = json.loads(cli("suppressions", "list", "--json").stdout)
    assert [(s["address"], s["source"]) for s in listed] == [("ada@example.org", "bounce")]
    assert "5.1.1" in listed[0]["reason"]
    bounced = json.loads(cli("outbox", "--json", "--status", "bounced").stdout)
    assert [(m["recipient"], m["message_id"]) for m in bounced] == [
        ("ada@example.org", first.message["Message-ID"])
    ]
    assert "5.1.1" in bounced[0]["last_reply"]


def test_mailer_ingest_acts_on_an_unsubscribe_reply_and_sends_that_address_nothing_more(
    cli: Cli,
) -> None:
    cli.ingest_new_papers()
    drop(cli.bounces, reply(sender="ada@example.org", subject="Re: unsubscribe ada@example.org"))
    cli.ingest_new_papers()
    cli.ingest_new_papers()
    assert len(cli.received("ada@example.org")) == 1
    assert len(cli.received("grace@example.org")) == 3
    subscribers = json.loads(cli("subs", "list", "--json").stdout)
    assert {s["email"]: s["unsubscribed"] for s in subscribers} == {
        "ada@example.org": True,
        "grace@example.org": False,
    }


def test_suppressions_list_and_remove(cli: Cli) -> None:
    cli.server.sink.refuse["ada@example.org"] = "550 5.1.1 <ada@example.org>: User unknown"
    cli.ingest_new_papers()
    listed = cli("suppressions", "list")
    assert listed.returncode == 0
    assert "ada@example.org" in listed.stdout
    assert "550 5.1.1" in listed.stdout
    removed = cli("suppressions", "remove", "ADA@example.org")
    assert removed.returncode == 0, removed.stderr
    assert "lifted" in removed.stdout
    assert cli("suppressions", "list").stdout.strip() == "no address is suppressed"
    del cli.server.sink.refuse["ada@example.org"]
    cli.ingest_new_papers()
    assert len(cli.received("ada@example.org")) == 1


def test_suppressions_remove_of_an_address_not_suppressed_says_so(cli: Cli) -> None:
    result = cli("suppressions", "remove", "grace@example.org")
    assert result.returncode == 2
    assert "'grace@example.org' is not suppressed" in result.stderr
    assert "mailer suppressions list" in result.stderr


def test_status_counts_bounced_messages_and_suppressed_addresses(cli: Cli) -> None:
    cli.ingest_new_papers()
    [first] = cli.received("ada@example.org")
    drop(
        cli.bounces,
        dsn(bounce_to=first.sender, recipient="ada@example.org", original=first.data),
    )
    cli.ingest_new_papers()
    report = json.loads(cli("status", "--json").stdout)
    assert report["outbox"]["bounced"] == 1
    assert report["suppressed"] == 1
    text = cli("status").stdout
    assert "1 bounced" in text
    assert re.search(r"^suppressed\s+1 address", text, re.MULTILINE)


# --- the mailbox itself -----------------------------------------------------------------


def test_a_message_a_mail_client_moved_to_cur_unread_is_still_read(harness: Harness) -> None:
    harness.run()
    key = drop(harness.bounces, reply(sender="ada@example.org"))
    (harness.bounces / "new" / key).rename(harness.bounces / "cur" / f"{key}:2,")
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is not None
    assert harness.maildir_flags() == ["S"]


def test_a_message_someone_read_or_flagged_is_left_alone(harness: Harness) -> None:
    harness.run()
    for flags in ("S", "FS"):
        key = drop(harness.bounces, reply(sender="ada@example.org"))
        (harness.bounces / "new" / key).rename(harness.bounces / "cur" / f"{key}:2,{flags}")
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is None


def test_a_message_larger_than_a_bounce_is_kept_unread(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mailbox_module, "MAX_MESSAGE_BYTES", 100)
    harness.run()
    drop(harness.bounces, reply(sender="ada@example.org", body="x" * 200))
    harness.run()
    assert harness.store.unsubscribed_at("ada@example.org") is None
    assert harness.maildir_flags() == ["F"]


# --- configuration ------------------------------------------------------------------------


def test_the_bounce_maildir_and_ca_file_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = parse_config('[bounces]\nmaildir = "b"\n', source="c.toml", base_dir=tmp_path).bounces
    assert config.maildir == tmp_path / "b"
    imap = parse_config(
        '[bounces]\nimap_url = "imaps://d@mail.example.org/INBOX"\nca_file = "ca.pem"\n',
        source="c.toml",
        base_dir=tmp_path,
    ).bounces
    assert imap.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ('imap_url = "imap://d@mail.example.org"', "not an IMAP-over-TLS URL"),
        ('imap_url = "imaps://mail.example.org/INBOX"', "not an IMAP-over-TLS URL"),
        ('imap_url = "imaps://d@mail.example.org:99999"', "not an IMAP-over-TLS URL"),
        ('imap_url = "imaps://d:pw@mail.example.org"', "MAILER_BOUNCES__PASSWORD"),
        ('maildir = "b"\nimap_url = "imaps://d@mail.example.org"', "not both"),
        ("soft_limit = 0", "bounces.soft_limit"),
        ("soft_window_days = 0", "bounces.soft_window_days"),
    ],
)
def test_bad_bounce_settings_are_refused_naming_the_key(settings: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[bounces]\n{settings}\n", source="c.toml")
    assert said in str(info.value)
    assert ":pw@" not in str(info.value)  # a password in the URL is never echoed


def test_the_imap_password_comes_from_the_environment_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILER_BOUNCES__PASSWORD", "hunter2-imap")
    config = parse_config(
        '[bounces]\nimap_url = "imaps://d@mail.example.org"\n', source="c.toml"
    ).bounces
    assert config.password.get_secret_value() == "hunter2-imap"
    assert "hunter2" not in repr(config)
    box = ImapBox(config)
    assert box.where == "IMAP d@mail.example.org:993/INBOX"


def test_check_config_says_where_bounces_are_read_and_when_they_suppress(cli: Cli) -> None:
    result = cli("check-config")
    assert result.returncode == 0, result.stderr
    assert f"bounces read Maildir {cli.bounces} every pass" in result.stdout
    assert "suppress after 1 hard bounce(s), or 3 soft within 14 days" in result.stdout
