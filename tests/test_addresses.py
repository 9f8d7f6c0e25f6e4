"""Addresses beyond ASCII: validated at load, domains in IDNA form, non-ASCII
local parts delivered over SMTPUTF8 (or failed alone where a server lacks
it), one bad message never stopping the others, and subscribers found by a
Unicode-casefolded key on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import aiohttp
import pytest
from aiosmtpd.controller import Controller

from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.dumps import format_dump
from mailer.errors import ConfigError
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.pipeline.compose import ComposeChunk, digest_order, due_subscribers
from mailer.store import Store
from mailer.tokens import make_token
from mailer.web import WebServer, make_app
from tests.conftest import Sink, SmtpServer, free_port
from tests.test_cli import mailer

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SECRET = "s3cret-for-tests-only-0123456789"
PAPER = Paper("Diffusion models for everyone", "We train a diffusion model.")


def config_text(
    tmp_path: Path,
    emails: list[str],
    *,
    transport: str = "maildir",
    port: int = 25,
    database_url: str | None = None,
) -> str:
    subscribers = "".join(
        f"""
[[subscribers]]
email = "{email}"
[[subscribers.subscriptions]]
name = "Diffusion"
query = "diffusion"
"""
        for email in emails
    )
    return f"""
[watch]
dir = "dumps"
settle_seconds = 0
[database]
url = "{database_url or f"sqlite:///{tmp_path / 'mailer.db'}"}"
[delivery]
transport = "{transport}"
maildir = "outbox"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout_seconds = 5
sender = "Paper Digest <digest@example.org>"
{subscribers}
"""


class Rig:
    """A Pipeline in-process, with a dump of one diffusion paper waiting."""

    def __init__(self, tmp_path: Path, emails: list[str], **settings: object) -> None:
        text = config_text(tmp_path, emails, **settings)  # type: ignore[arg-type]
        self.config: Config = parse_config(text, source="t.toml", base_dir=tmp_path)
        (tmp_path / "dumps").mkdir()
        (tmp_path / "dumps" / "d.txt").write_text(
            format_dump(date(2026, 11, 23), [PAPER]), encoding="utf-8"
        )
        self.store = Store(self.config.database.url)
        self.pipeline = Pipeline(
            self.config, self.store, lambda: make_transport(self.config), clock=lambda: NOW
        )

    def run(self) -> PassReport:
        return asyncio.run(self.pipeline.run_pass())

    def outbox(self) -> dict[str, tuple[str, str | None]]:
        """recipient -> (status, last reply)"""
        return {d.recipient: (d.status, d.last_reply) for d in self.store.deliveries()}


def serve(*, smtputf8: bool) -> Iterator[SmtpServer]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, sink, controller)
    finally:
        controller.stop()


@pytest.fixture
def utf8_smtp_server() -> Iterator[SmtpServer]:
    """A server that offers SMTPUTF8 (RFC 6531)."""
    yield from serve(smtputf8=True)


@pytest.fixture
def ascii_smtp_server() -> Iterator[SmtpServer]:
    """A server that does not offer SMTPUTF8."""
    yield from serve(smtputf8=False)


# --- validation at load -------------------------------------------------------------


def test_an_idn_domain_is_kept_in_idna_form_and_the_local_part_as_written(
    tmp_path: Path,
) -> None:
    text = config_text(tmp_path, ["User@bücher.example", "Ülrich@Example.org"])
    config = parse_config(text, source="t.toml")
    assert [s.email for s in config.subscribers] == [
        "User@xn--bcher-kva.example",
        "Ülrich@example.org",
    ]


def test_the_sender_domain_is_kept_in_idna_form() -> None:
    config = parse_config('[smtp]\nsender = "Digest <digest@bücher.example>"\n', source="t.toml")
    assert config.smtp.sender == "Digest <digest@xn--bcher-kva.example>"
    assert config.smtp.sender_address == "digest@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "email", ["ann@example", "ann@@example.org", "ann smith@example.org", "ann@-x.example"]
)
def test_check_config_refuses_an_invalid_address_naming_its_key(tmp_path: Path, email: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, ["ada@example.org", email]), encoding="utf-8")
    result = mailer("--config", str(path), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert f"subscribers[1] ({email}).email: {email!r} is not a valid email address" in (
        result.stderr
    )


def test_check_config_refuses_a_sender_without_a_valid_address_naming_the_key(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"smtp\.sender: 'digest@localhost' is not a valid"):
        parse_config('[smtp]\nsender = "Digest <digest@localhost>"\n', source="t.toml")


def test_two_spellings_of_one_address_are_one_subscriber_too_many(tmp_path: Path) -> None:
    text = config_text(tmp_path, ["ann@ÉCOLE.example", "ANN@école.example"])
    with pytest.raises(ConfigError, match="subscriber emails must be unique"):
        parse_config(text, source="t.toml")


def test_subs_add_refuses_an_invalid_address_and_normalises_a_valid_one(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, ["ada@example.org"]), encoding="utf-8")
    before = path.read_bytes()
    bad = mailer("--config", str(path), "subs", "add", "bob@example", cwd=tmp_path)
    assert bad.returncode == 2
    assert "subscribers[1] (bob@example).email" in bad.stderr
    assert path.read_bytes() == before
    good = mailer("--config", str(path), "subs", "add", "Bob@bücher.example", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    config = parse_config(path.read_text(encoding="utf-8"), source="t.toml")
    assert config.subscribers[1].email == "Bob@xn--bcher-kva.example"


def test_subs_set_email_refuses_an_invalid_address(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, ["ada@example.org"]), encoding="utf-8")
    before = path.read_bytes()
    result = mailer(
        "--config", str(path), "subs", "set", "ada@example.org", "email", "ada@", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "subscribers[0] (ada@).email" in result.stderr
    assert path.read_bytes() == before


# --- delivery -----------------------------------------------------------------------


def test_a_non_ascii_local_part_reaches_a_maildir_with_a_utf8_to_header(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["Ülrich@example.org", "ada@example.org"])
    report = rig.run()
    assert (report.errors, report.sent, report.failed) == ([], 2, 0)
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    tos = sorted(bytes(m).split(b"\nTo: ", 1)[1].split(b"\n", 1)[0] for m in box)
    assert tos == [b"ada@example.org", "Ülrich@example.org".encode()]


def test_an_idn_domain_is_sent_over_smtp_in_its_ascii_form(
    tmp_path: Path, ascii_smtp_server: SmtpServer
) -> None:
    rig = Rig(
        tmp_path,
        ["user@bücher.example", "ada@example.org"],
        transport="smtp",
        port=ascii_smtp_server.port,
    )
    report = rig.run()
    assert (report.errors, report.sent, report.failed) == ([], 2, 0)
    got = {m.recipients[0]: m.message for m in ascii_smtp_server.messages}
    assert set(got) == {"user@xn--bcher-kva.example", "ada@example.org"}
    assert got["user@xn--bcher-kva.example"]["To"] == "user@xn--bcher-kva.example"


def test_a_non_ascii_local_part_is_sent_over_smtputf8_when_the_server_offers_it(
    tmp_path: Path, utf8_smtp_server: SmtpServer
) -> None:
    rig = Rig(
        tmp_path,
        ["Ülrich@example.org", "ada@example.org"],
        transport="smtp",
        port=utf8_smtp_server.port,
    )
    report = rig.run()
    assert (report.errors, report.sent, report.failed) == ([], 2, 0)
    got = {m.recipients[0]: m.data for m in utf8_smtp_server.messages}
    assert set(got) == {"Ülrich@example.org", "ada@example.org"}
    assert "\nTo: Ülrich@example.org\n".encode() in got["Ülrich@example.org"].replace(b"\r", b"")


def test_without_smtputf8_only_the_non_ascii_recipient_fails_and_the_others_are_sent(
    tmp_path: Path, ascii_smtp_server: SmtpServer
) -> None:
    rig = Rig(
        tmp_path,
        ["ada@example.org", "Ülrich@example.org", "grace@example.org"],
        transport="smtp",
        port=ascii_smtp_server.port,
    )
    report = rig.run()
    assert (report.errors, report.sent, report.failed) == ([], 2, 1)
    assert {m.recipients[0] for m in ascii_smtp_server.messages} == {
        "ada@example.org",
        "grace@example.org",
    }
    status, reply = rig.outbox()["Ülrich@example.org"]
    assert status == "failed"
    assert reply is not None
    assert "does not offer SMTPUTF8" in reply


def test_a_digest_that_cannot_be_built_fails_alone_and_the_others_go_out_in_the_same_pass(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """An address no message can carry (one stored before addresses were
    validated) is failed in the outbox with why; the rest are composed."""
    rig = Rig(
        tmp_path,
        ["ada@example.org", "bob@example.org", "grace@example.org"],
        transport="smtp",
        port=smtp_server.port,
    )
    report = PassReport()
    rig.pipeline.sync()
    rig.pipeline.ingest(report)
    rig.pipeline.match(report)
    orders = [digest_order(rig.config, *due) for due in due_subscribers(rig.store, rig.config, NOW)]
    broken = replace(orders[1].recipient, email="bob smith@example.org")
    orders[1] = replace(orders[1], recipient=broken)
    sender = rig.config.smtp
    queued = ComposeChunk(tuple(orders), NOW, sender.sender, sender.sender_address).run(
        rig.store, rig.pipeline.renderer
    )
    assert [q.failed is None for q in queued] == [True, False, True]
    status, reply = rig.outbox()["bob smith@example.org"]
    assert status == "failed"
    assert reply is not None
    assert "not composed" in reply
    assert "'bob smith@example.org' is not a valid email address" in reply
    asyncio.run(rig.pipeline.deliver(report))
    assert report.sent == 2
    assert {m.recipients[0] for m in smtp_server.messages} == {
        "ada@example.org",
        "grace@example.org",
    }
    assert rig.store.retry_deliveries(None, NOW) == 0  # nothing to send again


# --- unsubscribing whatever the case ------------------------------------------------


def synced(tmp_path: Path, database_url: str, email: str) -> tuple[Path, Store]:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, [email], database_url=database_url), encoding="utf-8")
    config = parse_config(path.read_text(encoding="utf-8"), source=str(path))
    store = Store(database_url)
    Pipeline(config, store, lambda: make_transport(config), clock=lambda: NOW).sync()
    return path, store


def test_the_one_click_post_unsubscribes_an_address_with_non_ascii_capitals(
    tmp_path: Path, database_url: str
) -> None:
    _, store = synced(tmp_path, database_url, "ann@ÉCOLE.example")
    pages: list[tuple[int, str]] = []

    async def main() -> None:
        server = WebServer(make_app(store, secret=lambda: SECRET, clock=lambda: NOW), "127.0.0.1:0")
        await server.start()
        url = (
            f"http://127.0.0.1:{server.port}/unsubscribe/{make_token('ann@ÉCOLE.example', SECRET)}"
        )
        try:
            async with aiohttp.ClientSession() as session, session.post(url) as response:
                pages.append((response.status, await response.text()))
        finally:
            await server.stop()

    try:
        asyncio.run(main())
        assert pages[0][0] == 200
        assert "You are unsubscribed" in pages[0][1]
        assert store.unsubscribed_at("ann@école.example") == NOW
        assert store.active_subscriber_ids() == {}
    finally:
        store.close()


def test_the_one_click_post_for_an_unknown_address_does_not_say_unsubscribed(
    tmp_path: Path, database_url: str
) -> None:
    _, store = synced(tmp_path, database_url, "ann@example.org")
    pages: list[str] = []

    async def main() -> None:
        server = WebServer(make_app(store, secret=lambda: SECRET, clock=lambda: NOW), "127.0.0.1:0")
        await server.start()
        url = f"http://127.0.0.1:{server.port}/unsubscribe/{make_token('bob@example.org', SECRET)}"
        try:
            async with aiohttp.ClientSession() as session, session.post(url) as response:
                pages.append(await response.text())
        finally:
            await server.stop()

    try:
        asyncio.run(main())
        assert "unsubscribed" not in pages[0]
        assert "no subscriber with this address" in pages[0]
    finally:
        store.close()


def test_the_unsubscribe_command_finds_an_address_with_non_ascii_capitals(
    tmp_path: Path, database_url: str
) -> None:
    path, store = synced(tmp_path, database_url, "ann@ÉCOLE.example")
    try:
        result = mailer("--config", str(path), "unsubscribe", "ann@ÉCOLE.example", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert store.unsubscribed_at("ann@école.example") is not None
        assert store.active_subscriber_ids() == {}
    finally:
        store.close()


def test_a_non_ascii_local_part_is_found_whatever_its_case(
    tmp_path: Path, database_url: str
) -> None:
    _, store = synced(tmp_path, database_url, "Ülrich@example.org")
    try:
        assert store.unsubscribe("üLRICH@EXAMPLE.ORG", NOW)
        assert store.unsubscribed_at("Ülrich@example.org") == NOW
    finally:
        store.close()
