"""The readers' own pages (mailer.selfservice): their links, forms and
checks; web subscribers in the store and in every pass; and the pages
served on a loopback port over a real database, attacked as a hostile
client would (forged, expired and replayed links, missing CSRF fields,
floods of sign-ups, probing for addresses, markup in every field)."""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.dumps import format_dump
from mailer.errors import ConfigError
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.selfservice import admin
from mailer.selfservice.app import MAX_FORM_BYTES, SelfService
from mailer.selfservice.forms import read_form
from mailer.selfservice.limits import HourlyLimit
from mailer.selfservice.links import (
    confirm_token,
    confirm_url,
    csrf_ok,
    csrf_token,
    manage_token,
    manage_url,
    read_confirm_token,
    read_manage_token,
)
from mailer.selfservice.mails import notice
from mailer.selfservice.pages import Pages
from mailer.selfservice.preview import check_query, marked
from mailer.selfservice.profile import check_profile
from mailer.store import DeliveryKind, Outgoing, Profile, Store
from mailer.tokens import make_token
from mailer.web import WebServer, make_app
from tests.conftest import SmtpServer, free_port
from tests.process import Mailer
from tests.test_cli import mailer
from tests.test_pipeline import config_for
from tests.waiting import passes, wait_for

SECRET = "s3cret-for-tests-only-0123456789"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BASE = "http://127.0.0.1:8080"
DAY = date(2026, 11, 20)
PAGES = f"""
[web]
listen = "127.0.0.1:0"
base_url = "{BASE}"
secret = "{SECRET}"
self_service = true
"""
PAPERS = [
    Paper(
        "Guided Diffusion Model Distillation",
        "A diffusion model in four steps.",
        authors=2,
        published=DAY,
    ),
    Paper(
        "Planning Agents with Tools", "Language model agents that plan.", authors=2, published=DAY
    ),
    Paper(
        "Score Matching Revisited", "Denoising score matching for images.", authors=2, published=DAY
    ),
]
BOB = Profile(
    "bob@example.org", "Bob", "daily 08:00", "Europe/London", None, (("Agents", "agents"),)
)


class Clock:
    """The time the pages see; a test moves it."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.monotonic = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> float:
        return self.monotonic

    def advance(self, delta: timedelta) -> None:
        self.now += delta
        self.monotonic += delta.total_seconds()


def config_with(extra: str = PAGES, **web: object) -> Config:
    config = parse_config(
        extra
        + """
