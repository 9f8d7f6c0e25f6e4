"""A model per reader: trained from their marks, retrained only when marks
arrive; it orders their digest, sends papers like those marked "not for
me" to the end, and suggests papers no subscription matched."""

from __future__ import annotations

import asyncio
import mailbox
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.analysis import Doc, Stats
from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.digests import SUGGESTED, Matched, Ranking, Recipient, build_digest
from mailer.papers import Paper, paper_key
from mailer.pipeline import Pipeline
from mailer.pipeline.match import refresh_models
from mailer.relevance.reader import MIN_POSITIVES, Reader, readers, train, usable
from mailer.store import Mark, MarkKind, Store
from tests.conftest import SEEDS
from tests.test_render import seed_papers

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
DATA_SELECTION = (
    "PASER: Post-Training Data Selection for Efficient Pruned Large Language Model Recovery",
    "How Abilities in Large Language Models are Affected by Supervised Fine-tuning Data "
    "Composition",
    "Select2Reason: Efficient Instruction-Tuning Data Selection for Long-CoT Reasoning",
    "Diversify and Conquer: Diversity-Centric Data Selection with Iterative Refinement",
)
# In the last sample dump only; the marked ones are in the first four.
NEW_DATA_SELECTION = (
    "MIG: Automatic Data Selection for Instruction Tuning by Maximizing Information Gain in "
    "Semantic Space",
    "Predictive Data Selection: The Data That Predicts Is the Data That Teaches",
    "Fixing It in Post: A Comparative Study of LLM Post-Training Data Quality and Model "
    "Performance",
)


@pytest.fixture(scope="module")
def corpus() -> tuple[dict[str, tuple[int, Paper]], Stats]:
    papers: dict[str, tuple[int, Paper]] = {}
    for paper in seed_papers():
        papers.setdefault(paper.key, (len(papers) + 1, paper))
    stats = Stats()
    for _, paper in papers.values():
        stats.observe_paper(paper)
    return papers, stats


def marks_on(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats], *titles: str, kind: MarkKind
) -> list[Mark]:
    papers = corpus[0]
    return [Mark(n, *papers[paper_key(t)], kind, NOW) for n, t in enumerate(titles, start=100)]


def model_of(corpus: tuple[dict[str, tuple[int, Paper]], Stats], marks: list[Mark]) -> Reader:
    """A model trained as a pass would before NEW_DATA_SELECTION arrive."""
    papers, stats = corpus
    new = {paper_key(t) for t in NEW_DATA_SELECTION}
    stored = [found for key, found in papers.items() if key not in new]
    model = train(7, marks, lambda: stored, stats, NOW)
    return readers({7: model}, {7: marks}, stats)[7]


# --- training -------------------------------------------------------------------------


def test_fewer_than_three_wanted_papers_train_no_model(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats],
) -> None:
    marks = marks_on(corpus, *DATA_SELECTION[:2], kind=MarkKind.MORE)
    model = train(7, marks, lambda: pytest.fail("no sample needed"), corpus[1], NOW)
    assert not usable(model)
    assert (model.positives, model.trained_on, model.weights) == (2, 101, {})


def test_three_wanted_papers_train_a_model_of_the_words_they_share(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats],
) -> None:
    marks = marks_on(corpus, *DATA_SELECTION[:MIN_POSITIVES], kind=MarkKind.MORE)
    papers, stats = corpus
    model = train(7, marks, lambda: list(papers.values()), stats, NOW)
    assert usable(model)
    assert model.positives == 3
    assert model.negatives == len(papers) - 3
    heaviest = sorted(model.weights, key=lambda k: -model.weights[k])[:40]
    assert {"select", "data"} <= set(heaviest)


def test_the_model_ranks_an_unmarked_paper_of_the_topic_first(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats],
) -> None:
    papers, stats = corpus
    reader = model_of(corpus, marks_on(corpus, *DATA_SELECTION, kind=MarkKind.MORE))
    marked = {paper_key(t) for t in DATA_SELECTION}
    ranked = sorted(
        (p for k, (_, p) in papers.items() if k not in marked),
        key=lambda p: -reader.score(Doc(p, stats)),
    )
    assert {p.title for p in ranked[:5]} & set(NEW_DATA_SELECTION)


