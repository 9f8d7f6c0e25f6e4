"""The compose path: which subscribers are due, what their digests hold, the
message each becomes, and the stage that queues them in chunks.

A real SQLite store in tmp_path, the real Renderer and a real configuration;
worker pools are stood in for by in-process executors (no processes here).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import mailer.pipeline.compose as compose_module
from mailer.config import Config, SubscriberConfig, parse_config
from mailer.digests import Ranking, Recipient
from mailer.papers import Paper
from mailer.pipeline.compose import (
    MANAGE_HINT,
    Compose,
    ComposeChunk,
    DigestOrder,
    Queued,
    RenderSettings,
    build_message,
    compose,
    compose_chunk,
    compose_digest,
    digest_order,
    due_subscribers,
    init_worker,
    recipient,
    unsubscribe_url,
)
from mailer.pipeline.report import PassReport
from mailer.render import Renderer
from mailer.store import NewMatch, Outgoing, PendingMatch, Store
from mailer.textfmt import format_since
from mailer.tokens import read_token
from tests.conftest import ROOT

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SECRET = "a-secret-of-twenty-chars"
BASE_URL = "https://digest.example.org"
WEB = f'[web]\nbase_url = "{BASE_URL}"\nsecret = "{SECRET}"\n'
SENDER = "Paper Digest <digest@example.org>"

DIFFUSION = Paper("Diffusion Models", "We study a diffusion model.")
SCORES = Paper("Score Matching", "On the diffusion of scores.")
AGENTS = Paper("Agents That Plan", "Planning agents.")


def subscriber(
    email: str,
    name: str = "",
    *,
    schedule: str = "instant",
    timezone: str = "UTC",
    max_papers: int | None = None,
    subscriptions: tuple[str, ...] = ("Diffusion",),
) -> str:
    text = (
        f'[[subscribers]]\nemail = "{email}"\nname = "{name}"\n'
        f'schedule = "{schedule}"\ntimezone = "{timezone}"\n'
    )
    if max_papers is not None:
        text += f"max_papers = {max_papers}\n"
    for s in subscriptions:
        text += f'[[subscribers.subscriptions]]\nname = "{s}"\nquery = "{s.lower()}"\n'
    return text


ADA = subscriber("ada@example.org", "Ada")
GRACE = subscriber("grace@example.org", "Grace", subscriptions=("Agents",))


def make_config(tmp_path: Path, *subscribers: str, extra: str = "") -> Config:
    text = f"""
