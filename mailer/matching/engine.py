"""The engine: compiled queries indexed by their rarest required term, and
the lazily scored matches it returns.

Performance-critical (see bench/matching.py): ``Engine.match`` runs for every
paper against every subscription, so its loop reads only locals and
module-level names.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import overload

from mailer.analysis import Doc, Stats, stem
from mailer.matching.compiled import (
    Check,
    Key,
    Scorer,
    _alternatives,
    _compile,
    _flat,
    _present,
    _scorer,
    _space,
)
from mailer.matching.reference import Found, Hit, evaluate, phrase_in, score
from mailer.papers import Paper
from mailer.query import Compare, Node, Not, Or, Phrase, Query, Term

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
            keys = self._engine.keys
            self._hits = [
                Hit(q, terms, value) for uid, terms, value in self.scored() for q in keys[uid]
            ]
        return self._hits

    def scored(self) -> list[tuple[int, tuple[str, ...], float]]:
        """Each matching query tree's id (its subscriptions are
        ``Engine.keys[id]``), terms and score, worked out once per tree: what
        ``hits`` gives each of its subscriptions, for callers that map trees
        to subscriptions themselves without a ``Hit`` per subscription."""
        doc, engine = self._doc, self._engine
        scorers = engine.scorers
        out: list[tuple[int, tuple[str, ...], float]] = []
        for uid in self.uids:
            scorer = scorers[uid]
            if scorer is not None:
                terms, value = scorer(doc)
            else:
                found: list[Found] = []
                evaluate(engine.nodes[uid], doc, found)
                terms, value = score(doc, found)
            out.append((uid, terms, value))
        return out

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
        # What it was built from: a pickled engine is built again from them
        # (its checks and scorers are closures), in a worker process that
        # matches for the pass (mailer.pipeline.match).
        self._built_from = (dict(queries), self.stats)
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

    def __reduce__(self) -> tuple[type[Engine], tuple[dict[Hashable, Query], Stats]]:
        return (Engine, self._built_from)

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
