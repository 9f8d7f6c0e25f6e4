"""Feedback from the digest: signed "more like this" / "not for me" links per
subscriber and paper, a confirm page on GET, the mark recorded on POST, and
``mailer feedback list``."""

from __future__ import annotations

import html as html_lib
import json
import mailbox
import re
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from mailer.config import parse_config
from mailer.digests import Digest, Entry, Recipient, Section
from mailer.papers import Paper
from mailer.render import Renderer
from mailer.store import MarkKind, MarkOutcome, Store
from mailer.tokens import (
    feedback_urls,
    make_feedback_token,
    make_token,
    read_feedback_token,
    read_token,
)
from tests.test_cli import copy_seeds, mailer, write_config
from tests.test_web import NOW, SECRET, serve

ADA = "ada@example.org"


# --- tokens ---------------------------------------------------------------------


def test_a_feedback_token_names_its_subscriber_and_paper() -> None:
    token = make_feedback_token("Ada@Example.org", 42, SECRET)
    assert read_feedback_token(token, SECRET) == (ADA, 42)


def test_unsubscribe_and_feedback_tokens_never_pass_for_each_other() -> None:
    assert read_feedback_token(make_token(ADA, SECRET), SECRET) is None
    assert read_token(make_feedback_token(ADA, 42, SECRET), SECRET) is None


def test_a_feedback_token_for_another_paper_or_secret_is_refused() -> None:
    ada_1 = make_feedback_token(ADA, 1, SECRET)
    ada_2 = make_feedback_token(ADA, 2, SECRET)
    assert (
        read_feedback_token(ada_2.partition(".")[0] + "." + ada_1.partition(".")[2], SECRET) is None
    )
    assert (
        read_feedback_token(make_feedback_token(ADA, 1, "another-secret-0123456"), SECRET) is None
    )


def test_feedback_urls_share_the_token_and_name_the_mark() -> None:
    more, less = feedback_urls("https://digest.example.org/", ADA, 7, SECRET)
    assert more.startswith("https://digest.example.org/feedback/")
    assert more.removesuffix("/more") == less.removesuffix("/less")


# --- the store ------------------------------------------------------------------


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    store.sync_subscribers([(ADA, "Ada", [("Diffusion", "diffusion")])], NOW)
    store.ingest(
        path="/d/1.txt",
        sha256="h1",
        size=1,
        page_date=None,
        papers=[Paper("Fast Model Editing at Scale", "Editing."), Paper("Model soups", "Soup.")],
        warnings=0,
        now=NOW,
    )
    yield store
    store.close()


def paper_id(store: Store, title: str) -> int:
    found = [i for i, p in store.papers_since(NOW - timedelta(days=1)) if p.title == title]
    return found[0]


def test_a_mark_is_recorded_once_and_the_newest_one_stands(store: Store) -> None:
    soups = paper_id(store, "Model soups")
    assert store.record_mark(ADA, soups, MarkKind.MORE, NOW) is MarkOutcome.RECORDED
    assert store.record_mark("ADA@example.org", soups, MarkKind.MORE, NOW) is MarkOutcome.UNCHANGED
    later = NOW + timedelta(hours=1)
    assert store.record_mark(ADA, soups, MarkKind.LESS, later) is MarkOutcome.RECORDED
    marks = store.marks_of(ADA)
    assert marks is not None
    assert [(m.paper.title, m.kind, m.at) for m in marks] == [("Model soups", MarkKind.LESS, later)]


def test_marks_of_an_unknown_subscriber_or_paper_are_not_recorded(store: Store) -> None:
    soups = paper_id(store, "Model soups")
    assert store.record_mark("eve@example.org", soups, MarkKind.MORE, NOW) is (
        MarkOutcome.NO_SUBSCRIBER
    )
    assert store.record_mark(ADA, 999_999, MarkKind.MORE, NOW) is MarkOutcome.NO_PAPER
    assert store.marks_of(ADA) == []
    assert store.marks_of("eve@example.org") is None


# --- the endpoint ---------------------------------------------------------------


def link(base: str, store: Store, kind: str = "more", email: str = ADA) -> str:
    more, less = feedback_urls(base, email, paper_id(store, "Model soups"), SECRET)
    return more if kind == "more" else less