[database]
url = "sqlite:///{tmp_path / "mailer.db"}"
[smtp]
sender = "{SENDER}"
{extra}
{"".join(subscribers)}
"""
    return parse_config(text, source="test.toml", base_dir=tmp_path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def sync(store: Store, config: Config, now: datetime = NOW) -> dict[str, int]:
    return store.sync_subscribers(
        (
            (s.email, s.name, [(q.name, q.query) for q in s.subscriptions])
            for s in config.subscribers
        ),
        now,
    )


def ingest(store: Store, *papers: Paper) -> dict[str, int]:
    """Paper ids by title."""
    store.ingest(
        path="/d/dump.txt",
        sha256=f"h{len(store.dumps())}",
        size=1,
        page_date=None,
        papers=papers,
        warnings=0,
        now=NOW,
    )
    return {p.title: pid for pid, p in store.unmatched_papers()}


def match(
    store: Store, subscriber_id: int, paper_id: int, subscription: str = "Diffusion", *terms: str
) -> None:
    terms = terms or ("diffusion",)
    store.add_matches(
        subscriber_id,
        [NewMatch(subscriber_id, paper_id, (subscription,), (terms,), (1.0,), terms)],
        NOW,
    )


def parse(data: bytes) -> EmailMessage:
    parsed = message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_part(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    content: str = body.get_content()
    return " ".join(content.split())


def order_for(
    config: Config, sub: SubscriberConfig, subscriber_id: int = 1, since: datetime | None = None
) -> DigestOrder:
    return digest_order(config, sub, subscriber_id, since)


def pending(store: Store, subscriber_id: int) -> list[PendingMatch]:
    return store.pending_matches_for([subscriber_id])[subscriber_id]


# --- recipient and unsubscribe_url -----------------------------------------------


def test_recipient_is_the_subscribers_address_name_and_subscription_names(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path, subscriber("ada@example.org", "Ada", subscriptions=("Graphs", "Agents"))
    )
    assert recipient(config.subscribers[0]) == Recipient(
        "ada@example.org", "Ada", ("Graphs", "Agents")
    )


def test_there_is_no_unsubscribe_url_without_a_base_url(tmp_path: Path) -> None:
    assert unsubscribe_url(make_config(tmp_path, ADA), "ada@example.org") is None


def test_the_unsubscribe_url_is_a_token_for_the_address_under_the_base_url(
    tmp_path: Path,
) -> None:
    url = unsubscribe_url(make_config(tmp_path, ADA, extra=WEB), "ada@example.org")
    assert url is not None
    prefix = f"{BASE_URL}/unsubscribe/"
    assert url.startswith(prefix)
    assert read_token(url.removeprefix(prefix), SECRET) == "ada@example.org"


# --- digest_order ----------------------------------------------------------------


def test_digest_order_takes_the_subscribers_max_papers(tmp_path: Path) -> None:
    config = make_config(tmp_path, subscriber("ada@example.org", max_papers=7))
    assert order_for(config, config.subscribers[0]).max_papers == 7


def test_digest_order_without_a_max_papers_takes_the_render_default(tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA, extra="[render]\nmax_papers = 12\n")
    assert order_for(config, config.subscribers[0]).max_papers == 12


def test_digest_order_is_for_its_subscriber_since_their_last_digest(tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA)
    sub = config.subscribers[0]
    since = NOW - timedelta(days=1)
    assert digest_order(config, sub, 42, since) == DigestOrder(
        42, recipient(sub), since, 50, unsubscribe_url=None
    )


def test_digest_order_carries_the_unsubscribe_link_when_there_is_a_base_url(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, ADA, extra=WEB)
    order = order_for(config, config.subscribers[0])
    assert order.unsubscribe_url == unsubscribe_url(config, "ada@example.org")
    assert order.unsubscribe_url is not None


def test_digest_order_has_no_unsubscribe_link_without_a_base_url(tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA)
    assert order_for(config, config.subscribers[0]).unsubscribe_url is None


# --- due_subscribers ------------------------------------------------------------


def due_emails(store: Store, config: Config, now: datetime = NOW) -> list[str]:
    return [sub.email for sub, _, _ in due_subscribers(store, config, now)]


def test_instant_subscribers_are_due(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA, GRACE)
    sync(store, config)
    assert due_emails(store, config) == ["ada@example.org", "grace@example.org"]


def test_a_due_subscriber_comes_with_their_id_and_no_last_digest(
    store: Store, tmp_path: Path
) -> None:
    config = make_config(tmp_path, ADA, GRACE)
    ids = sync(store, config)
    assert due_subscribers(store, config, NOW)[1] == (
        config.subscribers[1],
        ids["grace@example.org"],
        None,
    )


def test_a_due_subscriber_comes_with_the_time_of_their_last_digest(
    store: Store, tmp_path: Path
) -> None:
    config = make_config(tmp_path, ADA)
    sid = sync(store, config)["ada@example.org"]
    earlier = NOW - timedelta(hours=3)
    store.enqueue_many([Outgoing(sid, "ada@example.org", "<m1@x>", "s", b"m", [])], earlier)
    ((_, _, last),) = due_subscribers(store, config, NOW)
    assert last == earlier


def test_an_unsubscribed_subscriber_is_not_due(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA, GRACE)
    sync(store, config)
    store.unsubscribe("ada@example.org", NOW)
    assert due_emails(store, config) == ["grace@example.org"]


def test_a_configured_subscriber_not_yet_in_the_store_is_not_due(
    store: Store, tmp_path: Path
) -> None:
    sync(store, make_config(tmp_path, GRACE))
    config = make_config(tmp_path, ADA, GRACE)
    assert due_emails(store, config) == ["grace@example.org"]


def test_a_daily_subscriber_is_not_due_before_the_first_slot_after_subscribing(
    store: Store, tmp_path: Path
) -> None:
    config = make_config(tmp_path, subscriber("ada@example.org", schedule="daily 10:00"))
    sync(store, config)  # at 09:00
    assert due_emails(store, config, NOW + timedelta(minutes=59)) == []


def test_a_daily_subscriber_is_due_once_their_slot_has_passed(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, subscriber("ada@example.org", schedule="daily 10:00"))
    sync(store, config)
    assert due_emails(store, config, NOW + timedelta(hours=1)) == ["ada@example.org"]


def test_a_daily_subscriber_is_not_due_again_until_the_next_slot(
    store: Store, tmp_path: Path
) -> None:
    config = make_config(tmp_path, subscriber("ada@example.org", schedule="daily 10:00"))
    sid = sync(store, config)["ada@example.org"]
    sent = NOW + timedelta(hours=1, minutes=5)
    store.enqueue_many([Outgoing(sid, "ada@example.org", "<m1@x>", "s", b"m", [])], sent)
    assert due_emails(store, config, NOW + timedelta(hours=20)) == []
    assert due_emails(store, config, NOW + timedelta(hours=25)) == ["ada@example.org"]


def test_a_schedule_is_kept_in_the_subscribers_time_zone(store: Store, tmp_path: Path) -> None:
    # 10:00 in Tokyo is 01:00 UTC: due at 02:00 UTC there, not yet in UTC.
    config = make_config(
        tmp_path,
        subscriber("ada@example.org", schedule="daily 10:00", timezone="Asia/Tokyo"),
        subscriber("grace@example.org", schedule="daily 10:00"),
    )
    midnight = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    sync(store, config, midnight)
    assert due_emails(store, config, midnight + timedelta(hours=2)) == ["ada@example.org"]


# --- compose_digest ---------------------------------------------------------------


def test_compose_digest_is_for_the_orders_recipient_since_its_last_digest(
    store: Store, tmp_path: Path
) -> None:
    config = make_config(tmp_path, ADA)
    sid = sync(store, config)["ada@example.org"]
    match(store, sid, ingest(store, DIFFUSION)["Diffusion Models"])
    since = NOW - timedelta(days=2)
    order = order_for(config, config.subscribers[0], sid, since)
    digest = compose_digest(order, pending(store, sid), Ranking(store.stats()))
    assert (digest.recipient, digest.since, digest.test) == (order.recipient, since, False)
    assert [e.paper.title for e in digest.entries] == ["Diffusion Models"]


def test_compose_digest_keeps_the_orders_max_papers_and_counts_the_rest(
    store: Store, tmp_path: Path
) -> None:
    config = make_config(tmp_path, subscriber("ada@example.org", max_papers=1))
    sid = sync(store, config)["ada@example.org"]
    ids = ingest(store, DIFFUSION, SCORES)
    for pid in ids.values():
        match(store, sid, pid)
    order = order_for(config, config.subscribers[0], sid)
    digest = compose_digest(order, pending(store, sid), Ranking(store.stats()))
    assert (digest.count, digest.more) == (1, 1)


def test_compose_digest_ranks_the_matches_by_their_terms(store: Store, tmp_path: Path) -> None:
    # Both match "diffusion": the one with it in its title ranks first,
    # though it matched last.
    config = make_config(tmp_path, ADA)
    sid = sync(store, config)["ada@example.org"]
    ids = ingest(store, SCORES, DIFFUSION)
    match(store, sid, ids["Score Matching"])
    match(store, sid, ids["Diffusion Models"])
    order = order_for(config, config.subscribers[0], sid)
    digest = compose_digest(order, pending(store, sid), Ranking(store.stats()))
    assert [e.paper.title for e in digest.entries] == ["Diffusion Models", "Score Matching"]
    assert [e.terms for e in digest.entries] == [("diffusion",), ("diffusion",)]


def test_compose_digest_marks_a_test_digest(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA)
    order = order_for(config, config.subscribers[0])
    assert compose_digest(order, [], Ranking(store.stats()), test=True).test is True


# --- build_message and compose ------------------------------------------------------


@pytest.fixture
def ada_matches(store: Store, tmp_path: Path) -> tuple[int, list[PendingMatch]]:
    sid = sync(store, make_config(tmp_path, ADA))["ada@example.org"]
    match(store, sid, ingest(store, DIFFUSION)["Diffusion Models"])
    return sid, pending(store, sid)


def composed(
    tmp_path: Path,
    store: Store,
    renderer: Renderer,
    matches: list[PendingMatch],
    *,
    extra: str = "",
    sender: str = SENDER,
    sender_address: str = "digest@example.org",
    test: bool = False,
) -> tuple[compose_module.Composed, EmailMessage]:
    config = make_config(tmp_path, ADA, extra=extra)
    order = order_for(config, config.subscribers[0])
    made = compose(
        order,
        matches,
        Ranking(store.stats()),
        renderer,
        NOW,
        sender=sender,
        sender_address=sender_address,
        test=test,
    )
    return made, parse(made.data)


def test_the_message_is_from_the_sender_to_the_recipient_dated_now(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1])
    assert (message["From"], message["To"]) == (SENDER, "Ada <ada@example.org>")
    assert message["Date"].datetime == NOW


def test_the_message_id_is_in_the_senders_domain(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    made, message = composed(
        tmp_path, store, renderer, ada_matches[1], sender_address="news@lab.example.net"
    )
    assert made.message_id == message["Message-ID"].strip()  # folded when long: " <...>"
    assert made.message_id.endswith("@lab.example.net>")


def test_a_sender_address_with_an_empty_domain_gives_a_localhost_message_id(
    renderer: Renderer, store: Store, tmp_path: Path
) -> None:
    # The configuration only admits addresses with a domain; build_message
    # still never makes a Message-ID ending in a bare "@".
    config = make_config(tmp_path, ADA)
    digest = compose_digest(order_for(config, config.subscribers[0]), [], Ranking(store.stats()))
    message_id, _, _ = build_message(renderer, digest, NOW, sender=SENDER, sender_address="digest@")
    assert message_id.endswith("@localhost>")


def test_each_message_has_its_own_message_id(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    first, _ = composed(tmp_path, store, renderer, ada_matches[1])
    second, _ = composed(tmp_path, store, renderer, ada_matches[1])
    assert first.message_id != second.message_id


def test_the_subject_is_the_rendered_one(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    made, message = composed(tmp_path, store, renderer, ada_matches[1])
    assert made.subject == message["Subject"] == "Paper Digest: 1 new paper — Diffusion"


def test_a_test_digest_says_so_in_its_subject(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    made, _ = composed(tmp_path, store, renderer, ada_matches[1], test=True)
    assert made.digest.test is True
    assert made.subject.startswith("[test] ")


def test_compose_keeps_the_digest_it_rendered(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    made, _ = composed(tmp_path, store, renderer, ada_matches[1])
    assert [e.paper.title for e in made.digest.entries] == ["Diffusion Models"]
    assert made.digest.recipient.email == "ada@example.org"


def test_the_mailto_unsubscribe_asks_the_sender_to_unsubscribe_the_recipient(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1])
    assert message["List-Unsubscribe"] == (
        "<mailto:digest@example.org?subject=unsubscribe%20ada%40example.org>"
    )


def test_without_a_base_url_there_is_no_one_click_unsubscribe(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1])
    assert message["List-Unsubscribe-Post"] is None


def test_with_a_base_url_list_unsubscribe_has_the_link_before_the_mailto(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1], extra=WEB)
    link = unsubscribe_url(make_config(tmp_path, ADA, extra=WEB), "ada@example.org")
    assert message["List-Unsubscribe"] == (
        f"<{link}>, <mailto:digest@example.org?subject=unsubscribe%20ada%40example.org>"
    )


def test_an_https_unsubscribe_link_is_one_click(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1], extra=WEB)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_plain_http_unsubscribe_link_is_not_one_click(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    web = f'[web]\nbase_url = "http://localhost:8080"\nsecret = "{SECRET}"\n'
    _, message = composed(tmp_path, store, renderer, ada_matches[1], extra=web)
    assert message["List-Unsubscribe"].startswith("<http://localhost:8080/unsubscribe/")
    assert message["List-Unsubscribe-Post"] is None


def test_the_body_links_to_the_unsubscribe_url(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1], extra=WEB)
    link = unsubscribe_url(make_config(tmp_path, ADA, extra=WEB), "ada@example.org")
    assert f"{link}" in text_part(message)


def test_the_body_says_how_to_manage_subscriptions(
    tmp_path: Path, store: Store, renderer: Renderer, ada_matches: tuple[int, list[PendingMatch]]
) -> None:
    _, message = composed(tmp_path, store, renderer, ada_matches[1])
    assert MANAGE_HINT in text_part(message)


# --- ComposeChunk ---------------------------------------------------------------


@pytest.fixture
def three(store: Store, tmp_path: Path) -> tuple[Config, dict[str, int]]:
    """Ada with two matches, Grace with one, Linus with none."""
    config = make_config(tmp_path, ADA, GRACE, subscriber("linus@example.org", "Linus"))
    ids = sync(store, config)
    papers = ingest(store, DIFFUSION, SCORES, AGENTS)
    match(store, ids["ada@example.org"], papers["Diffusion Models"])
    match(store, ids["ada@example.org"], papers["Score Matching"])
    match(store, ids["grace@example.org"], papers["Agents That Plan"], "Agents", "agent")
    return config, ids


def chunk_of(config: Config, ids: dict[str, int], *emails: str) -> ComposeChunk:
    subs = {s.email: s for s in config.subscribers}
    return ComposeChunk(
        tuple(digest_order(config, subs[e], ids[e], None) for e in emails),
        NOW,
        SENDER,
        "digest@example.org",
    )


def test_a_chunk_queues_one_message_per_subscriber_with_pending_matches(
    store: Store, renderer: Renderer, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    chunk_of(config, ids, *ids).run(store, renderer)
    assert sorted(d.recipient for d in store.deliveries()) == [
        "ada@example.org",
        "grace@example.org",
    ]


def test_a_chunk_queues_the_composed_message(
    store: Store, renderer: Renderer, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    chunk_of(config, ids, "ada@example.org").run(store, renderer)
    (delivery,) = store.deliveries()
    message = parse(delivery.message)
    assert delivery.subscriber_id == ids["ada@example.org"]
    assert delivery.message_id == message["Message-ID"].strip()
    assert delivery.message_id.endswith("@example.org>")
    assert delivery.subject == message["Subject"] == "Paper Digest: 2 new papers — Diffusion"
    assert (delivery.papers, message["To"], message["From"]) == (2, "Ada <ada@example.org>", SENDER)
    assert delivery.created_at == NOW
    assert message["Date"].datetime == NOW


def test_a_chunk_claims_exactly_its_subscribers_matches(
    store: Store, renderer: Renderer, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    chunk_of(config, ids, "ada@example.org", "linus@example.org").run(store, renderer)
    left = store.pending_matches_for(list(ids.values()))
    assert {email: len(left[i]) for email, i in ids.items()} == {
        "ada@example.org": 0,
        "grace@example.org": 1,
        "linus@example.org": 0,
    }


def test_a_chunk_skips_subscribers_without_pending_matches(
    store: Store, renderer: Renderer, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    assert chunk_of(config, ids, "linus@example.org").run(store, renderer) == []
    assert store.deliveries() == []


def test_a_chunk_goes_on_past_a_subscriber_without_pending_matches(
    store: Store, renderer: Renderer, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    chunk_of(config, ids, "linus@example.org", "grace@example.org").run(store, renderer)
    assert [d.recipient for d in store.deliveries()] == ["grace@example.org"]


def test_a_chunk_returns_what_it_queued_for_the_log(
    store: Store, renderer: Renderer, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    queued = chunk_of(config, ids, *ids).run(store, renderer)
    by_recipient = {d.recipient: d.message_id for d in store.deliveries()}
    assert queued == [
        Queued("ada@example.org", 2, by_recipient["ada@example.org"]),
        Queued("grace@example.org", 1, by_recipient["grace@example.org"]),
    ]


def test_pending_matches_take_papers_already_read_from_the_given_ones(
    store: Store, three: tuple[Config, dict[str, int]]
) -> None:
    _, ids = three
    ada = ids["ada@example.org"]
    read: dict[int, tuple[Paper, datetime]] = {}
    first = store.pending_matches_for([ada], read)[ada]
    assert sorted(read) == sorted(m.paper_id for m in first if m.paper_id is not None)
    known = Paper("Read before", "Not read again.")
    read = {pid: (known, at) for pid, (_, at) in read.items()}
    again = store.pending_matches_for([ada], read)[ada]
    assert {m.paper for m in again} == {known}


def test_chunks_of_one_stage_share_the_papers_they_read_and_a_new_stage_reads_afresh() -> None:
    shared = compose_module._papers_read("stage-1")
    assert compose_module._papers_read("stage-1") is shared
    assert compose_module._papers_read("stage-2") is not shared
    assert compose_module._papers_read("") is None


def test_a_chunk_carries_each_orders_unsubscribe_link(
    store: Store, renderer: Renderer, tmp_path: Path
) -> None:
    config = make_config(tmp_path, ADA, extra=WEB)
    sid = sync(store, config)["ada@example.org"]
    match(store, sid, ingest(store, DIFFUSION)["Diffusion Models"])
    chunk_of(config, {"ada@example.org": sid}, "ada@example.org").run(store, renderer)
    (delivery,) = store.deliveries()
    assert parse(delivery.message)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


# --- RenderSettings and the workers' compose_chunk --------------------------------


def test_render_settings_build_a_renderer_of_their_templates_and_paper_url(
    tmp_path: Path,
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Renderer().templates_dir, templates)
    settings = RenderSettings(templates, "https://papers.example.org/?q={title}", 3)
    built = settings.renderer()
    assert (built.templates_dir, built.paper_url) == (templates, settings.paper_url)


@pytest.fixture
def worker(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """This process as a compose worker: init_worker run, no renderer yet."""
    monkeypatch.setattr(compose_module, "_store", None)
    monkeypatch.setattr(compose_module, "_renderer", None)
    init_worker(f"sqlite:///{tmp_path / 'mailer.db'}")
    worker_store = compose_module._store
    assert worker_store is not None
    yield worker_store
    worker_store.close()


def test_compose_chunk_needs_init_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose_module, "_store", None)
    chunk = ComposeChunk((), NOW, SENDER, "digest@example.org")
    with pytest.raises(AssertionError, match="init_worker was not run"):
        compose_chunk(chunk, RenderSettings(None, "https://x.example.org/{title}"))


def test_compose_chunk_queues_with_the_store_init_worker_opened(
    worker: Store, store: Store, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    settings = RenderSettings(None, "https://x.example.org/{title}")
    queued = compose_chunk(chunk_of(config, ids, *ids), settings)
    assert [q.recipient for q in queued] == ["ada@example.org", "grace@example.org"]
    assert len(store.deliveries()) == 2


def counting_renderers(monkeypatch: pytest.MonkeyPatch) -> list[RenderSettings]:
    built: list[RenderSettings] = []
    real = RenderSettings.renderer

    def renderer(self: RenderSettings) -> Renderer:
        built.append(self)
        return real(self)

    monkeypatch.setattr(RenderSettings, "renderer", renderer)
    return built


def test_a_worker_builds_its_renderer_once_per_configuration(
    worker: Store, three: tuple[Config, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, ids = three
    built = counting_renderers(monkeypatch)
    settings = RenderSettings(None, "https://x.example.org/{title}", 1)
    compose_chunk(chunk_of(config, ids, "ada@example.org"), settings)
    compose_chunk(chunk_of(config, ids, "grace@example.org"), settings)
    assert built == [settings]


def test_a_worker_builds_a_new_renderer_for_a_new_generation(
    worker: Store, three: tuple[Config, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, ids = three
    built = counting_renderers(monkeypatch)
    first = RenderSettings(None, "https://x.example.org/{title}", 1)
    reloaded = RenderSettings(None, "https://x.example.org/{title}", 2)
    compose_chunk(chunk_of(config, ids, "ada@example.org"), first)
    compose_chunk(chunk_of(config, ids, "grace@example.org"), reloaded)
    assert built == [first, reloaded]
    assert compose_module._renderer is not None
    assert compose_module._renderer[0] == reloaded


def test_a_worker_renders_with_the_renderer_of_its_settings(
    worker: Store, store: Store, three: tuple[Config, dict[str, int]]
) -> None:
    config, ids = three
    settings = RenderSettings(None, "https://papers.example.org/find?q={title}", 1)
    compose_chunk(chunk_of(config, ids, "ada@example.org"), settings)
    (delivery,) = store.deliveries()
    assert "https://papers.example.org/find?q=3DDiffusion" in delivery.message.decode()


# --- the Compose stage ----------------------------------------------------------


class LazyPool(Executor):
    """Runs each submitted call in this process when its result is first
    asked for, logging submissions and waits: a stand-in for a worker pool."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.calls: list[tuple[Any, ...]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        n = len(self.calls)
        self.calls.append((fn, *args))
        self.events.append(("submit", n))
        pool = self

        class Lazy(Future[Any]):
            def result(self, timeout: float | None = None) -> Any:
                if not self.done():
                    pool.events.append(("result", n))
                    self.set_result(fn(*args, **kwargs))
                return super().result(timeout)

        return Lazy()


