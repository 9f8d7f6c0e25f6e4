"""'More like these' subscriptions: example papers instead of, or as well
as, a query; configured, tried, matched and shown."""

from __future__ import annotations

import json
import mailbox
import tomllib
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.analysis import Doc, Stats
from mailer.config import SubscriberConfig, SubscriptionConfig, parse_config
from mailer.digests import Matched, Recipient, build_digest
from mailer.errors import ConfigError
from mailer.matching import Engine, parse_query
from mailer.papers import Paper, paper_key
from mailer.pipeline import (
    analysed,
    compile_likes,
    like_index,
    match_rows,
    subscription_engine,
    subscription_order,
)
from mailer.relevance.defaults import DEFAULT_THRESHOLD
from mailer.relevance.likes import Like, LikeIndex, closest_titles
from mailer.relevance.vectors import TfidfEncoder, cosine
from tests.test_cli import copy_seeds, mailer, write_config
from tests.test_render import seed_papers

EDITING = ("Fast Model Editing at Scale", "Model Editing with Canonical Examples")
KEY = ("ada@example.org", "Model editing")


@pytest.fixture(scope="module")
def corpus() -> tuple[dict[str, Paper], Stats]:
    papers: dict[str, Paper] = {}
    for paper in seed_papers():
        papers.setdefault(paper.key, paper)
    stats = Stats()
    for paper in papers.values():
        stats.observe_paper(paper)
    return papers, stats


def taken(
    corpus: tuple[dict[str, Paper], Stats], like: Like, query: str | None = None
) -> dict[str, float]:
    """Title -> similarity of the stored papers ``like`` would take."""
    papers, stats = corpus
    engine = Engine({KEY: parse_query(query)} if query else {}, stats)
    index = LikeIndex({KEY: like}, papers, stats)
    docs = analysed(enumerate(papers.values()), stats)
    by_id = dict(enumerate(papers.values()))
    rows = match_rows(engine, docs, {KEY[0]: 1}, index)
    return {by_id[r.paper_id].title: r.scores[0] for r in rows}


# --- similarity -------------------------------------------------------------------


def test_a_paper_like_the_examples_is_taken_and_an_unlike_one_is_not(
    corpus: tuple[dict[str, Paper], Stats],
) -> None:
    found = taken(corpus, Like(EDITING))
    assert "Potential and Challenges of Model Editing for Social Debiasing" in found
    assert not any(t.startswith("DeepONet") for t in found)
    assert all(score >= DEFAULT_THRESHOLD for score in found.values())


def test_the_examples_never_match_their_own_subscription(
    corpus: tuple[dict[str, Paper], Stats],
) -> None:
    found = taken(corpus, Like(EDITING, threshold=0.0))
    assert not set(EDITING) & set(found)
    assert len(found) > 100


def test_titles_are_found_with_case_spacing_and_punctuation_folded(
    corpus: tuple[dict[str, Paper], Stats],
) -> None:
    shouting = tuple(t.upper().replace(" ", "  ") + "." for t in EDITING)
    assert taken(corpus, Like(shouting)) == taken(corpus, Like(EDITING))


def test_a_higher_threshold_takes_fewer_papers(corpus: tuple[dict[str, Paper], Stats]) -> None:
    loose = taken(corpus, Like(EDITING, threshold=0.05))
    strict = taken(corpus, Like(EDITING, threshold=0.15))
    assert set(strict) < set(loose)


def test_with_a_query_only_papers_it_matches_are_taken_ranked_by_similarity(
    corpus: tuple[dict[str, Paper], Stats],
) -> None:
    found = taken(corpus, Like(EDITING, gated=True), query="benchmark")
    assert found
    assert all("benchmark" in (p.title + p.abstract).lower() for p in _papers(corpus, found))
    assert all(0.0 <= score <= 1.0 for score in found.values())


def test_words_alone_can_describe_what_is_wanted(corpus: tuple[dict[str, Paper], Stats]) -> None:
    found = taken(corpus, Like(text="catastrophic forgetting when learning new tasks continually"))
    assert "Does Continual Learning Equally Forget All Parameters?" in found


