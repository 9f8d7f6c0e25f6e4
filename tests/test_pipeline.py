"""One pass of the pipeline, end to end in-process: dumps in a folder, digests
out over real SMTP (aiosmtpd on loopback), state in a real SQLite file."""

from __future__ import annotations

import asyncio
import html
import multiprocessing
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select

import mailer.pipeline.compose as compose_module
import mailer.pipeline.match as match_module
from mailer.config import Config, parse_config
from mailer.delivery import SmtpTransport, make_transport
from mailer.dumps import format_dump, parse_dump
from mailer.matching import Doc, Stats, rescore
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.pipeline.compose import init_worker
from mailer.pipeline.match import (
    build_engine,
    compile_queries,
    match_new_papers,
    subscription_order,
    sync_subscribers,
)
from mailer.store import Store
from mailer.store.schema import MATCHES, PAPER_COLUMNS, PAPERS, paper_from_row
from mailer.textfmt import join_names
from tests.conftest import SEEDS, SmtpServer, free_port
from tests.test_faults import Rig

TODAY = date(2026, 11, 23)
NEW = Paper(
    "Guided Diffusion Model Distillation",
    "A diffusion model distilled into four steps.",
    authors=4,
    published=date(2026, 11, 20),
    upvotes=12,
)


def config_for(tmp_path: Path, port: int, *, extra: str = "") -> Config:
    text = f"""
[watch]
dir = "dumps"
interval_seconds = 0.2
settle_seconds = 0
[database]
url = "sqlite:///{tmp_path / "mailer.db"}"
[delivery]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout_seconds = 5
sender = "Paper Digest <digest@example.org>"
[[subscribers]]
email = "ada@example.org"
name = "Ada"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model" OR "score matching"'
[[subscribers]]
email = "grace@example.org"
name = "Grace"
[[subscribers.subscriptions]]
name = "Agents"
query = 'agent OR agents'
{extra}
"""
    return parse_config(text, source="test.toml", base_dir=tmp_path)


class Harness:
    def __init__(self, tmp_path: Path, port: int, extra: str = "") -> None:
        self.tmp_path = tmp_path
        self.dumps = tmp_path / "dumps"
        self.dumps.mkdir(exist_ok=True)
        self.config = config_for(tmp_path, port, extra=extra)
        self.store = Store(self.config.database.url)
        self.pipeline = Pipeline(
            self.config,
            self.store,
            lambda: make_transport(self.pipeline.config),
            clock=lambda: datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        )

    def run(self) -> PassReport:
        return asyncio.run(self.pipeline.run_pass())

    def drop(self, name: str, text: str | bytes) -> Path:
        path = self.dumps / name
        if isinstance(text, str):
            path.write_text(text, encoding="utf-8")
        else:
            path.write_bytes(text)
        old = time.time() - 10
        os.utime(path, (old, old))
        return path

    def drop_seeds(self) -> None:
        for seed in sorted(SEEDS.glob("*.txt")):
            self.drop(seed.name, seed.read_bytes())


@pytest.fixture
def harness(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Harness]:
    h = Harness(tmp_path, smtp_server.port)
    yield h
    h.store.close()


