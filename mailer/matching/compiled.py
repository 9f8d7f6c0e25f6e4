"""Query trees compiled for the engine: the shapes it indexes without
per-query code, closures that check the other shapes, and scorers that give
a hit's terms and score without walking its tree.

Each must agree with the reference evaluator (``reference``) exactly, down to
the order scores are summed in, so the floats are identical.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import TypeVar, cast

from mailer.analysis import Doc
from mailer.matching.reference import (
    COMPARE,
    Found,
    _fields,
    _leaf_terms,
    phrase_in,
    score,
)
from mailer.query import And, Compare, Node, Not, Or, Phrase, Term

Check = Callable[[Doc], bool]
# What a paper must hold for a query to match: (space, key). Spaces: stem and
# token (title or abstract), title_stem, abstract_token, org_stem and so on
# (one field), prefix.
Key = tuple[str, str]


def _present(space: str) -> Callable[[Doc], set[str]]:
    """The paper's keys in one index space."""
    if space == "stem":
        return lambda doc: doc.text_stems
    if space == "token":
        return lambda doc: doc.text_tokens
    field, kind = space.split("_")
    pick = operator.attrgetter(f"{field}.{'tokset' if kind == 'token' else 'stemset'}")
    return lambda doc: cast(set[str], pick(doc))


def _word(node: Node) -> tuple[str, str] | None:
    """The (space, key) of a plain word in title or abstract, else None."""
    if isinstance(node, Term) and node.field == "text" and not node.prefix:
        return ("token" if node.exact else "stem", node.key)
    return None


def _one(node: Node) -> Key | None:
    """The one key a paper holds exactly when ``node`` matches it: a word in
    any field, a prefix of a title or abstract word; else None."""
    if not isinstance(node, Term):
        return None
    if node.prefix:
        return ("prefix", node.key) if node.field == "text" else None
    kind = "token" if node.exact else "stem"
    return (kind if node.field == "text" else f"{node.field}_{kind}", node.key)


def _flat(node: Node) -> tuple[list[tuple[str, str]], list[tuple[str, str]]] | None:
    """Required and forbidden plain words of a conjunction of plain words and
    negated plain words (nested ANDs included), or None for other shapes."""
    leaf = _word(node)
    if leaf is not None:
        return [leaf], []
    if not isinstance(node, And):
        return None
    need: list[tuple[str, str]] = []
    forbid: list[tuple[str, str]] = []
    for child in node.children:
        if isinstance(child, Not) and (leaf := _word(child.child)) is not None:
            forbid.append(leaf)
            continue
        inner = _flat(child)
        if inner is None:
            return None
        need.extend(inner[0])
        forbid.extend(inner[1])
    return (need, forbid) if need else None


T = TypeVar("T")


def _joined(children: Iterable[Node], part: Callable[[Node], list[T] | None]) -> list[T] | None:
    """Each child's ``part`` in order, concatenated; None as soon as one has
    none (the shape-recognising helpers below all flatten this way)."""
    out: list[T] = []
    for child in children:
        inner = part(child)
        if inner is None:
            return None
        out.extend(inner)
    return out


def _alternatives(node: Node) -> list[Key] | None:
    """The keys of an OR of nodes each matching exactly when the paper holds
    one key (see ``_one``), or None for other shapes."""
    leaf = _one(node)
    if leaf is not None:
        return [leaf]
    if not isinstance(node, Or):
        return None
    return _joined(node.children, _alternatives)


def _space(node: Term | Phrase) -> str:
    space = "token" if node.exact else "stem"
    return "org_" + space if node.field == "org" else space


def _compile(node: Node) -> Check:
    """A closure saying whether ``node`` matches, as ``evaluate`` would, but
    without walking the tree or collecting terms."""
    if isinstance(node, Term):
        return _compile_term(node)
    if isinstance(node, Phrase):
        return _compile_phrase(node)
    if isinstance(node, Compare):
        op, value, attr = COMPARE[node.op], node.value, node.attr

        def compare(doc: Doc) -> bool:
            have = doc.upvotes if attr == "upvotes" else doc.authors
            return have is not None and op(have, value)

        return compare
    if isinstance(node, Not):
        inner = _compile(node.child)
        return lambda doc: not inner(doc)
    if isinstance(node, And):
        first, *others = (_compile(c) for c in sorted(node.children, key=_rank))
        if len(others) == 1:
            second = others[0]
            return lambda doc: first(doc) and second(doc)
        rest = tuple(others)

        def conjunction(doc: Doc) -> bool:
            return first(doc) and all(child(doc) for child in rest)

        return conjunction
    children = tuple(_compile(c) for c in node.children)

    def disjunction(doc: Doc) -> bool:
        return any(child(doc) for child in children)

    return disjunction


def _compile_term(node: Term) -> Check:
    key, field = node.key, node.field
    if node.prefix:
        return lambda doc: any(f.with_prefix(key) for f in _fields(doc, field))
    if field == "text":
        if node.exact:
            return lambda doc: key in doc.text_tokens
        return lambda doc: key in doc.text_stems
    present = _present(f"{field}_{'token' if node.exact else 'stem'}")
    return lambda doc: key in present(doc)


def _rank(node: Node) -> int:
    """Rough cost of checking ``node``, so conjunctions try the cheap,
    selective parts (numbers, words) before positions and nested logic."""
    if isinstance(node, Compare):
        return 0
    if isinstance(node, Term):
        return 2 if node.prefix else 1
    if isinstance(node, Not):
        return 1 + _rank(node.child)
    if isinstance(node, Phrase):
        return 4
    return 5


