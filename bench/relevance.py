"""Relevance benchmark: how well and how fast similarity subscriptions and
per-reader models work.

    PYTHONPATH=. python -m bench.relevance quality
    PYTHONPATH=. python -m bench.relevance speed [--papers 10000] [--keyword 2000] [--relevance 500]
    PYTHONPATH=. python -m bench.relevance train [--papers 100000]

``quality`` runs on the sample papers (seeds/) and the labelled topics in
bench/topics.toml, through the code the daemon runs (TfidfEncoder,
LikeIndex, Engine, reader.train):

- like P@5, P@10: a "more like these" subscription seeded with the topic's
  first two titles ranks every other sample paper by similarity; the share
  of its top 5 and 10 that belong to the topic (ceiling: a topic of n papers
  has only n - 2 left to find); "all pairs" averages over every pair of
  seeds instead of the first two;
- keyword P@5, P@10: the topic's keyword query (topics.toml), papers it
  matches ranked by BM25, the same two papers left out;
- MRR (leave one out): for each paper of a topic, the others are the
  examples (or the marked papers), and the held-out paper's rank among all
  papers that are not examples gives 1/rank: the per-reader model (trained
  as a pass trains it, every other sample paper drawn as a negative), the
  similarity profile of the others, and the keyword query (0 when the query
  does not match the paper: it would never be mailed);
- the threshold table: precision and recall of two-seed subscriptions at
  each similarity threshold, and papers taken per 100 new papers (the
  default, DEFAULT_THRESHOLD, is the best F1);
- the model's C, and the similarity at which papers are demoted as being
  like one marked "not for me".

``speed`` times a whole pass (ingest, match, compose, deliver into a
Maildir) over ``--papers`` new synthetic papers (bench/corpus.py), with
``--keyword`` keyword subscribers, against the same pass with
``--relevance`` more subscribers: half with a "like" subscription seeded
with two stored titles, half with a keyword subscription and a trained
model (five "more like this" marks); same stored corpus (as many papers
again, matched before), same run, alternating. Target: at most 1.5 times.
A third row has as many keyword subscribers as the second has subscribers,
to tell the cost of relevance from that of more digests. Wall and CPU time
(of the process and its threads; the pass composes in-process) are shown:
on a shared machine CPU time is the steadier of the two.

``train`` stores ``--papers`` synthetic papers (statistics counted as the
match stage counts them) and times training one reader's model as a pass
does it (``refresh_models``: reading the marks, drawing the negatives from
the database, encoding, fitting, saving). Target: under a second at 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.corpus import Vocabulary, papers, subscriptions, vocabulary
from mailer.analysis import Doc, Stats
from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.dumps import format_dump
from mailer.matching import Engine, parse_query
from mailer.papers import Paper, paper_key
from mailer.pipeline import Pipeline
from mailer.pipeline.match import match_new_papers, refresh_models
from mailer.pipeline.report import PassReport
from mailer.relevance import reader as reader_module
from mailer.relevance.defaults import DEFAULT_THRESHOLD
from mailer.relevance.likes import Like, LikeIndex
from mailer.relevance.reader import DEMOTE_SIMILARITY, readers, train
from mailer.relevance.vectors import TfidfEncoder, cosine
from mailer.store import Mark, MarkKind, Store

TOPICS = Path(__file__).resolve().parent / "topics.toml"
NOW = datetime(2025, 12, 20, 9, 0, tzinfo=UTC)
KEY = ("bench@example.org", "bench")


def header() -> str:
    return (
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def table(rows: list[dict[str, str]]) -> str:
    heads = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in heads]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    body = [
        "| "
        + " | ".join(
            (r[h].ljust(w) if i == 0 else r[h].rjust(w))
            for i, (h, w) in enumerate(zip(heads, widths, strict=True))
        )
        + " |"
        for r in rows
    ]
    return "\n".join([line, rule, *body])


# --- quality -------------------------------------------------------------------------


class Labelled:
    """The sample papers (each once), their statistics and vectors, and the topics."""

    def __init__(self) -> None:
        unique: dict[str, Paper] = {}
        for paper in vocabulary().seeds:
            unique.setdefault(paper.key, paper)
        self.papers = list(unique.values())
        self.index = {p.key: i for i, p in enumerate(self.papers)}
        self.stats = Stats()
        for paper in self.papers:
            self.stats.observe_paper(paper)
        self.docs = [Doc(p, self.stats) for p in self.papers]
        self.vectors = TfidfEncoder(self.stats).encode(self.docs)
        self.topics = tomllib.loads(TOPICS.read_text(encoding="utf-8"))["topic"]
        self.members = [
            [self.index[paper_key(t)] for t in topic["papers"]] for topic in self.topics
        ]

    def similarities(self, examples: Sequence[int]) -> list[float]:
        """Every paper's similarity to a subscription with these examples."""
        stored = {self.papers[i].key: self.papers[i] for i in examples}
        like = Like(tuple(self.papers[i].title for i in examples), threshold=0.0)
        index = LikeIndex({KEY: like}, stored, self.stats)
        return [float(s) for s in index.similarities(self.vectors)[:, 0]]

    def keyword(self, query: str) -> list[float | None]:
        """Every paper's BM25 score under the query; None where it does not match."""
        engine = Engine({KEY: parse_query(query)}, self.stats)
        out: list[float | None] = []
        for doc in self.docs:
            hits = engine.match(doc).hits()
            out.append(hits[0].score if hits else None)
        return out

    def model_scores(self, positives: Sequence[int], left_out: int) -> list[float]:
        """Every paper's score under a reader's model trained as a pass
        trains it: ``positives`` marked, every other paper but ``left_out``
        drawn as a negative."""
        marks = [Mark(n, i, self.papers[i], MarkKind.MORE, NOW) for n, i in enumerate(positives, 1)]
        drawn = [(i, p) for i, p in enumerate(self.papers) if i != left_out]
        model = train(1, marks, lambda: drawn, self.stats, NOW)
        reader = readers({1: model}, {1: marks}, self.stats)[1]
        return [reader.score(doc) for doc in self.docs]


