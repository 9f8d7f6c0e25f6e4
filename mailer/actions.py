"""One-off work the CLI asks for outside the regular pass: test digests,
previews, backfills and the pool that composes digests.

Kept out of the CLI so its commands stay argument parsing and printing, and
so these paths use the pipeline's own steps (match rows, digest orders,
composing) and show exactly what a pass would produce.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta

from mailer.config import Config, SubscriberConfig
from mailer.digests import Ranking, Recipient
from mailer.dkim import load_signer
from mailer.matching import Stats
from mailer.papers import Paper
from mailer.pipeline import (
    analysed,
    compile_likes,
    digest_order,
    like_examples,
    like_index,
    match_rows,
    subscription_engine,
    subscription_order,
    sync_subscribers,
    unsubscribe_url,
)
from mailer.pipeline.compose import (
    Composed,
    DigestOrder,
    compose,
    feedback_links,
    init_worker,
)
from mailer.relevance.reader import Reader
from mailer.render import Renderer
from mailer.store import PendingMatch, Store, SubscriberState


def check_rendering(config: Config) -> Renderer:
    """The configured templates and paper_url, loaded and tried on the sample
    digests: a configuration this accepts cannot fail a pass's rendering."""
    return Renderer(config.render.templates, paper_url=config.render.paper_url)


@contextmanager
def compose_pool(config: Config) -> Iterator[Executor]:
    """Worker processes that compose digests, each building its Renderer and
    opening the store once; one also matches the papers of a pass of more
    than one batch (mailer.pipeline.match) while the pass records them.

    Processes, not threads: rendering and matching are CPU-bound Python.
    Spawned lazily by the executor when first used (a large pass).
    """
    pool = ProcessPoolExecutor(
        max_workers=os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(config.database.url,),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _compose(
    config: Config,
    order: DigestOrder,
    pending: Sequence[PendingMatch],
    stats: Stats,
    now: datetime,
    *,
    test: bool = False,
    reader: Reader | None = None,
) -> Composed:
    return compose(
        order,
        pending,
        Ranking(stats),
        Renderer(config.render.templates, paper_url=config.render.paper_url),
        now,
        sender=config.smtp.sender,
        sender_address=config.smtp.sender_address,
        test=test,
        dkim=load_signer(config.dkim),
        reader=reader,
    )


def trial_digest(
    config: Config,
    sub: SubscriberConfig,
    to: str,
    papers: Sequence[tuple[int, Paper]],
    stats: Stats,
    since: datetime,
    now: datetime,
    examples: Mapping[str, Paper] | None = None,
) -> Composed:
    """``sub``'s digest of ``papers``, addressed to ``to``: matched and composed
    as a pass would, but in memory, so nothing is recorded. ``examples``: the
    stored example papers of its similarity subscriptions (``like_examples``)."""
    by_id = dict(papers)
    likes = like_index(compile_likes([sub]), examples or {}, stats)
    pending = [
        PendingMatch(
            m.paper_id,
            by_id[m.paper_id],
            m.subscriptions,
            m.subscription_terms,
            m.scores,
            since,
            m.paper_id,
            m.terms,
            stats.papers,
        )
        for m in match_rows(
            subscription_engine(sub, stats),
            analysed(papers, stats),
            {sub.email: 0},
            likes,
            order=subscription_order([sub]),
        )
    ]
    order = replace(
        digest_order(config, sub, 0, since),
        recipient=Recipient(to, sub.name, tuple(q.name for q in sub.subscriptions)),
        unsubscribe_url=unsubscribe_url(config, to),
        feedback=feedback_links(config, to),
    )
    return _compose(config, order, pending, stats, now, test=True)


def preview_digest(
    config: Config,
    sub: SubscriberConfig,
    state: SubscriberState,
    pending: Sequence[PendingMatch],
    stats: Stats,
    now: datetime,
    reader: Reader | None = None,
) -> Composed:
    """The digest the next pass would queue for ``sub`` from ``pending``
    (ordered by ``reader``'s model, as the pass would)."""
    order = digest_order(config, sub, state.id, state.last_digest_at)
    return _compose(config, order, pending, stats, now, reader=reader)


def backfill(
    store: Store,
    config: Config,
    sub: SubscriberConfig,
    days: int,
    now: datetime,
    subscriber_id: int | None = None,
) -> int:
    """Record matches for papers the regular pass has already matched, for
    ``sub`` only (papers not yet matched reach them through the regular pass);
    how many were added. A web subscriber comes with its ``subscriber_id``."""
    if subscriber_id is None:
        subscriber_id = sync_subscribers(store, config, now)[sub.email]
    stats = store.stats()
    rows = match_rows(
        subscription_engine(sub, stats),
        analysed(store.backfill_candidates(subscriber_id, now - timedelta(days=days)), stats),
        {sub.email: subscriber_id},
        like_index(compile_likes([sub]), like_examples(store, [sub]), stats),
        order=subscription_order([sub]),
    )
    return store.add_matches(subscriber_id, rows, now, stats.papers)