def test_first_pass_mails_each_subscriber_one_digest(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    harness.drop_seeds()
    report = harness.run()
    assert report.dumps == 5
    assert report.sent == 2
    by_rcpt = {m.recipients[0]: m.message for m in smtp_server.messages}
    assert set(by_rcpt) == {"ada@example.org", "grace@example.org"}
    ada = by_rcpt["ada@example.org"]
    assert ada["To"] == "Ada <ada@example.org>"
    assert ada["From"] == "Paper Digest <digest@example.org>"
    assert ada["Message-ID"]
    assert ada["Date"]
    assert ada["List-Unsubscribe"]
    assert ada.get_content_type() == "multipart/alternative"


def test_worker_processes_compose_and_queue_the_same_digests(
    tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a compose pool, workers read the matches, render and queue each
    chunk with their own store connection; the pass is the same."""
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 0)
    h = Harness(tmp_path, smtp_server.port)
    monkeypatch.setattr(h.pipeline, "renderer", None)  # composing here would fail
    config = h.config
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(config.database.url,),
    ) as pool:
        h.pipeline.compose_pool = pool
        h.drop_seeds()
        report = h.run()
    assert (report.digests, report.sent) == (2, 2)
    assert sorted(m.recipients[0] for m in smtp_server.messages) == [
        "ada@example.org",
        "grace@example.org",
    ]
    assert {d.status for d in h.store.deliveries()} == {"sent"}
    assert h.store.pending_matches_for(list(h.store.active_subscriber_ids().values())) == {
        i: [] for i in h.store.active_subscriber_ids().values()
    }
    h.store.close()


def test_a_reload_reaches_the_worker_processes(
    tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers render with the configuration of the pass, not the one they
    started with: a changed paper_url shows in the next digests."""
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 0)
    h = Harness(tmp_path, smtp_server.port)
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(h.config.database.url,),
    ) as pool:
        h.pipeline.compose_pool = pool
        h.drop_seeds()
        h.run()
        reloaded = config_for(
            tmp_path,
            smtp_server.port,
            extra='[render]\npaper_url = "https://papers.example/{title}"',
        )
        h.pipeline.configure(reloaded)
        h.drop("later.txt", format_dump(TODAY, [NEW]))
        h.run()
    before, after = smtp_server.messages[0], smtp_server.messages[-1]
    assert "https://arxiv.org/" in before.data.decode()
    assert "https://papers.example/" in after.data.decode()
    assert "https://arxiv.org/" not in after.data.decode()
    h.store.close()


def test_digest_subject_counts_its_papers(harness: Harness, smtp_server: SmtpServer) -> None:
    harness.drop_seeds()
    harness.run()
    ada = next(m for m in smtp_server.messages if m.recipients == ["ada@example.org"])
    pending = harness.store.deliveries()[0]
    assert str(pending.papers) in ada.message["Subject"]


def test_second_pass_sends_nothing(harness: Harness, smtp_server: SmtpServer) -> None:
    harness.drop_seeds()
    harness.run()
    report = harness.run()
    assert (report.dumps, report.digests, report.sent) == (0, 0, 0)
    assert len(smtp_server.messages) == 2


