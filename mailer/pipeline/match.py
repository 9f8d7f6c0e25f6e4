"""Papers -> matches: the subscribers' queries and similarity
subscriptions, the engine, and the match rows.

``match_rows`` is the one way a paper becomes a match, for the pass,
backfill and ``send-test``, so each finds what the others would.
"""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import NamedTuple, cast

from mailer.analysis import Scale
from mailer.collector import give_back_memory
from mailer.config import Config, SubscriberConfig, SubscriptionConfig
from mailer.matching import Doc, Engine, Query, Stats, rescore
from mailer.papers import Paper
from mailer.pipeline.report import Clock, PassReport, gc_paused
from mailer.query import parsed_query as parsed
from mailer.relevance.defaults import DEFAULT_TOP
from mailer.relevance.likes import Like, LikeIndex, example_keys, missing_titles
from mailer.relevance.reader import NEGATIVES, Suggester, train
from mailer.relevance.vectors import TfidfEncoder, Vector
from mailer.store import MatchFields, NewMatch, ReaderModel, Store

log = logging.getLogger("mailer")

# Papers analysed and matched per transaction: an analysed paper (Doc) takes
# about 0.1 MB, so this bounds the stage's memory (5,000 peaked at 680 MB).
MATCH_BATCH = 1000


def compile_queries(config: Config) -> dict[str, dict[str, Query]]:
    """Every subscriber's parsed queries, by email then subscription name."""
    return {s.email: _queries(s) for s in config.subscribers}


def _queries(sub: SubscriberConfig) -> dict[str, Query]:
    return {q.name: parsed(q.query, q.stemming) for q in sub.subscriptions if q.query}


# Each subscription's place among its subscriber's, keyed (email, name) like
# the engine's queries (see ``subscription_order``).
Order = Mapping[tuple[str, str], int]


def subscription_order(subscribers: Iterable[SubscriberConfig]) -> dict[tuple[str, str], int]:
    """Each subscription's place among its subscriber's as configured: a
    match row of several lists them so, as the digest lists its sections,
    whichever order the engine found them in (that of a set of words,
    which differs between processes)."""
    return {(s.email, q.name): at for s in subscribers for at, q in enumerate(s.subscriptions)}


def like_of(q: SubscriptionConfig) -> Like:
    return Like(
        tuple(q.like), q.like_text.strip(), q.threshold, bool(q.query), q.top or DEFAULT_TOP
    )


def compile_likes(subscribers: Iterable[SubscriberConfig]) -> dict[tuple[str, str], Like]:
    """Every similarity subscription, keyed (email, name) like the engine's queries."""
    return {
        (s.email, q.name): like_of(q) for s in subscribers for q in s.subscriptions if q.similar
    }


def like_examples(store: Store, subscribers: Iterable[SubscriberConfig]) -> dict[str, Paper]:
    """The stored example papers of these subscribers' similarity
    subscriptions, by paper key (those not stored yet are left out)."""
    keys = example_keys(compile_likes(subscribers).values())
    return store.papers_by_keys(keys) if keys else {}


def like_index(
    likes: Mapping[tuple[str, str], Like], examples: Mapping[str, Paper], stats: Stats
) -> LikeIndex | None:
    """The similarity subscriptions' profiles under ``stats``; None when there are none."""
    return LikeIndex(likes, examples, stats) if likes else None


def warn_missing_examples(store: Store, config: Config) -> None:
    """Log, once per configuration, the example titles not among the stored
    papers: such a title counts from the pass that stores its paper."""
    likes = compile_likes(config.subscribers)
    if not likes:
        return
    stored = store.papers_by_keys(example_keys(likes.values()))
    for (email, name), like in likes.items():
        for title in missing_titles(like, stored):
            log.warning(
                "like title not among the stored papers subscriber=%s subscription=%r title=%r",
                email,
                name,
                title,
            )


def build_engine(queries: Mapping[str, Mapping[str, Query]], stats: Stats) -> Engine:
    """One engine for every subscription, keyed by (email, subscription name)."""
    return Engine(
        {(email, name): q for email, subs in queries.items() for name, q in subs.items()}, stats
    )


def analysed(papers: Iterable[tuple[int, Paper]], stats: Stats) -> list[tuple[int, Doc]]:
    """(id, paper) -> (id, Doc) scored against ``stats``, sharing one ``Scale``
    (each stem's IDF worked out once for them all)."""
    scale = Scale(stats)
    return [(paper_id, Doc(paper, stats, scale)) for paper_id, paper in papers]


# (subscriber id, subscription name, its place in ``Order``) of each
# subscription a hit stands for.
Owners = tuple[tuple[int, str, int], ...]
# A subscriber's hits on one paper, when several: (place, subscription name,
# terms, score).
More = list[tuple[int, str, tuple[str, ...], float]]


