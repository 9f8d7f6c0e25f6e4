"""Unsubscribing end to end: the headers and links in real digests, the
store honouring the choice across reloads and restarts, fault test 10 (an
unsubscribe between compose and send), and the real daemon serving POSTs."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.config import Config, DatabaseConfig
from mailer.delivery import make_transport
from mailer.dumps import format_dump
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.pipeline.send import SEND_CHUNK
from mailer.store import Outgoing, Store
from mailer.tokens import read_token
from mailer.web import WebServer, make_app
from tests.conftest import SmtpServer, free_port
from tests.test_cli import ENV, copy_seeds, mailer, write_config
from tests.test_pipeline import NEW, TODAY, Harness, config_for
from tests.waiting import wait_for, wait_for_fresh_passes

SECRET = "s3cret-for-tests-only-0123456789"
WEB = f'[web]\nbase_url = "https://digest.example.org"\nsecret = "{SECRET}"\n'
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BOTH = Paper(
    "Diffusion Model Agents",
    "Agents that plan with a diffusion model.",
    authors=2,
    published=TODAY,
    upvotes=3,
)


class Setup(Harness):
    """The pipeline Harness on any database, with [web] configured."""

    def __init__(self, tmp_path: Path, port: int, database_url: str, extra: str = WEB) -> None:
        self.tmp_path = tmp_path
        self.dumps = tmp_path / "dumps"
        self.dumps.mkdir(exist_ok=True)
        self.config = with_database(config_for(tmp_path, port, extra=extra), database_url)
        self.restart()

    def restart(self) -> None:
        """A new process: a fresh store connection and pipeline on the same database."""
        self.store = Store(self.config.database.url)
        self.pipeline = Pipeline(
            self.config,
            self.store,
            lambda: make_transport(self.pipeline.config),
            clock=lambda: NOW,
        )
        self.pipeline.sync()  # as the daemon does when it starts

    def compose(self) -> PassReport:
        """The stages of a pass up to the outbox, as ``run_pass`` runs them."""
        report = PassReport()
        self.pipeline.sync()
        self.pipeline.ingest(report)
        self.pipeline.match(report)
        self.pipeline.compose(report)
        return report

    def deliver(self) -> PassReport:
        """The sending stage of a pass, after the configuration is synced."""
        report = PassReport()
        self.pipeline.sync()
        asyncio.run(self.pipeline.deliver(report))
        return report

    def post(self, url: str) -> int:
        """POST ``url`` (a link from a digest) to the endpoint, as a mail client would."""

        async def main() -> int:
            app = make_app(self.store, secret=lambda: SECRET, clock=lambda: NOW)
            server = WebServer(app, "127.0.0.1:0")
            await server.start()
            local = url.replace("https://digest.example.org", f"http://127.0.0.1:{server.port}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(local, data={"List-Unsubscribe": "One-Click"}) as response,
                ):
                    return response.status
            finally:
                await server.stop()

        return asyncio.run(main())


def with_database(config: Config, url: str) -> Config:
    return config.model_copy(update={"database": DatabaseConfig(url=url)})


@pytest.fixture
def setup(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Iterator[Setup]:
    s = Setup(tmp_path, smtp_server.port, database_url)
    yield s
    s.store.close()


def received(smtp_server: SmtpServer, email: str) -> list[EmailMessage]:
    return [m.message for m in smtp_server.messages if m.recipients == [email]]


def links(message: EmailMessage) -> list[str]:
    return re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content


# --- the message -------------------------------------------------------------------


def test_digest_offers_one_click_https_and_mailto_when_base_url_is_set(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    setup.run()
    ada = received(smtp_server, "ada@example.org")[0]
    https, mailto = links(ada)
    assert https.startswith("https://digest.example.org/unsubscribe/")
    assert read_token(https.rsplit("/", 1)[1], SECRET) == "ada@example.org"
    assert mailto.startswith("mailto:digest@example.org?subject=unsubscribe")
    assert ada["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_digest_shows_the_unsubscribe_link_in_both_parts(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    setup.run()
    ada = received(smtp_server, "ada@example.org")[0]
    https = links(ada)[0]
    assert https in body(ada, "plain")
    assert f'href="{https}"' in body(ada, "html")


def test_each_subscriber_gets_a_link_for_their_own_address(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    setup.run()
    grace = received(smtp_server, "grace@example.org")[0]
    assert read_token(links(grace)[0].rsplit("/", 1)[1], SECRET) == "grace@example.org"


def test_without_base_url_only_mailto_and_no_one_click(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    h = Harness(tmp_path, smtp_server.port)
    try:
        h.drop_seeds()
        h.run()
    finally:
        h.store.close()
    ada = received(smtp_server, "ada@example.org")[0]
    assert [u.split(":")[0] for u in links(ada)] == ["mailto"]
    assert ada["List-Unsubscribe-Post"] is None


# --- the choice sticks -------------------------------------------------------------------


def test_link_from_a_digest_unsubscribes_and_no_further_digest_arrives(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    setup.run()
    assert setup.post(links(received(smtp_server, "ada@example.org")[0])[0]) == 200
    setup.drop("both.txt", format_dump(TODAY, [BOTH]))
    report = setup.run()
    assert report.sent == 1
    assert len(received(smtp_server, "ada@example.org")) == 1
    assert len(received(smtp_server, "grace@example.org")) == 2


def test_unsubscribe_survives_a_config_reload(setup: Setup, smtp_server: SmtpServer) -> None:
    setup.store.unsubscribe("ada@example.org", NOW)
    setup.pipeline.configure(setup.config)
    setup.drop("both.txt", format_dump(TODAY, [BOTH]))
    setup.run()
    assert received(smtp_server, "ada@example.org") == []
    assert len(received(smtp_server, "grace@example.org")) == 1


def test_unsubscribe_survives_a_restart(setup: Setup, smtp_server: SmtpServer) -> None:
    setup.store.unsubscribe("ADA@example.org", NOW)
    setup.store.close()
    setup.restart()
    setup.drop("both.txt", format_dump(TODAY, [BOTH]))
    setup.run()
    assert received(smtp_server, "ada@example.org") == []
    assert setup.store.unsubscribed_at("ada@example.org") == NOW


def test_resubscribed_address_gets_papers_that_arrive_afterwards(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.store.unsubscribe("ada@example.org", NOW)
    setup.drop("while-away.txt", format_dump(TODAY, [NEW]))
    setup.run()
    assert setup.store.resubscribe("ada@example.org")
    setup.drop("both.txt", format_dump(TODAY, [BOTH]))
    setup.run()
    [ada] = received(smtp_server, "ada@example.org")
    assert "Agents" in body(ada, "plain")  # BOTH; its title is highlighted
    assert "Distillation" not in body(ada, "plain")  # NEW, which came while away


def resubscribed_in_config(setup: Setup, email: str, when: datetime) -> None:
    subscribers = [
        s.model_copy(update={"resubscribed": when}) if s.email == email else s
        for s in setup.config.subscribers
    ]
    setup.config = setup.config.model_copy(update={"subscribers": subscribers})
    setup.pipeline.configure(setup.config)
    setup.pipeline.sync()  # what the next pass does first


def test_resubscribed_in_config_after_the_unsubscribe_lifts_it(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.store.unsubscribe("ada@example.org", NOW - timedelta(days=1))
    resubscribed_in_config(setup, "ada@example.org", NOW)
    assert setup.store.unsubscribed_at("ada@example.org") is None
    setup.drop("both.txt", format_dump(TODAY, [BOTH]))
    setup.run()
    assert len(received(smtp_server, "ada@example.org")) == 1


def test_unsubscribe_after_the_configured_resubscribe_survives_reloads(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    resubscribed_in_config(setup, "ada@example.org", NOW - timedelta(days=1))
    setup.store.unsubscribe("ada@example.org", NOW)
    setup.pipeline.configure(setup.config)
    setup.store.close()
    setup.restart()
    setup.drop("both.txt", format_dump(TODAY, [BOTH]))
    setup.run()
    assert setup.store.unsubscribed_at("ada@example.org") == NOW
    assert received(smtp_server, "ada@example.org") == []


# --- fault test 10 ------------------------------------------------------------------------


def test_fault_10_unsubscribe_between_compose_and_send_cancels_the_queued_digest(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    assert setup.compose().digests == 2
    queued = {d.recipient: d for d in setup.store.deliveries()}
    url = f"https://digest.example.org/unsubscribe/{_token_in(queued['ada@example.org'].message)}"
    assert setup.post(url) == 200
    report = setup.deliver()
    assert [m.recipients for m in smtp_server.messages] == [["grace@example.org"]]
    assert report.sent == 1
    status = {d.recipient: d.status for d in setup.store.deliveries()}
    assert status == {"ada@example.org": "cancelled", "grace@example.org": "sent"}


def test_unsubscribe_while_a_long_batch_is_sending_cancels_the_digests_not_yet_sent(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    """Rows are checked a chunk at a time, so an unsubscribe that arrives
    mid-batch stops that recipient's digests from the next chunk on."""
    ids = setup.store.active_subscriber_ids()
    queued = [("grace@example.org", n) for n in range(4 * SEND_CHUNK * 4)]
    queued.append(("ada@example.org", 0))
    setup.store.enqueue_many(
        [
            Outgoing(ids[email], email, f"<{email}.{n}@example.org>", "s", b"Subject: s\n\nx\n", [])
            for email, n in queued
        ],
        NOW,
    )
    original = smtp_server.sink.handle_DATA

    async def unsubscribe_ada_first(server: SMTP, session: Session, envelope: Envelope) -> str:
        setup.store.unsubscribe("ada@example.org", NOW)
        return await original(server, session, envelope)

    smtp_server.sink.handle_DATA = unsubscribe_ada_first  # type: ignore[method-assign]
    report = setup.deliver()
    assert report.sent == len(queued) - 1
    assert received(smtp_server, "ada@example.org") == []
    assert {d.status for d in setup.store.deliveries() if d.recipient == "ada@example.org"} == {
        "cancelled"
    }