[[subscribers]]
email = "ada@example.org"
name = "Ada"
schedule = "weekly mon 07:30"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model"'
""",
        source="test.toml",
    )
    return config.model_copy(update={"web": config.web.model_copy(update=web)})


def store_with_papers(url: str, config: Config) -> Store:
    store = Store(url)
    store.sync_subscribers(
        [
            (s.email, s.name, [(q.name, q.query) for q in s.subscriptions])
            for s in config.subscribers
        ],
        NOW,
    )
    store.ingest(
        path="d.txt", sha256="a" * 64, size=1, page_date=None, papers=PAPERS, warnings=0, now=NOW
    )
    return store


def sign_up_confirmed(store: Store, profile: Profile = BOB) -> int:
    made = store.web.sign_up(profile, NOW, "nonce-1")
    assert store.web.confirm(made.subscriber_id, "nonce-1", NOW) == "confirmed"
    return made.subscriber_id


# --- links, forms, checks (pure) --------------------------------------------------------


def test_a_manage_token_names_the_address_key_and_only_for_managing() -> None:
    token = manage_token("Bob@Example.org", SECRET)
    assert read_manage_token(token, SECRET) == "bob@example.org"
    assert read_manage_token(token, "another-secret-0123456789") is None
    assert read_manage_token(make_token("bob@example.org", SECRET), SECRET) is None
    assert manage_url(BASE + "/", "bob@example.org", SECRET) == f"{BASE}/manage/{token}"


def test_a_confirmation_token_carries_its_sign_up_and_expires_after_48_hours() -> None:
    url = confirm_url(BASE, 7, "n0nce", NOW, SECRET)
    token = url.rsplit("/", 1)[1]
    found = read_confirm_token(token, SECRET, NOW + timedelta(hours=47, minutes=59))
    assert found is not None
    assert (found.subscriber_id, found.nonce, found.expired) == (7, "n0nce", False)
    late = read_confirm_token(token, SECRET, NOW + timedelta(hours=48))
    assert late is not None
    assert late.expired
    assert read_confirm_token(token, "another-secret-0123456789", NOW) is None
    assert read_confirm_token(manage_token("bob@example.org", SECRET), SECRET, NOW) is None


def test_a_confirmation_token_with_a_later_expiry_written_in_is_refused() -> None:
    token = confirm_token(7, "n0nce", NOW, SECRET)
    payload, _, mac = token.partition(".")
    forged = confirm_token(7, "n0nce", NOW + timedelta(days=9), SECRET).partition(".")[0]
    assert read_confirm_token(f"{forged}.{mac}", SECRET, NOW) is None
    assert read_confirm_token(f"{payload}.{mac}", SECRET, NOW) is not None


def test_a_csrf_field_only_goes_with_its_own_cookie() -> None:
    field = csrf_token("cookie-aaaaaaaaaaaaaaaa", SECRET)
    assert csrf_ok("cookie-aaaaaaaaaaaaaaaa", field, SECRET)
    assert not csrf_ok("cookie-bbbbbbbbbbbbbbbb", field, SECRET)
    assert not csrf_ok(None, field, SECRET)
    assert not csrf_ok("cookie-aaaaaaaaaaaaaaaa", None, SECRET)


def test_profile_errors_name_their_field_with_the_rules_of_check_config() -> None:
    bad = Profile("bob@example", "x\x1b", "hourly", "Mars/Olympus", 0, (("A", "agents AND"),))
    _, errors = check_profile(bad)
    assert set(errors) == {
        "email",
        "name",
        "schedule",
        "timezone",
        "max_papers",
        "subscriptions.0.query",
    }
    assert "at position 10" in errors["subscriptions.0.query"]
    assert "'instant', 'daily HH:MM' or 'weekly DAY HH:MM'" in errors["schedule"]


def test_a_profile_needs_a_subscription_with_a_unique_name() -> None:
    assert "subscriptions" in check_profile(replace(BOB, subscriptions=()))[1]
    twice = replace(BOB, subscriptions=(("A", "x"), ("A", "y")))
    assert "repeated: A" in check_profile(twice)[1]["subscriptions"]


def test_a_valid_profile_comes_back_normalised() -> None:
    spaced = replace(BOB, email="bob@BÜCHER.example", schedule="daily   08:00")
    profile, errors = check_profile(spaced)
    assert errors == {}
    assert (profile.email, profile.schedule) == ("bob@xn--bcher-kva.example", "daily 08:00")


def test_the_form_spells_the_schedule_as_config_toml_does_and_names_unnamed_queries() -> None:
    form = read_form(
        {
            "email": "bob@example.org",
            "schedule": "weekly",
            "day": "fri",
            "time": "18:45:00",
            "timezone": "Asia/Tokyo",
            "max_papers": "12",
            "sub-0-name": "",
            "sub-0-query": "agents",
            "sub-3-name": "Gone",
            "sub-3-query": "x",
            "sub-3-remove": "1",
            "sub-5-name": "",
            "sub-5-query": " ",
        }
    )
    assert form.checked() == Profile(
        "bob@example.org", "", "weekly fri 18:45", "Asia/Tokyo", 12, (("agents", "agents"),)
    )


def test_form_errors_land_on_the_row_they_belong_to() -> None:
    form = read_form(
        {
            "email": "bob@example.org",
            "sub-0-name": "Ok",
            "sub-0-query": "agents",
            "sub-4-name": "Bad",
            "sub-4-query": "(agents",
        }
    )
    assert form.checked() is None
    assert form.rows[0].errors == {}
    assert "position" in form.rows[1].errors["query"]


def test_a_check_shows_the_parsers_error_at_its_position() -> None:
    found = check_query("agents AND", [])
    assert not found.ok
    assert found.position == 10
    assert "at position 10" in (found.error or "")
    assert found.around() == ("agents AND", " ", "")


def test_a_check_counts_matches_and_marks_the_terms_in_the_newest_titles() -> None:
    found = check_query('diffusion OR "score matching"', PAPERS)
    assert (found.matched, found.of) == (2, 3)
    assert [p.title[0] for p in found.papers] == [("Score Matching", True), ("Guided ", False)]


def test_marked_cuts_text_at_the_marks() -> None:
    assert marked("a diffusion model", [(2, 11)]) == (("a ", False), ("diffusion", True),
                                                      (" model", False))  # fmt: skip


def test_an_hourly_limit_forgets_uses_an_hour_old() -> None:
    clock = Clock()
    limit = HourlyLimit(lambda: 2, clock.tick)
    assert [limit.allow("a"), limit.allow("a"), limit.allow("a"), limit.allow("b")] == [
        True,
        True,
        False,
        True,
    ]
    clock.advance(timedelta(minutes=59))
    assert not limit.allow("a")
    clock.advance(timedelta(minutes=1))
    assert limit.allow("a")


def test_a_notice_is_plain_text_holding_its_link_whole_and_nothing_typed() -> None:
    link = confirm_url(BASE, 7, "n0nce", NOW, SECRET)
    made = notice(
        Pages(),
        "confirm",
        subscriber_id=7,
        to="bob@example.org",
        link=link,
        now=NOW,
        sender="Paper Digest <digest@example.org>",
        sender_address="digest@example.org",
    )
    assert made.kind == DeliveryKind.NOTICE
    message = message_from_bytes(made.message, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "text/plain"
    assert f"\n{link}\n" in made.message.decode()
    assert "48 hours" in message.get_content()


# --- web subscribers in the store -----------------------------------------------------------


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = store_with_papers(database_url, config_with())
    yield s
    s.close()


def test_a_sign_up_waits_inactive_until_its_link_is_used(store: Store) -> None:
    made = store.web.sign_up(BOB, NOW, "nonce-1")
    assert made.kind == "confirm"
    assert "bob@example.org" not in store.active_subscriber_ids()
    assert store.web.roster() == []
    assert store.web.confirm(made.subscriber_id, "wrong", NOW) == "unknown"
    later = NOW + timedelta(hours=1)
    assert store.web.confirm(made.subscriber_id, "nonce-1", later) == "confirmed"
    assert "bob@example.org" in store.active_subscriber_ids()
    [bob] = store.web.roster()
    assert (bob.schedule, bob.timezone, bob.subscriptions) == (
        "daily 08:00",
        "Europe/London",
        (("Agents", "agents"),),
    )
    assert bob.created_at == later  # digests hold papers from the confirmation on
    assert store.web.confirm(made.subscriber_id, "nonce-1", later) == "used"


def test_signing_up_again_with_a_subscribed_address_changes_nothing(store: Store) -> None:
    bob = sign_up_confirmed(store)
    again = store.web.sign_up(replace(BOB, email="BOB@example.org", name="Robert"), NOW, "n2")
    assert (again.kind, again.subscriber_id, again.email) == ("manage", bob, "bob@example.org")
    assert store.web.get(bob) == store.web.roster()[0]
    assert store.web.get(bob).name == "Bob"  # type: ignore[union-attr]
    ada = store.web.sign_up(replace(BOB, email="ada@example.org"), NOW, "n3")
    assert ada.kind == "manage"


def test_signing_up_again_while_pending_replaces_the_sign_up_and_its_link(store: Store) -> None:
    first = store.web.sign_up(BOB, NOW, "nonce-1")
    second = store.web.sign_up(replace(BOB, subscriptions=(("RL", "reinforcement"),)), NOW, "n2")
    assert second.subscriber_id == first.subscriber_id
    assert store.web.confirm(first.subscriber_id, "nonce-1", NOW) == "unknown"
    assert store.web.confirm(first.subscriber_id, "n2", NOW) == "confirmed"
    assert store.web.roster()[0].subscriptions == (("RL", "reinforcement"),)


def test_removing_a_pending_sign_up_voids_its_link(store: Store) -> None:
    made = store.web.sign_up(BOB, NOW, "nonce-1")
    assert store.web.remove(made.subscriber_id, NOW)
    assert store.web.confirm(made.subscriber_id, "nonce-1", NOW) == "unknown"
    assert [w.status for w in store.web.listing()] == ["removed"]
    assert store.web.sign_up(BOB, NOW, "nonce-2").kind == "confirm"  # may sign up again


def test_the_config_sync_leaves_web_subscribers_alone(store: Store) -> None:
    bob = sign_up_confirmed(store)
    store.sync_subscribers([], NOW)  # every config subscriber removed
    assert store.web.get(bob) == store.web.roster()[0]
    assert set(store.active_subscriber_ids()) == {"bob@example.org"}


def test_an_address_written_into_config_toml_becomes_the_configs(store: Store) -> None:
    bob = sign_up_confirmed(store)
    store.sync_subscribers([("bob@example.org", "Bob C.", [("LLM", "llm")])], NOW)
    sub = store.web.get(bob)
    assert sub is not None
    assert (sub.origin, sub.name, sub.subscriptions) == ("config", "Bob C.", (("LLM", "llm"),))
    assert store.web.roster() == []


def test_a_pause_is_kept_until_resumed(store: Store) -> None:
    bob = sign_up_confirmed(store)
    store.web.pause(bob, date(2026, 12, 1), NOW)
    assert store.web.roster()[0].paused_until == date(2026, 12, 1)
    assert store.web.counts()["paused"] == 1
    store.web.pause(bob, None, NOW)
    assert store.web.counts() == {
        "active": 1,
        "paused": 0,
        "pending": 0,
        "unsubscribed": 0,
        "removed": 0,
    }


def test_every_change_to_a_web_subscriber_gives_a_new_version(store: Store) -> None:
    assert store.web.version() is None
    made = store.web.sign_up(BOB, NOW, "nonce-1")
    versions = [store.web.version()]
    store.web.confirm(made.subscriber_id, "nonce-1", NOW)
    versions.append(store.web.version())
    store.web.save(made.subscriber_id, replace(BOB, schedule="instant"), NOW)
    versions.append(store.web.version())
    store.web.pause(made.subscriber_id, date(2027, 1, 1), NOW)
    versions.append(store.web.version())
    assert None not in versions
    assert len(set(versions)) == 4


def test_a_notice_is_neither_cancelled_by_an_unsubscribe_nor_a_digest(store: Store) -> None:
    bob = sign_up_confirmed(store)
    store.unsubscribe("bob@example.org", NOW)
    mail = Outgoing(bob, "bob@example.org", "<n@x>", "s", b"x", [], kind=DeliveryKind.NOTICE)
    [notice_id] = store.enqueue_many([mail], NOW)
    assert store.cancel_unwanted([notice_id]) == {}
    assert store.digest_state([bob])[bob][1] is None
    assert store.subscriber_states()["bob@example.org"].last_digest_at is None
    assert store.web.recent_digests(bob) == []


def test_a_notice_to_a_suppressed_address_is_cancelled(store: Store) -> None:
    bob = sign_up_confirmed(store)
    store.suppress("bob@example.org", reason="550 5.1.1 user unknown", source="smtp", now=NOW)
    mail = Outgoing(bob, "bob@example.org", "<n@x>", "s", b"x", [], kind=DeliveryKind.NOTICE)
    [notice_id] = store.enqueue_many([mail], NOW)
    assert "suppressed since" in store.cancel_unwanted([notice_id])[notice_id]


# --- web subscribers in a pass ------------------------------------------------------------------


@dataclass
class Rig:
    """A pipeline over real SMTP with the pages on, and a clock to move."""

    tmp_path: Path
    store: Store
    pipeline: Pipeline
    clock: Clock

    def drop(self, name: str, papers: list[Paper]) -> None:
        (self.tmp_path / "dumps" / name).write_text(format_dump(NOW.date(), papers))

    def run(self) -> PassReport:
        return asyncio.run(self.pipeline.run_pass())


@pytest.fixture
def rig(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Rig]:
    (tmp_path / "dumps").mkdir()
    config = config_for(tmp_path, smtp_server.port, extra=PAGES)
    store = Store(config.database.url)
    clock = Clock()
    pipeline = Pipeline(config, store, lambda: make_transport(pipeline.config), clock=clock)
    yield Rig(tmp_path, store, pipeline, clock)
    store.close()


def to(smtp_server: SmtpServer, email: str) -> list[EmailMessage]:
    return [m.message for m in smtp_server.messages if m.recipients == [email]]


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("*", "")  # no highlighting marks


def test_a_confirmed_web_subscriber_gets_digests_that_link_their_page(
    rig: Rig, smtp_server: SmtpServer
) -> None:
    rig.run()
    sign_up_confirmed(rig.store, replace(BOB, schedule="instant"))
    rig.drop("1.txt", PAPERS)
    report = rig.run()
    assert report.sent == 3  # Ada, Grace and Bob
    [digest] = to(smtp_server, "bob@example.org")
    assert "Planning Agents with Tools" in text_part(digest)
    assert manage_url(BASE, "bob@example.org", SECRET) in text_part(digest)
    assert f'href="{manage_url(BASE, "bob@example.org", SECRET)}"' in str(
        digest.get_body(preferencelist=("html",))
    )


def test_config_subscribers_digests_link_their_page_too(rig: Rig, smtp_server: SmtpServer) -> None:
    rig.drop("1.txt", PAPERS)
    rig.run()
    [digest] = to(smtp_server, "ada@example.org")
    assert manage_url(BASE, "ada@example.org", SECRET) in text_part(digest)


def test_a_paused_subscriber_gets_no_digest_and_not_the_papers_of_the_pause(
    rig: Rig, smtp_server: SmtpServer
) -> None:
    rig.run()
    bob = sign_up_confirmed(rig.store, replace(BOB, schedule="instant"))
    rig.store.web.pause(bob, date(2026, 11, 25), NOW)
    rig.drop("1.txt", PAPERS[:2])
    rig.run()
    assert to(smtp_server, "bob@example.org") == []
    rig.clock.advance(timedelta(days=2))  # 25 November, 09:00 UTC: the pause is over
    rig.drop("2.txt", [Paper("Agents that Plan Again", "More agents.", authors=1, published=DAY)])
    rig.run()
    [digest] = to(smtp_server, "bob@example.org")
    assert "Agents that Plan Again" in text_part(digest)
    assert "Planning Agents with Tools" not in text_part(digest)


def test_a_saved_change_applies_on_the_next_pass_without_rebuilding_otherwise(
    rig: Rig, smtp_server: SmtpServer
) -> None:
    rig.run()
    bob = sign_up_confirmed(rig.store, replace(BOB, schedule="instant"))
    rig.run()
    engine = rig.pipeline.engine
    rig.run()
    assert rig.pipeline.engine is engine  # nothing changed: the same engine
    rig.store.web.save(bob, replace(BOB, schedule="instant", subscriptions=(("S", "score"),)), NOW)
    rig.drop("1.txt", PAPERS)
    rig.run()
    [digest] = to(smtp_server, "bob@example.org")
    assert "Score Matching Revisited" in text_part(digest)
    assert "Planning Agents" not in text_part(digest)


# --- the pages on a loopback port ------------------------------------------------------

Scenario = Callable[[aiohttp.ClientSession, str, SelfService], Awaitable[None]]


@asynccontextmanager
async def serving(
    store: Store, config: Config, clock: Clock
) -> AsyncIterator[tuple[str, SelfService]]:
    site = SelfService(store, config=lambda: config, clock=clock, monotonic=clock.tick)
    app = make_app(store, secret=lambda: SECRET, clock=clock, self_service=site)
    server = WebServer(app, "127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", site
    finally:
        await server.stop()


def serve(
    store: Store, scenario: Scenario, config: Config | None = None, clock: Clock | None = None
) -> None:
    async def main() -> None:
        async with (
            serving(store, config or config_with(), clock or Clock()) as (base, site),
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
        ):
            await scenario(session, base, site)

    asyncio.run(main())


async def csrf(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200, url
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert found is not None
    return found.group(1)


async def post(
    session: aiohttp.ClientSession, url: str, fields: dict[str, str], **kw: object
) -> tuple[int, str]:
    async with session.post(url, data=fields, **kw) as response:  # type: ignore[arg-type]
        return response.status, await response.text()


def sign_up_fields(token: str, email: str = "bob@example.org", **more: str) -> dict[str, str]:
    return {
        "csrf": token,
        "action": "subscribe",
        "email": email,
        "name": "Bob",
        "sub-0-name": "Agents",
        "sub-0-query": "agents",
        "schedule": "daily",
        "time": "08:00",
        "timezone": "Europe/London",
        **more,
    }


def local(url: str, base: str) -> str:
    return url.replace(BASE, base)


def notices(store: Store, email: str) -> list[str]:
    """The plain text of every notice queued for ``email``."""
    texts = []
    for d in store.deliveries():
        if d.kind == DeliveryKind.NOTICE and d.recipient == email:
            message = message_from_bytes(d.message, policy=policy.default)
            assert isinstance(message, EmailMessage)
            texts.append(str(message.get_content()))
    return texts


def link_in(text: str, kind: str) -> str:
    found = re.search(rf"{re.escape(BASE)}/{kind}/\S+", text)
    assert found is not None, text
    return found.group(0)


@pytest.fixture
def pages_store(tmp_path: Path) -> Iterator[Store]:
    s = store_with_papers(f"sqlite:///{tmp_path / 'mailer.db'}", config_with())
    yield s
    s.close()


def test_a_reader_signs_up_confirms_and_reaches_their_page(database_url: str) -> None:
    store = store_with_papers(database_url, config_with())

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        status, page = await post(session, base + "/subscribe", sign_up_fields(token))
        assert (status, "Check your inbox" in page) == (200, True)
        await site.drained()
        [mail] = notices(store, "bob@example.org")
        link = local(link_in(mail, "confirm"), base)
        async with session.get(link) as response:
            shown = await response.text()
        assert "<strong>Agents</strong>: <code>agents</code>" in shown
        assert "daily at 08:00 (Europe/London)" in shown
        assert store.web.roster() == []  # a GET confirms nothing
        status, page = await post(session, link, {"csrf": await csrf(session, link)})
        assert (status, "You are subscribed" in page) == (200, True)
        manage = local(manage_url(BASE, "bob@example.org", SECRET), base)
        assert f'href="{manage_url(BASE, "bob@example.org", SECRET)}"' in page
        async with session.get(manage) as response:
            assert response.status == 200
            assert "Digests go to <strong" in await response.text()

    try:
        serve(store, scenario)
        [bob] = store.web.roster()
        assert (bob.email, bob.schedule, bob.subscriptions) == (
            "bob@example.org",
            "daily 08:00",
            (("Agents", "agents"),),
        )
    finally:
        store.close()


def test_with_self_service_off_no_page_is_served(pages_store: Store) -> None:
    off = config_with(self_service=False)
    manage = f"/manage/{manage_token('ada@example.org', SECRET)}"
    confirm = f"/confirm/{confirm_token(1, 'n', NOW + timedelta(hours=1), SECRET)}"

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        async with session.get(base + "/nowhere") as response:
            unknown = (response.status, await response.text())
        for path in ("/subscribe", "/check", manage, confirm, "/static/site.css"):
            for method in ("GET", "POST"):
                async with session.request(method, base + path) as response:
                    assert (response.status, await response.text()) == unknown, (method, path)

    serve(pages_store, scenario, off)
    assert pages_store.web.listing() == []


def test_forged_links_are_404_and_change_nothing(pages_store: Store) -> None:
    bob = sign_up_confirmed(pages_store)
    other = "another-secret-0123456789"
    forged = [
        f"/manage/{manage_token('bob@example.org', other)}",
        f"/manage/{make_token('bob@example.org', SECRET)}",  # an unsubscribe token
        f"/manage/{manage_token('nobody@example.org', SECRET)}",
        f"/confirm/{confirm_token(bob, 'nonce-1', NOW + timedelta(hours=1), other)}",
        f"/confirm/{confirm_token(999, 'nonce-1', NOW + timedelta(hours=1), SECRET)}",
        "/confirm/x.y",
    ]

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        for path in forged:
            async with session.get(base + path) as response:
                assert response.status == 404, path
                assert "bob" not in await response.text()
            status, _ = await post(session, base + path, {"csrf": token, "action": "unsubscribe"})
            assert status == 404, path

    serve(pages_store, scenario)
    assert pages_store.unsubscribed_at("bob@example.org") is None


def test_an_expired_confirmation_link_is_refused_and_confirms_nothing(pages_store: Store) -> None:
    made = pages_store.web.sign_up(BOB, NOW, "nonce-1")
    link = confirm_url(BASE, made.subscriber_id, "nonce-1", NOW, SECRET)
    clock = Clock(NOW + timedelta(hours=48, seconds=1))

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        async with session.get(local(link, base)) as response:
            assert response.status == 410
            assert "expired" in await response.text()
        token = await csrf(session, base + "/subscribe")
        status, page = await post(session, local(link, base), {"csrf": token})
        assert status == 410
        assert "Sign up again" in page

    serve(pages_store, scenario, clock=clock)
    assert pages_store.web.roster() == []


def test_a_replayed_confirmation_changes_nothing(pages_store: Store) -> None:
    made = pages_store.web.sign_up(BOB, NOW, "nonce-1")
    link = confirm_url(BASE, made.subscriber_id, "nonce-1", NOW, SECRET)
    clock = Clock()

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        assert (await post(session, local(link, base), {"csrf": token}))[0] == 200
        clock.advance(timedelta(hours=1))
        pages_store.unsubscribe("bob@example.org", clock.now)
        status, page = await post(session, local(link, base), {"csrf": token})
        assert (status, "already used" in page) == (410, True)
        async with session.get(local(link, base)) as response:
            assert response.status == 410

    serve(pages_store, scenario, clock=clock)
    [bob] = pages_store.web.roster()
    assert bob.created_at == NOW  # confirmed once
    assert bob.unsubscribed_at == NOW + timedelta(hours=1)  # the replay did not resubscribe


@pytest.mark.parametrize("field", ["missing", "another browser's", "from another site"])
def test_a_post_without_its_csrf_field_changes_nothing(pages_store: Store, field: str) -> None:
    made = pages_store.web.sign_up(BOB, NOW, "nonce-1")
    confirm = confirm_url(BASE, made.subscriber_id, "nonce-1", NOW, SECRET)
    ada = manage_url(BASE, "ada@example.org", SECRET)

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        headers = {}
        if field == "missing":
            token = ""
        elif field == "another browser's":
            token = csrf_token("cookie-of-somebody-else", SECRET)
        else:
            headers = {"Origin": "https://evil.example"}
        for url, fields in (
            (base + "/subscribe", sign_up_fields(token, "carol@example.org")),
            (local(confirm, base), {"csrf": token}),
            (local(ada, base), {"csrf": token, "action": "unsubscribe"}),
        ):
            status, page = await post(session, url, fields, headers=headers)
            assert (status, "This form has expired" in page) == (403, True), url
        await site.drained()

    serve(pages_store, scenario)
    assert pages_store.web.roster() == []
    assert pages_store.unsubscribed_at("ada@example.org") is None
    assert [w.email for w in pages_store.web.listing()] == ["bob@example.org"]
    assert pages_store.deliveries() == []


def test_sign_ups_from_one_client_are_limited_per_hour(pages_store: Store) -> None:
    clock = Clock()
    config = config_with(signups_per_ip_per_hour=2)

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        answers = []
        for n in range(3):
            fields = sign_up_fields(token, f"reader{n}@example.org")
            answers.append((await post(session, base + "/subscribe", fields))[0])
        assert answers == [200, 200, 429]
        clock.advance(timedelta(hours=1))
        fields = sign_up_fields(token, "reader3@example.org")
        assert (await post(session, base + "/subscribe", fields))[0] == 200
        await site.drained()

    serve(pages_store, scenario, config, clock)
    mailed = {d.recipient for d in pages_store.deliveries()}
    assert mailed == {"reader0@example.org", "reader1@example.org", "reader3@example.org"}


def test_sign_ups_for_one_address_are_limited_from_any_client(pages_store: Store) -> None:
    config = config_with(signups_per_address_per_hour=2, client_ip_header="X-Forwarded-For")

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        answers = []
        for n, spelling in enumerate(("bob@example.org", "BOB@example.org", "Bob@Example.org")):
            headers = {"X-Forwarded-For": f"203.0.113.9, 198.51.100.{n}"}
            fields = sign_up_fields(token, spelling)
            answers.append((await post(session, base + "/subscribe", fields, headers=headers))[0])
        assert answers == [200, 200, 429]
        await site.drained()

    serve(pages_store, scenario, config)
    assert len(pages_store.deliveries()) == 2


def test_a_subscribed_and_an_unknown_address_get_the_same_answer(pages_store: Store) -> None:
    sign_up_confirmed(pages_store)

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        seen = []
        for email in ("bob@example.org", "dora@example.org", "ada@example.org"):
            async with session.post(base + "/subscribe", data=sign_up_fields(token, email)) as r:
                page = (await r.text()).replace(email, "ADDRESS")
                seen.append((r.status, dict(r.headers) | {"Date": "", "Content-Length": ""}, page))
        assert seen[0] == seen[1] == seen[2]
        await site.drained()

    serve(pages_store, scenario)
    assert "/manage/" in notices(pages_store, "bob@example.org")[0]
    assert "/confirm/" in notices(pages_store, "dora@example.org")[0]
    assert "/manage/" in notices(pages_store, "ada@example.org")[0]


def test_a_subscribed_and_an_unknown_address_take_the_same_time(pages_store: Store) -> None:
    """The answer is made before the store is asked, so the medians of many
    interleaved sign-ups differ by noise only; the margin is generous for a
    busy machine, the mail work it hides (a lookup, inserts) is not."""
    sign_up_confirmed(pages_store)
    config = config_with(signups_per_ip_per_hour=1000, signups_per_address_per_hour=100)

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        times: dict[str, list[float]] = {"known": [], "unknown": []}
        for n in range(20):
            for kind, email in (("known", "bob@example.org"), ("unknown", f"u{n}@example.org")):
                await site.drained()
                started = time.perf_counter()
                status, _ = await post(session, base + "/subscribe", sign_up_fields(token, email))
                times[kind].append(time.perf_counter() - started)
                assert status == 200
        await site.drained()
        gap = abs(statistics.median(times["known"]) - statistics.median(times["unknown"]))
        assert gap < 0.02, times

    serve(pages_store, scenario, config)


HOSTILE = '<script>alert(1)</script><b>bold</b>&amp;"'


def test_markup_in_every_field_is_shown_as_text(pages_store: Store) -> None:
    hostile = replace(
        BOB,
        name=HOSTILE,
        subscriptions=((HOSTILE, 'title:"<b>x</b>" OR agents'), ("Plain", "agents")),
    )
    bob = sign_up_confirmed(pages_store, hostile)
    made = pages_store.web.sign_up(replace(hostile, email="carol@example.org"), NOW, "n")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;&amp;amp;&#34;"

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        pages = []
        token = await csrf(session, base + "/subscribe")
        fields = sign_up_fields(token, email=HOSTILE, name=HOSTILE)
        fields |= {"sub-0-name": HOSTILE, "sub-0-query": HOSTILE, "timezone": HOSTILE}
        pages.append((await post(session, base + "/subscribe", fields))[1])
        async with session.get(local(manage_url(BASE, "bob@example.org", SECRET), base)) as r:
            pages.append(await r.text())
        confirm = confirm_url(BASE, made.subscriber_id, "n", NOW, SECRET)
        async with session.get(local(confirm, base)) as r:
            pages.append(await r.text())
        async with session.post(base + "/check", data={"csrf": token, "query": HOSTILE}) as r:
            pages.append(await r.text())
        for page in pages:
            assert "<script>alert" not in page
            assert "<b>bold" not in page
            assert "<b>x" not in page
        assert escaped in pages[0]  # the form shows what was typed, as text
        assert escaped in pages[1]
        assert escaped in pages[2]
        assert "&lt;b&gt;x&lt;/b&gt;" in pages[1]

    serve(pages_store, scenario)
    assert pages_store.web.get(bob) is not None


def test_a_form_over_the_size_limit_is_refused(pages_store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        fields = sign_up_fields(token, **{"sub-0-query": "x" * MAX_FORM_BYTES})
        assert (await post(session, base + "/subscribe", fields))[0] == 413

    serve(pages_store, scenario)


def test_the_live_check_shows_the_error_position_or_the_last_30_days_matches(
    pages_store: Store,
) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        async with session.post(base + "/check", data={"csrf": token, "query": "agents AND"}) as r:
            assert r.headers["X-Query-Ok"] == "0"
            assert "at position 10" in await r.text()
        async with session.post(base + "/check", data={"csrf": token, "query": "diffusion"}) as r:
            assert r.headers["X-Query-Ok"] == "1"
            page = await r.text()
        assert "1 of 3 papers from the last 30 days match" in page
        assert "Guided <mark>Diffusion</mark> Model Distillation" in page
        async with session.post(base + "/check", data={"query": "diffusion"}) as r:
            assert r.status == 403

    serve(pages_store, scenario)


def test_check_queries_without_javascript_shows_each_querys_check(pages_store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        fields = sign_up_fields(token, action="check", **{"sub-1-query": "agents AND"})
        status, page = await post(session, base + "/subscribe", fields)
        assert status == 200 or status == 400
        assert "1 of 3 papers from the last 30 days match" in page
        assert "at position 10" in page
        assert 'id="sub-2-query"' in page  # a blank row to add one more
        await site.drained()

    serve(pages_store, scenario)
    assert pages_store.deliveries() == []


def test_a_bad_sign_up_names_each_wrong_field_and_stores_nothing(pages_store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        token = await csrf(session, base + "/subscribe")
        fields = sign_up_fields(token, "bob@example", timezone="Mars/Olympus", max_papers="lots")
        status, page = await post(session, base + "/subscribe", fields)
        assert status == 400
        for field in ("email", "timezone", "max_papers"):
            assert f'id="{field}-error"' in page
            assert f'aria-describedby="{field}-error"' in page
        assert "is not a valid email address" in page
        assert "is not an IANA time zone" in page
        await site.drained()

    serve(pages_store, scenario)
    assert pages_store.web.listing() == []


def test_the_pages_forbid_framing_scripts_from_elsewhere_and_caching(pages_store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        async with session.get(base + "/subscribe") as r:
            assert r.headers["Cache-Control"] == "no-store"
            assert r.headers["Referrer-Policy"] == "same-origin"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie

    serve(pages_store, scenario)


async def manage_post(session: aiohttp.ClientSession, url: str, **fields: str) -> tuple[int, str]:
    return await post(session, url, {"csrf": await csrf(session, url), **fields})


def test_the_manage_page_saves_pauses_resumes_and_unsubscribes(pages_store: Store) -> None:
    bob = sign_up_confirmed(pages_store)
    clock = Clock()

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        page = local(manage_url(BASE, "bob@example.org", SECRET), base)
        saved = {"action": "save", "name": "Bob", "schedule": "weekly", "day": "tue",
                 "time": "06:15", "timezone": "UTC", "max_papers": "9",
                 "sub-0-name": "Agents", "sub-0-query": "agents", "sub-0-remove": "1",
                 "sub-1-name": "Scores", "sub-1-query": '"score matching"'}  # fmt: skip
        status, shown = await manage_post(session, page, **saved)
        assert (status, "Saved." in shown) == (200, True)
        sub = pages_store.web.get(bob)
        assert sub is not None
        assert (sub.schedule, sub.max_papers, sub.subscriptions) == (
            "weekly tue 06:15",
            9,
            (("Scores", '"score matching"'),),
        )
        status, shown = await manage_post(session, page, action="pause", until="2026-11-23")
        assert (status, "pick a day after today" in shown) == (400, True)
        status, shown = await manage_post(session, page, action="pause", until="2026-12-24")
        assert "no digests before 2026-12-24" in shown
        status, shown = await manage_post(session, page, action="resume")
        assert "Resumed" in shown
        status, shown = await manage_post(session, page, action="unsubscribe")
        assert "You are unsubscribed" in shown
        assert 'value="resubscribe"' in shown
        assert pages_store.unsubscribed_at("bob@example.org") == NOW
        status, shown = await manage_post(session, page, action="resubscribe")
        assert "subscribed again" in shown

    serve(pages_store, scenario, clock=clock)
    assert pages_store.web.get(bob).paused_until is None  # type: ignore[union-attr]
    assert pages_store.unsubscribed_at("bob@example.org") is None


def test_an_invalid_change_on_the_manage_page_saves_nothing(pages_store: Store) -> None:
    bob = sign_up_confirmed(pages_store)
    before = pages_store.web.get(bob)

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        page = local(manage_url(BASE, "bob@example.org", SECRET), base)
        status, shown = await manage_post(
            session, page, action="save", schedule="daily", time="25:00", timezone="UTC",
            **{"sub-0-name": "Agents", "sub-0-query": "agents OR ("},
        )  # fmt: skip
        assert status == 400
        assert "Not saved" in shown
        assert 'id="schedule-error"' in shown
        assert "Not a valid query" in shown

    serve(pages_store, scenario)
    assert pages_store.web.get(bob) == before


@pytest.mark.parametrize("shown", ["read-only", "minimal"])
def test_a_config_subscribers_page_shows_their_choices_but_changes_only_unsubscribing(
    pages_store: Store, shown: str
) -> None:
    config = config_with(config_subscriber_pages=shown)

    async def scenario(session: aiohttp.ClientSession, base: str, site: SelfService) -> None:
        page = local(manage_url(BASE, "ada@example.org", SECRET), base)
        async with session.get(page) as r:
            view = await r.text()
        assert ("<code>&#34;diffusion model&#34;</code>" in view) == (shown == "read-only")
        assert ("weekly on Monday at 07:30 (UTC)" in view) == (shown == "read-only")
        assert 'value="save"' not in view
        status, refused = await manage_post(session, page, action="save", schedule="instant")
        assert (status, "Managed by the operator" in refused) == (403, True)
        status, done = await manage_post(session, page, action="unsubscribe")
        assert (status, "You are unsubscribed" in done) == (200, True)

    serve(pages_store, scenario, config)
    assert pages_store.unsubscribed_at("ada@example.org") == NOW


# --- mailer subs and status for web subscribers ----------------------------------------


def cli_setup(tmp_path: Path) -> tuple[Path, Store]:
    (tmp_path / "dumps").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        '[watch]\ndir = "dumps"\n[[subscribers]]\nemail = "ada@example.org"\n'
        '[[subscribers.subscriptions]]\nname = "D"\nquery = "diffusion"\n'
    )
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    sign_up_confirmed(store)
    store.web.sign_up(replace(BOB, email="carol@example.org"), NOW, "pending")
    return config, store


def test_subs_lists_web_subscribers_and_edits_them_in_the_database(tmp_path: Path) -> None:
    import json

    config, store = cli_setup(tmp_path)
    store.close()
    before = config.read_bytes()
    run = ["--config", str(config), "subs"]
    rows = json.loads(mailer(*run, "list", "--json", cwd=tmp_path).stdout)
    assert [(r["email"], r["origin"], r["status"]) for r in rows] == [
        ("ada@example.org", "config", "active"),
        ("bob@example.org", "web", "active"),
        ("carol@example.org", "web", "pending"),
    ]
    table = mailer(*run, "list", cwd=tmp_path).stdout
    assert "web (pending)" in table
    assert "1 subscribers in" in table
    assert "2 signed up on the web pages" in table
    for step in (
        ["set", "bob@example.org", "schedule", "weekly fri 17:00"],
        ["add-query", "bob@example.org", "RL", "reinforcement learning"],
        ["remove-query", "bob@example.org", "Agents"],
    ):
        done = mailer(*run, *step, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "saved in the database" in done.stdout
    refused = mailer(*run, "set", "bob@example.org", "schedule", "hourly", cwd=tmp_path)
    assert refused.returncode == 2
    assert "web subscriber bob@example.org: schedule: must be 'instant'" in refused.stderr
    bad_query = mailer(*run, "add-query", "bob@example.org", "X", "agents AND", cwd=tmp_path)
    assert "at position 10" in bad_query.stderr
    taken = mailer(*run, "add", "bob@example.org", cwd=tmp_path)
    assert taken.returncode == 2
    assert "signed up on the web pages" in taken.stderr
    assert config.read_bytes() == before
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    try:
        bob = store.web.find("bob@example.org")
        assert bob is not None
        assert (bob.schedule, bob.subscriptions) == (
            "weekly fri 17:00",
            (("RL", "reinforcement learning"),),
        )
    finally:
        store.close()
    assert mailer(*run, "remove", "bob@example.org", cwd=tmp_path).returncode == 0
    status = json.loads(mailer("--config", str(config), "status", "--json", cwd=tmp_path).stdout)
    assert status["subscribers"]["configured"] == 1
    assert status["subscribers"]["web"] == {
        "active": 0,
        "paused": 0,
        "pending": 1,
        "unsubscribed": 0,
        "removed": 1,
    }
    assert status["subscribers"]["removed"] == 0


def test_admin_refuses_to_edit_a_web_subscriber_into_an_invalid_state(tmp_path: Path) -> None:
    _, store = cli_setup(tmp_path)
    try:
        sub = admin.web_subscriber(store, config_with(), "BOB@example.org")
        assert sub is not None
        with pytest.raises(ConfigError, match="timezone: 'Mars/Olympus' is not an IANA"):
            admin.set_key(store, sub, "timezone", "Mars/Olympus", NOW)
        with pytest.raises(ConfigError, match="already exists"):
            admin.set_key(store, sub, "email", "carol@example.org", NOW)
        assert admin.web_subscriber(store, config_with(), "ada@example.org") is None
    finally:
        store.close()


# --- the daemon --------------------------------------------------------------------------


def test_the_daemon_mails_a_confirmation_at_once_not_an_interval_later(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[watch]\ndir = "dumps"\ninterval_seconds = 3600\n[delivery]\ntransport = "smtp"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
        + PAGES.replace("127.0.0.1:0", f"127.0.0.1:{port}").replace(
            BASE, f"http://127.0.0.1:{port}"
        )
    )
    (tmp_path / "dumps").mkdir()
    daemon = Mailer(config, "run")
    try:
        daemon.wait_logged("readers' pages on")
        wait_for(lambda: passes(tmp_path) >= 1, what="the first pass")

        async def sign_up() -> int:
            base = f"http://127.0.0.1:{port}"
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                token = await csrf(session, base + "/subscribe")
                return (await post(session, base + "/subscribe", sign_up_fields(token)))[0]

        assert asyncio.run(sign_up()) == 200
        wait_for(
            lambda: any(m.recipients == ["bob@example.org"] for m in smtp_server.messages),
            what="the confirmation mail, long before the hour's pass",
        )
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0
    finally:
        daemon.kill()
    assert "web sign-up subscriber=bob@example.org mailed=confirm" in daemon.log