def match_rows(
    engine: Engine,
    docs: Sequence[tuple[int, Doc]],
    subscriber_ids: Mapping[str, int],
    likes: LikeIndex | None = None,
    suggester: Suggester | None = None,
    order: Order | None = None,
) -> list[NewMatch]:
    """Analysed papers -> match rows: the one way a paper becomes a match,
    for the pass, backfill and ``send-test``. Similarity subscriptions
    (``likes``) and readers' models (``suggester``: "Suggested for you",
    for papers none of a reader's subscriptions matched) score the whole
    batch at once. Hits of subscribers not in ``subscriber_ids``
    (unsubscribed, removed) are dropped. A row of several subscriptions
    lists them in ``order`` (``subscription_order``), those not in it
    last, by name."""
    order = order or {}
    rows: list[NewMatch] = []
    vectors: list[Vector] = []
    if likes or suggester:
        encoder = likes.encoder if likes else TfidfEncoder(engine.stats)
        vectors = encoder.encode([doc for _, doc in docs])
    similar = likes.similarities(vectors) if likes else None
    # Each query tree's owners (engine.keys, each as (subscriber id, name), the
    # dropped left out), worked out on first use: once per tree, not per hit.
    owners: list[Owners | None] = [None] * len(engine.keys)
    by_key: dict[Hashable, Owners] = {}
    for at, (paper_id, doc) in enumerate(docs):
        matches = engine.match(doc)
        found: list[tuple[Owners, tuple[str, ...], float]] = []
        if likes and similar is not None:
            for query, terms, score in likes.hits(doc, vectors[at], matches, similar[at]):
                mine = by_key.get(query)
                if mine is None:
                    mine = by_key[query] = _owners([query], subscriber_ids, order)
                found.append((mine, terms, score))
        else:
            for uid, terms, score in matches.scored():
                mine = owners[uid]
                if mine is None:
                    mine = owners[uid] = _owners(engine.keys[uid], subscriber_ids, order)
                found.append((mine, terms, score))
        _add_rows(rows, paper_id, doc, found)
    if suggester:
        rows += suggester.rows(docs, vectors, {(r.subscriber_id, r.paper_id) for r in rows})
    return rows


def _add_rows(
    rows: list[NewMatch],
    paper_id: int,
    doc: Doc,
    found: Iterable[tuple[Owners, tuple[str, ...], float]],
) -> None:
    """One paper's hits -> its rows, one per subscriber in the order of their
    first hit: a subscriber matched by several subscriptions gets one row
    of them all in their places' order, its terms ranked again together
    (most have one)."""
    at: dict[int, tuple[int, int]] = {}  # subscriber id: where their row is, its place
    more: dict[int, More] | None = None
    for mine, terms, score in found:
        for subscriber_id, name, place in mine:
            first = at.get(subscriber_id)
            if first is None:
                at[subscriber_id] = (len(rows), place)
                rows.append(NewMatch(subscriber_id, paper_id, (name,), (terms,), (score,), terms))
                continue
            where, first_place = first
            if more is None:
                more = {}
            hits = more.get(where)
            if hits is None:
                row = rows[where]
                hits = more[where] = [
                    (first_place, row.subscriptions[0], row.subscription_terms[0], row.scores[0])
                ]
            hits.append((place, name, terms, score))
    if more is None:
        return
    for where, hits in more.items():
        hits.sort(key=itemgetter(0, 1))
        _, names, each, scores = zip(*hits, strict=True)
        terms = rescore(doc, dict.fromkeys(t for ts in each for t in ts))[0]
        rows[where] = rows[where]._replace(
            subscriptions=names, subscription_terms=each, scores=scores, terms=terms
        )


def _owners(keys: Iterable[Hashable], subscriber_ids: Mapping[str, int], order: Order) -> Owners:
    """The (subscriber id, subscription name, place) of engine keys (email,
    name), those of subscribers not among ``subscriber_ids`` left out;
    keys not in ``order`` are placed after all that are."""
    out = []
    unplaced = len(order)
    for key in keys:
        email, name = cast(tuple[str, str], key)
        subscriber_id = subscriber_ids.get(email)
        if subscriber_id is not None:
            out.append((subscriber_id, name, order.get((email, name), unplaced)))
    return tuple(out)


def subscription_engine(sub: SubscriberConfig, stats: Stats) -> Engine:
    """An engine of one subscriber's subscriptions alone (backfill, tests)."""
    return build_engine({sub.email: _queries(sub)}, stats)