def precision(scores: Sequence[float | None], relevant: set[int], skip: set[int], k: int) -> float:
    ranked = sorted(
        (i for i, s in enumerate(scores) if s is not None and i not in skip),
        key=lambda i: -(scores[i] or 0.0),
    )
    return sum(i in relevant for i in ranked[:k]) / k


def reciprocal_rank(scores: Sequence[float | None], target: int, skip: set[int]) -> float:
    if scores[target] is None:
        return 0.0
    above = sum(
        1
        for i, s in enumerate(scores)
        if i not in skip and i != target and s is not None and s > (scores[target] or 0.0)
    )
    return 1.0 / (above + 1)


def loo_mrr(
    data: Labelled, members: Sequence[int], score: Callable[[list[int], int], list]
) -> float:  # type: ignore[type-arg]
    values = []
    for held in members:
        others = [i for i in members if i != held]
        values.append(reciprocal_rank(score(others, held), held, set(others)))
    return statistics.mean(values)


def quality() -> None:
    data = Labelled()
    print(header())
    print(f"# {len(data.papers)} sample papers, {len(data.topics)} topics, "
          f"{sum(map(len, data.members))} labels")  # fmt: skip
    rows = []
    totals: dict[str, list[float]] = {}
    for topic, members in zip(data.topics, data.members, strict=True):
        seeds = members[:2]
        relevant = set(members) - set(seeds)
        sims = data.similarities(seeds)
        words = data.keyword(topic["query"])
        pairs = list(itertools.combinations(members, 2))
        pair_p5 = statistics.mean(
            precision(data.similarities(p), set(members) - set(p), set(p), 5) for p in pairs
        )
        figures = {
            "like P@5": precision(sims, relevant, set(seeds), 5),
            "like P@10": precision(sims, relevant, set(seeds), 10),
            "like P@5, all pairs": pair_p5,
            "keyword P@5": precision(words, relevant, set(seeds), 5),
            "keyword P@10": precision(words, relevant, set(seeds), 10),
            "model MRR": loo_mrr(data, members, lambda o, h: data.model_scores(o, h)),
            "similarity MRR": loo_mrr(data, members, lambda o, h: data.similarities(o)),
            "keyword MRR": loo_mrr(data, members, lambda o, h, w=words: w),
        }
        for name, value in figures.items():
            totals.setdefault(name, []).append(value)
        ceiling = f"{min(5, len(relevant)) / 5:.1f}/{min(10, len(relevant)) / 10:.1f}"
        rows.append(
            {"topic": topic["name"], "papers": str(len(members)), "P@5/P@10 ceiling": ceiling}
            | {name: f"{value:.2f}" for name, value in figures.items()}
        )
        print(" | ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    rows.append(
        {"topic": "**mean**", "papers": "", "P@5/P@10 ceiling": ""}
        | {name: f"**{statistics.mean(v):.2f}**" for name, v in totals.items()}
    )
    print()
    print(table(rows))
    print()
    thresholds(data)
    print()
    model_c(data)
    print()
    demotion(data)