def test_get_shows_a_confirm_page_and_changes_nothing(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for kind in ("more", "less", "more"):
            async with session.get(link(base, store, kind), allow_redirects=False) as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == "no-store"
                page = await response.text()
                assert '<form method="post">' in page
                assert "Model soups" in page
                assert "a**@example.org" in page

    serve(store, scenario)
    assert store.marks_of(ADA) == []


def test_post_records_the_mark_and_a_replay_changes_nothing(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for _ in range(2):
            async with session.post(link(base, store, "less"), allow_redirects=False) as response:
                assert response.status == 200
                assert "Noted: fewer papers like <b>Model soups</b>" in await response.text()

    serve(store, scenario)
    marks = store.marks_of(ADA)
    assert marks is not None
    assert [(m.paper.title, m.kind) for m in marks] == [("Model soups", MarkKind.LESS)]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_forged_feedback_token_is_404_and_records_nothing(store: Store, method: str) -> None:
    forged = make_feedback_token(ADA, paper_id(store, "Model soups"), "not-the-secret-0123456")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for url in (
            f"{base}/feedback/{forged}/more",
            f"{base}/feedback/{make_token(ADA, SECRET)}/more",
            link(base, store).removesuffix("/more") + "/maybe",
        ):
            async with session.request(method, url, allow_redirects=False) as response:
                assert response.status == 404, url
                body = await response.text()
            assert "Model soups" not in body
            assert "<form" not in body

    serve(store, scenario)
    assert store.marks_of(ADA) == []


def test_a_genuine_link_for_an_address_no_longer_subscribed_records_nothing(
    store: Store,
) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        url = link(base, store, email="eve@example.org")
        async with session.post(url, allow_redirects=False) as response:
            assert response.status == 200
            assert "Not subscribed" in await response.text()

    serve(store, scenario)


# --- the digest -----------------------------------------------------------------


def digest_of_two() -> Digest:
    entries = tuple(
        Entry(Paper(t, "Abstract."), "S", (), (), (), (), paper_id=i)
        for i, t in enumerate(("First paper", "Second paper"), start=1)
    )
    return Digest(Recipient(ADA, "Ada", ("S",)), (Section("S", entries),))


def test_each_paper_in_the_html_part_has_its_two_links_and_the_text_part_none() -> None:
    rendered = Renderer().render(
        digest_of_two(),
        unsubscribe_url=None,
        manage_hint="",
        feedback=lambda i: feedback_urls("https://digest.example.org", ADA, i, SECRET),
    )
    links = re.findall(r'href="(https://digest\.example\.org/feedback/[^"]+)"', rendered.html)
    assert len(links) == 4
    tokens = [read_feedback_token(u.split("/")[-2], SECRET) for u in links]
    assert tokens == [(ADA, 1), (ADA, 1), (ADA, 2), (ADA, 2)]
    assert [u.rsplit("/", 1)[1] for u in links] == ["more", "less", "more", "less"]
    assert ">More like this</a>" in rendered.html
    assert ">Not for me</a>" in rendered.html
    assert "feedback" not in rendered.text


def test_without_web_a_digest_has_no_feedback_links() -> None:
    rendered = Renderer().render(digest_of_two(), unsubscribe_url=None, manage_hint="")
    assert "/feedback/" not in rendered.html
    assert "More like this" not in rendered.html


def web_config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "[delivery]",
            f'[web]\nbase_url = "https://digest.example.org"\nsecret = "{SECRET}"\n[delivery]',
        ),
        encoding="utf-8",
    )
    return path


def test_a_pass_links_each_paper_of_the_html_digest_to_the_stored_paper(tmp_path: Path) -> None:
    config_path = web_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config_path), "ingest", cwd=tmp_path).returncode == 0
    config = parse_config(config_path.read_text(), source="c", base_dir=tmp_path)
    store = Store(config.database.url)
    try:
        for message in mailbox.Maildir(tmp_path / "outbox", create=False):
            parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            html = parsed.get_body(("html",))
            assert html is not None
            content = html.get_content()
            pairs = re.findall(
                r'<h3 class="title"[^>]*><a [^>]*>(.*?)</a></h3>.*?'
                r'href="https://digest\.example\.org/feedback/([^/"]+)/more"',
                content,
                re.DOTALL,
            )
            assert pairs
            for title_html, token in pairs:
                found = read_feedback_token(token, SECRET)
                assert found is not None
                email, paper = found
                assert email == parsed["To"].addresses[0].addr_spec
                stored = store.paper(paper)
                assert stored is not None
                assert html_lib.unescape(re.sub(r"<[^>]+>", "", title_html)) == " ".join(
                    stored.title.split()
                )
    finally:
        store.close()


def test_feedback_list_shows_a_subscribers_marks_newest_first(tmp_path: Path) -> None:
    config_path = web_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config_path), "ingest", cwd=tmp_path).returncode == 0
    config = parse_config(config_path.read_text(), source="c", base_dir=tmp_path)
    store = Store(config.database.url)
    try:
        papers = store.papers_since(NOW - timedelta(days=10_000))[:2]
        for (i, _), kind in zip(papers, (MarkKind.MORE, MarkKind.LESS), strict=True):
            store.record_mark(ADA, i, kind, NOW)
    finally:
        store.close()
    result = mailer("--config", str(config_path), "feedback", "list", ADA, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [m["mark"] for m in report["marks"]] == ["not for me", "more like this"]
    assert [m["title"] for m in report["marks"]] == [p.title for _, p in reversed(papers)]
    assert report["model"] is None
    text = mailer("--config", str(config_path), "feedback", "list", ADA, cwd=tmp_path)
    assert "2 marks by ada@example.org; no model: it needs 3" in " ".join(text.stdout.split())
    unknown = mailer("--config", str(config_path), "feedback", "list", "eve@example.org",
                     cwd=tmp_path)  # fmt: skip
    assert unknown.returncode == 2
    assert "no subscriber 'eve@example.org'" in unknown.stderr
