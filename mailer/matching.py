"""Subscription queries and the matcher: papers and queries in, matches out.

Text is analysed once per paper into folded tokens; a query is parsed (Lucene
syntax, through luqum) into a small tree that is evaluated against those
tokens and reports which terms made it match, so digests highlight exactly
those.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from luqum import tree as lt
from luqum.exceptions import IllegalCharacterError, ParseError
from luqum.parser import parser as _luqum

from mailer.errors import QueryError
from mailer.papers import Paper

_TOKEN = re.compile(r"\w+", re.UNICODE)
_POSITION = re.compile(r"position (\d+)")

K = TypeVar("K", bound=Hashable)


@lru_cache(maxsize=65536)
def fold(word: str) -> str:
    """Case- and accent-insensitive form of one word."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Folded words of ``text`` with their character spans in the original."""
    return [(fold(m.group()), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def analyse(text: str) -> list[str]:
    return [token for token, _, _ in tokenize(text)]


# --- the query tree -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    word: str


@dataclass(frozen=True, slots=True)
class Phrase:
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Node = Term | Phrase | And | Or | Not


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    root: Node


def parse_query(text: str) -> Query:
    """Parse a subscription query, or raise QueryError saying where and why."""
    if not text.strip():
        raise QueryError("the query is empty", query=text, hint="write at least one word")
    try:
        tree = _luqum.parse(text)
    except (ParseError, IllegalCharacterError) as exc:
        found = _POSITION.search(str(exc))
        position = int(found.group(1)) if found else len(text)
        expected = (
            "a word, phrase or ')' before the end"
            if position >= len(text)
            else f"a word, phrase or '(' at {text[position : position + 10]!r}"
        )
        raise QueryError(
            f"cannot parse query {text!r} at position {position}: expected {expected}",
            query=text,
            position=position,
            hint='use words, "quoted phrases", AND, OR, NOT, -word and parentheses',
        ) from exc
    return Query(text=text, root=_convert(tree, text))


def _words(text: str) -> tuple[str, ...]:
    return tuple(analyse(text))


def _convert(node: lt.Item, text: str) -> Node:
    if isinstance(node, lt.Word):
        words = _words(node.value)
        if not words:
            raise QueryError(
                f"query {text!r} has {node.value!r}, which holds no letters or digits",
                query=text,
                hint="remove it, or quote it with letters around it",
            )
        return Term(words[0]) if len(words) == 1 else Phrase(words)
    if isinstance(node, lt.Phrase):
        words = _words(node.value.strip('"'))
        if not words:
            raise QueryError(f"query {text!r} has an empty phrase", query=text)
        return Term(words[0]) if len(words) == 1 else Phrase(words)
    if isinstance(node, lt.Group | lt.FieldGroup):
        return _convert(node.expr, text)
    if isinstance(node, lt.Not | lt.Prohibit):
        return Not(_convert(node.a, text))
    if isinstance(node, lt.Plus):
        return _convert(node.a, text)
    if isinstance(node, lt.OrOperation):
        return Or(tuple(_convert(c, text) for c in node.children))
    if isinstance(node, lt.AndOperation | lt.UnknownOperation):
        return And(tuple(_convert(c, text) for c in node.children))
    raise QueryError(
        f"query {text!r} uses {str(node).strip()!r}, which mailer does not support",
        query=text,
        hint='use words, "quoted phrases", AND, OR, NOT, -word and parentheses',
    )


# --- evaluation -----------------------------------------------------------


@dataclass(slots=True)
class AnalysedPaper:
    """A paper's folded tokens, computed once and shared by every query."""

    tokens: list[str]
    positions: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, paper: Paper) -> AnalysedPaper:
        tokens = [*analyse(paper.title), "", *analyse(paper.abstract)]
        positions: dict[str, list[int]] = {}
        for i, token in enumerate(tokens):
            positions.setdefault(token, []).append(i)
        return cls(tokens, positions)


def _evaluate(node: Node, doc: AnalysedPaper, terms: set[str]) -> bool:
    """Whether ``node`` matches; adds the words that made it match to ``terms``."""
    if isinstance(node, Term):
        if node.word in doc.positions:
            terms.add(node.word)
            return True
        return False
    if isinstance(node, Phrase):
        first, rest = node.words[0], node.words[1:]
        for start in doc.positions.get(first, ()):
            end = start + len(node.words)
            if tuple(doc.tokens[start + 1 : end]) == rest:
                terms.add(" ".join(node.words))
                return True
        return False
    if isinstance(node, Not):
        return not _evaluate(node.child, doc, set())
    if isinstance(node, And):
        found: set[str] = set()
        if all(_evaluate(c, doc, found) for c in node.children):
            terms |= found
            return True
        return False
    hit = False
    for child in node.children:
        hit = _evaluate(child, doc, terms) or hit
    return hit


@dataclass(frozen=True, slots=True)
class Hit:
    """One query that matched one paper, and the terms that made it match."""

    query: Hashable
    terms: tuple[str, ...]
    score: float


def match_paper(paper: Paper | AnalysedPaper, queries: Mapping[K, Query]) -> list[Hit]:
    doc = paper if isinstance(paper, AnalysedPaper) else AnalysedPaper.of(paper)
    hits = []
    for key, query in queries.items():
        terms: set[str] = set()
        if _evaluate(query.root, doc, terms):
            hits.append(Hit(key, tuple(sorted(terms)), float(len(terms))))
    return hits


def match_papers(
    papers: Iterable[Paper], queries: Mapping[K, Query]
) -> list[tuple[Paper, list[Hit]]]:
    """Every paper with at least one matching query, with its hits."""
    out = []
    for paper in papers:
        hits = match_paper(paper, queries)
        if hits:
            out.append((paper, hits))
    return out


def highlight_spans(text: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of ``text`` where the matched ``terms`` occur."""
    tokens = tokenize(text)
    words = [t for t, _, _ in tokens]
    spans: list[tuple[int, int]] = []
    for term in terms:
        parts = term.split(" ")
        n = len(parts)
        for i in range(len(words) - n + 1):
            if words[i : i + n] == parts:
                spans.append((tokens[i][1], tokens[i + n - 1][2]))
    return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
