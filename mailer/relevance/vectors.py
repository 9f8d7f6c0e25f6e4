"""Papers as vectors, and many profiles scored against many papers at once.

Similarity subscriptions and per-reader models see papers only through an
``Encoder``: today TF-IDF over title and abstract, weighed with the corpus
statistics kept in the database (``Stats``). On the sample papers a packaged
MiniLM embedding ranked no better than TF-IDF and ran a hundred times
slower; a dense model can still be added later as another ``Encoder``, since
everything downstream (centroids, training, scoring) works on the vectors
alone.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from functools import cache
from typing import Generic, Protocol, TypeVar

import numpy as np
from scipy import sparse

from mailer.analysis import TITLE_WEIGHT, Doc, Stats, stem

# A sparse vector: feature -> weight, of unit length. For TF-IDF the
# features are stems, which is also how the words that weighed most in a
# score are named.
Vector = dict[str, float]
K = TypeVar("K", bound=Hashable)


class Encoder(Protocol):
    """How papers become vectors of unit length; one vector per paper, in order."""

    def encode(self, docs: Sequence[Doc]) -> list[Vector]: ...


@cache
def stop_stems() -> frozenset[str]:
    """English stop words (scikit-learn's list), stemmed: they say nothing
    about a topic and would only crowd the words named as reasons. Read when
    first needed: importing scikit-learn takes a second and 100 MB, which a
    pass without similarity subscriptions or readers' models never needs."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(stem(w) for w in ENGLISH_STOP_WORDS)


def feature(key: str) -> bool:
    """Whether a stem says something about a paper's topic: not a stop word,
    a number or a single letter."""
    return len(key) > 1 and key not in stop_stems() and not key.isdigit()


class TfidfEncoder:
    """Stems of title and abstract (a title word counts TITLE_WEIGHT abstract
    words), sublinear term frequency times the corpus IDF, unit length; stop
    words and numbers left out. The IDF is that of ``stats``, so scores
    follow the stored corpus; words it has not counted yet weigh as the
    rarest. (On the labelled sample papers this beat raw and BM25-saturated
    term frequencies, and titles weighed as abstracts: bench/README.md.)"""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._idf: dict[str, float] = {}

    def idf(self, key: str) -> float:
        """The stem's IDF; 0 for what is not a ``feature``."""
        found = self._idf.get(key)
        if found is None:
            found = self._idf[key] = self.stats.idf(key) if feature(key) else 0.0
        return found

    def encode(self, docs: Sequence[Doc]) -> list[Vector]:
        return [self._one(doc) for doc in docs]

    def _one(self, doc: Doc) -> Vector:
        counts: dict[str, float] = dict(Counter(doc.abstract.stem_list))
        for key in doc.title.stem_list:
            counts[key] = counts.get(key, 0.0) + TITLE_WEIGHT
        idf = self.idf
        weights = {key: (1.0 + math.log(n)) * w for key, n in counts.items() if (w := idf(key))}
        return unit(weights)


def unit(weights: Mapping[str, float]) -> Vector:
    """``weights`` scaled to length 1 (empty when it has no length)."""
    norm = math.sqrt(sum(w * w for w in weights.values()))
    if not norm:
        return {}
    return {key: w / norm for key, w in weights.items()}


def centroid(vectors: Iterable[Mapping[str, float]]) -> Vector:
    """The direction of the mean of ``vectors``: a profile that is as close
    to each example as the examples are to each other."""
    total: Counter[str] = Counter()
    for vector in vectors:
        total.update(vector)
    return unit(total)


def cosine(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(key, 0.0) for key, w in a.items())


def weighed(profile: Mapping[str, float], vector: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` features that added most to ``profile`` . ``vector``, heaviest first."""
    parts = [(w * profile[key], key) for key, w in vector.items() if key in profile]
    best = heapq.nsmallest(n, parts, key=lambda p: (-p[0], p[1]))
    return [key for value, key in best if value > 0]


def surface_words(doc: Doc, stems: Sequence[str]) -> tuple[str, ...]:
    """The words of ``doc`` (title first) that ``stems`` stand for, in order:
    what a reader recognises and what highlighting finds again."""
    wanted = set(stems)
    found: dict[str, str] = {}
    for field in (doc.title, doc.abstract):
        for token, key in zip(field.tokens, field.stem_list, strict=True):
            if key in wanted and key not in found:
                found[key] = token
                if len(found) == len(wanted):
                    return tuple(found[key] for key in stems)
    return tuple(found[key] for key in stems if key in found)


class Profiles(Generic[K]):
    """Weight vectors by key (similarity profiles, per-reader models), each
    with an intercept, scored against a batch of paper vectors in one sparse
    product: a pass scores thousands of papers against hundreds of profiles."""

    def __init__(
        self, rows: Mapping[K, Mapping[str, float]], intercepts: Mapping[K, float] | None = None
    ) -> None:
        self.keys: list[K] = list(rows)
        self.column = {key: i for i, key in enumerate(self.keys)}
        self.rows = rows
        self.vocabulary: dict[str, int] = {}
        data: list[float] = []
        indices: list[int] = []
        indptr = [0]
        for key in self.keys:
            for feature, weight in rows[key].items():
                at = self.vocabulary.setdefault(feature, len(self.vocabulary))
                indices.append(at)
                data.append(weight)
            indptr.append(len(indices))
        self._matrix = sparse.csr_matrix(
            (np.asarray(data, dtype=np.float64), indices, indptr),
            shape=(len(self.keys), max(len(self.vocabulary), 1)),
        ).T.tocsr()
        self._intercepts = np.asarray(
            [(intercepts or {}).get(key, 0.0) for key in self.keys], dtype=np.float64
        )

    def __len__(self) -> int:
        return len(self.keys)

    def scores(self, vectors: Sequence[Mapping[str, float]]) -> np.ndarray:
        """A (papers x profiles) array: each paper's dot product with each
        profile, plus the profile's intercept."""
        if not self.keys:
            return np.zeros((len(vectors), 0))
        vocabulary = self.vocabulary
        data: list[float] = []
        indices: list[int] = []
        indptr = [0]
        for vector in vectors:
            for feature, weight in vector.items():
                at = vocabulary.get(feature)
                if at is not None:
                    indices.append(at)
                    data.append(weight)
            indptr.append(len(indices))
        papers = sparse.csr_matrix(
            (np.asarray(data, dtype=np.float64), indices, indptr),
            shape=(len(vectors), self._matrix.shape[0]),
        )
        product = np.asarray((papers @ self._matrix).todense())
        return product + self._intercepts
