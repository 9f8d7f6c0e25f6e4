"""Matching papers against subscriptions: the engine, and the plain evaluator
it must agree with.

The engine works like Lucene's Monitor (Luwak) or Elasticsearch's
percolator: each stored query is indexed under the rarest term it cannot
match without, so a paper, analysed once, is checked only against the
queries whose required term it contains. The common shapes cost no per-query
code: one word matches outright when indexed under a word the paper holds, a
conjunction of words (some negated) is one or two set comparisons, an OR of
words or a prefix is a set union. Other shapes run a compiled check. Queries
that need no term (pure NOT, numeric filters) are checked against every
paper, and counted. The reference evaluator walks every query's tree against
every paper; the property tests hold the two equal.

A hit records the terms that made it match (strings ``highlight_spans``
understands) and a BM25F score over title and abstract; the engine works
them out only when a caller reads them, since most matches are counted or
stored long before any digest shows them.

The package: ``reference`` (the plain evaluator and the scoring both share),
``compiled`` (query shapes, compiled checks and scorers), ``engine`` (the
index and lazily scored matches) and ``highlight`` (where terms occur).
"""

from __future__ import annotations

from mailer.analysis import Doc, Stats
from mailer.matching.engine import Engine, Matches
from mailer.matching.highlight import highlight_spans
from mailer.matching.reference import Hit, match_paper, match_papers, rescore
from mailer.query import Query, parse_query

__all__ = [
    "Doc",
    "Engine",
    "Hit",
    "Matches",
    "Query",
    "Stats",
    "highlight_spans",
    "match_paper",
    "match_papers",
    "parse_query",
    "rescore",
]