def test_a_paper_is_most_similar_to_itself(corpus: tuple[dict[str, Paper], Stats]) -> None:
    papers, stats = corpus
    docs = [Doc(p, stats) for p in list(papers.values())[:20]]
    vectors = TfidfEncoder(stats).encode(docs)
    for i, v in enumerate(vectors):
        assert cosine(v, v) == pytest.approx(1.0)
        assert max(range(20), key=lambda j: cosine(v, vectors[j])) == i


def test_the_words_that_weighed_most_are_named_as_the_paper_writes_them(
    corpus: tuple[dict[str, Paper], Stats],
) -> None:
    papers, stats = corpus
    engine = Engine({}, stats)
    index = LikeIndex({KEY: Like(EDITING)}, papers, stats)
    title = "Should We Really Edit Language Models? On the Evaluation of Edited Language Models"
    paper = papers[paper_key(title)]
    (row,) = match_rows(engine, analysed([(1, paper)], stats), {KEY[0]: 1}, index)
    words = row.subscription_terms[0]
    assert 0 < len(words) <= 3
    text = (paper.title + " " + paper.abstract).lower()
    assert all(w in text for w in words)
    assert "the" not in words


def test_the_closest_stored_titles_are_suggested_for_one_not_found() -> None:
    titles = ["Fast Model Editing at Scale", "Model soups", "Fast Inference at Scale"]
    assert closest_titles("Fast Model Editting at scale", titles)[0] == titles[0]
    assert closest_titles("Something else entirely", titles) == []


def _papers(corpus: tuple[dict[str, Paper], Stats], titles: dict[str, float]) -> list[Paper]:
    return [p for p in corpus[0].values() if p.title in titles]


# --- configuration --------------------------------------------------------------------

HEAD = '[[subscribers]]\nemail = "ada@example.org"\n[[subscribers.subscriptions]]\nname = "E"\n'


def refused(body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + body, source="config.toml")
    return caught.value.message


def test_a_subscription_with_examples_needs_no_query() -> None:
    config = parse_config(HEAD + f"like = {list(EDITING)!r}\n", source="config.toml")
    sub = config.subscribers[0].subscriptions[0]
    assert sub.similar
    assert sub.query == ""


def test_a_subscription_with_neither_query_nor_examples_names_its_key() -> None:
    message = refused("stemming = true\n")
    assert "subscribers[0] (ada@example.org).subscriptions[0] (E)" in message
    assert "needs a query, or example papers in like" in message


def test_top_and_threshold_without_examples_are_refused() -> None:
    assert "apply only with like" in refused("query = 'x'\ntop = 5\n")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("like = ['A']\nthreshold = 1.5\n", ".threshold"),
        ("like = ['A']\nthreshold = nan\n", ".threshold"),
        ("like = ['A']\ntop = 0\n", ".top"),
        ("like = ['']\n", ".like[0]"),
        ("like = 'A title'\n", ".like"),
    ],
)
def test_bad_like_values_name_their_key(body: str, key: str) -> None:
    assert f"subscriptions[0] (E){key}:" in refused(body)


# --- digests ------------------------------------------------------------------------


def test_top_caps_a_similarity_subscription_and_counts_the_rest() -> None:
    matched = [Matched(Paper(f"P{i}", "x"), ("Like",), (), (0.5 - i / 100,)) for i in range(6)]
    digest = build_digest(
        Recipient("a@example.org", "", ("Like",)), matched, caps={"Like": 4}, similar={"Like"}
    )
    assert [e.paper.title for e in digest.entries] == ["P0", "P1", "P2", "P3"]
    assert digest.more == 2
    assert all(e.why == "similar" for e in digest.entries)


def test_a_paper_past_the_cap_goes_under_another_subscription_it_matched() -> None:
    matched = [
        Matched(Paper("A", "x"), ("Like",), (), (0.9,)),
        Matched(Paper("B", "x"), ("Like", "Query"), (), (0.8, 0.1)),
    ]
    digest = build_digest(
        Recipient("a@example.org", "", ("Like", "Query")), matched, caps={"Like": 1}
    )
    assert [(s.subscription, [e.paper.title for e in s.entries]) for s in digest.sections] == [
        ("Like", ["A"]),
        ("Query", ["B"]),
    ]
    assert digest.entries[1].also == ("Like",)


