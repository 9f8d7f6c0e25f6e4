"""'More like these' subscriptions: example papers (and words) instead of,
or as well as, a query.

A subscription's profile is the centroid of its examples' vectors (see
``vectors``); a new paper's similarity to it is their cosine. Without a
query, a paper at or above the threshold matches; with one, only papers the
query matches, ranked by similarity (above the threshold, if one is set).
The examples are looked up among the stored papers by title, with the same
folding that makes two dump records one paper.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mailer.analysis import Doc, Stats
from mailer.matching import Hit
from mailer.papers import Paper, paper_key
from mailer.relevance.defaults import DEFAULT_THRESHOLD, DEFAULT_TOP
from mailer.relevance.vectors import (
    Encoder,
    Profiles,
    TfidfEncoder,
    Vector,
    centroid,
    surface_words,
    weighed,
)

# A subscription: (subscriber's email, subscription name), as the engine keys it.
Key = tuple[str, str]
#: Words named under a paper: those that weighed most in its similarity.
TERMS = 3


@dataclass(frozen=True, slots=True)
class Like:
    """One similarity subscription, as matching needs it."""

    titles: tuple[str, ...] = ()
    text: str = ""
    # None: DEFAULT_THRESHOLD without a query, none with one.
    threshold: float | None = None
    gated: bool = False  # has a query: only papers it matches
    top: int = DEFAULT_TOP

    @property
    def least(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return -1.0 if self.gated else DEFAULT_THRESHOLD


def example_keys(likes: Iterable[Like]) -> set[str]:
    """The paper keys of every example title, for one look-up in the store."""
    return {paper_key(t) for like in likes for t in like.titles}


def missing_titles(like: Like, stored: Mapping[str, Paper]) -> list[str]:
    """The example titles of ``like`` that are not among the stored papers."""
    return [t for t in like.titles if paper_key(t) not in stored]


def closest_titles(title: str, titles: Sequence[str], n: int = 3) -> list[str]:
    """Stored titles closest to one that was not found, best first, for the
    message that says so (a typo, a subtitle left out)."""
    by_key = {paper_key(t): t for t in titles}
    found = difflib.get_close_matches(paper_key(title), list(by_key), n=n, cutoff=0.5)
    return [by_key[k] for k in found]


class LikeIndex:
    """Every similarity subscription's profile, keyed like the engine's
    queries, scored against a batch of papers at once."""

    def __init__(
        self,
        likes: Mapping[Key, Like],
        stored: Mapping[str, Paper],
        stats: Stats,
        encoder: Encoder | None = None,
    ) -> None:
        self.encoder = encoder or TfidfEncoder(stats)
        self.likes = dict(likes)
        profiles = {}
        self.examples: dict[Key, frozenset[str]] = {}
        for key, like in likes.items():
            docs = [Doc(stored[k], stats) for t in like.titles if (k := paper_key(t)) in stored]
            if like.text:
                docs.append(Doc(Paper("", like.text), stats))
            profile = centroid(self.encoder.encode(docs))
            self.examples[key] = frozenset(paper_key(t) for t in like.titles)
            if profile:
                profiles[key] = profile
        self.profiles: Profiles[Key] = Profiles(profiles)
        # Gated subscriptions are found by the engine first: their column
        # never matches by similarity alone.
        self._least = np.asarray(
            [np.inf if self.likes[k].gated else self.likes[k].least for k in self.profiles.keys]
        )
        self.gated = frozenset(k for k, like in self.likes.items() if like.gated)

    def __bool__(self) -> bool:
        return bool(self.likes)

    def similarities(self, vectors: Sequence[Vector]) -> np.ndarray:
        """(papers x subscriptions) cosine similarities of encoded papers."""
        return self.profiles.scores(vectors)

    def hits(
        self, doc: Doc, vector: Vector, engine_hits: Iterable[Hit], row: np.ndarray
    ) -> list[Hit]:
        """One paper's hits: the engine's, those of gated subscriptions only
        when similar enough and scored by similarity, and the similarity
        subscriptions' own; a subscription's example papers never match it."""
        key_of = self.profiles.column
        out: list[Hit] = []
        for hit in engine_hits:
            if hit.query not in self.gated:
                out.append(hit)
                continue
            at = key_of.get(hit.query)
            if at is None or doc.paper.key in self.examples[hit.query]:
                continue
            like = self.likes[hit.query]
            if row[at] >= like.least:
                out.append(hit._replace(score=float(row[at])))
        for column in np.flatnonzero(row >= self._least):
            key = self.profiles.keys[column]
            if doc.paper.key in self.examples[key]:
                continue
            words = surface_words(doc, weighed(self.profiles.rows[key], vector, TERMS))
            out.append(Hit(key, words, float(row[column])))
        return out
