"""One pass of the pipeline: files, dumps, papers, matches, digests, messages, deliveries.

Each stage reads what the previous one committed to the store, so a pass cut
short anywhere is finished by the next one: nothing is dropped, and the
outbox keeps a message's bytes and Message-ID until the transport accepts it.
The stages live in bounces, ingest, match, compose and send; ``Pipeline``
only holds what they share and runs them in order. On a database that
several daemons share (mailer.cluster), the leader runs them all and the
others only send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from mailer.cluster import Node
from mailer.config import Config
from mailer.delivery import Transport
from mailer.dkim import load_signer
from mailer.errors import LockLostError
from mailer.matching import Stats
from mailer.pipeline.bounces import ReadBounces
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
    subscription_order,
    sync_subscribers,
    warn_missing_examples,
)
from mailer.pipeline.report import Clock, PassReport, Stopping, utc_now
from mailer.pipeline.roster import Roster
from mailer.pipeline.send import RateLimiter, Send, SharedRateLimiter, TransportPause
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
    "subscription_order",
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
        node: Node | None = None,
    ) -> None:
        self.store = store
        # This process among the daemons on the database (mailer.cluster.joined);
        # without one (tests), the only node, with no lock fencing its sends.
        self.node = node or Node(store)
        self.transport = transport
        self.clock = clock
        # Composing many digests at once runs here (a ProcessPoolExecutor whose
        # initializer is mailer.pipeline.compose.init_worker), and so does matching
        # a pass of several batches; None composes and matches in-process.
        self.compose_pool = compose_pool
        self.pause = TransportPause()
        self.scanner = Scanner(config.watch.dir, config.watch.settle_seconds, sleep)
        self.stopping = False
        # Called after each dump of a pass as (done, total, path), to show progress.
        self.on_dump: OnDump | None = None
        self.generation = 0
        self.roster = Roster()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Adopt a (re)loaded configuration: the in-process renderer now, the
        workers' with their next chunk (see RenderSettings), the store's
        subscribers at the start of the next pass."""
        dkim = load_signer(config.dkim)  # first: a bad key leaves the last configuration
        self.config = config
        self.dkim = dkim
        rate = config.smtp.rate_per_minute
        self.limiter = (
            SharedRateLimiter(self.store, rate) if self.node.shared else RateLimiter(rate)
        )
        # config.toml's subscribers and, from the next sync on, the web ones (roster).
        self.subscribers = config
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
        """Write the configured subscribers to the store, once per configuration;
        add the web subscribers who get digests now, with their queries (the
        leader's job: every daemon has the same configuration, and only the
        leader matches and composes)."""
        if not self.node.leading:
            return
        if self._synced is not self.config:
            sync_subscribers(self.store, self.config, self.clock())
            self._synced = self.config
        subscribers = self.roster.current(self.store, self.config, self.clock())
        if subscribers is not self.subscribers:
            self.subscribers = subscribers
            self.engine = build_engine(compile_queries(subscribers), Stats())
            self.likes = compile_likes(subscribers.subscribers)
            self.suggesting = frozenset(s.email for s in subscribers.subscribers if s.suggestions)

    async def run_pass(self) -> PassReport:
        report = PassReport()
        await asyncio.to_thread(self.store.verify)
        leading = await asyncio.to_thread(self.node.join)
        try:
            if leading:
                with report.timed("sync"):
                    await asyncio.to_thread(self.lead, self.sync)
                await asyncio.to_thread(self.lead, self.read_bounces, report)
                await asyncio.to_thread(self.lead, self.ingest, report)
                await asyncio.to_thread(self.lead, self.match, report)
                await self.compose_and_deliver(report)
                await asyncio.to_thread(self.store.record_pass, report.summary(), self.clock())
                log.debug("pass stages %s", report.timings())
            else:
                # Becoming the leader ends a follower's pass, so leader work starts now.
                await self.deliver(report, lambda: self.stopping or self.node.leading)
        except Exception as exc:
            # A pass that fails because the database went away has lost the
            # lock too (on PostgreSQL): say so, whichever step noticed first.
            if not isinstance(exc, LockLostError) and not await asyncio.to_thread(self.node.alive):
                raise self.node.lost_error() from exc
            raise
        return report

    def _stopped(self) -> bool:
        return self.stopping

    def _not_leading(self) -> bool:
        """Polled by the leader's loops: a node that lost leadership stops at once."""
        return self.stopping or not self.node.leading

    def lead(self, step: Callable[..., None], *args: object) -> None:
        """Run a leader's step, fenced: LockLostError unless this node leads
        before it and after it (a loop cut short by losing leadership)."""
        self.node.fence()
        step(*args)
        if not self.node.leading:
            raise self.node.lost_error()

    def read_bounces(self, report: PassReport) -> None:
        """The bounce mailbox -> bounced messages, suppressions, unsubscribes;
        before anything is composed or sent."""
        ReadBounces(self.store, self.config, self.clock).run(report, self._not_leading)

    def ingest(self, report: PassReport) -> None:
        """Files -> dumps -> papers."""
        watch = self.config.watch
        Ingest(
            self.store, self.scanner, self.clock, watch.max_dump_bytes, watch.max_line_bytes
        ).run(report, self._not_leading, self.on_dump)

    def match(self, report: PassReport) -> None:
        """Papers -> matches."""
        if self._examples_checked is not self.config:
            warn_missing_examples(self.store, self.config)  # after ingest: they may just be in
            self._examples_checked = self.config
        refresh_models(self.store, self.clock)
        match_new_papers(
            self.store,
            self.engine,
            self.clock,
            report,
            self.likes,
            self.suggesting,
            self.compose_pool,
            subscription_order(self.subscribers.subscribers),
        )

    def compose(self, report: PassReport) -> None:
        """Matches -> digests -> messages in the outbox (the leader's step)."""
        self.node.fence()
        with report.timed("compose"):
            Compose(
                self.store,
                self.subscribers,
                self.clock,
                self.renderer,
                self.render_settings,
                self.compose_pool,
                self.dkim,
            ).run(report, self._not_leading)
        if not self.node.leading:
            raise self.node.lost_error()

    async def deliver(self, report: PassReport, stopping: Stopping | None = None) -> None:
        """Messages -> deliveries."""
        send = Send(
            self.store,
            self.config,
            self.transport,
            self.clock,
            self.limiter,
            self.pause,
            self.node,
        )
        with report.timed("write"):
            await send.deliver(report, stopping or self._stopped)

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