def test_removing_a_subscriber_between_compose_and_send_cancels_their_queued_digest(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    assert setup.compose().digests == 2
    kept = [s for s in setup.config.subscribers if s.email != "ada@example.org"]
    setup.config = setup.config.model_copy(update={"subscribers": kept})
    setup.pipeline.configure(setup.config)
    assert setup.deliver().sent == 1
    assert [m.recipients for m in smtp_server.messages] == [["grace@example.org"]]
    ada = next(d for d in setup.store.deliveries() if d.recipient == "ada@example.org")
    assert ada.status == "cancelled"
    assert "removed from the config" in (ada.last_reply or "")


def test_cancelled_digest_stays_unsent_after_resubscribing(
    setup: Setup, smtp_server: SmtpServer
) -> None:
    setup.drop_seeds()
    setup.compose()
    setup.store.unsubscribe("ada@example.org", NOW)
    setup.deliver()
    setup.store.resubscribe("ada@example.org")
    setup.run()
    assert received(smtp_server, "ada@example.org") == []


def _token_in(message: bytes) -> str:
    match = re.search(rb"/unsubscribe/([A-Za-z0-9_\-.]+)>", message)
    assert match is not None
    return match.group(1).decode()


# --- the commands and the real daemon --------------------------------------------------------


def test_cli_unsubscribe_and_resubscribe(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer("--config", str(config), "unsubscribe", "ada@example.org", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    try:
        assert store.unsubscribed_at("ada@example.org") is not None
        result = mailer("--config", str(config), "resubscribe", "ada@example.org", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert store.unsubscribed_at("ada@example.org") is None
    finally:
        store.close()


def test_cli_resubscribe_unknown_address_exits_2_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer("--config", str(config), "resubscribe", "nobody@example.org", cwd=tmp_path)
    assert result.returncode == 2
    assert "nobody@example.org" in result.stderr


def test_check_config_explains_the_endpoint_without_showing_the_secret(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with config.open("a", encoding="utf-8") as f:
        f.write(WEB + 'listen = "127.0.0.1:8080"\n')
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:8080" in result.stdout
    assert "https://digest.example.org" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def http(method: str, url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


@pytest.mark.slow
def test_daemon_serves_one_click_unsubscribe_and_stops_on_sigterm(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp_server.port, interval=0.3)
    with config.open("a", encoding="utf-8") as f:
        f.write(f'[web]\nlisten = "127.0.0.1:{port}"\nbase_url = "http://127.0.0.1:{port}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "run"],
        cwd=tmp_path,
        env={**ENV, "MAILER_WEB__SECRET": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http("GET", f"{base}/healthz") == (200, "ok"), what="the endpoint")
        copy_seeds(tmp_path / "dumps")
        wait_for(lambda: len(smtp_server.messages) >= 2, what="two digests")
        url = links(received(smtp_server, "ada@example.org")[0])[0]
        assert url.startswith(f"{base}/unsubscribe/")
        status, page = http("GET", url)
        assert status == 200
        assert "<form" in page
        assert http("POST", url)[0] == 200
        assert http("POST", url)[0] == 200
        (tmp_path / "dumps" / "both.txt").write_text(format_dump(TODAY, [BOTH]), "utf-8")
        wait_for(lambda: len(smtp_server.messages) >= 3, what="a digest for grace")
        wait_for_fresh_passes(tmp_path, 2)
        assert len(received(smtp_server, "ada@example.org")) == 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "unsubscribed subscriber=ada@example.org" in stderr
    assert SECRET not in stderr
    assert http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 0