class MatchSetup(NamedTuple):
    """What matching a pass's batches needs besides their papers and the
    statistics (see ``match_rows``): the engine, the active subscribers' ids
    by email, the similarity subscriptions with their stored example papers,
    the reader models of those who get suggestions, and the subscriptions'
    configured order."""

    engine: Engine
    subscriber_ids: Mapping[str, int]
    likes: Mapping[tuple[str, str], Like]
    examples: Mapping[str, Paper]
    models: Mapping[int, ReaderModel]
    order: Order


# A batch of papers to match, (id, paper) by id; its match rows (plain
# tuples, see ``MatchFields``) and its papers' statistics.
Batch = list[tuple[int, Paper]]
Matched = tuple[list[MatchFields], Stats]


class Matcher:
    """A pass's batches of papers -> their match rows and statistics, all
    scored against the same statistics; in this process or in a worker
    (``match_in_worker``)."""

    def __init__(self, setup: MatchSetup, stats: Stats) -> None:
        self.setup = setup
        self.stats = stats
        setup.engine.stats = stats
        self.index = like_index(setup.likes, setup.examples, stats)
        self.suggester = Suggester(setup.models)

    def __call__(self, papers: Sequence[tuple[int, Paper]]) -> Matched:
        setup = self.setup
        with gc_paused():
            docs = analysed(papers, self.stats)
            added = Stats()
            for _, doc in docs:
                added.observe(doc)
            rows = match_rows(
                setup.engine,
                docs,
                setup.subscriber_ids,
                self.index,
                self.suggester or None,
                setup.order,
            )
            return [(*row,) for row in rows], added


# In a worker process: the pass it last served, its setup and its matcher
# (made at its first batch, when the statistics are known).
_served: tuple[str, MatchSetup, Matcher | None] | None = None


def prepare_worker(token: str, setup: bytes) -> None:
    """Run in a worker process: unpickle a pass's ``MatchSetup`` (building
    its engine), once per pass (``token``), not once per batch."""
    global _served
    if _served is None or _served[0] != token:
        _served = (token, pickle.loads(setup), None)  # noqa: S301  (pickled by our parent)


def match_in_worker(
    token: str, setup: bytes, stats: bytes, papers: Sequence[tuple[int, Paper]]
) -> Matched:
    """Run in a worker process: ``Matcher`` over one batch of a pass, its
    setup and statistics as the pass pickled them once."""
    global _served
    prepare_worker(token, setup)
    assert _served is not None
    token, found, matcher = _served
    if matcher is None:
        matcher = Matcher(found, pickle.loads(stats))  # noqa: S301  (pickled by our parent)
        _served = (token, found, matcher)
    return matcher(papers)


def match_new_papers(
    store: Store,
    engine: Engine,
    clock: Clock,
    report: PassReport,
    likes: Mapping[tuple[str, str], Like] | None = None,
    suggesting: Collection[str] = (),
    pool: Executor | None = None,
    order: Order | None = None,
) -> None:
    """The match stage: the papers not yet matched, in batches, each counted
    in the corpus statistics in the transaction that records its matches
    (they are analysed here anyway, so ingest does not analyse them twice).
    Every batch is scored against the statistics as they will be once all
    of them are counted (``_ahead``), and its rows say so (``scored_papers``):
    the digests composed next weigh against those same statistics and take
    the scores as recorded. Matches composed later, after more papers were
    counted, are weighed again then (similarity subscriptions' scores stand
    as recorded). Readers in ``suggesting`` (emails) with a trained model
    get suggestions. A row of several subscriptions lists them in ``order``
    (``subscription_order``).

    With a ``pool`` (the compose workers) and more than one batch, a worker
    matches the batches one after another while this process records each
    as it comes, in its own transaction as ever: they are all scored against
    the same statistics, so none waits for the one before to be recorded.
    The worker starts while the statistics are counted; until it is ready,
    this process matches the batches itself."""
    with report.timed("statistics"):
        batch = store.unmatched_papers(MATCH_BATCH + 1)
    if not batch:
        return
    active = store.active_subscriber_ids()
    examples = store.papers_by_keys(example_keys(likes.values())) if likes else {}
    ids = [active[e] for e in suggesting if e in active]
    models = store.reader_models(ids) if ids else {}
    setup = MatchSetup(engine, active, likes or {}, examples, models, order or {})
    worker = _Worker(pool, setup) if pool is not None and len(batch) > MATCH_BATCH else None
    batch = batch[:MATCH_BATCH]
    with gc_paused(), report.timed("statistics"):
        final = _counted(store.stats(), _ahead(store))
    here = _here(setup, final)
    match = worker.bound(final) if worker else here
    # Batches matched or being matched, in order; the worker's latest job; the
    # last batch read, and whether there may be more.
    queue: deque[tuple[Batch, Future[Matched]]] = deque()
    working: Future[Matched] | None = None
    last, more = batch, True

    def read() -> Batch:
        nonlocal last, more
        with report.timed("statistics"):
            following = store.unmatched_papers(MATCH_BATCH, after=last[-1][0])
        last, more = following or last, bool(following)
        return following

    def feed() -> None:
        """The next batch to the worker once it is free (here: one ahead)."""
        nonlocal working
        free = (working is None or working.done()) if worker else not queue
        if free and more and (following := read()):
            with report.timed("match"):
                working = match(following)
            queue.append((following, working))

    with gc_paused(), report.timed("match"):
        queue.append((batch, here(batch)))
    while worker and not worker.prepared.done() and more:  # still starting: match here
        with gc_paused():
            if following := read():
                with report.timed("match"):
                    queue.append((following, here(following)))
    while queue:
        with gc_paused():
            feed()
            batch, job = queue.popleft()
            with report.timed("match"):
                rows, added = job.result()
            feed()
            with report.timed("record_matches"):
                pids = [pid for pid, _ in batch]
                report.matches += store.record_matches(pids, rows, clock(), added, final.papers)
            del rows, job
            give_back_memory()


