"""Text analysis shared by queries, papers and highlighting.

Like a search engine's English field: Unicode case folding, accents folded,
split on anything that is not a letter or digit, Snowball English stemming
(PyStemmer). A paper is analysed once into a ``Doc`` that every query reads;
what only some queries need (positions, term frequencies) is built lazily.
"""

from __future__ import annotations

import math
import re
import unicodedata
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

import Stemmer

from mailer.papers import Paper

_WORD = re.compile(r"[^\W_]+")
# ASCII text splits with str.translate + split, several times faster than the
# regex; on ASCII both keep exactly the runs of [a-z0-9] of the folded text.
_ASCII_SEPARATORS = str.maketrans({chr(i): " " for i in range(128) if not chr(i).isalnum()})
_STEMMER = Stemmer.Stemmer("english")
_STEMS: dict[str, str] = {}
_STEMS_GET = _STEMS.get
#: Words whose stems are remembered; past this the cache starts again, so a
#: long-running daemon's memory does not grow with every word it has read.
STEM_CACHE_SIZE = 200_000

#: BM25 parameters; a title hit counts ``TITLE_WEIGHT`` abstract hits.
K1 = 1.2
B = 0.75
TITLE_WEIGHT = 3.0


@lru_cache(maxsize=65536)
def fold(word: str) -> str:
    """Case- and accent-insensitive form of a word or text."""
    folded = word.casefold()
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def tokens(text: str) -> list[str]:
    """Folded words of ``text``: split the case-folded text, then fold the
    accents of the (few) words that are not ASCII."""
    folded = text.casefold()
    if folded.isascii():
        return folded.translate(_ASCII_SEPARATORS).split()
    return [w if w.isascii() else fold(w) for w in _WORD.findall(folded)]


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Folded words of ``text`` with their character spans in the original,
    for highlighting; a word that folds into several yields each at its span."""
    if text.isascii():
        # Lower-casing ASCII keeps every offset, and each run of [a-z0-9] is one word.
        return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text.lower())]
    out = []
    for m in _WORD.finditer(text):
        word = m.group()
        if word.isascii():
            out.append((word.lower(), m.start(), m.end()))
        else:
            out.extend((w, m.start(), m.end()) for w in tokens(word))
    return out


def stem(word: str) -> str:
    """Snowball English stem of a folded word, cached (up to STEM_CACHE_SIZE words)."""
    found = _STEMS.get(word)
    if found is None:
        if len(_STEMS) >= STEM_CACHE_SIZE:
            _STEMS.clear()
        found = _STEMS[word] = _STEMMER.stemWord(word)
    return found


def stems(words: Iterable[str]) -> list[str]:
    """Stems of ``words`` in order; cached words are looked up at C speed."""
    words = words if isinstance(words, list | tuple) else list(words)
    out: list[str | None] = list(map(_STEMS_GET, words))
    if None in out:
        out = [stem(w) for w in words]
    return cast(list[str], out)


def stem_set(words: Iterable[str]) -> set[str]:
    """Distinct stems of ``words``."""
    words = words if isinstance(words, list | tuple | set | frozenset) else list(words)
    out: set[str | None] = set(map(_STEMS_GET, words))
    if None in out:
        return {stem(w) for w in words}
    return cast(set[str], out)


class FieldText:
    """One field of a paper: its folded tokens, and lazily their set, stems,
    positions and counts (most papers are only ever looked at as a whole)."""

    __slots__ = (
        "_sorted",
        "_stem_counts",
        "_stem_list",
        "_stemset",
        "_token_counts",
        "_tokset",
        "tokens",
    )

    def __init__(self, text: str) -> None:
        self.tokens = tokens(text)
        self._tokset: set[str] | None = None
        self._stemset: set[str] | None = None
        self._stem_list: list[str] | None = None
        self._sorted: list[str] | None = None
        self._token_counts: Counter[str] | None = None
        self._stem_counts: Counter[str] | None = None

    @property
    def tokset(self) -> set[str]:
        if self._tokset is None:
            self._tokset = set(self.tokens)
        return self._tokset

    @property
    def stemset(self) -> set[str]:
        if self._stemset is None:
            self._stemset = stem_set(self.tokset)
        return self._stemset

    def with_prefix(self, prefix: str) -> list[str]:
        """Distinct tokens starting with ``prefix``, found by bisection."""
        if self._sorted is None:
            self._sorted = sorted(self.tokset)
        ordered = self._sorted
        i = bisect_left(ordered, prefix)
        out = []
        while i < len(ordered) and ordered[i].startswith(prefix):
            out.append(ordered[i])
            i += 1
        return out

    @property
    def stem_list(self) -> list[str]:
        if self._stem_list is None:
            self._stem_list = stems(self.tokens)
        return self._stem_list

    def positions(self, exact: bool, key: str) -> list[int]:
        """Where ``key`` (a token if ``exact``, else a stem) occurs; list.index
        scans in C, far quicker than indexing every position of the field."""
        seq = self.tokens if exact else self.stem_list
        out: list[int] = []
        at = -1
        try:
            while True:
                at = seq.index(key, at + 1)
                out.append(at)
        except ValueError:
            return out

    def count(self, exact: bool, key: str) -> int:
        """How often ``key`` occurs: looked up in the field's counts, made on
        first use (a paper's terms are weighed for many subscriptions, and
        ``list.count`` compares every word each time)."""
        if exact:
            counts = self._token_counts
            if counts is None:
                counts = self._token_counts = Counter(self.tokens)
        else:
            counts = self._stem_counts
            if counts is None:
                counts = self._stem_counts = Counter(self.stem_list)
        return counts.get(key, 0)


@dataclass
class Stats:
    """Collection statistics for BM25 and for choosing a query's rarest term:
    papers seen, document frequency of each stem, and field lengths."""

    papers: int = 0
    df: Counter[str] = field(default_factory=Counter)
    title_length: int = 0
    abstract_length: int = 0

    def observe(self, doc: Doc) -> None:
        self.papers += 1
        self.df.update(doc.text_stems)
        self.title_length += len(doc.title.tokens)
        self.abstract_length += len(doc.abstract.tokens)

    def observe_paper(self, paper: Paper) -> None:
        """Count a paper as ``observe(Doc(paper))`` does, without building the
        rest of a Doc: this runs for every new paper at ingest."""
        title, abstract = tokens(paper.title), tokens(paper.abstract)
        self.papers += 1
        self.df.update(stem_set(set(title) | set(abstract)))
        self.title_length += len(title)
        self.abstract_length += len(abstract)

    def idf(self, stem: str) -> float:
        n = max(self.papers, 1)
        df = min(self.df.get(stem, 0), n)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def average(self) -> tuple[float, float]:
        if not self.papers:
            return 10.0, 150.0
        return (
            max(self.title_length / self.papers, 1.0),
            max(self.abstract_length / self.papers, 1.0),
        )


EMPTY_STATS = Stats()
_NO_TEXT = FieldText("")


class Doc:
    """A paper analysed once, read by every query that could match it: the
    stems of title and abstract together are built eagerly (the engine's
    index reads them), the rest on first use."""

    __slots__ = (
        "_org",
        "_scale",
        "_text_tokens",
        "_weights",
        "abstract",
        "authors",
        "paper",
        "stats",
        "text_stems",
        "title",
        "upvotes",
    )

    def __init__(
        self, paper: Paper, stats: Stats = EMPTY_STATS, scale: Scale | None = None
    ) -> None:
        self.paper = paper
        self.stats = stats
        # ``stats`` as weighing reads it; papers analysed together share one
        # (see ``Scale``), others make their own on first use.
        self._scale = scale
        self.title = FieldText(paper.title)
        self.abstract = FieldText(paper.abstract)
        self._org: FieldText | None = None
        self._text_tokens: set[str] | None = None
        # From the stem lists rather than the token set: phrases need the lists
        # for most papers once there are thousands of subscriptions.
        self.text_stems = set(self.title.stem_list + self.abstract.stem_list)
        self.upvotes = paper.upvotes
        self.authors = paper.authors
        # By key, exact ones as "=word" (a stem never holds "=").
        self._weights: dict[str, float] = {}

    @property
    def text_tokens(self) -> set[str]:
        """Distinct folded words of title and abstract (only exact-word
        queries need them, so they are built on first use)."""
        if self._text_tokens is None:
            self._text_tokens = set(self.title.tokens + self.abstract.tokens)
        return self._text_tokens

    @property
    def org(self) -> FieldText:
        if self._org is None:
            org = self.paper.organization
            self._org = FieldText(org) if org else _NO_TEXT
        return self._org

    def weight(self, exact: bool, key: str) -> float:
        """BM25F contribution of one term (a token if ``exact``, else a stem)
        over title and abstract, title hits weighted above abstract hits."""
        memo = "=" + key if exact else key
        cached = self._weights.get(memo)
        if cached is not None:
            return cached
        scale = self._scale
        if scale is None:
            scale = self._scale = Scale(self.stats)
        title, abstract = self.title, self.abstract
        value = self._weights[memo] = bm25f(
            scale.idf(stem(key) if exact else key),
            scale.average,
            (title.count(exact, key), len(title.tokens)),
            (abstract.count(exact, key), len(abstract.tokens)),
        )
        return value

    def with_prefix(self, prefix: str) -> list[str]:
        """Distinct words of title, then abstract, starting with ``prefix``."""
        return self.title.with_prefix(prefix) + self.abstract.with_prefix(prefix)


def bm25f(
    idf: float, average: tuple[float, float], title: tuple[int, int], abstract: tuple[int, int]
) -> float:
    """BM25F of one term from its IDF, the average field lengths and its
    (count, field length) in title and abstract: the one formula for ``Doc``
    and ``StemCounts``, so both rank alike."""
    avg_title, avg_abstract = average
    tf = TITLE_WEIGHT * title[0] / (1.0 - B + B * title[1] / avg_title) + abstract[0] / (
        1.0 - B + B * abstract[1] / avg_abstract
    )
    return idf * tf * (K1 + 1.0) / (K1 + tf)


class Scale:
    """The statistics as ranking reads them, each stem's IDF worked out once:
    a pass's compose ranks hundreds of thousands of matches against them."""

    __slots__ = ("_idf", "average", "stats")

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.average = stats.average()
        self._idf: dict[str, float] = {}

    def idf(self, key: str) -> float:
        value = self._idf.get(key)
        if value is None:
            value = self._idf[key] = self.stats.idf(key)
        return value


