"""Matching papers against subscriptions: the engine, and the plain evaluator
it must agree with.

The engine works like Lucene's Monitor (Luwak) or Elasticsearch's
percolator: each stored query is indexed under the rarest term it cannot
match without, so a paper, analysed once, is checked only against the
queries whose required term it contains. The common shapes cost no per-query
code: one word matches outright when indexed under a word the paper holds, a
conjunction of words (some negated) is one or two set comparisons, an OR of
words or a prefix is a set union. Other shapes run a compiled check. Queries
that need no term (pure NOT, numeric filters) are checked against every
paper, and counted. The reference evaluator walks every query's tree against
every paper; the property tests hold the two equal.

A hit records the terms that made it match (strings ``highlight_spans``
understands) and a BM25F score over title and abstract; the engine works
them out only when a caller reads them, since most matches are counted or
stored long before any digest shows them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, TypeVar, cast, overload

from mailer.analysis import Doc, FieldText, Stats, stem, tokenize
from mailer.papers import Paper
from mailer.query import And, Compare, Node, Not, Or, Phrase, Query, Term, parse_query

__all__ = [
    "Doc",
    "Engine",
    "Hit",
    "Matches",
    "Query",
    "Stats",
    "highlight_spans",
    "match_paper",
    "match_papers",
    "parse_query",
]

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
        for _ in range(seq.count(first)):
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


def _prefix_tokens(doc: Doc, prefix: str) -> list[str]:
    return doc.title.with_prefix(prefix) + doc.abstract.with_prefix(prefix)


def score(doc: Doc, found: Iterable[Found]) -> tuple[tuple[str, ...], float]:
    """Distinct matched terms, most relevant first, and their summed BM25F."""
    weights: dict[str, float] = {}
    for display, exact, keys, prefix, org in found:
        if display in weights:
            continue
        if org:
            weights[display] = 0.0
        elif prefix:
            weights[display] = max(
                (doc.weight(True, t) for t in _prefix_tokens(doc, keys[0])), default=0.0
            )
        else:
            weights[display] = sum(doc.weight(exact, k) for k in keys)
    ranked = sorted(weights, key=lambda d: (-weights[d], d))
    return tuple(ranked), float(sum(weights.values()))


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


def rescore(doc: Doc, terms: Iterable[str]) -> tuple[tuple[str, ...], float]:
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


# --- the engine: compiled queries, indexed by their rarest required term ------

Check = Callable[[Doc], bool]
# What a paper must hold for a query to match: (space, key). Spaces: stem and
# token (title or abstract), title_stem, abstract_token, org_stem and so on
# (one field), prefix.
Key = tuple[str, str]
# A conjunction of plain text words, some negated, indexed under one required
# word: the other required stems and tokens, the forbidden ones, its id.
Flat = tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str], int]
Conj = dict[str, list[tuple[frozenset[str], int]]]
# Phrases by second rarest stem: their other stems, all stems in order, slop, id.
Phrases = dict[str, list[tuple[frozenset[str], tuple[str, ...], int, int]]]
# One key's postings as ``match`` unpacks them (see _Postings): sure; conj's
# second keys and groups; phrases' second keys and groups; neg; flat; anyof;
# general (empty kinds None); and how many queries a paper with it looks at.
Frozen = tuple[
    list[int] | None,
    frozenset[str] | None,
    Conj,
    frozenset[str] | None,
    Phrases,
    list[tuple[frozenset[str], int]] | None,
    list[Flat] | None,
    list[int] | None,
    list[int] | None,
    int,
]


def _present(space: str) -> Callable[[Doc], set[str]]:
    """The paper's keys in one index space."""
    if space == "stem":
        return lambda doc: doc.text_stems
    if space == "token":
        return lambda doc: doc.text_tokens
    field, kind = space.split("_")
    pick = operator.attrgetter(f"{field}.{'tokset' if kind == 'token' else 'stemset'}")
    return lambda doc: cast(set[str], pick(doc))