def thresholds(data: Labelled) -> None:
    """Precision and recall of two-seed subscriptions at each threshold."""
    relevant_scores: list[float] = []
    other_scores: list[float] = []
    for members in data.members:
        for pair in itertools.combinations(members, 2):
            sims = data.similarities(pair)
            for i, s in enumerate(sims):
                if i in pair:
                    continue
                (relevant_scores if i in members else other_scores).append(s)
    subscriptions_run = sum(len(list(itertools.combinations(m, 2))) for m in data.members)
    rows = []
    for t in (0.08, 0.10, 0.12, 0.13, 0.14, 0.15, 0.16, 0.18, 0.20, 0.25):
        tp = sum(s >= t for s in relevant_scores)
        fp = sum(s >= t for s in other_scores)
        p = tp / max(tp + fp, 1)
        r = tp / len(relevant_scores)
        f1 = 2 * p * r / max(p + r, 1e-9)
        per_100 = (tp + fp) / subscriptions_run / (len(data.papers) - 2) * 100
        mark = " (default)" if abs(t - DEFAULT_THRESHOLD) < 1e-9 else ""
        rows.append(
            {
                "threshold": f"{t:.2f}{mark}",
                "precision": f"{p:.2f}",
                "recall": f"{r:.2f}",
                "F1": f"{f1:.2f}",
                "taken per 100 papers": f"{per_100:.1f}",
            }
        )
    print("Two-seed subscriptions, every pair of every topic:")
    print(table(rows))


def model_c(data: Labelled) -> None:
    rows = []
    default = reader_module.C
    try:
        for c in (0.1, 0.3, 1.0, 3.0):
            reader_module.C = c
            started = time.perf_counter()
            mrr = statistics.mean(
                loo_mrr(data, m, lambda o, h: data.model_scores(o, h)) for m in data.members
            )
            took = (time.perf_counter() - started) / sum(map(len, data.members))
            mark = " (default)" if c == default else ""
            rows.append(
                {
                    "C": f"{c}{mark}",
                    "model MRR": f"{mrr:.3f}",
                    "ms per training": f"{took * 1e3:.0f}",
                }
            )
    finally:
        reader_module.C = default
    print("The per-reader model's C (mean of the topics' leave-one-out MRR):")
    print(table(rows))


def demotion(data: Labelled) -> None:
    topic_of: dict[int, set[int]] = {}
    for t, members in enumerate(data.members):
        for i in members:
            topic_of.setdefault(i, set()).add(t)
    same, other = [], []
    labelled = sorted(topic_of)
    for a, b in itertools.combinations(labelled, 2):
        c = cosine(data.vectors[a], data.vectors[b])
        (same if topic_of[a] & topic_of[b] else other).append(c)
    rows = []
    for t in (0.10, 0.12, 0.15, 0.20):
        tp = sum(c >= t for c in same)
        fp = sum(c >= t for c in other)
        mark = " (default)" if abs(t - DEMOTE_SIMILARITY) < 1e-9 else ""
        rows.append(
            {
                "similarity": f"{t:.2f}{mark}",
                "pairs this close that share a topic": f"{tp / max(tp + fp, 1):.2f}",
                "same-topic pairs this close": f"{tp / len(same):.2f}",
            }
        )
    print("Demoting papers like one marked 'not for me' (pairs of labelled papers):")
    print(table(rows))


# --- speed -----------------------------------------------------------------------------


def write_dumps(folder: Path, batch: list[Paper], per_file: int = 1000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, len(batch), per_file)):
        day = NOW.date() - timedelta(days=n)
        (folder / f"{n:05d}.txt").write_text(
            format_dump(day, batch[start : start + per_file]), encoding="utf-8"
        )