# --- ordering a digest ----------------------------------------------------------------


def digest_titles(reader: Reader | None, stats: Stats, papers: list[Paper]) -> list[str]:
    ranking = Ranking(stats)
    matched = [Matched(p, ("All",), (), (float(len(papers) - i),)) for i, p in enumerate(papers)]
    rank = None if reader is None else (lambda m: reader.score(ranking.doc(m.paper)))
    digest = build_digest(Recipient("a@example.org", "", ("All",)), matched, rank=rank)
    return [e.paper.title for e in digest.entries]


def test_the_model_reorders_a_digest_after_marks(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats],
) -> None:
    papers, stats = corpus
    others = [p for _, p in papers.values() if p.title not in DATA_SELECTION][:40]
    new = [papers[paper_key(t)][1] for t in NEW_DATA_SELECTION]
    shown = others + new
    assert digest_titles(None, stats, shown)[:3] == [p.title for p in others[:3]]
    reader = model_of(corpus, marks_on(corpus, *DATA_SELECTION, kind=MarkKind.MORE))
    assert set(digest_titles(reader, stats, shown)[:3]) == set(NEW_DATA_SELECTION)


def test_papers_like_one_marked_not_for_me_go_to_the_end_even_without_a_model(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats],
) -> None:
    papers, stats = corpus
    butterfly = (
        "The Butterfly Effect of Model Editing: Few Edits Can Trigger Large Language Models "
        "Collapse"
    )
    should = "Should We Really Edit Language Models? On the Evaluation of Edited Language Models"
    reader = readers({}, {7: marks_on(corpus, butterfly, kind=MarkKind.LESS)}, stats)[7]
    assert reader.model is None
    others = [p for _, p in list(papers.values())[:10]]
    shown = [papers[paper_key(should)][1], *others]
    assert digest_titles(reader, stats, shown) == [p.title for p in others] + [should]


def test_a_reader_with_neither_model_nor_unwanted_papers_keeps_the_relevance_order(
    corpus: tuple[dict[str, tuple[int, Paper]], Stats],
) -> None:
    few = marks_on(corpus, DATA_SELECTION[0], kind=MarkKind.MORE)
    model = train(7, few, list, corpus[1], NOW)
    assert readers({7: model}, {7: few}, corpus[1]) == {}


# --- in the pipeline ----------------------------------------------------------------


def make_config(tmp_path: Path, ada_query: str = "diffusion") -> Config:
    text = f"""
[watch]
dir = "dumps"
settle_seconds = 0
[delivery]
transport = "maildir"
[[subscribers]]
email = "ada@example.org"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '{ada_query}'
[[subscribers]]
email = "grace@example.org"
suggestions = false
[[subscribers.subscriptions]]
name = "Diffusion"
query = 'diffusion'
"""
    return parse_config(text, source="config.toml", base_dir=tmp_path)


@pytest.fixture
def first_four(tmp_path: Path) -> Iterator[tuple[Config, Store, Pipeline]]:
    """A pass over the first four sample dumps, digests sent; the last one waits."""
    (tmp_path / "dumps").mkdir()
    for seed in sorted(SEEDS.glob("*.txt"))[:4]:
        shutil.copy(seed, tmp_path / "dumps" / seed.name)
    config = make_config(tmp_path)
    store = Store(config.database.url)
    clock = iter(NOW + timedelta(minutes=i) for i in range(100))
    pipeline = Pipeline(config, store, lambda: make_transport(config), clock=lambda: next(clock))
    asyncio.run(pipeline.run_pass())
    shutil.rmtree(tmp_path / "outbox")
    yield config, store, pipeline
    store.close()


def mark(store: Store, email: str, titles: tuple[str, ...], kind: MarkKind) -> None:
    stored = {p.title: i for i, p in store.papers_since(NOW - timedelta(days=1))}
    for title in titles:
        store.record_mark(email, stored[title], kind, NOW)