def test_restart_does_not_mail_already_ingested_dumps(
    harness: Harness, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    harness.drop_seeds()
    harness.run()
    again = Harness(tmp_path, smtp_server.port)
    report = again.run()
    again.store.close()
    assert (report.dumps, report.sent) == (0, 0)
    assert len(smtp_server.messages) == 2


def test_dump_repeating_old_papers_mails_only_the_new_ones(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    harness.drop_seeds()
    harness.run()
    old = Paper(
        "Solving Inverse Problems via Diffusion-Based Priors: "
        "An Approximation-Free Ensemble Sampling Approach",
        "A diffusion model prior.",
    )
    harness.drop("later.txt", format_dump(TODAY, [old, NEW]))
    report = harness.run()
    assert (report.papers_new, report.papers_seen) == (1, 1)
    (digest,) = smtp_server.messages[2:]
    assert digest.recipients == ["ada@example.org"]
    text = digest.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Guided" in text
    assert "four steps" in text
    assert "1 new paper" in digest.message["Subject"]


def test_same_dump_under_another_name_is_not_new(harness: Harness, smtp_server: SmtpServer) -> None:
    harness.drop("a.txt", format_dump(TODAY, [NEW]))
    harness.run()
    harness.drop("copy-of-a.txt", format_dump(TODAY, [NEW]))
    report = harness.run()
    assert (report.dumps, report.known, report.sent) == (0, 1, 0)
    assert len(smtp_server.messages) == 1


def test_changed_dump_is_read_again_and_only_its_unseen_papers_are_new(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    path = harness.drop("a.txt", format_dump(TODAY, [NEW]))
    harness.run()
    extra = Paper("Score Matching for Graphs", "We use score matching on graphs.")
    harness.drop(path.name, format_dump(TODAY, [NEW, extra]))
    report = harness.run()
    assert (report.dumps, report.papers_new, report.papers_seen) == (1, 1, 1)
    assert "Score Matching for Graphs" in smtp_server.messages[-1].data.decode()


def test_bad_files_are_reported_and_skipped(harness: Harness, smtp_server: SmtpServer) -> None:
    harness.drop("binary.txt", b"\x00\x01\x02PNG\x00" * 50)
    harness.drop("notes.txt", "shopping list\n\neggs\n")
    harness.drop("good.txt", format_dump(TODAY, [NEW]))
    report = harness.run()
    assert (report.refused, report.dumps, report.sent) == (2, 1, 1)
    assert any("binary.txt" in e for e in report.errors)
    refused = {Path(d.path).name: d for d in harness.store.dumps() if d.status == "refused"}
    assert set(refused) == {"binary.txt", "notes.txt"}
    assert harness.run().refused == 0


def test_hidden_and_partial_files_are_ignored(harness: Harness, smtp_server: SmtpServer) -> None:
    for name in (".hidden.txt", "upload.tmp", "upload.txt.part"):
        harness.drop(name, format_dump(TODAY, [NEW]))
    report = harness.run()
    assert (report.dumps, report.refused, len(smtp_server.messages)) == (0, 0, 0)


def test_file_still_being_written_waits_until_complete(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    harness = Harness(tmp_path, smtp_server.port, extra="")
    harness.pipeline.scanner.settle = 0.5
    path = harness.dumps / "growing.txt"
    full = format_dump(
        TODAY, [NEW, Paper("Diffusion Model Agents", "Agents with a diffusion model.")]
    )
    half = len(full) // 2

    def write_rest(seconds: float) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(full[half:])

    path.write_text(full[:half], encoding="utf-8")
    harness.pipeline.scanner.sleep = write_rest
    first = harness.run()
    harness.pipeline.scanner.sleep = lambda s: None
    settled = time.time() - 1  # since written, the file stayed unchanged past settle
    os.utime(path, (settled, settled))
    second = harness.run()
    harness.store.close()
    assert first.dumps == 0
    assert (second.dumps, second.papers_new) == (1, 2)


def test_markup_in_a_dump_is_shown_literally(harness: Harness, smtp_server: SmtpServer) -> None:
    evil = Paper(
        "<script>alert(1)</script> Diffusion Model {{ config }}",
        "A diffusion model with <b>bold</b> & {% raw %} claims.",
    )
    harness.drop("evil.txt", format_dump(TODAY, [evil]))
    harness.run()
    (got,) = smtp_server.messages
    html = got.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = got.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "{{ config }}" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; {% raw %}" in html
    assert "<script>alert(1)</script>" in text


def test_smtp_down_keeps_digests_until_it_is_back(tmp_path: Path, smtp_server: SmtpServer) -> None:
    harness = Harness(tmp_path, free_port())
    harness.drop_seeds()
    down = harness.run()
    assert (down.digests, down.sent, down.deferred) == (2, 0, 2)
    harness.pipeline.transport = lambda: SmtpTransport(
        harness.config.smtp.model_copy(update={"port": smtp_server.port})
    )
    harness.pipeline.clock = lambda: datetime(2026, 11, 23, 9, 5, tzinfo=UTC)
    up = harness.run()
    harness.store.close()
    assert (up.digests, up.sent) == (0, 2)
    assert sorted(m.recipients[0] for m in smtp_server.messages) == [
        "ada@example.org",
        "grace@example.org",
    ]


def test_refused_recipient_fails_alone(harness: Harness, smtp_server: SmtpServer) -> None:
    smtp_server.sink.refuse["ada@example.org"] = "550 5.1.1 mailbox unavailable"
    harness.drop_seeds()
    report = harness.run()
    assert (report.sent, report.failed) == (1, 1)
    assert [m.recipients for m in smtp_server.messages] == [["grace@example.org"]]
    statuses = {d.recipient: (d.status, d.last_reply) for d in harness.store.deliveries()}
    assert statuses["ada@example.org"][0] == "failed"
    assert "550" in (statuses["ada@example.org"][1] or "")
    assert harness.run().sent == 0


def test_temporary_refusal_is_retried_and_delivered_once(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    smtp_server.sink.refuse["ada@example.org"] = "451 4.3.0 try again later"
    harness.drop_seeds()
    first = harness.run()
    assert (first.sent, first.deferred) == (1, 1)
    del smtp_server.sink.refuse["ada@example.org"]
    harness.pipeline.clock = lambda: datetime(2026, 11, 23, 9, 5, tzinfo=UTC)
    second = harness.run()
    assert second.sent == 1
    assert harness.run().sent == 0
    assert sorted(m.recipients[0] for m in smtp_server.messages) == [
        "ada@example.org",
        "grace@example.org",
    ]


def test_removed_subscriber_gets_no_more_mail(tmp_path: Path, smtp_server: SmtpServer) -> None:
    harness = Harness(tmp_path, smtp_server.port)
    without_ada = harness.config.model_copy(update={"subscribers": harness.config.subscribers[1:]})
    harness.pipeline.configure(without_ada)
    harness.drop_seeds()
    harness.run()
    harness.store.close()
    assert [m.recipients for m in smtp_server.messages] == [["grace@example.org"]]


def test_new_subscriber_does_not_get_the_back_catalogue(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    harness = Harness(tmp_path, smtp_server.port)
    harness.drop_seeds()
    harness.run()
    extra = harness.config.subscribers[0].model_copy(update={"email": "new@example.org"})
    harness.pipeline.configure(
        harness.config.model_copy(update={"subscribers": [*harness.config.subscribers, extra]})
    )
    assert harness.run().sent == 0
    harness.drop("fresh.txt", format_dump(TODAY, [NEW]))
    harness.run()
    harness.store.close()
    assert sorted(m.recipients[0] for m in smtp_server.messages[2:]) == [
        "ada@example.org",
        "new@example.org",
    ]


def test_maildir_transport_needs_no_server(tmp_path: Path) -> None:
    harness = Harness(tmp_path, free_port())
    harness.pipeline.configure(
        harness.config.model_copy(
            update={"delivery": harness.config.delivery.model_copy(update={"transport": "maildir"})}
        )
    )
    harness.drop_seeds()
    report = harness.run()
    harness.store.close()
    assert report.sent == 2
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 2


# --- ranking: one scale for every paper of a digest ----------------------------------


def daily_digest_links(tmp_path: Path, server: SmtpServer, batches: list[list[Path]]) -> list[str]:
    """Drop the seed dumps in ``batches``, one pass per batch during the day,
    then return the paper links of the next morning's digest, in order."""
    tmp_path.mkdir()
    rig = Rig(tmp_path, server.port, subscribers=[("ada@example.org", "daily 08:00", "UTC")])
    rig.run()  # subscribed from START, before any paper
    for batch in batches:
        for seed in batch:
            (rig.dumps / seed.name).write_bytes(seed.read_bytes())
        rig.later(minutes=10)
    assert server.messages == []
    rig.later(days=1)
    rig.store.close()
    (message,) = server.messages
    server.messages.clear()
    text = message.message.get_body(("plain",))
    assert text is not None
    return re.findall(r"^https://\S+", text.get_content(), re.M)


def test_digest_order_does_not_depend_on_how_dumps_arrived(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """Scores are computed against the stored statistics when the digest is
    composed, so one pass of five dumps and five passes in reverse order
    rank the same papers the same way."""
    seeds = sorted(SEEDS.glob("*.txt"))
    at_once = daily_digest_links(tmp_path / "a", smtp_server, [seeds])
    one_by_one = daily_digest_links(tmp_path / "b", smtp_server, [[s] for s in reversed(seeds)])
    assert len(at_once) > 5
    assert one_by_one == at_once


# --- the middle: what matched, and in which order ----------------------------------


def maildir_harness(tmp_path: Path, extra: str = "") -> Harness:
    harness = Harness(tmp_path, free_port(), extra)
    delivery = harness.config.delivery.model_copy(update={"transport": "maildir"})
    harness.pipeline.configure(harness.config.model_copy(update={"delivery": delivery}))
    return harness


def maildir_digests(tmp_path: Path) -> dict[str, EmailMessage]:
    """The messages delivered to the Maildir, by recipient address."""
    out = {}
    for path in (tmp_path / "outbox" / "new").iterdir():
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        out[parseaddr(parsed["To"])[1]] = parsed
    return out


def part(message: EmailMessage, kind: str) -> str:
    body = message.get_body((kind,))
    assert isinstance(body, EmailMessage)
    content: str = body.get_content()
    return content


def entry_titles(message: EmailMessage) -> list[str]:
    """Paper titles in the order the HTML part shows them, marks removed."""
    titles = re.findall(r'<a class="title-link"[^>]*>(.*?)</a>', part(message, "html"), re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", t)) for t in titles]


@pytest.fixture
def maildir(tmp_path: Path) -> Iterator[Harness]:
    harness = maildir_harness(tmp_path)
    yield harness
    harness.store.close()


def test_digest_text_says_which_terms_each_paper_matched(maildir: Harness, tmp_path: Path) -> None:
    maildir.drop_seeds()
    maildir.run()
    ada = maildir_digests(tmp_path)["ada@example.org"]
    matched = [line for line in part(ada, "plain").splitlines() if line.startswith("Matched:")]
    assert len(matched) == len(entry_titles(ada)) > 0
    assert set(matched) == {'Matched: "diffusion model"'}


def test_digest_html_marks_the_matched_words(maildir: Harness, tmp_path: Path) -> None:
    maildir.drop_seeds()
    maildir.run()
    ada = maildir_digests(tmp_path)["ada@example.org"]
    marks = re.findall(r"<mark[^>]*>(.*?)</mark>", part(ada, "html"), re.S)
    assert marks
    assert {m.casefold() for m in marks} <= {"diffusion model", "diffusion models"}


def test_stored_matches_keep_the_terms_that_matched(tmp_path: Path) -> None:
    # A daily schedule whose slot has not come yet: the matches wait in the store.
    harness = maildir_harness(tmp_path)
    ada = harness.config.subscribers[0].model_copy(update={"schedule": "daily 08:00"})
    harness.pipeline.configure(
        harness.config.model_copy(update={"subscribers": [ada, *harness.config.subscribers[1:]]})
    )
    harness.drop("new.txt", format_dump(TODAY, [NEW]))
    report = harness.run()
    (pending,) = harness.store.pending_matches(harness.store.active_subscriber_ids()[ada.email])
    harness.store.close()
    assert report.sent == 0
    assert (pending.paper.title, pending.subscriptions) == (NEW.title, ("Diffusion",))
    assert pending.subscription_terms == (("diffusion model",),)


# A corpus where "transformer" is in every title and "mamba" in one abstract.
LIN = """
[[subscribers]]
email = "lin@example.org"
name = "Lin"
[[subscribers.subscriptions]]
name = "Sequence models"
query = 'transformer OR mamba'
"""
COMMON = [
    Paper(f"Transformer Study {n}", f"We measure the {n} heads of a network on benchmarks.")
    for n in ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
]
RARE = Paper(
    "Linear-Time Sequence Modelling",
    "We scale recurrent state spaces to long inputs, compare them with attention on many "
    "benchmarks, study their memory, their speed and their accuracy, and close with a "
    "selective variant in the style of mamba.",
)
FILLER = [
    Paper(f"Graph Study {n}", f"We colour the {n} graph of a family with few colours.")
    for n in ("one", "two", "three", "four", "five", "six")
]


def test_a_word_few_papers_contain_ranks_above_one_most_papers_contain(tmp_path: Path) -> None:
    """Relevance weighs a word by how rare it is in all papers seen: "mamba",
    once deep in one abstract, beats "transformer", in the title of many."""
    harness = maildir_harness(tmp_path, LIN)
    harness.drop("corpus.txt", format_dump(TODAY, [*COMMON, RARE, *FILLER]))
    harness.run()
    harness.store.close()
    lin = maildir_digests(tmp_path)["lin@example.org"]
    titles = entry_titles(lin)
    assert sorted(titles) == sorted(p.title for p in [*COMMON, RARE])
    assert titles[0] == RARE.title


TITLE_HIT = Paper("Mamba Layers for Speech", "We replace attention in a speech recogniser.")


@pytest.mark.parametrize(
    "dump",
    [
        pytest.param([*FILLER, TITLE_HIT, RARE], id="title-paper-first-in-the-dump"),
        pytest.param([RARE, TITLE_HIT, *FILLER], id="abstract-paper-first-in-the-dump"),
    ],
)
def test_a_paper_with_the_word_in_its_title_ranks_above_one_with_it_deep_in_its_abstract(
    tmp_path: Path, dump: list[Paper]
) -> None:
    harness = maildir_harness(tmp_path, LIN)
    harness.drop("corpus.txt", format_dump(TODAY, dump))
    harness.run()
    harness.store.close()
    lin = maildir_digests(tmp_path)["lin@example.org"]
    assert entry_titles(lin) == [TITLE_HIT.title, RARE.title]


def test_a_pass_counts_every_new_paper_in_the_statistics(maildir: Harness) -> None:
    maildir.drop_seeds()
    maildir.run()
    assert maildir.store.stats().papers == maildir.store.count_papers() > 0


MATCHING = """
[[subscribers]]
email = "ada@example.org"
[[subscribers.subscriptions]]
name = "Diffusion"
query = 'diffusion OR "score matching"'
[[subscribers.subscriptions]]
name = "Sampling"
query = 'sampling -language'
[[subscribers]]
email = "lin@example.org"
[[subscribers.subscriptions]]
name = "Models"
query = 'language model*'
[[subscribers.subscriptions]]
name = "Reasoning"
query = 'title:reasoning OR "chain of thought"~2'
[[subscribers.subscriptions]]
name = "Transformers"
query = 'transformer upvotes>=0'
"""


# A match row as ``recorded_matches`` gives it: subscriber, paper, each
# subscription's (name, terms, score), all terms, scored_papers.
Recorded = tuple[int, int, tuple[tuple[str, tuple[str, ...], float], ...], tuple[str, ...], int]


def recorded_matches(store: Store) -> set[Recorded]:
    """Each match row as recorded."""
    with store.transaction() as conn:
        rows = conn.execute(
            select(
                MATCHES.c.subscriber_id,
                MATCHES.c.paper_id,
                MATCHES.c.subscriptions,
                MATCHES.c.subscription_terms,
                MATCHES.c.scores,
                MATCHES.c.terms,
                MATCHES.c.scored_papers,
            )
        ).all()
        unmatched = conn.execute(select(PAPERS.c.id).where(PAPERS.c.matched.is_(False))).all()
    assert unmatched == []
    return {
        (sub, paper, tuple(zip(names, map(tuple, each), scores, strict=True)), tuple(t), n)
        for sub, paper, names, each, scores, t, n in rows
    }


class Counted(match_module.Matcher):
    """A Matcher that counts the papers of each batch it matches."""

    batches: ClassVar[list[int]] = []

    def __call__(self, papers: Sequence[tuple[int, Paper]]) -> match_module.Matched:
        self.batches.append(len(papers))
        return super().__call__(papers)


def test_a_worker_process_matches_what_this_process_would_while_it_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the compose pool, a worker matches the batches while this process
    records them: the same rows, flags and statistics as matching here (the
    worker's sets of words iterate in another order). This process matches
    the first batch (and those after while the worker is still starting:
    here it has started), the worker the rest."""
    monkeypatch.setattr("mailer.pipeline.match.MATCH_BATCH", 40)
    config = parse_config(
        f'[database]\nurl = "sqlite:///{tmp_path / "unused.db"}"\n{MATCHING}',
        source="test.toml",
        base_dir=tmp_path,
    )
    papers = [
        paper
        for seed in sorted(SEEDS.glob("*.txt"))
        for paper in parse_dump(seed.read_bytes(), source=seed.name, today=TODAY).papers
    ]
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    found = []
    for where in ("here", "worker"):
        store = Store(f"sqlite:///{tmp_path / where}.db")
        sync_subscribers(store, config, now)
        store.ingest(
            path=where, sha256=where, size=1, page_date=TODAY, papers=papers, warnings=0, now=now
        )
        engine = build_engine(compile_queries(config), Stats())
        order = subscription_order(config.subscribers)
        if where == "here":
            match_new_papers(store, engine, lambda: now, PassReport(), order=order)
        else:
            monkeypatch.setattr(match_module, "Matcher", Counted)
            with ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(store.url,),
            ) as pool:
                pool.submit(int).result()  # started
                match_new_papers(store, engine, lambda: now, PassReport(), pool=pool, order=order)
        found.append((recorded_matches(store), store.stats()))
        store.close()
    (here, here_stats), (worker, worker_stats) = found
    assert len(papers) > 3 * 40
    assert Counted.batches[0] == 40
    assert sum(Counted.batches) < len(papers)
    assert any(len(names) > 1 for _, _, names, _, _ in here)
    assert worker == here
    assert worker_stats == here_stats


SEVERAL = """
[[subscribers]]
email = "lin@example.org"
[[subscribers.subscriptions]]
name = "Steps"
query = "steps"
[[subscribers.subscriptions]]
name = "Guided"
query = "guided"
[[subscribers.subscriptions]]
name = "Distillation"
query = "distillation"
[[subscribers.subscriptions]]
name = "Diffusion"
query = "diffusion"
"""


def test_a_pass_lists_the_subscriptions_a_paper_matched_in_the_order_configured(
    tmp_path: Path,
) -> None:
    """In its match row and in the digest's "Also matches" (the one it is
    shown under left out), whatever order they matched in."""
    harness = maildir_harness(tmp_path, SEVERAL)
    harness.drop("new.txt", format_dump(TODAY, [NEW]))
    harness.run()
    lin = harness.store.active_subscriber_ids()["lin@example.org"]
    (row,) = (r for r in recorded_matches(harness.store) if r[0] == lin)
    harness.store.close()
    configured = ("Steps", "Guided", "Distillation", "Diffusion")
    assert tuple(name for name, _, _ in row[2]) == configured
    shown = max(row[2], key=lambda each: each[2])[0]
    also = [
        line
        for line in part(maildir_digests(tmp_path)["lin@example.org"], "plain").splitlines()
        if line.startswith("Also matches:")
    ]
    assert also == [f"Also matches: {join_names([n for n in configured if n != shown])}"]


def test_every_batch_of_a_pass_is_scored_against_the_statistics_of_all_its_papers(
    maildir: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So the digests composed next, against those statistics, take the
    scores as recorded: each batch's rows say how many papers they assumed."""
    monkeypatch.setattr("mailer.pipeline.match.MATCH_BATCH", 7)
    maildir.drop_seeds()
    maildir.run()
    stats = maildir.store.stats()
    with maildir.store.transaction() as conn:
        papers = {
            row["id"]: paper_from_row(row)
            for row in conn.execute(select(PAPERS.c.id, *PAPER_COLUMNS)).mappings()
        }
    rows = recorded_matches(maildir.store)
    assert len(papers) > 3 * 7
    assert rows
    for _, paper_id, each, terms, scored_papers in rows:
        assert scored_papers == stats.papers == len(papers)
        doc = Doc(papers[paper_id], stats)
        for _, subscription_terms, score in each:
            assert score == pytest.approx(rescore(doc, subscription_terms)[1], rel=1e-12)
        assert terms == rescore(doc, [t for _, ts, _ in each for t in ts])[0]
