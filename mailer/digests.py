"""From matches to digests: which papers a subscriber gets, grouped and ordered.

Pure values in, values out; the renderer turns a Digest into a message.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache

from mailer.analysis import Scale, StemCounts
from mailer.matching import Doc, Stats, highlight_spans
from mailer.matching.reference import Found, found_of, score
from mailer.papers import Paper

Span = tuple[int, int]

# Distinct (text, terms) pairs whose highlight spans are remembered: readers
# who follow the same words get the same papers marked the same way (in a
# pass of varied subscriptions this hits rarely; among readers of one topic,
# nearly always).
MARKS_CACHE = 4096
# Papers a Ranking keeps analysed: as counts (a few KB each), and whole (tens
# of KB; only readers' models need them).
COUNTS_CACHE = 20_000
DOCS_CACHE = 1024


@dataclass(frozen=True, slots=True)
class Matched:
    """A paper that matched some of one subscriber's subscriptions.

    ``subscriptions`` and ``scores`` run in parallel; ``terms`` are the query
    terms that made it match, used for highlighting.
    """

    paper: Paper
    subscriptions: tuple[str, ...]
    terms: tuple[str, ...]
    scores: tuple[float, ...] = ()
    paper_id: int | None = None  # the stored paper's, for its feedback links

    @property
    def best(self) -> str:
        if not self.scores:
            return self.subscriptions[0]
        best = max(range(len(self.subscriptions)), key=lambda i: self.scores[i])
        return self.subscriptions[best]

    @property
    def score(self) -> float:
        return max(self.scores, default=0.0)


# The subscription name suggestions are recorded and grouped under: a control
# character keeps it apart from every name the configuration accepts.
SUGGESTED = "\x1fsuggested"


class Why(StrEnum):
    """Why a paper is in a digest, which says what its terms are."""

    MATCHED = "matched"  # a query matched these terms
    SIMILAR = "similar"  # like a subscription's examples, most in these words
    SUGGESTED = "suggested"  # the reader's model scored it high, most for these words


@dataclass(frozen=True, slots=True)
class Entry:
    """One paper as a digest shows it."""

    paper: Paper
    subscription: str
    also: tuple[str, ...]
    terms: tuple[str, ...]
    title_marks: tuple[Span, ...]
    abstract_marks: tuple[Span, ...]
    why: Why = Why.MATCHED
    paper_id: int | None = None


@dataclass(frozen=True, slots=True)
class Section:
    subscription: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str
    subscriptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Digest:
    """Everything a digest message says, before it is rendered."""

    recipient: Recipient
    sections: tuple[Section, ...]
    since: datetime | None = None
    more: int = 0
    test: bool = False

    @property
    def count(self) -> int:
        return sum(len(s.entries) for s in self.sections)

    @property
    def entries(self) -> list[Entry]:
        return [e for s in self.sections for e in s.entries]


class Ranking:
    """Scores recorded matches against one set of corpus statistics (the
    store's, when the digest is composed), so every paper in a digest is on
    the same scale however long ago, in which order or by which path
    (pass, backfill, test) it matched.

    Each paper is analysed once per Ranking: as ``StemCounts`` (small, kept
    for up to COUNTS_CACHE papers) to score terms, as a whole ``Doc``
    (large, DOCS_CACHE of them) for readers' models. Compose workers keep one Ranking for as
    long as the statistics stay the same (``Ranking.of``), across chunks."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._scale = Scale(stats)
        self._docs: dict[Paper, Doc] = {}
        self._counts: dict[int, StemCounts] = {}

    def of(self, stats: Stats) -> Ranking:
        """This ranking if ``stats`` are its statistics, else a new one."""
        return self if stats == self.stats else Ranking(stats)

    def doc(self, paper: Paper) -> Doc:
        """The paper analysed against this ranking's statistics (cached)."""
        doc = self._docs.get(paper)
        if doc is None:
            if len(self._docs) >= DOCS_CACHE:
                self._docs.clear()
            doc = self._docs[paper] = Doc(paper, self.stats)
        return doc

    def rescore(self, paper: Paper, terms: Iterable[str]) -> tuple[tuple[str, ...], float]:
        """``rescore`` of ``terms`` against the paper, from its counts."""
        counts = self._counts_of(paper)
        scored = score(counts, _found(terms if isinstance(terms, tuple) else tuple(terms)))
        counts.drop_words()
        return scored

    def _counts_of(self, paper: Paper) -> StemCounts:
        """The paper's counts, kept by the paper object's identity: a compose
        stage reads each paper once, and hashing a whole Paper per match was
        a tenth of ranking (the object is kept with its counts, so its id is
        not reused while the entry lives)."""
        counts = self._counts.get(id(paper))
        if counts is None or counts.paper is not paper:
            if len(self._counts) >= COUNTS_CACHE:
                self._counts.clear()
            counts = self._counts[id(paper)] = StemCounts(paper, self._scale)
        return counts

    def matched(
        self,
        paper: Paper,
        subscriptions: Sequence[str],
        subscription_terms: Sequence[Sequence[str]],
        scores: Sequence[float] = (),
        similar: Collection[str] = (),
        paper_id: int | None = None,
        terms: Sequence[str] = (),
        scored_papers: int | None = None,
    ) -> Matched:
        """A paper with the terms each subscription matched: each one scored,
        and all its terms heaviest first. Subscriptions in ``similar`` take
        papers by similarity to examples: their recorded scores (and words)
        stand, since BM25 of those words is not what ranked them. A match
        scored against statistics of as many papers as this ranking's
        (``scored_papers``) has the scores and ``terms`` (all, heaviest
        first) that weighing it again would give, and keeps them: most of a
        pass's matches are composed right after they were recorded."""
        if scored_papers == self.stats.papers and terms and len(scores) == len(subscriptions):
            return Matched(paper, tuple(subscriptions), tuple(terms), tuple(scores), paper_id)
        if (
            len(subscriptions) == 1
            and len(subscription_terms) == 1
            and not (subscriptions[0] in similar and scores)
        ):  # most matches: one subscription, scored by its terms
            terms, value = self.rescore(paper, subscription_terms[0])
            return Matched(paper, tuple(subscriptions), terms, (value,), paper_id)
        scored = [
            (tuple(terms), scores[i])
            if name in similar and i < len(scores)
            else self.rescore(paper, terms)
            for i, (name, terms) in enumerate(zip(subscriptions, subscription_terms, strict=True))
        ]
        if len(scored) == 1:
            terms = scored[0][0]
        else:
            terms = self.rescore(paper, dict.fromkeys(t for ts, _ in scored for t in ts))[0]
        return Matched(paper, tuple(subscriptions), terms, tuple(v for _, v in scored), paper_id)


def _order(m: Matched) -> tuple[float, int, int]:
    """Best first: by score, then upvotes, then the newer; undated papers
    rank as the oldest possible date."""
    published = m.paper.published
    return (-m.score, -m.paper.upvotes, -1 if published is None else -published.toordinal())


def build_digest(
    recipient: Recipient,
    matched: Sequence[Matched],
    *,
    since: datetime | None = None,
    max_papers: int | None = None,
    test: bool = False,
    caps: Mapping[str, int] | None = None,
    similar: Collection[str] = (),
    rank: Callable[[Matched], float] | None = None,
    suggestions: Sequence[Matched] = (),
    max_suggestions: int = 5,
) -> Digest:
    """Group papers under their best subscription, best first, capped at
    ``max_papers`` with the remainder counted in ``more``. A subscription in
    ``caps`` shows at most that many papers; a paper past its cap goes under
    another subscription it matched that has room, else into ``more``.
    Papers shown under a subscription in ``similar`` were taken for their
    likeness to its examples. ``rank`` (a reader's model) orders the papers
    instead of their relevance, which then only breaks ties. The best
    ``max_suggestions`` of ``suggestions`` (matched by no subscription)
    follow in a section of their own, not counted in ``more``."""
    if rank is None:
        ordered = sorted(matched, key=_order)
    else:
        ordered = sorted(matched, key=lambda m: (-rank(m), *_order(m)))
    used: dict[str, int] = {}
    placed: list[tuple[Matched, str]] = []
    for m in ordered:
        section = _place(m, used, caps or {})
        if section is not None:
            placed.append((m, section))
    kept = placed if max_papers is None else placed[:max_papers]
    groups: dict[str, list[Entry]] = {name: [] for name in recipient.subscriptions}
    for m, section in kept:
        why = Why.SIMILAR if section in similar else Why.MATCHED
        groups.setdefault(section, []).append(_entry(m, section, why))
    best = sorted(suggestions, key=_order)[:max_suggestions]
    if best:
        groups[SUGGESTED] = [_entry(m, SUGGESTED, Why.SUGGESTED) for m in best]
    sections = tuple(Section(name, tuple(es)) for name, es in groups.items() if es)
    return Digest(
        recipient=recipient,
        sections=sections,
        since=since,
        more=len(ordered) - len(kept),
        test=test,
    )


def _entry(m: Matched, section: str, why: Why) -> Entry:
    return Entry(
        paper=m.paper,
        subscription=section,
        also=tuple(s for s in m.subscriptions if s != section),
        terms=m.terms,
        title_marks=_marks(m.paper.title, m.terms),
        abstract_marks=_marks(m.paper.abstract, m.terms),
        why=why,
        paper_id=m.paper_id,
    )


def _place(m: Matched, used: dict[str, int], caps: Mapping[str, int]) -> str | None:
    """The subscription ``m`` is shown under: its best one with room left."""
    if not caps:
        return m.best
    if m.scores:
        order = sorted(range(len(m.subscriptions)), key=lambda i: -m.scores[i])
        names = [m.subscriptions[i] for i in order]
    else:
        names = list(m.subscriptions)
    for name in names:
        cap = caps.get(name)
        if cap is None or used.get(name, 0) < cap:
            used[name] = used.get(name, 0) + 1
            return name
    return None


@lru_cache(maxsize=16384)
def _found(terms: tuple[str, ...]) -> tuple[Found, ...]:
    """What scoring needs of each of ``terms``: a reader's few term lists
    recur on every paper they matched."""
    return tuple(map(found_of, terms))


@lru_cache(maxsize=MARKS_CACHE)
def _marks(text: str, terms: tuple[str, ...]) -> tuple[Span, ...]:
    return tuple(highlight_spans(text, terms))
