"""Matching benchmark: the engine against two baselines, in one run.

    python -m bench.matching [--quick] [--papers N ...] [--subs N ...]

Prints one row per corpus size (papers x subscriptions), then a table:

- density: share of (paper, subscription) pairs that match;
- engine p/s, engine s: papers per CPU second and CPU seconds for the whole
  corpus, timing what matching really costs: analysing each paper (``Doc``)
  and ``Engine.match``, which yields the matching subscriptions. Terms and
  scores are computed lazily when read, so they are timed separately:
- +hits p/s: the same, also reading every hit's terms and BM25 score (what
  the pipeline does before storing matches), on a sample of papers;
- cand/paper: queries a paper's terms select (looked at, in C or Python);
- analyse s: CPU seconds of analysing the papers alone (part of engine s);
- match us/paper, us/match: engine CPU time beyond analysis, per paper and
  per match, to show that the cost follows the matches rather than papers x
  subscriptions (with few matches a paper's fixed cost dominates);
- peak MB: tracemalloc peak while building the index and matching 200 papers;
- plain p/s: the plain evaluator, every query's tree against each paper's
  token sets (the paper analysed once), hits with terms and scores;
- regex p/s: a regular expression per query over title and abstract;
- x plain, x regex: engine p/s over each baseline's, same run.

Times are CPU seconds of this process (``time.process_time``, one core), so a
busy machine disturbs them less than wall time. Baselines and +hits that
would take long are timed on the first papers and extrapolated, marked ``~``.
The load average is printed with each row.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import time
import tracemalloc
from collections.abc import Callable, Hashable
from datetime import UTC, datetime

from bench.corpus import Vocabulary, papers, subscriptions, vocabulary
from mailer.analysis import Doc, Stats
from mailer.matching import Engine, match_paper, parse_query
from mailer.papers import Paper
from mailer.query import And, Compare, Node, Not, Or, Phrase, Query, Term

PLAIN_BUDGET = 2.0e6  # query x paper evaluations timed for the plain evaluator
REGEX_BUDGET = 4.0e5
HITS_SAMPLE = 2_000  # papers whose hits' terms and scores are read


def regex_baseline(query: Query) -> Callable[[Paper], bool]:
    """A regular expression per term, combined as the query says: what a
    simple implementation without analysis or an index would do."""

    def build(node: Node) -> Callable[[str, Paper], bool]:
        if isinstance(node, Term | Phrase):
            words = [node.word] if isinstance(node, Term) else list(node.words)
            tail = r"\w*" if isinstance(node, Term) and node.prefix else r"\w*" * (not node.exact)
            if isinstance(node, Phrase) and node.slop:
                body = "|".join(re.escape(w) + tail for w in words)
            else:
                body = r"\W+".join(re.escape(w) + tail for w in words)
            pattern = re.compile(rf"\b(?:{body})\b", re.IGNORECASE)
            if node.field == "org":
                return lambda text, p: bool(pattern.search(p.organization or ""))
            return lambda text, p: bool(pattern.search(text))
        if isinstance(node, Compare):
            return lambda text, p: (p.upvotes if node.attr == "upvotes" else p.authors or 0) >= 0
        if isinstance(node, Not):
            inner = build(node.child)
            return lambda text, p: not inner(text, p)
        parts = [build(c) for c in node.children]
        if isinstance(node, And):
            return lambda text, p: all(f(text, p) for f in parts)
        assert isinstance(node, Or)
        return lambda text, p: any(f(text, p) for f in parts)

    check = build(query.root)
    return lambda p: check(p.title + "\n" + p.abstract, p)


def _cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def run(vocab: Vocabulary, corpus: list[Paper], queries: list[str]) -> dict[str, str]:
    parsed: dict[Hashable, Query] = {i: parse_query(q) for i, q in enumerate(queries)}
    stats = Stats()
    for paper in corpus[:1000]:
        stats.observe(Doc(paper))
    engine = Engine(parsed, stats)
    gc.collect()
    gc.freeze()

    matches = 0

    def engine_run() -> None:
        nonlocal matches
        for paper in corpus:
            matches += len(engine.match(Doc(paper, stats)))

    took = _cpu(engine_run)
    rate = len(corpus) / took

    def analyse() -> None:
        for paper in corpus:
            Doc(paper, stats)

    analysing = _cpu(analyse)

    n_hits = min(len(corpus), HITS_SAMPLE)

    def hits_run() -> None:
        for paper in corpus[:n_hits]:
            for hit in engine.match(Doc(paper, stats)):
                _ = hit.terms, hit.score

    hits_rate = n_hits / _cpu(hits_run)

    n_plain = max(5, min(len(corpus), int(PLAIN_BUDGET / len(parsed))))
    plain_rate = n_plain / _cpu(
        lambda: [match_paper(Doc(p, stats), parsed) for p in corpus[:n_plain]]
    )

    regexes = [regex_baseline(q) for q in parsed.values()]
    n_regex = max(2, min(len(corpus), int(REGEX_BUDGET / len(parsed))))
    regex_rate = n_regex / _cpu(lambda: [c(p) for p in corpus[:n_regex] for c in regexes])
    gc.unfreeze()

    tracemalloc.start()
    probe = Engine(parsed, stats)
    for paper in corpus[:200]:
        probe.match(Doc(paper, stats))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del probe

    def sampled(n: int) -> str:
        return "~" if n < len(corpus) else ""

    return {
        "papers": f"{len(corpus):,}",
        "subs": f"{len(parsed):,}",
        "density": f"{matches / len(corpus) / len(parsed):.2%}",
        "engine p/s": f"{rate:,.0f}",
        "engine s": f"{took:.2f}",
        "+hits p/s": f"{sampled(n_hits)}{hits_rate:,.0f}",
        "cand/paper": f"{engine.candidates / engine.papers:,.0f}",
        "matches": f"{matches:,}",
        "analyse s": f"{analysing:.2f}",
        "match us/paper": f"{max(took - analysing, 0.0) / len(corpus) * 1e6:.1f}",
        "us/match": f"{max(took - analysing, 0.0) / max(matches, 1) * 1e6:.2f}",
        "peak MB": f"{peak / 2**20:.1f}",
        "plain p/s": f"{sampled(n_plain)}{plain_rate:,.0f}",
        "regex p/s": f"{sampled(n_regex)}{regex_rate:,.1f}",
        "x plain": f"{rate / plain_rate:,.0f}",
        "x regex": f"{rate / regex_rate:,.0f}",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def table(rows: list[dict[str, str]]) -> str:
    heads = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in heads]
    line = "| " + " | ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    body = [
        "| " + " | ".join(r[h].rjust(w) for h, w in zip(heads, widths, strict=True)) + " |"
        for r in rows
    ]
    return "\n".join([line, rule, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k and 10k papers only (~1.5 min)")
    ap.add_argument("--papers", type=int, nargs="+", help="corpus sizes (default 1k 10k 100k)")
    ap.add_argument(
        "--subs", type=int, nargs="+", help="subscription counts (default 100 1k 10k 50k)"
    )
    args = ap.parse_args()
    vocab = vocabulary()
    sizes = args.papers or ([1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
    subs = args.subs or [100, 1_000, 10_000, 50_000]
    all_queries = subscriptions(vocab, max(subs))
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (one used), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# vocabulary: {len(vocab.seeds)} sample papers, {len(vocab.sentences)} sentences, "
        f"{len(vocab.topical)} topical words, {len(vocab.bigrams)} phrases"
    )
    rows = []
    for n in sizes:
        corpus = papers(vocab, n)
        for k in subs:
            rows.append(run(vocab, corpus, all_queries[:k]))
            print(" | ".join(f"{h} {v}" for h, v in rows[-1].items()), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