def digests(tmp_path: Path) -> dict[str, str]:
    found = {}
    for message in mailbox.Maildir(tmp_path / "outbox", create=False):
        parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        body = parsed.get_body(("plain",))
        assert body is not None
        found[parsed["To"].addresses[0].addr_spec] = body.get_content()
    return found


def test_a_model_is_trained_when_marks_arrive_and_only_then(
    first_four: tuple[Config, Store, Pipeline],
) -> None:
    _, store, pipeline = first_four
    assert refresh_models(store, pipeline.clock) == 0
    mark(store, "ada@example.org", DATA_SELECTION[:2], MarkKind.MORE)
    assert refresh_models(store, pipeline.clock) == 1
    assert not usable(store.reader_models().get(store.subscriber_id("ada@example.org") or 0))
    assert refresh_models(store, pipeline.clock) == 0
    mark(store, "ada@example.org", DATA_SELECTION[2:], MarkKind.MORE)
    assert refresh_models(store, pipeline.clock) == 1
    (model,) = store.reader_models().values()
    assert usable(model)
    assert model.positives == 4
    assert refresh_models(store, pipeline.clock) == 0


def test_new_papers_like_the_marked_ones_are_suggested_with_their_words(
    tmp_path: Path, first_four: tuple[Config, Store, Pipeline]
) -> None:
    _, store, pipeline = first_four
    for email in ("ada@example.org", "grace@example.org"):
        mark(store, email, DATA_SELECTION, MarkKind.MORE)
    shutil.copy(sorted(SEEDS.glob("*.txt"))[4], tmp_path / "dumps")
    asyncio.run(pipeline.run_pass())
    sent = digests(tmp_path)
    ada = sent["ada@example.org"]
    assert "\nSuggested for you · " in ada
    suggested = ada.split("\nSuggested for you · ")[1]
    assert "Papers none of your subscriptions matched" in suggested
    assert "Words that weighed most: " in suggested
    assert any(t.split(":")[0] in suggested for t in NEW_DATA_SELECTION)
    assert suggested.count("\nhttps://") <= 5
    summary = " ".join(ada.split("\n\n")[0].split())
    shown = suggested.count("\nhttps://")
    assert summary.endswith(
        f"1 paper matched Diffusion since Fri 27 Nov. {shown} papers suggested for you."
    )
    assert "Suggested for you" not in sent["grace@example.org"]


def test_suggestions_alone_send_no_digest(
    tmp_path: Path, first_four: tuple[Config, Store, Pipeline]
) -> None:
    _, store, pipeline = first_four
    mark(store, "ada@example.org", DATA_SELECTION, MarkKind.MORE)
    narrow = make_config(tmp_path, ada_query="nothingmatchesthisword")
    pipeline.configure(narrow)
    shutil.copy(sorted(SEEDS.glob("*.txt"))[4], tmp_path / "dumps")
    asyncio.run(pipeline.run_pass())
    assert "ada@example.org" not in digests(tmp_path)
    ada = store.subscriber_id("ada@example.org")
    assert ada is not None
    waiting = store.pending_matches(ada)
    assert waiting
    assert all(m.subscriptions == (SUGGESTED,) for m in waiting)


def test_a_digest_is_ordered_by_the_readers_model(
    tmp_path: Path, first_four: tuple[Config, Store, Pipeline]
) -> None:
    _, store, pipeline = first_four
    mark(store, "ada@example.org", DATA_SELECTION, MarkKind.MORE)
    pipeline.configure(make_config(tmp_path, ada_query="language OR model OR data"))
    shutil.copy(sorted(SEEDS.glob("*.txt"))[4], tmp_path / "dumps")
    asyncio.run(pipeline.run_pass())
    ada = digests(tmp_path)["ada@example.org"]
    first = ada.split("\nhttps://")[0:4]
    assert sum(any(t.split(":")[0] in part for t in NEW_DATA_SELECTION) for part in first) >= 2
