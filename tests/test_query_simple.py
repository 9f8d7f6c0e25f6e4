"""The quick reading of simple queries: the very same Query (or the very
same refusal) as luqum's path, for every query it takes."""

from __future__ import annotations

import pytest

from bench.corpus import subscriptions, vocabulary
from mailer import query
from mailer.errors import QueryError

HAND_WRITTEN = [
    "a",
    "a b",
    "a AND b",
    "a OR b",
    "a -b",
    "-a",
    "x y z OR w",
    "a OR b c OR d",
    "a AND -b OR c",
    "title:a",
    'title:"a b"',
    "-title:x",
    "Title:x",
    "foo:bar",
    "title:ab*",
    "title:upvotes>=5",
    'org:"Meta AI"',
    "org:Meta llm",
    '="a b"',
    "=word",
    "=a =b c",
    "a=b",
    "ab*",
    "ab* cd",
    "a*b",
    "*",
    "a**",
    '"a b"~3',
    '"a b"~0',
    '"a b"~03',
    '"a b"~',
    '"a b"~1234567890',
    '"a b"~3 upvotes>=5',
    '-"a b"',
    "upvotes>=5",
    "UPVOTES<3",
    "authors=2",
    "authors:3",
    "upvotes>=05",
    "upvotes>=1234567890",
    "a OR",
    "OR a",
    "a AND AND b",
    "AND",
    "OR",
    "NOT a",
    "a TO b",
    "TO",
    "ANDROID OR ORacle",
    "NOTa",
    "- a",
    "-",
    "-OR",
    "title:",
    "title: a",
    "a (b)",
    "(a b)",
    "a:b:c",
    '"',
    '""',
    '" "',
    '"a',
    'a"',
    '"a\\"b"',
    "a  ",
    "  a",
    "a\tb",
    "a\nb",
    "ändern straße",
    "x²",
    "٣",
    "_",
    "a_b",
    "state-of-the-art",
    "don't",
    "x" * 5000,
    " ".join(["w"] * 256),
    " ".join(["w"] * 257),
]
CORPUS = subscriptions(vocabulary(), 10_000)


def outcome(text: str, stemming: bool) -> object:
    try:
        return query.parse_query(text, stemming=stemming)
    except QueryError as exc:
        return ("refused", exc.message, exc.position, exc.hint)


def luqums_outcome(text: str, stemming: bool) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(query, "_simple_run", lambda prepared: None)
        return outcome(text, stemming)


@pytest.mark.parametrize("stemming", [True, False])
@pytest.mark.parametrize("text", HAND_WRITTEN)
def test_same_query_or_refusal_as_luqums_path(text: str, stemming: bool) -> None:
    assert outcome(text, stemming) == luqums_outcome(text, stemming)


@pytest.mark.parametrize("stemming", [True, False])
def test_same_queries_as_luqums_path_for_the_bench_corpus(stemming: bool) -> None:
    different = [
        text for text in CORPUS if outcome(text, stemming) != luqums_outcome(text, stemming)
    ]
    assert different == []


@pytest.mark.parametrize(
    "text",
    [
        "reasoning",
        "code generation",
        "agents OR robots",
        "llm -survey",
        '"mixture of experts"',
        "title:diffusion",
        "quant*",
        'org:Meta "world model"',
        '"a b"~3 upvotes>=5',
        '="exact words" AND x',
    ],
)
def test_common_shapes_are_read_without_luqum(text: str) -> None:
    prepared = query._EXACT_MARK.sub(" ", text)  # as parse_query hands it on
    assert query._simple_run(prepared) is not None


def test_the_corpus_of_subscriptions_is_read_without_luqum() -> None:
    assert all(query._simple_run(text) is not None for text in CORPUS)
