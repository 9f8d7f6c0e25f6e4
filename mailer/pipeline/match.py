"""Papers -> matches: the subscribers' queries, the engine, and the match rows.

``match_rows`` is the one way a paper becomes a match, for the pass,
backfill and ``send-test`` alike, so each finds what the others would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import cast

from mailer.config import Config, SubscriberConfig
from mailer.matching import Doc, Engine, Hit, Query, Stats, parse_query, rescore
from mailer.papers import Paper
from mailer.pipeline.report import Clock, PassReport, gc_paused
from mailer.query import parsed_query as parsed
from mailer.store import NewMatch, Store

log = logging.getLogger("mailer")

# Papers analysed and matched per transaction: an analysed paper (Doc) takes
# about 0.1 MB, so this bounds the stage's memory (5,000 peaked at 680 MB).
MATCH_BATCH = 1000


def compile_queries(config: Config) -> dict[str, dict[str, Query]]:
    """Every subscriber's parsed queries, by email then subscription name."""
    return {
        s.email: {q.name: parsed(q.query, q.stemming) for q in s.subscriptions}
        for s in config.subscribers
    }


def build_engine(queries: Mapping[str, Mapping[str, Query]], stats: Stats) -> Engine:
    """One engine for every subscription, keyed by (email, subscription name)."""
    return Engine(
        {(email, name): q for email, subs in queries.items() for name, q in subs.items()}, stats
    )


def analysed(papers: Iterable[tuple[int, Paper]], stats: Stats) -> list[tuple[int, Doc]]:
    """(id, paper) -> (id, Doc) scored against ``stats``."""
    return [(paper_id, Doc(paper, stats)) for paper_id, paper in papers]


def match_rows(
    engine: Engine, docs: Iterable[tuple[int, Doc]], subscriber_ids: Mapping[str, int]
) -> list[NewMatch]:
    """Analysed papers -> match rows: the one way a paper becomes a match,
    for the pass, backfill and ``send-test``. Hits of subscribers not in
    ``subscriber_ids`` (unsubscribed, removed) are dropped."""
    rows: list[NewMatch] = []
    for paper_id, doc in docs:
        by_subscriber: dict[int, list[Hit]] = {}
        for hit in engine.match(doc):
            email, name = cast(tuple[str, str], hit.query)
            subscriber_id = subscriber_ids.get(email)
            if subscriber_id is not None:
                by_subscriber.setdefault(subscriber_id, []).append(hit._replace(query=name))
        for subscriber_id, hits in by_subscriber.items():
            if len(hits) == 1:
                terms = hits[0].terms
            else:
                terms = rescore(doc, dict.fromkeys(t for h in hits for t in h.terms))[0]
            rows.append(
                NewMatch(
                    subscriber_id,
                    paper_id,
                    tuple(cast(str, h.query) for h in hits),
                    tuple(h.terms for h in hits),
                    tuple(h.score for h in hits),
                    terms,
                )
            )
    return rows


def subscription_engine(sub: SubscriberConfig, stats: Stats) -> Engine:
    """An engine of one subscriber's subscriptions alone (backfill, tests)."""
    return build_engine(
        {sub.email: {q.name: parse_query(q.query, stemming=q.stemming) for q in sub.subscriptions}},
        stats,
    )


def match_new_papers(store: Store, engine: Engine, clock: Clock, report: PassReport) -> None:
    """The match stage: the papers not yet matched, in batches, each counted
    in the corpus statistics in the transaction that records its matches
    (they are analysed here anyway, so ingest does not analyse them twice).
    Scores recorded here are provisional: digests weigh every match again
    against the stored statistics when they are composed."""
    active = store.active_subscriber_ids()
    while True:
        with gc_paused():
            with report.timed("statistics"):
                batch = store.unmatched_papers(MATCH_BATCH)
                if not batch:
                    break
                engine.stats = store.stats()
                docs = analysed(batch, engine.stats)
                added = Stats()
                for _, doc in docs:
                    added.observe(doc)
            with report.timed("match"):
                rows = match_rows(engine, docs, active)
            with report.timed("record_matches"):
                pids = [pid for pid, _ in batch]
                report.matches += store.record_matches(pids, rows, clock(), added)


def sync_subscribers(store: Store, config: Config, now: datetime) -> dict[str, int]:
    """Mirror the configured subscribers into the store, lifting the
    unsubscribes that a subscriber's ``resubscribed`` time postdates."""
    ids = store.sync_subscribers(
        (
            (s.email, s.name, [(q.name, q.query) for q in s.subscriptions])
            for s in config.subscribers
        ),
        now,
    )
    wanted = {s.email: s.resubscribed for s in config.subscribers if s.resubscribed}
    for email in store.lift_unsubscribes(wanted):
        log.info("resubscribed: subscriber=%s (resubscribed in config)", email)
    return ids