def speed_config(
    tmp: Path, queries: list[str], likes: int, models: int, titles: list[str]
) -> Config:
    rng = random.Random(3)
    parts = [
        f"""
[watch]
dir = "dumps"
settle_seconds = 0
[database]
url = "sqlite:///{tmp / "bench.db"}"
[delivery]
transport = "maildir"
maildir = "outbox"
"""
    ]
    for i, query in enumerate(queries):
        parts.append(
            f'[[subscribers]]\nemail = "k{i}@example.org"\n'
            f"[[subscribers.subscriptions]]\nname = \"Q\"\nquery = '''{query}'''\n"
        )
    for i in range(likes):
        seeds = rng.sample(titles, 2)
        parts.append(
            f'[[subscribers]]\nemail = "l{i}@example.org"\n'
            f'[[subscribers.subscriptions]]\nname = "Like"\nlike = {seeds!r}\n'
        )
    for i in range(models):
        query = queries[i % len(queries)]
        parts.append(
            f'[[subscribers]]\nemail = "m{i}@example.org"\n'
            f"[[subscribers.subscriptions]]\nname = \"Q\"\nquery = '''{query}'''\n"
        )
    return parse_config("".join(parts), source="bench.toml", base_dir=tmp)


def prepare(base: Path, old: list[Paper], config: Config, models: int) -> None:
    """A database with ``old`` stored and matched (counted), every subscriber
    synced, and the model subscribers' marks and models in place."""
    write_dumps(base / "dumps", old)
    store = Store(config.database.url)
    try:
        empty = config.model_copy(
            update={
                "subscribers": [
                    s.model_copy(update={"subscriptions": []}) for s in config.subscribers
                ]
            }
        )
        pipeline = Pipeline(empty, store, lambda: make_transport(empty), clock=lambda: NOW)
        asyncio.run(pipeline.run_pass())
        pipeline.sync()
        stored = store.papers_since(NOW - timedelta(days=1))
        rng = random.Random(5)
        for i in range(models):
            # Five papers that share a topical word, as a reader's marks would.
            word = rng.choice(["diffusion", "agent", "reasoning", "quantization", "retrieval"])
            picks = [pid for pid, p in stored if word in p.abstract.lower()][:200]
            for pid in rng.sample(picks, 5):
                store.record_mark(f"m{i}@example.org", pid, MarkKind.MORE, NOW)
        started = time.perf_counter()
        trained = refresh_models(store, lambda: NOW)
        print(f"# prepared: {len(old):,} stored papers; {trained} models trained in "
              f"{time.perf_counter() - started:.1f}s")  # fmt: skip
    finally:
        store.close()
    shutil.rmtree(base / "dumps")
    shutil.rmtree(base / "outbox", ignore_errors=True)


def timed_pass(base: Path, config_of: Callable[[Path], Config], new: Path) -> dict[str, float]:
    """One pass over the new dumps on a copy of the prepared database."""
    with tempfile.TemporaryDirectory(dir=base) as run:
        tmp = Path(run)
        shutil.copy(base / "bench.db", tmp / "bench.db")
        shutil.copytree(new, tmp / "dumps")
        config = config_of(tmp)
        store = Store(config.database.url)
        try:
            pipeline = Pipeline(
                config,
                store,
                lambda: make_transport(config),
                clock=lambda: NOW + timedelta(hours=1),
            )
            stages: dict[str, float] = {}
            for stage in ("ingest", "match", "compose", "deliver"):
                original = getattr(pipeline, stage)
                setattr(pipeline, stage, _stage_timer(original, stages, stage))
            started, cpu = time.perf_counter(), time.process_time()
            report: PassReport = asyncio.run(pipeline.run_pass())
            stages["pass"] = time.perf_counter() - started
            stages["cpu"] = time.process_time() - cpu
            stages["matches"] = report.matches
            stages["digests"] = report.digests
        finally:
            store.close()
    return stages


def _stage_timer(original: Callable, stages: dict[str, float], name: str) -> Callable:  # type: ignore[type-arg]
    if asyncio.iscoroutinefunction(original):

        async def timed_async(*args: object) -> object:
            started = time.perf_counter()
            try:
                return await original(*args)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - started

        return timed_async

    def timed_sync(*args: object) -> object:
        started = time.perf_counter()
        try:
            return original(*args)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - started

    return timed_sync


