"""The readers' pages in a real browser (headless Chromium through
Playwright), served by a real ``mailer run`` that mails through an aiosmtpd
server and keeps a real database: a reader signs up, confirms from the
mail, gets a digest, and tunes, pauses and stops it from the link in it.

Every page is checked at 375 and 1280 px, light and dark (no sideways
scrolling, text at WCAG AA contrast, every field labelled), with a
screenshot of each in test-artifacts/; MAILER_UPDATE_SCREENSHOTS=1 also
rewrites the two in docs/ that the README shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mailer.dumps import format_dump
from mailer.papers import Paper
from mailer.selfservice.links import confirm_url, manage_url
from mailer.store import Profile, Store
from tests.conftest import SmtpServer, free_port, running_smtp_server
from tests.process import Mailer
from tests.test_cli import copy_seeds, mailer
from tests.test_render_browser import ARTIFACTS, CONTRAST_JS, DOCS
from tests.test_render_browser import browser as browser  # the shared Chromium fixture
from tests.waiting import passes, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SECRET = "s3cret-for-browser-tests-0123456789"
WIDTHS = (375, 1280)
SCHEMES = ("light", "dark")
README_SHOTS = {
    "subscribe-preview": "selfservice-subscribe.png",
    "manage": "selfservice-manage.png",
}
TEXT = [
    "h1", "h2", "p", "label", "legend", "a", "button", "code", "li", "td", "th", "dt", "dd",
    "mark", "input", "textarea", "select", ".check-error", ".check-ok", ".field-error",
    ".notice", ".state", ".date", ".optional",
]  # fmt: skip
UNLABELLED_JS = """
() => Array.from(document.querySelectorAll("input, textarea, select"))
  .filter((el) => el.type !== "hidden" && el.offsetParent !== null)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
  .map((el) => el.name || el.id)