class StemCounts:
    """A paper as ranking reads it: the stems of its title and abstract, as
    tuples of the stem cache's strings (about 1 KB a paper against a Doc's
    tens), so a compose worker can keep every paper of a pass and analyse
    each once, not once per chunk of digests it appears in. Exact and prefix
    terms, which few queries have, count the paper's words when asked."""

    __slots__ = ("_abstract", "_prefixed", "_title", "_weights", "_words", "paper", "scale")

    def __init__(self, paper: Paper, scale: Scale) -> None:
        self._title = tuple(stems(tokens(paper.title)))
        self._abstract = tuple(stems(tokens(paper.abstract)))
        self._words: tuple[list[str], list[str]] | None = None
        # Each term's weight and each prefix's words once worked out: the
        # readers a paper matched share most of their terms, and each
        # counts over the whole paper (exact terms keyed "=word").
        self._weights: dict[str, float] = {}
        self._prefixed: dict[str, list[str]] = {}
        self.paper = paper
        self.scale = scale

    def weight(self, exact: bool, key: str) -> float:
        """What ``Doc(paper, scale.stats).weight(exact, key)`` gives."""
        memo = "=" + key if exact else key
        known = self._weights.get(memo)
        if known is not None:
            return known
        title: Sequence[str]
        abstract: Sequence[str]
        if exact:
            title, abstract = self.words
            key_stem = stem(key)
        else:
            title, abstract = self._title, self._abstract
            key_stem = key
        value = self._weights[memo] = bm25f(
            self.scale.idf(key_stem),
            self.scale.average,
            (title.count(key), len(title)),
            (abstract.count(key), len(abstract)),
        )
        return value

    def with_prefix(self, prefix: str) -> list[str]:
        """Distinct words starting with ``prefix`` (in no particular order)."""
        found = self._prefixed.get(prefix)
        if found is None:
            title, abstract = self.words
            found = self._prefixed[prefix] = [
                w for w in {*title, *abstract} if w.startswith(prefix)
            ]
        return found

    @property
    def words(self) -> tuple[list[str], list[str]]:
        if self._words is None:
            self._words = (tokens(self.paper.title), tokens(self.paper.abstract))
        return self._words

    def drop_words(self) -> None:
        """Forget the words (made again when next asked for): only a few
        terms need them, and each paper's would take several KB."""
        self._words = None