# Starts matching a batch of papers; the future gives its rows and statistics.
Start = Callable[[Sequence[tuple[int, Paper]]], "Future[Matched]"]


def _here(setup: MatchSetup, stats: Stats) -> Start:
    """Match in this process, at once: the future is already done."""
    matcher = Matcher(setup, stats)

    def start(papers: Sequence[tuple[int, Paper]]) -> Future[Matched]:
        done: Future[Matched] = Future()
        try:
            done.set_result(matcher(papers))
        except Exception as exc:
            done.set_exception(exc)
        return done

    return start


class _Worker:
    """Matching in one of ``pool``'s workers: the pass's setup pickled once,
    and sent ahead so the worker prepares while this process counts the
    statistics."""

    def __init__(self, pool: Executor, setup: MatchSetup) -> None:
        self.pool = pool
        self.token = uuid.uuid4().hex
        self.setup = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
        self.prepared = pool.submit(prepare_worker, self.token, self.setup)

    def bound(self, stats: Stats) -> Start:
        """Batches matched against ``stats``, one at a time, each once the
        worker is done preparing, so that no second worker is started for it
        (composing starts the others)."""
        blob = pickle.dumps(stats, protocol=pickle.HIGHEST_PROTOCOL)

        def start(papers: Sequence[tuple[int, Paper]]) -> Future[Matched]:
            self.prepared.result()
            return self.pool.submit(match_in_worker, self.token, self.setup, blob, papers)

        return start


def _ahead(store: Store) -> Stats:
    """What the papers not yet matched add to the statistics, read in
    batches. Papers are only ever added, so once the match stage has counted
    as many papers as this says, it has counted these very ones."""
    ahead = Stats()
    after = 0
    while batch := store.unmatched_papers(MATCH_BATCH, after=after):
        for _, paper in batch:
            ahead.observe_paper(paper)
        after = batch[-1][0]
    return ahead


def refresh_models(store: Store, clock: Clock) -> int:
    """Train again the models of readers whose marks changed since their
    model was trained (a pass with no new marks trains nothing); how many."""
    newest = store.newest_marks()
    versions = store.model_versions()
    stale = [i for i, n in newest.items() if versions.get(i, 0) < n]
    if not stale:
        return 0
    stats = store.stats()
    marks = store.marks(stale)
    for subscriber_id in stale:
        started = time.perf_counter()
        model = train(
            subscriber_id,
            marks[subscriber_id],
            partial(store.sample_papers, NEGATIVES, subscriber_id),
            stats,
            clock(),
        )
        store.save_reader_model(model)
        log.info(
            "reader model subscriber_id=%d positives=%d negatives=%d trained=%s seconds=%.2f",
            subscriber_id,
            model.positives,
            model.negatives,
            "yes" if model.weights else "no",
            time.perf_counter() - started,
        )
    return len(stale)


def _counted(stats: Stats, added: Stats) -> Stats:
    """``stats`` with ``added`` counted in."""
    return Stats(
        stats.papers + added.papers,
        stats.df + added.df,
        stats.title_length + added.title_length,
        stats.abstract_length + added.abstract_length,
    )


def sync_subscribers(store: Store, config: Config, now: datetime) -> dict[str, int]:
    """Mirror the configured subscribers into the store, lifting the
    unsubscribes that a subscriber's ``resubscribed`` time postdates."""
    ids = store.sync_subscribers(
        (
            (s.email, s.name, [(q.name, q.described) for q in s.subscriptions])
            for s in config.subscribers
        ),
        now,
    )
    wanted = {s.email: s.resubscribed for s in config.subscribers if s.resubscribed}
    for email in store.lift_unsubscribes(wanted):
        log.info("resubscribed: subscriber=%s (resubscribed in config)", email)
    return ids