class _Postings:
    """The queries one index key selects, by how much checking they need:
    ``sure`` match outright (one word); ``conj`` need other stems present
    and are grouped by the second rarest, so a paper's stems are intersected
    with those in C; ``phrases`` (stemmed, in title or abstract) likewise,
    then need their words' positions; ``neg`` need some stems absent; ``flat`` need other
    stems and tokens present and some absent; ``anyof`` match outright but
    may be selected by several keys (ORs, prefixes); ``general`` need their
    compiled check."""

    __slots__ = ("anyof", "conj", "flat", "general", "neg", "phrases", "sure")

    def __init__(self) -> None:
        self.sure: list[int] = []
        self.conj: Conj = {}
        self.phrases: Phrases = {}
        self.neg: list[tuple[frozenset[str], int]] = []
        self.flat: list[Flat] = []
        self.anyof: list[int] = []
        self.general: list[int] = []

    def frozen(self) -> Frozen:
        """The kinds as a tuple, empty ones None, and how many queries the
        first four hold (the candidates a paper with this key looks at)."""
        return (
            self.sure or None,
            frozenset(self.conj) or None,
            self.conj,
            frozenset(self.phrases) or None,
            self.phrases,
            self.neg or None,
            self.flat or None,
            self.anyof or None,
            self.general or None,
            len(self.sure)
            + sum(map(len, self.conj.values()))
            + sum(map(len, self.phrases.values()))
            + len(self.neg)
            + len(self.flat),
        )


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
            max((doc.weight(True, t) for t in _prefix_tokens(doc, prefix)), default=0.0),
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


class Matches(Sequence[Hit]):
    """The subscriptions matching one paper. Which ones is known at once; each
    hit's terms and score are computed on first access, from the statistics
    at that moment: by the tree's scorer (see ``_scorer``), which weighs,
    ranks and sums exactly as ``score`` does, else by the reference
    evaluator's own functions. Counting or filtering matches never pays for
    them."""

    __slots__ = ("_doc", "_engine", "_hits", "uids")

    def __init__(self, engine: Engine, doc: Doc, uids: list[int]) -> None:
        self._engine = engine
        self._doc = doc
        self._hits: list[Hit] | None = None
        self.uids = uids

    def queries(self) -> list[Hashable]:
        """The matching subscriptions' keys, without terms or scores."""
        keys = self._engine.keys
        return [q for uid in self.uids for q in keys[uid]]

    def hits(self) -> list[Hit]:
        """Each match with its terms and score; the shapes ``_scorer`` knows
        (most) are scored as ``score`` would, without walking their trees."""
        if self._hits is None:
            doc, engine = self._doc, self._engine
            scorers, keys = engine.scorers, engine.keys
            out: list[Hit] = []
            for uid in self.uids:
                scorer = scorers[uid]
                if scorer is not None:
                    terms, value = scorer(doc)
                else:
                    found: list[Found] = []
                    evaluate(engine.nodes[uid], doc, found)
                    terms, value = score(doc, found)
                for q in keys[uid]:
                    out.append(Hit(q, terms, value))
            self._hits = out
        return self._hits

    def __len__(self) -> int:
        if not self._engine.shared:
            return len(self.uids)
        return sum(map(self._engine.counts.__getitem__, self.uids))

    def __bool__(self) -> bool:
        return bool(self.uids)

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...

    def __getitem__(self, index: int | slice) -> Hit | list[Hit]:
        return self.hits()[index]

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits())