def _compile_phrase(node: Phrase) -> Check:
    """Positions are only looked at once every word is known to be in the
    text; each field is then scanned in C (``phrase_in``)."""
    keys, exact, field, slop = node.keys, node.exact, node.field, node.slop
    words = frozenset(keys)
    if field == "text":

        def text_phrase(doc: Doc) -> bool:
            if not words <= (doc.text_tokens if exact else doc.text_stems):
                return False
            return phrase_in(doc.title, exact, keys, slop) or phrase_in(
                doc.abstract, exact, keys, slop
            )

        return text_phrase

    def phrase(doc: Doc) -> bool:
        for f in _fields(doc, field):
            if words <= (f.tokset if exact else f.stemset) and phrase_in(f, exact, keys, slop):
                return True
        return False

    return phrase


# A hit's terms and score worked out for one paper without walking its tree.
Scorer = Callable[[Doc], tuple[tuple[str, ...], float]]


def _static(node: Node) -> list[Found] | None:
    """The terms ``evaluate`` adds when ``node`` matches, if they are the same
    for every paper it matches: a leaf's own, none for negations and numeric
    filters, a conjunction's children's in order; None when some OR inside
    adds only its matching children's."""
    if isinstance(node, Term | Phrase):
        return _leaf_terms(node)
    if isinstance(node, Compare | Not):
        return []
    if isinstance(node, Or):
        return None
    return _joined(node.children, _static)


def _options(node: Node) -> list[tuple[Check, list[Found]]] | None:
    """An OR (nested ones flattened) of nodes with static terms (see
    ``_static``): each child adding terms, with its compiled check, in the
    order ``evaluate`` visits them; None for other shapes."""
    if isinstance(node, Or):
        return _joined(node.children, _options)
    found = _static(node)
    if found is None:
        return None
    return [(_compile(node), found)] if found else []


def _plain(entry: Found) -> bool:
    """Whether a term scores as its words' summed weights (not a prefix, not
    in org)."""
    return not entry[3] and not entry[4]


def _scorer(root: Node) -> Scorer | None:
    """How to work out the terms and score ``score`` gives a matching paper
    without walking ``root``: for trees whose terms are known in advance
    (words, phrases, conjunctions with negations and filters) and ORs of
    those; None for other shapes, left to the reference. Weights are summed
    and ranked in the order ``score`` sums and ranks them, so the floats are
    identical."""
    found = _static(root)
    if found is None:
        words = _or_words(root)
        if words is not None:
            return _words_scorer(words)
        options = _options(root)
        if options is None:
            return None
        return _any_scorer(options)
    first: dict[str, Found] = {}
    for entry in found:
        first.setdefault(entry[0], entry)
    return _static_scorer(list(first.values()))


def _static_scorer(entries: list[Found]) -> Scorer:
    """Terms known in advance, distinct: one or two plain terms are weighed
    and ranked directly, others by ``score``."""
    if not entries:
        nothing: tuple[tuple[str, ...], float] = ((), 0.0)
        return lambda doc: nothing
    if len(entries) == 1 and _plain(entries[0]):
        display, exact, keys, _, _ = entries[0]
        terms = (display,)
        if len(keys) == 1:
            key = keys[0]
            return lambda doc: (terms, doc.weight(exact, key))
        return lambda doc: (terms, sum(doc.weight(exact, k) for k in keys))
    if len(entries) == 1 and entries[0][3] and not entries[0][4]:
        display, _, (prefix,), _, _ = entries[0]
        terms = (display,)
        return lambda doc: (
            terms,
            max((doc.weight(True, t) for t in doc.with_prefix(prefix)), default=0.0),
        )
    if len(entries) == 2 and all(_plain(e) and len(e[2]) == 1 for e in entries):
        (d1, e1, (k1,), _, _), (d2, e2, (k2,), _, _) = entries
        first_second, second_first = (d1, d2), (d2, d1)

        def two(doc: Doc) -> tuple[tuple[str, ...], float]:
            # ``score`` ranks by (-weight, display) and sums in insertion order.
            w1 = doc.weight(e1, k1)
            w2 = doc.weight(e2, k2)
            if w1 > w2 or (w1 == w2 and d1 < d2):
                return first_second, w1 + w2
            return second_first, w1 + w2

        return two
    return lambda doc: score(doc, entries)


def _or_words(node: Node) -> list[Term] | None:
    """The words of an OR (nested ones flattened) of plain words in title or
    abstract, in the order ``evaluate`` visits them; None for other shapes."""
    if not isinstance(node, Or):
        return None

    def word(child: Node) -> list[Term] | None:
        if isinstance(child, Term) and child.field == "text" and not child.prefix:
            return [child]
        return _or_words(child)

    return _joined(node.children, word)


def _words_scorer(words: list[Term]) -> Scorer:
    """An OR of plain words: the first present word of each display weighed
    in order, as ``score`` keeps them, then ranked and summed as it does."""
    options = tuple(dict.fromkeys((w.display, w.exact, w.key) for w in words))

    def any_word(doc: Doc) -> tuple[tuple[str, ...], float]:
        stems = doc.text_stems
        weights: dict[str, float] = {}
        for display, exact, key in options:
            if display not in weights and key in (doc.text_tokens if exact else stems):
                weights[display] = doc.weight(exact, key)
        if len(weights) == 1:
            ((display, value),) = weights.items()
            return (display,), value
        ranked = sorted(weights, key=lambda d: (-weights[d], d))
        return tuple(ranked), float(sum(weights.values()))

    return any_word


def _any_scorer(options: list[tuple[Check, list[Found]]]) -> Scorer:
    """An OR: the terms of the children that match, in order, scored by
    ``score`` (which keeps the first of repeated terms)."""

    def any_of(doc: Doc) -> tuple[tuple[str, ...], float]:
        found: list[Found] = []
        for check, leaves in options:
            if check(doc):
                found += leaves
        return score(doc, found)

    return any_of
