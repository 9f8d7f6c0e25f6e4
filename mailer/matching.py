"""Matching papers against subscriptions: the engine, and the plain evaluator
it must agree with.

The engine works like Lucene's Monitor (Luwak) or Elasticsearch's
percolator: each stored query is indexed under the rarest term it cannot
match without, so a paper, analysed once, is checked only against the
queries whose required term it contains. Queries that need no term (pure
NOT, numeric filters) are checked against every paper, and counted.
The reference evaluator walks every query's tree against every paper; the
property tests hold the two equal.

A hit records the terms that made it match (strings ``highlight_spans``
understands) and a BM25F score over title and abstract.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import NamedTuple

from mailer.analysis import Doc, FieldText, Stats, stem, tokenize
from mailer.papers import Paper
from mailer.query import And, Compare, Node, Not, Or, Phrase, Query, Term, parse_query

__all__ = [
    "Doc",
    "Engine",
    "Hit",
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
        first, *rest = (text.positions(exact, k) for k in keys)
        if not all(rest):
            return False
        later = [set(p) for p in rest]
        return any(all(s + i + 1 in later[i] for i in range(len(later))) for s in first)
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

Check = Callable[[Doc, list[Found]], bool]
Need = list[tuple[str, str]]
PREFIX_BUCKET = 5


def _compile(node: Node) -> Check:
    """A closure doing what ``evaluate`` does, without walking the tree."""
    if isinstance(node, Term):
        leaf = _leaf_terms(node)
        key = node.key
        if node.field == "text" and not node.prefix:
            if node.exact:

                def text_token(doc: Doc, found: list[Found]) -> bool:
                    if key in doc.text_tokens:
                        found.extend(leaf)
                        return True
                    return False

                return text_token

            def text_stem(doc: Doc, found: list[Found]) -> bool:
                if key in doc.text_stems:
                    found.extend(leaf)
                    return True
                return False

            return text_stem
        return _compile_fallback(node)
    if isinstance(node, Phrase):
        return _compile_phrase(node)
    if isinstance(node, Compare):
        return _compile_fallback(node)
    if isinstance(node, Not):
        inner = _compile(node.child)
        return lambda doc, found: not inner(doc, [])
    children = tuple(_compile(c) for c in node.children)
    if isinstance(node, And):

        def conjunction(doc: Doc, found: list[Found]) -> bool:
            mine: list[Found] = []
            for child in children:
                if not child(doc, mine):
                    return False
            found.extend(mine)
            return True

        return conjunction

    def disjunction(doc: Doc, found: list[Found]) -> bool:
        hit = False
        for child in children:
            if child(doc, found):
                hit = True
        return hit

    return disjunction


def _compile_phrase(node: Phrase) -> Check:
    """Positions are only looked at once every word is known to be there."""
    keys, exact, field, slop = node.keys, node.exact, node.field, node.slop
    leaf = _leaf_terms(node)

    def phrase(doc: Doc, found: list[Found]) -> bool:
        for f in _fields(doc, field):
            present = f.tokset if exact else f.stemset
            if all(k in present for k in keys) and phrase_in(f, exact, keys, slop):
                found.extend(leaf)
                return True
        return False

    return phrase


def _compile_fallback(node: Term | Phrase | Compare) -> Check:
    return lambda doc, found: evaluate(node, doc, found)


def _space(node: Term | Phrase) -> str:
    space = "token" if node.exact else "stem"
    return "org_" + space if node.field == "org" else space


class Engine:
    """Subscriptions indexed by required term; ``match`` checks a paper only
    against the candidates its terms select. Build it once per config load."""

    def __init__(self, queries: Mapping[Hashable, Query], stats: Stats | None = None) -> None:
        self.stats = stats or Stats()
        unique: dict[Node, int] = {}
        self.keys: list[list[Hashable]] = []
        self.checks: list[Check] = []
        self.nodes: list[Node] = []
        # space -> key -> query ids; "sure" queries match whenever they are candidates.
        self.postings: dict[str, dict[str, list[int]]] = {
            s: {} for s in ("stem", "token", "org_stem", "org_token", "prefix")
        }
        self.sure: dict[str, dict[str, list[tuple[int, Found]]]] = {"stem": {}, "token": {}}
        self.always: list[int] = []
        for key, query in queries.items():
            uid = unique.get(query.root)
            if uid is None:
                uid = unique[query.root] = len(self.nodes)
                self.nodes.append(query.root)
                self.keys.append([])
                self.checks.append(_compile(query.root))
                self._index(uid, query.root)
            self.keys[uid].append(key)
        self.prefix_lengths = sorted({len(k) for k in self.postings["prefix"]})
        self.papers = 0
        self.candidates = 0
        self.always_checked = 0

    @property
    def size(self) -> int:
        return sum(len(k) for k in self.keys)

    def _index(self, uid: int, root: Node) -> None:
        if isinstance(root, Term) and root.field == "text" and not root.prefix:
            space = "token" if root.exact else "stem"
            self.sure[space].setdefault(root.key, []).append((uid, _found(root)))
            return
        need = self._need(root)
        if need is None:
            self.always.append(uid)
            return
        for space, key in need:
            self.postings[space].setdefault(key, []).append(uid)

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

    def _need(self, node: Node) -> Need | None:
        """Terms of which a matching paper must hold at least one (cheapest
        choice), or None when the node can match a paper without any."""
        if isinstance(node, Term):
            if node.prefix:
                return [("prefix", node.key[:PREFIX_BUCKET])]
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

    def match(self, doc: Doc) -> list[Hit]:
        """Every subscription matching the analysed paper, with terms and score."""
        self.papers += 1
        hits: list[Hit] = []
        keys = self.keys
        sure_stem = self.sure["stem"]
        sure_token = self.sure["token"]
        looked = 0
        for sure, present in ((sure_stem, doc.text_stems), (sure_token, doc.text_tokens)):
            if not sure:
                continue
            sure_get = sure.get
            for k in present:
                entries = sure_get(k)
                if entries:
                    looked += len(entries)
                    for uid, leaf in entries:
                        terms: tuple[str, ...] = (leaf[0],)
                        value = doc.weight(leaf[1], leaf[2][0])
                        hits.extend([Hit(q, terms, value) for q in keys[uid]])
        candidates: set[int] = set()
        for space, present in (
            ("stem", doc.text_stems),
            ("token", doc.text_tokens),
            ("org_stem", doc.org.stemset),
            ("org_token", doc.org.tokset),
        ):
            postings = self.postings[space]
            if postings:
                get = postings.get
                for k in present:
                    ids = get(k)
                    if ids:
                        candidates.update(ids)
        prefixes = self.postings["prefix"]
        if prefixes:
            for t in doc.text_tokens | doc.org.tokset:
                for n in self.prefix_lengths:
                    ids = prefixes.get(t[:n])
                    if ids:
                        candidates.update(ids)
        candidates.update(self.always)
        self.candidates += looked + len(candidates)
        self.always_checked += len(self.always)
        checks = self.checks
        for uid in candidates:
            found: list[Found] = []
            if checks[uid](doc, found):
                terms, value = score(doc, found)
                hits.extend(Hit(q, terms, value) for q in keys[uid])
        return hits

    def match_papers(self, papers: Iterable[Paper]) -> list[tuple[Paper, list[Hit]]]:
        out = []
        for paper in papers:
            hits = self.match(Doc(paper, self.stats))
            if hits:
                out.append((paper, hits))
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
