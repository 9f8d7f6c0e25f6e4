"""A model per reader, learned from their feedback marks.

From MIN_POSITIVES "more like this" marks on, a reader gets a linear SVM
over the TF-IDF vectors of title and abstract, as arxiv-sanity trains one
per tag: the papers they marked are the positives; a sample of the other
stored papers, and the papers they marked "not for me" (weighed more), the
negatives; class weights balanced. It is trained again only when marks
arrive. It orders that reader's digest, and finds up to SUGGESTIONS new
papers that no subscription matched but that score above nearly every
stored paper ("Suggested for you"). Papers much like one marked "not for
me" go to the end of a digest, with a model or without.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy import sparse

from mailer.analysis import Doc, Stats
from mailer.digests import SUGGESTED
from mailer.papers import Paper
from mailer.relevance.vectors import (
    Encoder,
    Profiles,
    TfidfEncoder,
    Vector,
    cosine,
    surface_words,
    weighed,
)
from mailer.store.feedback import Mark, ReaderModel
from mailer.store.matches import NewMatch
from mailer.store.schema import MarkKind

#: "More like this" marks a reader needs before a model is trained for them.
MIN_POSITIVES = 3
#: Stored papers drawn at random as the negatives: enough to stand for the
#: corpus, few enough that training stays well under a second however many
#: papers are stored (bench/relevance.py).
NEGATIVES = 4000
#: A "not for me" paper weighs as this many drawn negatives.
UNWANTED_WEIGHT = 3.0
#: The SVM's C (measured on the labelled sample papers, bench/README.md).
C = 1.0
#: Weights kept per model, heaviest first: the rest add almost nothing.
KEEP_WEIGHTS = 3000
#: A suggestion must score above this share of the drawn stored papers.
SUGGEST_ABOVE = 0.99
#: Suggested papers per digest, and the words named for each.
SUGGESTIONS = 5
WHY_WORDS = 3
#: A paper at least this similar (cosine) to one marked "not for me" goes to
#: the end of the digest: on the labelled sample papers, 86% of pairs this
#: close share a topic.
DEMOTE_SIMILARITY = 0.15


def train(
    subscriber_id: int,
    marks: Sequence[Mark],
    sample: Callable[[], Sequence[tuple[int, Paper]]],
    stats: Stats,
    now: datetime,
    encoder: Encoder | None = None,
) -> ReaderModel:
    """A reader's model from their standing marks; with fewer than
    MIN_POSITIVES "more like this" marks, an empty one (which remembers the
    marks it saw, so it is not tried again until marks arrive)."""
    newest = max((m.id for m in marks), default=0)
    wanted = [m.paper for m in marks if m.kind is MarkKind.MORE]
    unwanted = [m.paper for m in marks if m.kind is MarkKind.LESS]
    if len(wanted) < MIN_POSITIVES:
        return ReaderModel(subscriber_id, newest, len(wanted), len(unwanted), {}, 0.0, 0.0, now)
    marked = {m.paper_id for m in marks}
    drawn = [p for i, p in sample() if i not in marked]
    encoder = encoder or TfidfEncoder(stats)
    vectors = encoder.encode([Doc(p, stats) for p in [*wanted, *unwanted, *drawn]])
    features, matrix = _matrix(vectors)
    labels = np.asarray([1] * len(wanted) + [0] * (len(unwanted) + len(drawn)))
    weights = np.asarray(
        [1.0] * len(wanted) + [UNWANTED_WEIGHT] * len(unwanted) + [1.0] * len(drawn)
    )
    from sklearn.svm import LinearSVC  # only here: see vectors.stop_stems

    svm = LinearSVC(C=C, class_weight="balanced")
    svm.fit(matrix, labels, sample_weight=weights)
    coef = svm.coef_[0]
    keep = np.argsort(-np.abs(coef))[:KEEP_WEIGHTS]
    kept = {features[i]: float(coef[i]) for i in keep if coef[i]}
    intercept = float(svm.intercept_[0])
    # The cutoff for suggestions: what the drawn papers score, with the kept weights.
    truncated = np.zeros_like(coef)
    truncated[keep] = coef[keep]
    scores = matrix[len(wanted) + len(unwanted) :] @ truncated + intercept
    cutoff = float(np.quantile(scores, SUGGEST_ABOVE)) if len(drawn) else 0.0
    return ReaderModel(
        subscriber_id, newest, len(wanted), len(unwanted) + len(drawn), kept, intercept, cutoff, now
    )


def _matrix(vectors: Sequence[Vector]) -> tuple[list[str], sparse.csr_matrix]:
    """The vectors as rows of a sparse matrix, and the feature of each column."""
    columns: dict[str, int] = {}
    data: list[float] = []
    indices: list[int] = []
    indptr = [0]
    for vector in vectors:
        for feature, weight in vector.items():
            indices.append(columns.setdefault(feature, len(columns)))
            data.append(weight)
        indptr.append(len(indices))
    matrix = sparse.csr_matrix(
        (np.asarray(data), indices, indptr), shape=(len(vectors), max(len(columns), 1))
    )
    return list(columns), matrix


def usable(model: ReaderModel | None) -> bool:
    """Whether a stored model was trained (enough "more like this" marks)."""
    return model is not None and model.positives >= MIN_POSITIVES and bool(model.weights)


@dataclass(frozen=True)
class Reader:
    """What ordering one reader's digest needs: their model (if trained) and
    the vectors of the papers they marked "not for me"."""

    model: ReaderModel | None
    unwanted: tuple[Vector, ...]
    encoder: Encoder

    def score(self, doc: Doc) -> float:
        """The paper's place in this reader's digest, higher first: the
        model's score, and below every other paper when it is much like
        one they marked "not for me"."""
        vector = self.encoder.encode([doc])[0]
        value = 0.0
        if self.model is not None and usable(self.model):
            weights = self.model.weights
            value = self.model.intercept + sum(w * weights.get(k, 0.0) for k, w in vector.items())
        if any(cosine(vector, u) >= DEMOTE_SIMILARITY for u in self.unwanted):
            value -= 1e6
        return value


def readers(
    models: Mapping[int, ReaderModel], marks: Mapping[int, Sequence[Mark]], stats: Stats
) -> dict[int, Reader]:
    """The readers with something to order their digest by: a trained
    model, or papers marked "not for me"."""
    encoder = TfidfEncoder(stats)
    found: dict[int, Reader] = {}
    for subscriber_id in set(models) | set(marks):
        model = models.get(subscriber_id)
        unwanted = [m.paper for m in marks.get(subscriber_id, ()) if m.kind is MarkKind.LESS]
        if not usable(model) and not unwanted:
            continue
        vectors = encoder.encode([Doc(p, stats) for p in unwanted])
        found[subscriber_id] = Reader(model if usable(model) else None, tuple(vectors), encoder)
    return found


class Suggester:
    """Every reader's model who wants suggestions, scored against a batch of
    new papers at once."""

    def __init__(self, models: Mapping[int, ReaderModel]) -> None:
        trained = {i: m for i, m in models.items() if usable(m)}
        self.models = trained
        self.profiles: Profiles[int] = Profiles(
            {i: m.weights for i, m in trained.items()},
            {i: m.intercept - m.cutoff for i, m in trained.items()},
        )

    def __bool__(self) -> bool:
        return bool(self.models)

    def rows(
        self,
        docs: Sequence[tuple[int, Doc]],
        vectors: Sequence[Vector],
        matched: set[tuple[int, int]],
    ) -> list[NewMatch]:
        """Suggestions among ``docs``: per reader, the SUGGESTIONS papers that
        score highest above their model's cutoff and that none of their
        subscriptions matched (``matched``: (subscriber id, paper id))."""
        if not self.models or not docs:
            return []
        scores = self.profiles.scores(vectors)
        rows: list[NewMatch] = []
        for column, subscriber_id in enumerate(self.profiles.keys):
            above = scores[:, column]
            weights = self.models[subscriber_id].weights
            picked = 0
            for at in np.argsort(-above):
                if above[at] <= 0 or picked == SUGGESTIONS:
                    break
                paper_id, doc = docs[at]
                if (subscriber_id, paper_id) in matched:
                    continue
                words = surface_words(doc, weighed(weights, vectors[at], WHY_WORDS))
                value = float(above[at])
                rows.append(
                    NewMatch(subscriber_id, paper_id, (SUGGESTED,), (words,), (value,), words)
                )
                picked += 1
        return rows