"""


@dataclass
class Service:
    """``mailer run`` with the pages on, its folder, and the mail it sent."""

    folder: Path
    config: Path
    base: str
    smtp: SmtpServer
    daemon: Mailer

    def store(self) -> Store:
        return Store(f"sqlite:///{self.folder / 'mailer.db'}")

    def mail(self, email: str, subject: str) -> list[EmailMessage]:
        return [
            m.message
            for m in self.smtp.messages
            if m.recipients == [email] and subject in str(m.message["Subject"])
        ]

    def wait_mail(self, email: str, subject: str) -> EmailMessage:
        wait_for(lambda: self.mail(email, subject), what=f"a mail {subject!r} to {email}")
        return self.mail(email, subject)[-1]

    def subscriber(self, email: str) -> dict[str, object]:
        """``mailer subs list --json``'s row for ``email``, as the operator sees it."""
        listed = mailer("--config", str(self.config), "subs", "list", "--json", cwd=self.folder)
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in json.loads(listed.stdout) if r["email"] == email]
        assert len(rows) == 1, listed.stdout
        row: dict[str, object] = rows[0]
        return row

    def drop(self, name: str, papers: list[Paper]) -> None:
        part = self.folder / "dumps" / (name + ".part")
        part.write_text(format_dump(date.today(), papers), encoding="utf-8")
        part.rename(self.folder / "dumps" / name)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("pages")
    (folder / "dumps").mkdir()
    copy_seeds(folder / "dumps")  # 290 papers in the last 30 days for the previews
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_smtp_server() as smtp:
        config = folder / "config.toml"
        config.write_text(
            f"""
[watch]
dir = "dumps"
interval_seconds = 1
settle_seconds = 0
[delivery]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {smtp.port}
security = "none"
[web]
listen = "127.0.0.1:{port}"
base_url = "{base}"
secret = "{SECRET}"
self_service = true
[[subscribers]]
email = "ada@example.org"
name = "Ada"
schedule = "weekly mon 07:30"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model"'
""",
            encoding="utf-8",
        )
        daemon = Mailer(config, "run")
        try:
            wait_for(lambda: passes(folder) >= 1, timeout=60, what="the daemon's first pass")
            yield Service(folder, config, base, smtp, daemon)
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.finish() == 0, daemon.log
        finally:
            daemon.kill()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id="Europe/Paris", locale="en-GB"
    )
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def looks_right(page: Page, name: str) -> None:
    """At each width and scheme: no sideways scrolling, text at AA contrast,
    every visible field labelled; a screenshot of each in test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    for scheme in SCHEMES:
        page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            scroll, inner = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
            assert scroll <= inner, f"{name}: sideways scrolling at {width}px: {scroll} > {inner}"
            low = [
                (sel, round(ratio, 2))
                for sel, ratio in page.evaluate(CONTRAST_JS, TEXT)
                if ratio < 4.5
            ]
            assert not low, f"{name}: below WCAG AA contrast in {scheme} at {width}px: {low}"
            assert page.evaluate(UNLABELLED_JS) == [], f"{name}: fields without a label"
            shot = ARTIFACTS / f"selfservice-{name}-{width}-{scheme}.png"
            page.screenshot(path=str(shot), full_page=True)
            readme = README_SHOTS.get(name)
            if readme and (width, scheme) == (1280, "light"):
                shutil.copyfile(shot, ARTIFACTS / readme)
                assert shot.stat().st_size < 400_000
                if os.environ.get("MAILER_UPDATE_SCREENSHOTS") == "1":
                    shutil.copyfile(shot, DOCS / readme)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 900})


def link_in(text: str, base: str, kind: str) -> str:
    found = re.search(rf"{re.escape(base)}/{kind}/[A-Za-z0-9_.=-]+", text)
    assert found is not None, text
    return found.group(0)


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


def test_a_reader_signs_up_confirms_gets_a_digest_and_manages_it(
    service: Service, page: Page
) -> None:
    reader = "reader@example.org"
    page.goto(service.base + "/subscribe")
    assert page.get_by_label("Time zone").input_value() == "Europe/Paris"  # from the browser
    looks_right(page, "subscribe")

    page.get_by_label("Email address").fill(reader)
    page.get_by_label("Your name").fill("Reader")
    page.get_by_label("Name (shown in your digest)").first.fill("Diffusion")
    query = page.get_by_label("Query").first
    query.press_sequentially('"diffusion model" AND')
    error = page.locator("#sub-0-check .check-error")
    error.wait_for()
    assert "at position 21" in error.inner_text()
    assert query.get_attribute("aria-invalid") == "true"
    assert page.locator("#sub-0-check pre.caret mark").count() == 1
    looks_right(page, "subscribe-error")

    query.fill('"diffusion model"')
    found = page.locator("#sub-0-check .check-ok")
    found.wait_for()
    matched = int(found.inner_text().split()[0])
    assert 0 < matched < 290
    assert "of 290 papers from the last 30 days match" in found.inner_text()
    assert page.locator("#sub-0-check .preview li").count() == min(matched, 5)
    assert page.locator("#sub-0-check .preview mark").count() >= 1
    assert query.get_attribute("aria-invalid") is None
    looks_right(page, "subscribe-preview")

    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Check your inbox").wait_for()
    looks_right(page, "sent")

    mail = service.wait_mail(reader, "Confirm your Paper Digest subscription")
    # Nothing but the confirmation goes to the address before its link is used.
    sent = [m.message["Message-ID"] for m in service.smtp.messages if m.recipients == [reader]]
    assert sent == [mail["Message-ID"]]
    link = link_in(part(mail, "plain"), service.base, "confirm")
    assert service.subscriber(reader)["status"] == "pending"
    page.goto(link)
    assert "Diffusion" in page.locator("ul.subs").inner_text()
    looks_right(page, "confirm")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("heading", name="You are subscribed").wait_for()
    looks_right(page, "confirmed")
    assert service.subscriber(reader)["status"] == "active"

    service.drop("new.txt", [Paper(
        "Consistency Distillation of a Diffusion Model for Browsers",
        "We distil a diffusion model so that pages render it.",
        authors=3, published=date.today(), upvotes=7,
    )])  # fmt: skip
    digest = service.wait_mail(reader, "new paper")
    assert "Consistency Distillation" in part(digest, "plain")
    manage = re.search(r'href="([^"]*/manage/[^"]+)"', part(digest, "html"))
    assert manage is not None
    page.goto(manage.group(1))
    page.get_by_role("heading", name="Your subscriptions").wait_for()
    table = page.locator("table")
    assert digest["Message-ID"].strip("<>") in table.inner_text()
    looks_right(page, "manage")

    edited = page.get_by_label("Query").first
    edited.fill('"diffusion model" OR "score matching"')
    page.locator("#sub-0-check .check-ok").wait_for()
    page.get_by_label("Once a day").check()
    page.get_by_label("At (daily and weekly)").fill("07:45")
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("Saved. Your changes apply from the next pass.").wait_for()
    looks_right(page, "manage-saved")
    row = service.subscriber(reader)
    assert row["schedule"] == "daily 07:45"
    assert row["timezone"] == "Europe/Paris"
    assert row["subscriptions"] == [
        {"name": "Diffusion", "query": '"diffusion model" OR "score matching"'}
    ]

    until = (datetime.now(UTC) + timedelta(days=7)).date()
    page.get_by_label("No digests until").fill(until.isoformat())
    page.get_by_role("button", name="Pause").click()
    page.get_by_text(f"no digests before {until.isoformat()}").first.wait_for()
    looks_right(page, "manage-paused")
    assert service.subscriber(reader)["paused_until"] == until.isoformat()
    page.get_by_role("button", name="Resume now").click()
    page.get_by_text("Resumed").wait_for()
    assert service.subscriber(reader)["paused_until"] is None

    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_text("You are unsubscribed: no more digests will be sent.").wait_for()
    looks_right(page, "manage-unsubscribed")
    assert service.subscriber(reader)["unsubscribed"] is True
    assert page.get_by_role("button", name="Resubscribe").is_visible()


def test_the_sign_up_works_by_keyboard_without_javascript(
    service: Service, browser: Browser
) -> None:
    context = browser.new_context(java_script_enabled=False, viewport={"width": 375, "height": 900})
    page = context.new_page()
    try:
        page.goto(service.base + "/subscribe")
        assert page.get_by_role("button", name="Add another subscription").is_hidden()
        page.locator("body").press("Tab")  # the skip link first
        typed = {
            "email": "keys@example.org",
            "name": "Keys",
            "sub-0-name": "Agents",
            "sub-0-query": "agents AND (",
        }
        reached: list[str] = []
        for _ in range(40):
            page.keyboard.press("Tab")
            focused = page.evaluate("document.activeElement.name || document.activeElement.id")
            reached.append(focused)
            if focused in typed:
                page.keyboard.type(typed[focused])
            if focused == "action":
                break
        assert [f for f in reached if f in typed] == list(typed)
        page.keyboard.press("Tab")  # from Subscribe to Check queries
        page.keyboard.press("Enter")
        page.get_by_text("Please fix this").wait_for()
        assert "at position 12" in page.locator("#sub-0-check").inner_text()
        assert page.get_by_label("Query").first.input_value() == "agents AND ("
        page.get_by_label("Query").first.fill("agents")
        page.get_by_role("button", name="Check queries").click()
        assert "papers from the last 30 days match" in page.locator("#sub-0-check").inner_text()
        page.get_by_label("Email address").press("Enter")  # the form's first button: Subscribe
        page.get_by_role("heading", name="Check your inbox").wait_for()
    finally:
        context.close()
    service.wait_mail("keys@example.org", "Confirm your Paper Digest subscription")


HOSTILE = '<img src=x onerror="document.title=1"><b>bold</b> & <script>x()</script>'


def test_markup_typed_into_any_field_is_shown_literally(service: Service, page: Page) -> None:
    store = service.store()
    try:
        made = store.web.sign_up(
            Profile(
                "markup@example.org",
                HOSTILE,
                "instant",
                "UTC",
                None,
                ((HOSTILE, 'title:"<b>bold</b>" OR agents'), ("Plain", "agents")),
            ),
            datetime.now(UTC),
            "nonce-markup",
        )
        confirm = confirm_url(
            service.base, made.subscriber_id, "nonce-markup", datetime.now(UTC), SECRET
        )
        page.goto(confirm)
        assert HOSTILE in page.locator("ul.subs").inner_text()
        page.get_by_role("button", name="Confirm").click()
        page.get_by_role("heading", name="You are subscribed").wait_for()
    finally:
        store.close()
    page.goto(manage_url(service.base, "markup@example.org", SECRET))
    assert page.get_by_label("Your name").input_value() == HOSTILE
    assert page.locator("#sub-0-name").input_value() == HOSTILE
    assert page.locator("#sub-0-query").input_value() == 'title:"<b>bold</b>" OR agents'
    assert page.locator("main b, main img, main script").count() == 0
    assert page.title() != "1"
    page.goto(service.base + "/subscribe")
    page.get_by_label("Your name").fill(HOSTILE)
    page.get_by_label("Query").first.fill(HOSTILE)
    page.locator("#sub-0-check .check-error, #sub-0-check .check-ok").first.wait_for()
    page.get_by_role("button", name="Check queries").click()
    assert page.get_by_label("Your name").input_value() == HOSTILE
    assert page.locator("main b, main img, main script").count() == 0
    assert page.get_by_label("Query").first.input_value() == HOSTILE


def test_a_config_subscriber_sees_a_read_only_page_and_a_bad_link_a_plain_one(
    service: Service, page: Page
) -> None:
    page.goto(manage_url(service.base, "ada@example.org", SECRET))
    assert "weekly on Monday at 07:30 (UTC)" in page.locator("dl.facts").inner_text()
    assert page.get_by_role("button", name="Save changes").count() == 0
    assert page.get_by_role("button", name="Unsubscribe").is_visible()
    looks_right(page, "manage-config")
    response = page.goto(service.base + "/manage/not-a-token")
    assert response is not None
    assert response.status == 404
    looks_right(page, "not-found")
    late = replace(Profile("late@example.org", "", "instant", "UTC", None, (("A", "a"),)))
    store = service.store()
    try:
        made = store.web.sign_up(late, datetime.now(UTC), "nonce-late")
    finally:
        store.close()
    expired = confirm_url(
        service.base,
        made.subscriber_id,
        "nonce-late",
        datetime.now(UTC) - timedelta(days=3),
        SECRET,
    )
    response = page.goto(expired)
    assert response is not None
    assert response.status == 410
    assert page.get_by_role("link", name="Sign up again").is_visible()