class Engine:
    """Subscriptions indexed by required term; ``match`` checks a paper only
    against the candidates its terms select, the common shapes without any
    per-query code. Build it once per config load."""

    def __init__(self, queries: Mapping[Hashable, Query], stats: Stats | None = None) -> None:
        self.stats = stats or Stats()
        unique: dict[Node, int] = {}
        self.keys: list[list[Hashable]] = []
        self.counts: list[int] = []
        self.checks: dict[int, Check] = {}
        self.nodes: list[Node] = []
        # How each tree's terms and score are worked out without walking it
        # (None: by the reference evaluator).
        self.scorers: list[Scorer | None] = []
        self.index: dict[str, dict[str, _Postings]] = {"prefix": {}}
        self.always: list[int] = []
        for key, query in queries.items():
            uid = unique.get(query.root)
            if uid is None:
                uid = unique[query.root] = len(self.nodes)
                self.nodes.append(query.root)
                self.scorers.append(_scorer(query.root))
                self.keys.append([])
                self.counts.append(0)
                self._index(uid, query.root)
            self.keys[uid].append(key)
            self.counts[uid] += 1
        # Whether some query tree stands for several subscriptions.
        self.shared = any(n > 1 for n in self.counts)
        # Each space's keys as a set, so a paper's keys are intersected with
        # them in C, and its postings as tuples (empty kinds None) read by unpacking.
        self.spaces = [
            (_present(space), frozenset(keys), {k: p.frozen() for k, p in keys.items()})
            for space, keys in self.index.items()
            if keys and space != "prefix"
        ]
        self.prefix_lengths = sorted({len(k) for k in self.index["prefix"]})
        self.org_prefixes = any(p.general for p in self.index["prefix"].values())
        # Which indexed prefixes each token seen so far starts with: (anyof,
        # general) ids. Grows with the vocabulary, like the stem cache.
        self._prefixed: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._prefixed_tokens: set[str] = set()
        self._prefix_seen: set[str] = set()
        self.papers = 0
        self.candidates = 0
        self.always_checked = 0

    @property
    def size(self) -> int:
        return sum(self.counts)

    def _postings(self, space: str, key: str) -> _Postings:
        index = self.index.setdefault(space, {})
        found = index.get(key)
        if found is None:
            found = index[key] = _Postings()
        return found

    def _index(self, uid: int, root: Node) -> None:
        flat = _flat(root)
        if flat is not None:
            need, forbid = flat
            ranked = sorted(set(need), key=lambda t: (self._cost(*t), t))
            space, key = ranked[0]
            stems = frozenset(k for s, k in ranked[1:] if s == "stem")
            toks = frozenset(k for s, k in ranked[1:] if s == "token")
            no_stems = frozenset(k for s, k in forbid if s == "stem")
            no_toks = frozenset(k for s, k in forbid if s == "token")
            postings = self._postings(space, key)
            if toks or no_toks or (stems and no_stems):
                postings.flat.append((stems, toks, no_stems, no_toks, uid))
            elif no_stems:
                postings.neg.append((no_stems, uid))
            elif stems:
                second = next(k for s, k in ranked[1:] if s == "stem")
                postings.conj.setdefault(second, []).append((stems - {second}, uid))
            else:
                postings.sure.append(uid)
            return
        if isinstance(root, Phrase) and root.field == "text" and not root.exact:
            words = sorted(set(root.keys), key=lambda k: (self._cost("stem", k), k))
            if len(words) > 1:
                self._postings("stem", words[0]).phrases.setdefault(words[1], []).append(
                    (frozenset(words[2:]), root.keys, root.slop, uid)
                )
                return
        alternatives = _alternatives(root)
        if alternatives is not None:
            if len(alternatives) == 1 and alternatives[0][0] != "prefix":
                self._postings(*alternatives[0]).sure.append(uid)
                return
            for alternative in dict.fromkeys(alternatives):
                self._postings(*alternative).anyof.append(uid)
            return
        self.checks[uid] = _compile(root)
        needed = self._need(root)
        if needed is None:
            self.always.append(uid)
            return
        for selector in needed:
            self._postings(*selector).general.append(uid)

    def _cost(self, space: str, key: str) -> float:
        """Estimated share of papers holding ``key``: from the statistics when
        there are some, else shorter words are taken to be commoner."""
        n = self.stats.papers
        if space == "prefix":
            return 0.1 if n else 1.0 / (len(key) + 1)
        if space.startswith("org"):
            return 0.05
        if n:
            return self.stats.df.get(key if space == "stem" else stem(key), 0) / n
        return 1.0 / (len(key) + 2)

    def _need(self, node: Node) -> list[Key] | None:
        """Terms of which a matching paper must hold at least one (cheapest
        choice), or None when the node can match a paper without any."""
        if isinstance(node, Term):
            if node.prefix:
                return [("prefix", node.key)]
            return [(_space(node), node.key)]
        if isinstance(node, Phrase):
            space = _space(node)
            return [(space, min(node.keys, key=lambda k: (self._cost(space, k), k)))]
        if isinstance(node, Compare | Not):
            return None
        needs = [self._need(c) for c in node.children]
        if isinstance(node, Or):
            if any(n is None for n in needs):
                return None
            return list(dict.fromkeys(t for n in needs if n is not None for t in n))
        options = [n for n in needs if n is not None]
        if not options:
            return None
        return min(options, key=lambda n: sum(self._cost(s, k) for s, k in n))

    def _prefixes_of(self, token: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        anyof: list[int] = []
        general: list[int] = []
        index = self.index["prefix"]
        for n in self.prefix_lengths:
            if n > len(token):
                break
            postings = index.get(token[:n])
            if postings is not None:
                anyof.extend(postings.anyof)
                general.extend(postings.general)
        return tuple(anyof), tuple(general)

    def _prefix_hits(self, tokens: list[str]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(anyof, general) ids of the prefixes each of ``tokens`` starts with;
        each distinct token is worked out once per engine, then found by set
        lookups in C."""
        seen = self._prefix_seen
        if not seen.issuperset(tokens):
            for token in set(tokens) - seen:
                found = self._prefixes_of(token)
                if found[0] or found[1]:
                    self._prefixed[token] = found
                    self._prefixed_tokens.add(token)
                seen.add(token)
        prefixed = self._prefixed
        return [prefixed[t] for t in self._prefixed_tokens.intersection(tokens)]

    def match(self, doc: Doc) -> Matches:
        """Every subscription matching the analysed paper; terms and scores
        follow lazily (see ``Matches``)."""
        self.papers += 1
        stems = doc.text_stems
        out: list[int] = []
        anyof: list[int] = []
        general: list[int] = []
        looked = 0
        for present, keys, index in self.spaces:
            for key in present(doc) & keys:
                sure, seconds, conj, pairs, phrases, neg, flat, some, more, n = index[key]
                looked += n
                if sure:
                    out += sure
                if seconds:
                    for second in seconds & stems:
                        out += [u for rest, u in conj[second] if rest <= stems]
                if pairs:
                    title, abstract = doc.title, doc.abstract
                    for second in pairs & stems:
                        out += [
                            u
                            for rest, words, slop, u in phrases[second]
                            if rest <= stems
                            and (
                                phrase_in(title, False, words, slop)
                                or phrase_in(abstract, False, words, slop)
                            )
                        ]
                if neg:
                    out += [u for no, u in neg if stems.isdisjoint(no)]
                if flat:
                    toks = doc.text_tokens
                    out += [
                        u
                        for need, need_toks, no, no_toks, u in flat
                        if need <= stems
                        and need_toks <= toks
                        and stems.isdisjoint(no)
                        and toks.isdisjoint(no_toks)
                    ]
                if some:
                    anyof += some
                if more:
                    general += more
        if self.prefix_lengths:
            for sure_ids, check_ids in self._prefix_hits(doc.title.tokens + doc.abstract.tokens):
                anyof += sure_ids
                general += check_ids
            if self.org_prefixes and doc.paper.organization:
                for _, check_ids in self._prefix_hits(doc.org.tokens):
                    general += check_ids
        if anyof:
            out += set(anyof)
        if self.always:
            general += self.always
            self.always_checked += len(self.always)
        if general:
            checks = self.checks
            candidates = set(general)
            looked += len(candidates)
            out += [u for u in candidates if checks[u](doc)]
        self.candidates += looked + len(anyof)
        return Matches(self, doc, out)

    def match_papers(self, papers: Iterable[Paper]) -> list[tuple[Paper, list[Hit]]]:
        out = []
        for paper in papers:
            hits = self.match(Doc(paper, self.stats))
            if hits:
                out.append((paper, hits.hits()))
        return out


# --- highlighting --------------------------------------------------------------


def highlight_spans(text: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of ``text`` where the matched ``terms`` occur: a word
    highlights its stemming variants, ``=word`` only itself, ``pre*`` words
    starting with it, a phrase each run of its words; ``org:`` terms are not
    in the title or abstract."""
    found = tokenize(text)
    words = [w for w, _, _ in found]
    stemmed: list[str] | None = None
    spans: list[tuple[int, int]] = []
    for term in terms:
        if term.startswith("org:"):
            continue
        exact = term.startswith("=")
        body = term[1:] if exact else term
        if body.endswith("*"):
            prefix = body[:-1]
            spans.extend((s, e) for w, s, e in found if prefix and w.startswith(prefix))
            continue
        parts = [p for p in body.split(" ") if p]
        if not parts:
            continue
        if exact:
            seq = words
        else:
            if stemmed is None:
                stemmed = [stem(w) for w in words]
            seq = stemmed
            parts = [stem(p) for p in parts]
        n = len(parts)
        for i in range(len(seq) - n + 1):
            if seq[i : i + n] == parts:
                spans.append((found[i][1], found[i + n - 1][2]))
    return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
