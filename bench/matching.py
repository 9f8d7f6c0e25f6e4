"""Matching benchmark: the engine against two baselines, in one run.

    python -m bench.matching [--quick]

Prints one table: for each corpus size, papers per second, candidate queries
per paper, matches, peak memory, and the same run's figures for the plain
evaluator (every query's tree against each paper's token set, analysed once
per paper) and a regular expression per query. Slow runs are timed on a
sample of papers and extrapolated; those figures are marked with ``~``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import re
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

from bench.corpus import Vocabulary, papers, subscriptions, vocabulary
from mailer.analysis import Doc, Stats
from mailer.matching import Engine, match_paper, parse_query
from mailer.papers import Paper
from mailer.query import And, Compare, Node, Not, Or, Phrase, Query, Term

ENGINE_SAMPLE = 10_000
PLAIN_BUDGET = 2.0e6  # query x paper evaluations timed for the plain evaluator
REGEX_BUDGET = 4.0e5


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


def run(vocab: Vocabulary, corpus: list[Paper], queries: list[str]) -> dict[str, str]:
    parsed = {i: parse_query(q) for i, q in enumerate(queries)}
    stats = Stats()
    for paper in corpus[:1000]:
        stats.observe(Doc(paper))
    engine = Engine(parsed, stats)
    gc.collect()
    gc.freeze()

    sample = corpus[:ENGINE_SAMPLE]
    start = time.perf_counter()
    matches = 0
    for paper in sample:
        matches += len(engine.match(Doc(paper, stats)))
    took = time.perf_counter() - start
    scale = len(corpus) / len(sample)
    mark = "~" if scale > 1 else ""
    rate = len(sample) / took

    n_plain = max(5, min(len(corpus), int(PLAIN_BUDGET / len(parsed))))
    start = time.perf_counter()
    for paper in corpus[:n_plain]:
        match_paper(Doc(paper, stats), parsed)
    plain_rate = n_plain / (time.perf_counter() - start)

    regexes = [regex_baseline(q) for q in parsed.values()]
    n_regex = max(2, min(len(corpus), int(REGEX_BUDGET / len(parsed))))
    start = time.perf_counter()
    for paper in corpus[:n_regex]:
        for check in regexes:
            check(paper)
    regex_rate = n_regex / (time.perf_counter() - start)
    gc.unfreeze()

    tracemalloc.start()
    probe = Engine(parsed, stats)
    for paper in corpus[:200]:
        probe.match(Doc(paper, stats))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del probe

    total_time = took * scale
    return {
        "papers": f"{len(corpus):,}",
        "subs": f"{len(parsed):,}",
        "density": f"{matches / len(sample) / len(parsed):.2%}",
        "engine p/s": f"{rate:,.0f}",
        "engine total s": f"{mark}{total_time:.2f}",
        "cand/paper": f"{engine.candidates / len(sample):,.0f}",
        "no-term q": f"{len(engine.always)}",
        "matches": f"{mark}{matches * scale:,.0f}",
        "matches/s": f"{matches / took:,.0f}",
        "index+match peak MB": f"{peak / 2**20:.1f}",
        "plain p/s": f"{'~' if n_plain < len(corpus) else ''}{plain_rate:,.0f}",
        "regex p/s": f"{'~' if n_regex < len(corpus) else ''}{regex_rate:,.1f}",
        "x plain": f"{rate / plain_rate:.0f}",
        "x regex": f"{rate / regex_rate:.0f}",
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 1k and 10k paper sizes")
    args = ap.parse_args()
    vocab = vocabulary()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    subs = [100, 1_000, 10_000, 50_000]
    all_queries = subscriptions(vocab, max(subs))
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, one core"
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
            print(" | ".join(rows[-1].values()), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
