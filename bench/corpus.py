"""A synthetic corpus with the sample dumps' vocabulary: papers and topical
subscriptions, reproducible from a seed."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path

from mailer.analysis import stem, tokens
from mailer.dumpfiles import read_dump
from mailer.papers import Paper

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
TODAY = date(2025, 12, 20)
_STOP = (
    "a an and are as at be by for from has have in is it its of on or that the this to "
    "was were which with we our can these their than into also not but such"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
STOP_WORDS = frozenset(_STOP.split(" "))
ORGS = ["Google", "Meta", "Microsoft", "OpenAI", "Alibaba", "Tencent", "NVIDIA", "DeepSeek"]


@dataclass
class Vocabulary:
    seeds: list[Paper]
    sentences: list[str]
    title_words: list[str]
    title_weights: list[int]
    topical: list[str]
    bigrams: list[str]


def vocabulary() -> Vocabulary:
    """Sentences, title-word frequencies and topical words of the sample dumps.
    Topical words leave out stop words and words in more than 5% of papers;
    a word counts as frequent when its stem is, since a query matches every
    inflection ("accurate" finds "accuracy")."""
    seeds = [p for path in sorted(SEEDS.glob("*.txt")) for p in read_dump(path, today=TODAY).papers]
    sentences = [s for p in seeds for s in _SENTENCE.split(p.abstract) if len(s) > 20]
    title_counts = Counter(w for p in seeds for w in p.title.split())
    words = {w for p in seeds for w in tokens(p.title + " " + p.abstract)}
    df = Counter(s for p in seeds for s in {stem(w) for w in tokens(p.title + " " + p.abstract)})
    limit = 0.05 * len(seeds)
    topical = sorted(
        w
        for w in words
        if df[stem(w)] <= limit and w not in STOP_WORDS and len(w) > 2 and w.isalpha()
    )
    keep = set(topical)
    bigrams = Counter(
        f"{a} {b}"
        for p in seeds
        for ws in [tokens(p.abstract)]
        for a, b in pairwise(ws)
        if a in keep and b in keep
    )
    return Vocabulary(
        seeds=seeds,
        sentences=sentences,
        title_words=list(title_counts),
        title_weights=list(title_counts.values()),
        topical=topical,
        bigrams=[b for b, n in bigrams.items() if n >= 2],
    )


def papers(vocab: Vocabulary, n: int, seed: int = 1) -> list[Paper]:
    """Titles of words drawn with their title frequencies; abstracts of
    sentences drawn from the sample abstracts, so phrases occur as in real text."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        title = " ".join(rng.choices(vocab.title_words, vocab.title_weights, k=rng.randint(6, 12)))
        abstract = " ".join(rng.choices(vocab.sentences, k=rng.randint(5, 9)))
        org = rng.choice(ORGS) if i % 3 == 0 else None
        out.append(
            Paper(
                title=f"{title} {i}",
                abstract=abstract,
                authors=None if org else rng.randint(1, 12),
                organization=org,
                published=TODAY - timedelta(days=rng.randint(0, 30)),
                upvotes=int(rng.expovariate(1 / 8)),
            )
        )
    return out


def subscriptions(vocab: Vocabulary, n: int, seed: int = 2) -> list[str]:
    """Topical queries like real subscribers write: mostly one to three
    words or a phrase, some with fields, prefixes, NOT and filters."""
    rng = random.Random(seed)
    words = vocab.topical
    out = []
    for _ in range(n):
        kind = rng.random()
        w = rng.choice(words)
        if kind < 0.30:
            out.append(w)
        elif kind < 0.62:
            out.append(f"{w} {rng.choice(words)}")
        elif kind < 0.67:
            out.append(f"{w} {rng.choice(words)} {rng.choice(words)}")
        elif kind < 0.77:
            out.append(f'"{rng.choice(vocab.bigrams)}"')
        elif kind < 0.82:
            out.append(f"{w} OR {rng.choice(words)}")
        elif kind < 0.87:
            out.append(f"title:{w}")
        elif kind < 0.90:
            out.append(f"{w[: max(4, len(w) - 3)]}*")
        elif kind < 0.96:
            out.append(f"{w} -{rng.choice(words)}")
        elif kind < 0.98:
            out.append(f"org:{rng.choice(ORGS)} {w}")
        else:
            out.append(f'"{rng.choice(vocab.bigrams)}"~3 upvotes>=5')
    return out
