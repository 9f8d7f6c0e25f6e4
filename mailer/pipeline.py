"""One pass of the pipeline: files, dumps, papers, matches, digests, messages, deliveries.

Each step reads what the previous step committed to the store, so a pass cut
short anywhere is finished by the next one: nothing is dropped, and the
outbox keeps a message's bytes and Message-ID until the transport accepts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

from mailer.config import Config, SubscriberConfig
from mailer.delivery import Transport, TransportUnavailableError
from mailer.digests import Recipient
from mailer.dumps import parse_dump
from mailer.errors import DeliveryError, DumpError
from mailer.matching import Doc, Engine, Hit, Query, Stats, parse_query, rescore
from mailer.outbox import (
    ComposeChunk,
    DigestOrder,
    Queued,
    RateLimiter,
    RenderSettings,
    backoff_seconds,
    compose_chunk,
)
from mailer.papers import Paper
from mailer.schedule import Schedule
from mailer.store import DeliveryRow, NewMatch, Store
from mailer.tokens import unsubscribe_url as signed_unsubscribe_url

log = logging.getLogger("mailer")

Clock = Callable[[], datetime]
IGNORED_SUFFIXES = (".tmp", ".part", ".swp", ".crdownload")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- watching the folder ----------------------------------------------------


class Scanner:
    """Finds dump files that are complete and not yet handled.

    A file is complete once it has not changed for ``settle`` seconds (a file
    renamed into place usually already has). What was handled is remembered
    by size and mtime, so unchanged files are not read again each pass.
    """

    def __init__(
        self, directory: Path, settle: float, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.directory = directory
        self.settle = settle
        self.sleep = sleep
        self._handled: dict[Path, tuple[int, int]] = {}

    def _candidates(self) -> dict[Path, os.stat_result]:
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.error("cannot list watch folder %s: %s", self.directory, exc.strerror)
            return {}
        found = {}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name.endswith("~"):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue
            path = Path(entry.path)
            if self._handled.get(path) != (st.st_size, st.st_mtime_ns):
                found[path] = st
        return found

    def ready(self) -> list[Path]:
        fresh = self._candidates()
        now = time.time()
        youngest = max((st.st_mtime for st in fresh.values()), default=now - self.settle)
        wait = youngest + self.settle - now
        if wait > 0:
            self.sleep(min(wait, self.settle))
            settled = self._candidates()
            fresh = {
                p: st
                for p, st in settled.items()
                if p in fresh
                and (st.st_size, st.st_mtime_ns) == (fresh[p].st_size, fresh[p].st_mtime_ns)
            }
        return sorted(fresh)

    def handled(self, path: Path, size: int, mtime_ns: int) -> None:
        self._handled[path] = (size, mtime_ns)


# --- the pass ---------------------------------------------------------------


@dataclass
class PassReport:
    dumps: int = 0
    refused: int = 0
    known: int = 0
    papers_new: int = 0
    papers_seen: int = 0
    matches: int = 0
    digests: int = 0
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    deferred_ids: set[int] = field(default_factory=set)

    @property
    def deferred(self) -> int:
        """Messages this pass wanted to send that wait for a later attempt."""
        return len(self.deferred_ids)

    def summary(self) -> str:
        return (
            f"dumps={self.dumps} refused={self.refused} already_ingested={self.known} "
            f"papers_new={self.papers_new} papers_seen={self.papers_seen} "
            f"matches={self.matches} digests={self.digests} sent={self.sent} "
            f"deferred={self.deferred} failed={self.failed}"
        )


def compile_queries(config: Config) -> dict[str, dict[str, Query]]:
    """Every subscriber's parsed queries, by email then subscription name."""
    return {
        s.email: {q.name: parse_query(q.query, stemming=q.stemming) for q in s.subscriptions}
        for s in config.subscribers
    }


def build_engine(queries: Mapping[str, Mapping[str, Query]], stats: Stats) -> Engine:
    """One engine for every subscription, keyed by (email, subscription name)."""
    return Engine(
        {(email, name): q for email, subs in queries.items() for name, q in subs.items()}, stats
    )


def match_rows(
    engine: Engine, papers: Iterable[tuple[int, Paper]], subscriber_ids: Mapping[str, int]
) -> list[NewMatch]:
    """Papers -> match rows, scored against ``engine.stats``: the one way a
    paper becomes a match, for the pass, backfill and ``send-test``. Hits of
    subscribers not in ``subscriber_ids`` (unsubscribed, removed) are dropped."""
    rows: list[NewMatch] = []
    for paper_id, paper in papers:
        doc = Doc(paper, engine.stats)
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


def unsubscribe_url(config: Config, email: str) -> str | None:
    """The signed one-click link for ``email``, when ``[web] base_url`` is set."""
    web = config.web
    if not web.base_url:
        return None
    return signed_unsubscribe_url(web.base_url, email, web.secret.get_secret_value())


