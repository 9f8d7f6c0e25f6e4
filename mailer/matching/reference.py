"""The plain evaluator: every query's tree walked against every paper, and
the terms and scores both evaluators share.

Kept simple on purpose: the engine (``engine``) must agree with it, and the
property tests hold the two equal.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import lru_cache
from typing import NamedTuple, Protocol

from mailer.analysis import Doc, FieldText, Stats, stem
from mailer.papers import Paper
from mailer.query import And, Compare, Node, Not, Phrase, Query, Term

# A term that made a query match: (display, exact, key, prefix, in org only).
# ``display`` is what digests show and highlight; the rest scores it.
Found = tuple[str, bool, tuple[str, ...], bool, bool]

COMPARE: dict[str, Callable[[int, int], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}


class Hit(NamedTuple):
    """One query that matched one paper, the terms that made it match (best
    first) and its relevance."""

    query: Hashable
    terms: tuple[str, ...]
    score: float


# --- shared by both evaluators ------------------------------------------------


def _fields(doc: Doc, field: str) -> tuple[FieldText, ...]:
    if field == "text":
        return (doc.title, doc.abstract)
    if field == "title":
        return (doc.title,)
    if field == "abstract":
        return (doc.abstract,)
    return (doc.org,)


def _found(node: Term | Phrase) -> Found:
    if isinstance(node, Term):
        return (node.display, node.exact, (node.key,), node.prefix, node.field == "org")
    return (node.display, node.exact, node.keys, False, node.field == "org")


def _leaf_terms(node: Term | Phrase) -> list[Found]:
    """What a leaf contributes when it matches: a proximity query contributes
    its words one by one, since they need not be next to each other."""
    if isinstance(node, Phrase) and node.slop:
        return [
            (("=" if node.exact else "") + w, node.exact, (k,), False, node.field == "org")
            for w, k in zip(node.words, node.keys, strict=True)
        ]
    return [_found(node)]


def phrase_in(text: FieldText, exact: bool, keys: tuple[str, ...], slop: int) -> bool:
    """Whether ``keys`` occur in order next to each other (slop 0), or all
    within ``len(keys) + slop`` positions in any order."""
    if slop == 0:
        seq = text.tokens if exact else text.stem_list
        first, rest, n = keys[0], list(keys[1:]), len(keys)
        at = -1
        for _ in range(text.count(exact, first)):
            at = seq.index(first, at + 1)
            if seq[at + 1 : at + n] == rest:
                return True
        return False
    need: dict[str, int] = {}
    for k in keys:
        need[k] = need.get(k, 0) + 1
    events = sorted((p, k) for k in need for p in text.positions(exact, k))
    have: dict[str, int] = dict.fromkeys(need, 0)
    missing = len(need)
    width = len(keys) - 1 + slop
    left = 0
    for pos, key in events:
        have[key] += 1
        if have[key] == need[key]:
            missing -= 1
        while missing == 0:
            if pos - events[left][0] <= width:
                return True
            lkey = events[left][1]
            if have[lkey] == need[lkey]:
                missing += 1
            have[lkey] -= 1
            left += 1
    return False


class Weighing(Protocol):
    """What scoring reads of a paper: a ``Doc``, or its ``StemCounts`` when
    every term is a stemmed one."""

    def weight(self, exact: bool, key: str) -> float: ...

    def with_prefix(self, prefix: str) -> list[str]: ...


def score(doc: Weighing, found: Iterable[Found]) -> tuple[tuple[str, ...], float]:
    """Distinct matched terms, most relevant first, and their summed BM25F."""
    weights: dict[str, float] = {}
    for display, exact, keys, prefix, org in found:
        if display in weights:
            continue
        if org:
            weights[display] = 0.0
        elif prefix:
            weights[display] = max(
                (doc.weight(True, t) for t in doc.with_prefix(keys[0])), default=0.0
            )
        elif len(keys) == 1:
            weights[display] = 0 + doc.weight(exact, keys[0])  # as sum() gives it
        else:
            weights[display] = sum(doc.weight(exact, k) for k in keys)
    if len(weights) == 1:  # most matches: one term, nothing to order
        ((display, weight),) = weights.items()
        return (display,), float(0 + weight)
    ranked = sorted(weights, key=lambda d: (-weights[d], d))
    return tuple(ranked), float(sum(weights.values()))


@lru_cache(maxsize=65536)
def found_of(display: str) -> Found:
    """The term behind a matched term's display string, which says all that
    scoring needs (``org:``, ``=exact``, ``prefix*``, words of a phrase)."""
    org = display.startswith("org:")
    body = display[4:] if org else display
    exact = body.startswith("=")
    body = body[1:] if exact else body
    if body.endswith("*"):
        return (display, exact, (body[:-1],), True, org)
    words = tuple(body.split(" "))
    return (display, exact, words if exact else tuple(stem(w) for w in words), False, org)


def rescore(doc: Weighing, terms: Iterable[str]) -> tuple[tuple[str, ...], float]:
    """Matched terms (display strings) weighed again against ``doc``'s
    statistics: heaviest first, and their summed BM25F, exactly as ``score``
    gave them when the paper matched. Digests rank with this at compose time,
    so every paper in one digest is scored against the same statistics."""
    return score(doc, map(found_of, terms))


# --- the reference: every query's tree against every paper -------------------


def evaluate(node: Node, doc: Doc, found: list[Found]) -> bool:
    """Whether ``node`` matches; adds the terms that made it match to ``found``."""
    if isinstance(node, Term):
        fields = _fields(doc, node.field)
        if node.prefix:
            hit = any(f.with_prefix(node.key) for f in fields)
        elif node.exact:
            hit = any(node.key in f.tokset for f in fields)
        else:
            hit = any(node.key in f.stemset for f in fields)
        if hit:
            found.extend(_leaf_terms(node))
        return hit
    if isinstance(node, Phrase):
        if any(phrase_in(f, node.exact, node.keys, node.slop) for f in _fields(doc, node.field)):
            found.extend(_leaf_terms(node))
            return True
        return False
    if isinstance(node, Compare):
        value = doc.upvotes if node.attr == "upvotes" else doc.authors
        return value is not None and COMPARE[node.op](value, node.value)
    if isinstance(node, Not):
        return not evaluate(node.child, doc, [])
    if isinstance(node, And):
        mine: list[Found] = []
        for child in node.children:
            if not evaluate(child, doc, mine):
                return False
        found.extend(mine)
        return True
    hit = False
    for child in node.children:
        hit = evaluate(child, doc, found) or hit
    return hit


def match_paper(
    paper: Paper | Doc, queries: Mapping[Hashable, Query], stats: Stats | None = None
) -> list[Hit]:
    """The plain evaluator: every query against one paper."""
    doc = paper if isinstance(paper, Doc) else Doc(paper, stats or Stats())
    hits = []
    for key, query in queries.items():
        found: list[Found] = []
        if evaluate(query.root, doc, found):
            terms, value = score(doc, found)
            hits.append(Hit(key, terms, value))
    return hits


def match_papers(
    papers: Iterable[Paper], queries: Mapping[Hashable, Query], stats: Stats | None = None
) -> list[tuple[Paper, list[Hit]]]:
    """Every paper with at least one matching query, with its hits."""
    out = []
    for paper in papers:
        hits = match_paper(paper, queries, stats)
        if hits:
            out.append((paper, hits))
    return out