def stage(
    store: Store, config: Config, pool: Executor | None = None, clock: datetime = NOW
) -> Compose:
    settings = RenderSettings(None, config.render.paper_url, 1)
    return Compose(store, config, lambda: clock, Renderer(), settings, pool)


def many(store: Store, tmp_path: Path, n: int, *, extra: str = "") -> Config:
    """n subscribers, each with one pending match."""
    config = make_config(
        tmp_path, *(subscriber(f"s{i:02d}@example.org", f"S{i}") for i in range(n)), extra=extra
    )
    ids = sync(store, config)
    pid = ingest(store, DIFFUSION)["Diffusion Models"]
    for sid in ids.values():
        match(store, sid, pid)
    return config


def recipients(store: Store) -> list[str]:
    return sorted(d.recipient for d in store.deliveries())


def test_the_stage_queues_every_due_digest_and_counts_them(
    store: Store, tmp_path: Path, three: tuple[Config, dict[str, int]]
) -> None:
    config, _ = three
    report = PassReport()
    stage(store, config).run(report, lambda: False)
    assert report.digests == 2
    assert recipients(store) == ["ada@example.org", "grace@example.org"]


def test_the_stage_composes_with_the_smtp_sender_at_the_clocks_time(
    store: Store, tmp_path: Path, three: tuple[Config, dict[str, int]]
) -> None:
    config, _ = three
    later = NOW + timedelta(minutes=5)
    stage(store, config, clock=later).run(PassReport(), lambda: False)
    for delivery in store.deliveries():
        message = parse(delivery.message)
        assert (message["From"], delivery.created_at) == (SENDER, later)
        assert delivery.message_id.endswith("@example.org>")