def speed(n_papers: int, keyword: int, relevance: int, rounds: int) -> None:
    print(header())
    vocab = vocabulary()
    corpus = papers(vocab, 2 * n_papers, seed=11)
    old, new = corpus[:n_papers], corpus[n_papers:]
    more_queries = subscriptions(vocab, keyword + relevance)
    queries = more_queries[:keyword]
    likes, models = relevance // 2, relevance - relevance // 2
    titles = [p.title for p in old]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        prepare(base, old, speed_config(base, queries, likes, models, titles), models)
        write_dumps(base / "new", new)
        configs = {
            f"{keyword:,} keyword": lambda tmp: speed_config(tmp, queries, 0, 0, titles),
            f"+ {likes} like, {models} model": lambda tmp: speed_config(
                tmp, queries, likes, models, titles
            ),
            f"{keyword + relevance:,} keyword": lambda tmp: speed_config(
                tmp, more_queries, 0, 0, titles
            ),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        for _ in range(rounds):
            for name, config_of in configs.items():
                results[name].append(timed_pass(base, config_of, base / "new"))
                last = results[name][-1]
                print(f"{name}: " + " ".join(f"{k} {v:.1f}" for k, v in last.items()), flush=True)
    rows = []
    first = next(iter(results.values()))
    base_pass = statistics.median(r["pass"] for r in first)
    base_cpu = statistics.median(r["cpu"] for r in first)
    base_match = statistics.median(r["match"] for r in first)
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append(
            {
                "subscribers": name,
                "pass s": f"{med['pass']:.1f}",
                "x keyword": f"{med['pass'] / base_pass:.2f}",
                "pass CPU s": f"{med['cpu']:.1f}",
                "CPU x keyword": f"{med['cpu'] / base_cpu:.2f}",
                "ingest s": f"{med['ingest']:.1f}",
                "match s": f"{med['match']:.1f}",
                "match x keyword": f"{med['match'] / base_match:.2f}",
                "compose+deliver s": f"{med['pass'] - med['ingest'] - med['match']:.1f}",
                "matches": f"{med['matches']:,.0f}",
                "digests": f"{med['digests']:,.0f}",
            }
        )
    print()
    print(f"{n_papers:,} new papers, {n_papers:,} stored before; {keyword:,} keyword "
          f"subscribers, + {likes} with a like subscription and {models} with a model "
          f"(and a keyword subscription), against {keyword + relevance:,} keyword subscribers; "
          f"median of {rounds} run(s) each, alternating; "
          f"load {os.getloadavg()[0]:.1f} at the end:")  # fmt: skip
    print(table(rows))


# --- training time ----------------------------------------------------------------------


def training(n_papers: int, runs: int) -> None:
    print(header())
    vocab: Vocabulary = vocabulary()
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{Path(folder) / 'train.db'}")
        try:
            for start in range(0, n_papers, 5000):
                batch = papers(vocab, min(5000, n_papers - start), seed=start + 1)
                store.ingest(path=f"/b/{start}", sha256=f"s{start}", size=1, page_date=None,
                             papers=batch, warnings=0, now=NOW)  # fmt: skip
            started = time.perf_counter()
            match_new_papers(store, Engine({}), lambda: NOW, PassReport())
            print(f"# {store.count_papers():,} papers stored and counted in "
                  f"{time.perf_counter() - started:.1f}s")  # fmt: skip
            store.sync_subscribers([("reader@example.org", "", [])], NOW)
            stored = store.papers_since(NOW - timedelta(days=1))
            picks = [pid for pid, p in stored if "diffusion" in p.abstract.lower()][:5]
            times = []
            for run in range(runs):
                kind = MarkKind.MORE if run % 2 == 0 else MarkKind.LESS
                # A new mark each run, so the model is trained again.
                store.record_mark("reader@example.org", stored[run][0], kind, NOW)
                for pid in picks:
                    store.record_mark("reader@example.org", pid, MarkKind.MORE, NOW)
                started = time.perf_counter()
                assert refresh_models(store, lambda: NOW) == 1
                times.append(time.perf_counter() - started)
            (model,) = store.reader_models().values()
        finally:
            store.close()
    print(f"training one reader's model at {n_papers:,} stored papers "
          f"({model.positives} wanted, {model.negatives} drawn and unwanted, "
          f"{len(model.weights)} weights kept): median {statistics.median(times):.2f}s, "
          f"max {max(times):.2f}s over {runs} runs (target < 1 s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("quality", help="precision and MRR on the labelled sample papers")
    fast = commands.add_parser("speed", help="a pass with and without relevance subscribers")
    fast.add_argument("--papers", type=int, default=10_000)
    fast.add_argument("--keyword", type=int, default=2_000)
    fast.add_argument("--relevance", type=int, default=500)
    fast.add_argument("--rounds", type=int, default=1)
    learn = commands.add_parser("train", help="training one reader's model")
    learn.add_argument("--papers", type=int, default=100_000)
    learn.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.command == "quality":
        quality()
    elif args.command == "speed":
        speed(args.papers, args.keyword, args.relevance, args.rounds)
    else:
        training(args.papers, args.runs)


if __name__ == "__main__":
    main()