# --- end to end ----------------------------------------------------------------------


def like_config(tmp_path: Path, *titles: str, extra: str = "") -> Path:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            '[[subscribers]]\nemail = "grace@example.org"',
            '[[subscribers.subscriptions]]\nname = "Model editing"\n'
            f"like = {list(titles)!r}\n{extra}"
            '[[subscribers]]\nemail = "grace@example.org"',
        ),
        encoding="utf-8",
    )
    return path


def test_a_pass_mails_similar_papers_under_the_subscription_with_their_words(
    tmp_path: Path,
) -> None:
    config = like_config(tmp_path, *EDITING)
    copy_seeds(tmp_path / "dumps")
    result = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    texts = {}
    for message in mailbox.Maildir(tmp_path / "outbox", create=False):
        parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        body = parsed.get_body(("plain",))
        assert body is not None
        texts[str(parsed["To"])] = body.get_content()
    ada = texts["Ada <ada@example.org>"]
    section = ada.split("Model editing · ")[1]
    assert "for *Social* Debiasing" in section
    assert "Like your examples in: " in section
    assert "Fast Model Editing at Scale" not in ada


def test_subs_try_like_shows_what_the_subscription_would_take_with_scores(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    args = ["--config", str(config), "subs", "try", "--like", EDITING[0], "--like", EDITING[1]]
    result = mailer(*args, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["of"] == 290
    assert found["threshold"] == DEFAULT_THRESHOLD
    scores = [p["score"] for p in found["papers"]]
    assert scores == sorted(scores, reverse=True)
    assert min(scores) >= DEFAULT_THRESHOLD
    assert any("Social Debiasing" in p["title"] for p in found["papers"])
    text = mailer(*args, "--threshold", "0.05", "--limit", "3", cwd=tmp_path).stdout
    assert "papers stored are at or above 0.05 (showing 3" in text
    assert f"{found['papers'][0]['score']:.3f}" in text


def test_check_config_names_like_titles_not_found_with_the_closest(tmp_path: Path) -> None:
    config = like_config(
        tmp_path,
        "Fast Model Editting at Scale",
        "Editing Large Language Models: Problems, Methods, and Opportunities",
    )
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert (
        "ada@example.org · Model editing: like title not among the stored papers: "
        "'Fast Model Editting at Scale'; closest: 'Fast Model Editing at Scale'"
    ) in out
    assert "'Editing Large Language Models: Problems, Methods, and Opportunities'" in out


def test_subs_add_query_like_writes_the_subscription_and_names_titles_not_found(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    result = mailer(
        "--config", str(config), "subs", "add-query", "grace@example.org", "Editing",
        "--like", EDITING[0], "--like", "Model Editing with Canonical Exemples", "--top", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "'Model Editing with Canonical Exemples'; closest: 'Model Editing with Canonical" in out
    grace = tomllib.loads(config.read_text(encoding="utf-8"))["subscribers"][1]
    assert grace["subscriptions"][-1] == {
        "name": "Editing",
        "like": [EDITING[0], "Model Editing with Canonical Exemples"],
        "top": 5,
    }


def test_a_row_lists_query_and_similarity_subscriptions_in_the_order_configured(
    corpus: tuple[dict[str, Paper], Stats],
) -> None:
    """The engine's hits come before the similarity subscriptions' own, but
    a paper both match lists them as the subscriber did."""
    papers, stats = corpus
    title = "Potential and Challenges of Model Editing for Social Debiasing"
    sub = SubscriberConfig(
        email=KEY[0],
        subscriptions=[
            SubscriptionConfig(name="Editing", query="editing"),
            SubscriptionConfig(name="Like editing", like=list(EDITING)),
            SubscriptionConfig(name="Debiasing", query="debiasing"),
        ],
    )
    (row,) = match_rows(
        subscription_engine(sub, stats),
        analysed([(1, papers[paper_key(title)])], stats),
        {sub.email: 1},
        like_index(compile_likes([sub]), papers, stats),
        order=subscription_order([sub]),
    )
    assert row.subscriptions == ("Editing", "Like editing", "Debiasing")