def test_the_stage_composes_each_digest_since_the_last_one(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA)
    sid = sync(store, config)["ada@example.org"]
    earlier = NOW - timedelta(days=2)
    store.enqueue_many([Outgoing(sid, "ada@example.org", "<m1@x>", "s", b"m", [])], earlier)
    match(store, sid, ingest(store, DIFFUSION)["Diffusion Models"])
    stage(store, config).run(PassReport(), lambda: False)
    latest = next(d for d in store.deliveries() if d.message_id != "<m1@x>")
    assert f"matched Diffusion since {format_since(earlier)}." in text_part(parse(latest.message))


def test_the_stage_queues_only_due_subscribers(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, ADA, subscriber("grace@example.org", schedule="daily 10:00"))
    ids = sync(store, config)
    pid = ingest(store, DIFFUSION)["Diffusion Models"]
    for sid in ids.values():
        match(store, sid, pid)
    stage(store, config).run(PassReport(), lambda: False)
    assert recipients(store) == ["ada@example.org"]


def test_the_stage_logs_each_queued_digest(
    store: Store,
    tmp_path: Path,
    three: tuple[Config, dict[str, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, _ = three
    with caplog.at_level("INFO", logger="mailer"):
        stage(store, config).run(PassReport(), lambda: False)
    ids = {d.recipient: d.message_id for d in store.deliveries()}
    assert [r.getMessage() for r in caplog.records if r.name == "mailer"] == [
        f"digest queued subscriber={email} papers={n} message_id={ids[email]}"
        for email, n in (("ada@example.org", 2), ("grace@example.org", 1))
    ]


def test_the_stage_composes_in_chunks_of_compose_chunk(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "COMPOSE_CHUNK", 2)
    config = many(store, tmp_path, 5)
    sizes: list[int] = []
    real = ComposeChunk.run

    def run(self: ComposeChunk, store: Store, renderer: Renderer) -> list[Queued]:
        sizes.append(len(self.orders))
        return real(self, store, renderer)

    monkeypatch.setattr(ComposeChunk, "run", run)
    report = PassReport()
    stage(store, config).run(report, lambda: False)
    assert sizes == [2, 2, 1]
    assert report.digests == 5
    assert len(recipients(store)) == 5


def test_the_stage_stops_between_chunks_when_told(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "COMPOSE_CHUNK", 2)
    config = many(store, tmp_path, 5)
    report = PassReport()
    stage(store, config).run(report, lambda: report.digests >= 2)
    assert report.digests == 2
    assert recipients(store) == ["s00@example.org", "s01@example.org"]


def test_a_stage_told_to_stop_first_composes_nothing(store: Store, tmp_path: Path) -> None:
    config = many(store, tmp_path, 2)
    report = PassReport()
    stage(store, config).run(report, lambda: True)
    assert (report.digests, store.deliveries()) == (0, [])


def test_below_the_pool_threshold_the_stage_composes_in_process(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 3)
    config = many(store, tmp_path, 2)
    pool = LazyPool()
    report = PassReport()
    stage(store, config, pool).run(report, lambda: False)
    assert (pool.calls, report.digests) == ([], 2)


def test_at_the_pool_threshold_the_stage_hands_chunks_to_the_pool(
    store: Store, worker: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 3)
    monkeypatch.setattr(compose_module, "COMPOSE_CHUNK", 2)
    config = many(store, tmp_path, 3)
    pool = LazyPool()
    composing = stage(store, config, pool)
    report = PassReport()
    composing.run(report, lambda: False)
    assert [(fn, len(chunk.orders), settings) for fn, chunk, settings in pool.calls] == [
        (compose_chunk, 2, composing.settings),
        (compose_chunk, 1, composing.settings),
    ]
    assert report.digests == 3
    assert len(recipients(store)) == 3


def test_the_pool_composes_at_most_pool_depth_chunks_ahead(
    store: Store, worker: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 1)
    monkeypatch.setattr(compose_module, "COMPOSE_CHUNK", 1)
    monkeypatch.setattr(compose_module, "POOL_DEPTH", 2)
    config = many(store, tmp_path, 5)
    pool = LazyPool()
    report = PassReport()
    stage(store, config, pool).run(report, lambda: False)
    assert pool.events == [
        ("submit", 0),
        ("submit", 1),
        ("submit", 2),
        ("result", 0),
        ("submit", 3),
        ("result", 1),
        ("submit", 4),
        ("result", 2),
        ("result", 3),
        ("result", 4),
    ]
    assert report.digests == 5


def test_a_pooled_stage_stops_submitting_when_told(
    store: Store, worker: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 1)
    monkeypatch.setattr(compose_module, "COMPOSE_CHUNK", 1)
    config = many(store, tmp_path, 4)
    pool = LazyPool()
    report = PassReport()
    stage(store, config, pool).run(report, lambda: len(pool.calls) >= 2)
    assert (len(pool.calls), report.digests) == (2, 2)


# The compose pool of a process that is then killed: its workers' pids on
# the first line, then it waits for its kill.
KILLED_PARENT = """
import os, sys
from mailer.actions import compose_pool
from mailer.config import parse_config

config = parse_config(f'[database]\\nurl = "sqlite:///{sys.argv[1]}"\\n', source="test")
with compose_pool(config) as pool:
    print(*{pool.submit(os.getpid).result() for _ in range(8)}, flush=True)
    sys.stdin.read()
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on Linux process descriptors")
def test_compose_workers_exit_when_their_daemon_is_killed(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(tmp_path / "mailer.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as parent:
        try:
            assert parent.stdout is not None
            workers = [int(pid) for pid in parent.stdout.readline().split()]
            assert workers
            # Each descriptor becomes readable when its process ends.
            exits = [os.pidfd_open(pid) for pid in workers]
        finally:
            parent.kill()
    try:
        pending = set(exits)
        deadline = time.monotonic() + 30
        while pending and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(pending), [], [], left)
            pending.difference_update(ready)
        assert not pending
    finally:
        for fd in exits:
            os.close(fd)