def digest_order(
    config: Config, sub: SubscriberConfig, subscriber_id: int, since: datetime | None
) -> DigestOrder:
    """What composing ``sub``'s digest needs besides the matches."""
    return DigestOrder(
        subscriber_id,
        recipient(sub),
        since,
        sub.max_papers or config.render.max_papers,
        unsubscribe_url(config, sub.email),
    )


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


class Pipeline:
    """One pass, stage by stage; building one touches nothing: the configured
    subscribers are written to the store at the start of the next pass."""

    def __init__(
        self,
        config: Config,
        store: Store,
        transport: Callable[[], Transport],
        *,
        clock: Clock = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        compose_pool: Executor | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.clock = clock
        # Composing many digests at once runs here (a ProcessPoolExecutor whose
        # initializer is mailer.outbox.init_worker); None composes in-process.
        self.compose_pool = compose_pool
        # After the transport itself failed (down, TLS, login), sending waits
        # with back-off instead of retrying in a tight loop.
        self.paused_until: datetime | None = None
        self.transport_failures = 0
        self.scanner = Scanner(config.watch.dir, config.watch.settle_seconds, sleep)
        self.stopping = False
        # Called after each dump of a pass as (done, total, path), to show progress.
        self.on_dump: Callable[[int, int, Path], None] | None = None
        self.generation = 0
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Adopt a (re)loaded configuration: the in-process renderer now, the
        workers' with their next chunk (see RenderSettings), the store's
        subscribers at the start of the next pass."""
        self.config = config
        self.limiter = RateLimiter(config.smtp.rate_per_minute)
        self.queries = compile_queries(config)
        self.engine = build_engine(self.queries, Stats())
        self.generation += 1
        self.render_settings = RenderSettings(
            config.render.templates, config.render.paper_url, self.generation
        )
        self.renderer = self.render_settings.renderer()
        self.scanner.directory = config.watch.dir
        self.scanner.settle = config.watch.settle_seconds
        self._synced: Config | None = None

    def sync(self) -> None:
        """Write the configured subscribers to the store, once per configuration."""
        if self._synced is not self.config:
            sync_subscribers(self.store, self.config, self.clock())
            self._synced = self.config

    async def run_pass(self) -> PassReport:
        report = PassReport()
        await asyncio.to_thread(self.sync)
        await asyncio.to_thread(self.ingest, report)
        await asyncio.to_thread(self.match, report)
        await self.compose_and_deliver(report)
        await asyncio.to_thread(self.store.record_pass, report.summary(), self.clock())
        return report

    # --- files -> dumps -> papers --------------------------------------------

    def ingest(self, report: PassReport) -> None:
        paths = self.scanner.ready()
        for done, path in enumerate(paths, 1):
            if self.stopping:
                return
            self.ingest_file(path, report)
            if self.on_dump is not None:
                self.on_dump(done, len(paths), path)

    def ingest_file(self, path: Path, report: PassReport) -> None:
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s; will try again", path, exc.strerror)
            return
        digest = hashlib.sha256(data).hexdigest()
        known = self.store.dump_by_hash(digest)
        if known is not None:
            if known.path != str(path):
                log.info("dump=%s same content as %s already ingested; skipped", path, known.path)
            report.known += 1
            self.scanner.handled(path, st.st_size, st.st_mtime_ns)
            return
        now = self.clock()
        try:
            parsed = parse_dump(data, source=str(path), today=now.date())
        except DumpError as exc:
            log.error("dump=%s refused: %s", path, exc.message)
            self.store.record_refused(
                path=str(path), sha256=digest, size=len(data), error=exc.message, now=now
            )
            report.refused += 1
            report.errors.append(str(exc))
            self.scanner.handled(path, st.st_size, st.st_mtime_ns)
            return
        for warning in parsed.warnings:
            log.warning("%s", warning)
        outcome = self.store.ingest(
            path=str(path),
            sha256=digest,
            size=len(data),
            page_date=parsed.page_date,
            papers=parsed.papers,
            warnings=len(parsed.warnings),
            now=now,
        )
        self.scanner.handled(path, st.st_size, st.st_mtime_ns)
        report.dumps += 1
        report.papers_new += outcome.new_papers
        report.papers_seen += outcome.seen_papers
        log.info(
            "dump=%s ingested records=%d new=%d seen=%d warnings=%d",
            path,
            len(parsed.papers),
            outcome.new_papers,
            outcome.seen_papers,
            len(parsed.warnings),
        )

    # --- papers -> matches ---------------------------------------------------

    def match(self, report: PassReport) -> None:
        """Match the papers not yet matched against the statistics of all
        stored papers (this pass's included), record them with their matches."""
        active = self.store.active_subscriber_ids()
        while batch := self.store.unmatched_papers():
            stats = self.store.stats()
            if stats is not self.engine.stats:
                self.engine.stats = stats
            rows = match_rows(self.engine, batch, active)
            report.matches += self.store.record_matches(
                [pid for pid, _ in batch], rows, self.clock()
            )

    # --- matches -> digests -> messages (the outbox) ---------------------------

    def due_subscribers(self, now: datetime) -> list[tuple[SubscriberConfig, int, datetime | None]]:
        """(subscriber, id, last digest) of each active subscriber whose schedule is due."""
        active = self.store.active_subscriber_ids()
        subs = [(s, active[s.email]) for s in self.config.subscribers if s.email in active]
        state = self.store.digest_state([i for _, i in subs])
        due = []
        for sub, subscriber_id in subs:
            since, last = state.get(subscriber_id, (now, None))
            schedule = Schedule.parse(sub.schedule)
            if schedule.is_due(last=last, since=since, now=now, zone=ZoneInfo(sub.timezone)):
                due.append((sub, subscriber_id, last))
        return due

    def compose(self, report: PassReport) -> None:
        """Compose every due digest into the outbox, in chunks. With a worker
        pool, workers read, render and queue chunks themselves, POOL_DEPTH
        ahead of the one this thread waits for."""
        now = self.clock()
        due = self.due_subscribers(now)
        pool = self.compose_pool if len(due) >= POOL_THRESHOLD else None
        smtp = self.config.smtp
        in_flight: deque[Future[list[Queued]]] = deque()
        for start in range(0, len(due), COMPOSE_CHUNK):
            if self.stopping:
                break
            chunk = ComposeChunk(
                tuple(
                    digest_order(self.config, sub, subscriber_id, last)
                    for sub, subscriber_id, last in due[start : start + COMPOSE_CHUNK]
                ),
                now,
                smtp.sender,
                smtp.sender_address,
            )
            if pool is None:
                self._queued(chunk.run(self.store, self.renderer), report)
                continue
            in_flight.append(pool.submit(compose_chunk, chunk, self.render_settings))
            while len(in_flight) > POOL_DEPTH:
                self._queued(in_flight.popleft().result(), report)
        for future in in_flight:
            self._queued(future.result(), report)

    @staticmethod
    def _queued(queued: list[Queued], report: PassReport) -> None:
        report.digests += len(queued)
        for q in queued:
            log.info(
                "digest queued subscriber=%s papers=%d message_id=%s",
                q.recipient,
                q.papers,
                q.message_id,
            )

    # --- unsubscribing (RFC 8058) --------------------------------------------

    def cancel_unwanted(self, rows: Sequence[DeliveryRow]) -> set[int]:
        """Ids among ``rows`` (now marked cancelled) whose recipient unsubscribed
        or was removed after they were composed: they must not be sent."""
        ids = [r.id for r in rows if r.id is not None]
        cancelled = self.store.cancel_unwanted(ids)
        for row in rows:
            if row.id in cancelled:
                log.info(
                    "not sent: subscriber=%s %s; message_id=%s cancelled",
                    row.recipient,
                    cancelled[row.id],
                    row.message_id,
                )
        return set(cancelled)

    # --- messages -> deliveries ---------------------------------------------

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

    async def deliver(self, report: PassReport) -> None:
        """Drain the due part of the outbox over ``smtp.max_connections``
        connections at most ``smtp.rate_per_minute``. A message is marked sent
        only after the server accepted it; one cut off by a stop or crash stays
        pending and goes again, with the same bytes and Message-ID."""
        now = self.clock()
        if self.paused_until is not None and now < self.paused_until:
            ids = await asyncio.to_thread(lambda: [r.id for r in self.store.due_deliveries(now)])
            report.deferred_ids.update(i for i in ids if i is not None)
            return
        sender = self.config.smtp.sender_address
        unavailable: list[TransportUnavailableError] = []
        while not self.stopping and not unavailable:
            due = await asyncio.to_thread(self.store.due_deliveries, self.clock(), DELIVER_BATCH)
            due = [r for r in due if r.id not in report.deferred_ids]
            if not due:
                break
            queue = deque(due)
            workers = min(self.config.smtp.max_connections, len(due))

            try:
                await asyncio.gather(
                    *(self._drain(queue, sender, unavailable, report) for _ in range(workers))
                )
            except TransportUnavailableError as exc:
                unavailable.append(exc)
            report.deferred_ids.update(r.id for r in queue if r.id is not None)
            if len(due) < DELIVER_BATCH:
                break
        if unavailable:
            first = unavailable[0]
            self.transport_failures += 1
            delay = self._backoff(self.transport_failures)
            self.paused_until = self.clock() + timedelta(seconds=delay)
            report.errors.append(str(first))
            log.error("delivery paused for %.0fs: %s", delay, first.message)
        elif report.sent:
            self.transport_failures, self.paused_until = 0, None

    async def _drain(
        self,
        queue: deque[DeliveryRow],
        sender: str,
        unavailable: list[TransportUnavailableError],
        report: PassReport,
    ) -> None:
        """One connection's share of a batch; stops all when the transport fails.

        Rows are taken a few at a time: one transaction cancels those whose
        recipient has unsubscribed meanwhile and records the previous few as
        sent. So an unsubscribe is honoured up to one chunk (SEND_CHUNK
        messages, a fraction of a second) after it, and a crash may resend up
        to one chunk per connection, with the same Message-IDs. Rows not
        tried go back to the queue and are reported deferred."""
        chunk_size = 1 if self.limiter.interval else SEND_CHUNK
        sent: list[tuple[DeliveryRow, str]] = []
        try:
            async with self.transport() as transport:
                while queue and not self.stopping and not unavailable:
                    chunk = [queue.popleft() for _ in range(min(chunk_size, len(queue)))]
                    done, sent = sent, []
                    cancelled = await asyncio.to_thread(self._settle, done, chunk)
                    self._count_sent(done, report)
                    for n, row in enumerate(chunk):
                        if self.stopping or unavailable:
                            queue.extendleft(reversed(chunk[n:]))
                            break
                        if row.id in cancelled:
                            continue
                        await self.limiter.wait()
                        try:
                            reply = await transport.send(sender, row.recipient, row.message)
                        except TransportUnavailableError as exc:
                            unavailable.append(exc)
                            queue.extendleft(reversed(chunk[n + 1 :]))
                            await asyncio.to_thread(self._attempt_failed, row, exc, report)
                            return
                        except DeliveryError as exc:
                            await asyncio.to_thread(self._attempt_failed, row, exc, report)
                            continue
                        sent.append((row, reply))
        finally:
            if sent:
                await asyncio.to_thread(self._settle, sent, [])
                self._count_sent(sent, report)

    def _settle(
        self, sent: Sequence[tuple[DeliveryRow, str]], upcoming: Sequence[DeliveryRow]
    ) -> set[int]:
        """Record ``sent`` as sent, then cancel any of ``upcoming`` whose
        recipient unsubscribed; returns the cancelled ids."""
        self.store.mark_sent_many([(r.id, reply) for r, reply in sent if r.id], self.clock())
        for row, reply in sent:
            log.info(
                "sent subscriber=%s message_id=%s papers=%d reply=%s",
                row.recipient,
                row.message_id,
                row.papers,
                reply.strip(),
            )
        return self.cancel_unwanted(upcoming) if upcoming else set()

    @staticmethod
    def _count_sent(sent: Sequence[tuple[DeliveryRow, str]], report: PassReport) -> None:
        report.sent += len(sent)
        report.deferred_ids.difference_update(r.id for r, _ in sent)

    def _backoff(self, attempts: int) -> float:
        d = self.config.delivery
        return backoff_seconds(
            attempts, initial=d.retry_initial_seconds, maximum=d.retry_max_seconds
        )

    def _attempt_failed(self, row: DeliveryRow, exc: DeliveryError, report: PassReport) -> None:
        """A 5xx fails the message now; anything else defers it with back-off,
        until it has been deferred for ``give_up_after_seconds``."""
        assert row.id is not None
        now = self.clock()
        give_up = timedelta(seconds=self.config.delivery.give_up_after_seconds)
        permanent = exc.permanent
        reply = exc.message
        if not permanent and row.deferred_since is not None and now - row.deferred_since >= give_up:
            permanent = True
            reply = f"gave up after {give_up} of temporary failures; last: {reply}"
        retry_at = now + timedelta(seconds=self._backoff(row.attempts + 1))
        self.store.mark_attempt_failed(
            row.id, reply=reply, permanent=permanent, retry_at=retry_at, now=now
        )
        if permanent:
            report.failed += 1
            log.error(
                "send failed subscriber=%s message_id=%s reply=%s",
                row.recipient,
                row.message_id,
                reply,
            )
        else:
            report.deferred_ids.add(row.id)
            log.warning(
                "send deferred subscriber=%s message_id=%s attempt=%d retry_at=%s reply=%s",
                row.recipient,
                row.message_id,
                row.attempts + 1,
                retry_at.isoformat(timespec="seconds"),
                reply,
            )


POOL_THRESHOLD = 200  # below this many due digests, rendering in-process is quicker
COMPOSE_CHUNK = 100
POOL_DEPTH = 4  # chunks composing ahead of the one waited for
DELIVER_BATCH = 1000
SEND_CHUNK = 10  # messages per connection between unsubscribe checks and sent records


def recipient(sub: SubscriberConfig) -> Recipient:
    return Recipient(
        email=sub.email, name=sub.name, subscriptions=tuple(q.name for q in sub.subscriptions)
    )
