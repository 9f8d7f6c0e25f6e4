"""One pass of the pipeline: files, dumps, papers, matches, digests, messages, deliveries.

Each stage reads what the previous one committed to the store, so a pass cut
short anywhere is finished by the next one: nothing is dropped, and the
outbox keeps a message's bytes and Message-ID until the transport accepts it.
The stages live in ingest, match, compose and send; ``Pipeline`` only holds
what they share and runs them in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from mailer.config import Config
from mailer.delivery import Transport
from mailer.dkim import load_signer
from mailer.errors import LockLostError
from mailer.lock import DatabaseLock, lock_lost
from mailer.matching import Stats
from mailer.pipeline.compose import Compose, RenderSettings, digest_order, unsubscribe_url
from mailer.pipeline.ingest import Ingest, OnDump, Scanner
from mailer.pipeline.match import (
    analysed,
    build_engine,
    compile_likes,
    compile_queries,
    like_examples,
    like_index,
    match_new_papers,
    match_rows,
    refresh_models,
    subscription_engine,
    sync_subscribers,
    warn_missing_examples,
)
from mailer.pipeline.report import Clock, PassReport, utc_now
from mailer.pipeline.send import RateLimiter, Send, TransportPause
from mailer.store import Store

log = logging.getLogger("mailer")

__all__ = [
    "PassReport",
    "Pipeline",
    "analysed",
    "build_engine",
    "compile_likes",
    "digest_order",
    "like_examples",
    "like_index",
    "match_rows",
    "subscription_engine",
    "sync_subscribers",
    "unsubscribe_url",
    "utc_now",
]


class Pipeline:
    """One pass, stage by stage; building one touches nothing: the configured
    subscribers are written to the store at the start of the next pass.

    It keeps what outlives a pass (scanner, engine, renderer, rate limiter,
    transport pause) and hands each stage its parts when it runs, so a
    replaced ``clock``, ``transport`` or ``compose_pool`` reaches every stage."""

    def __init__(
        self,
        config: Config,
        store: Store,
        transport: Callable[[], Transport],
        *,
        clock: Clock = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        compose_pool: Executor | None = None,
        lock: DatabaseLock | None = None,
    ) -> None:
        self.store = store
        # The database's lock, held by the caller (mailer.lock.database_lock);
        # without one (tests, in-memory databases) nothing fences the sends.
        self.lock = lock or DatabaseLock()
        self.transport = transport
        self.clock = clock
        # Composing many digests at once runs here (a ProcessPoolExecutor whose
        # initializer is mailer.pipeline.compose.init_worker); None composes in-process.
        self.compose_pool = compose_pool
        self.pause = TransportPause()
        self.scanner = Scanner(config.watch.dir, config.watch.settle_seconds, sleep)
        self.stopping = False
        # Called after each dump of a pass as (done, total, path), to show progress.
        self.on_dump: OnDump | None = None
        self.generation = 0
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Adopt a (re)loaded configuration: the in-process renderer now, the
        workers' with their next chunk (see RenderSettings), the store's
        subscribers at the start of the next pass."""
        dkim = load_signer(config.dkim)  # first: a bad key leaves the last configuration
        self.config = config
        self.dkim = dkim
        self.limiter = RateLimiter(config.smtp.rate_per_minute)
        self.engine = build_engine(compile_queries(config), Stats())
        self.likes = compile_likes(config.subscribers)
        self.suggesting = frozenset(s.email for s in config.subscribers if s.suggestions)
        self.generation += 1
        self.render_settings = RenderSettings(
            config.render.templates, config.render.paper_url, self.generation
        )
        self.renderer = self.render_settings.renderer()
        self.scanner.directory = config.watch.dir
        self.scanner.settle = config.watch.settle_seconds
        self._synced: Config | None = None
        self._examples_checked: Config | None = None

    def sync(self) -> None:
        """Write the configured subscribers to the store, once per configuration."""
        if self._synced is not self.config:
            sync_subscribers(self.store, self.config, self.clock())
            self._synced = self.config

    async def run_pass(self) -> PassReport:
        report = PassReport()
        await asyncio.to_thread(self.store.verify)
        await asyncio.to_thread(self.hold_lock)
        try:
            await asyncio.to_thread(self.sync)
            await asyncio.to_thread(self.ingest, report)
            await asyncio.to_thread(self.match, report)
            await self.compose_and_deliver(report)
            await asyncio.to_thread(self.store.record_pass, report.summary(), self.clock())
        except Exception as exc:
            # A pass that fails because the database went away has lost the lock
            # too (on PostgreSQL): say so, whichever step noticed first.
            if not isinstance(exc, LockLostError) and not await asyncio.to_thread(self.lock.held):
                raise lock_lost(self.lock) from exc
            raise
        return report

    def _stopped(self) -> bool:
        return self.stopping

    def hold_lock(self) -> None:
        """Take the database's lock back if it was lost (a cut connection ends
        a PostgreSQL session and its lock): AlreadyRunningError if another
        mailer took it meanwhile, StoreError while the database is unreachable."""
        if self.lock.held():
            return
        lost = self.lock.lost
        self.lock.reacquire()
        log.warning("regained the lock on database %s (it was lost: %s)", self.lock.name, lost)

    def fence(self) -> None:
        """Raise LockLostError unless this process still holds the database's lock."""
        if not self.lock.held():
            raise lock_lost(self.lock)

    def ingest(self, report: PassReport) -> None:
        """Files -> dumps -> papers."""
        watch = self.config.watch
        Ingest(
            self.store, self.scanner, self.clock, watch.max_dump_bytes, watch.max_line_bytes
        ).run(report, self._stopped, self.on_dump)

    def match(self, report: PassReport) -> None:
        """Papers -> matches."""
        if self._examples_checked is not self.config:
            warn_missing_examples(self.store, self.config)  # after ingest: they may just be in
            self._examples_checked = self.config
        refresh_models(self.store, self.clock)
        match_new_papers(self.store, self.engine, self.clock, report, self.likes, self.suggesting)

    def compose(self, report: PassReport) -> None:
        """Matches -> digests -> messages in the outbox."""
        self.fence()
        Compose(
            self.store,
            self.config,
            self.clock,
            self.renderer,
            self.render_settings,
            self.compose_pool,
            self.dkim,
        ).run(report, self._stopped)

    async def deliver(self, report: PassReport) -> None:
        """Messages -> deliveries."""
        send = Send(
            self.store,
            self.config,
            self.transport,
            self.clock,
            self.limiter,
            self.pause,
            self.lock,
        )
        await send.deliver(report, self._stopped)

    async def compose_and_deliver(self, report: PassReport) -> None:
        """Compose in a thread (and its worker pool) while the sender drains
        what is already queued; then drain what composing added."""
        composing = asyncio.ensure_future(asyncio.to_thread(self.compose, report))
        try:
            while not composing.done() and not self.stopping:
                await self.deliver(report)
                await asyncio.wait({composing}, timeout=0.1)
        finally:
            await composing
        await self.deliver(report)
