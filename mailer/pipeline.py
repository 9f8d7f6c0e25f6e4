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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from pathlib import Path
from typing import cast
from urllib.parse import quote
from zoneinfo import ZoneInfo

from mailer.config import Config, SubscriberConfig
from mailer.delivery import Transport, TransportUnavailableError
from mailer.digests import Digest, Matched, Recipient, build_digest
from mailer.dumps import parse_dump
from mailer.errors import DeliveryError, DumpError
from mailer.matching import Doc, Engine, Query, Stats, parse_query
from mailer.papers import Paper
from mailer.render import Renderer, compose_message
from mailer.schedule import Schedule
from mailer.store import Store

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
    deferred: int = 0
    errors: list[str] = field(default_factory=list)

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


def build_engine(queries: dict[str, dict[str, Query]], stats: Stats) -> Engine:
    """One engine for every subscription, keyed by (email, subscription name)."""
    return Engine(
        {(email, name): q for email, subs in queries.items() for name, q in subs.items()}, stats
    )


class Pipeline:
    def __init__(
        self,
        config: Config,
        store: Store,
        transport: Callable[[], Transport],
        *,
        clock: Clock = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.transport = transport
        self.clock = clock
        self.scanner = Scanner(config.watch.dir, config.watch.settle_seconds, sleep)
        self.stopping = False
        self.stats = Stats()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Adopt a (re)loaded configuration."""
        self.config = config
        self.queries = compile_queries(config)
        self.engine = build_engine(self.queries, self.stats)
        self.renderer = Renderer(config.render.templates, paper_url=config.render.paper_url)
        self.scanner.directory = config.watch.dir
        self.scanner.settle = config.watch.settle_seconds
        self.subscriber_ids = self.store.sync_subscribers(
            (
                (s.email, s.name, [(q.name, q.query) for q in s.subscriptions])
                for s in config.subscribers
            ),
            self.clock(),
        )

    async def run_pass(self) -> PassReport:
        report = PassReport()
        await asyncio.to_thread(self.ingest, report)
        await asyncio.to_thread(self.match, report)
        await asyncio.to_thread(self.compose, report)
        await self.deliver(report)
        return report

    # --- files -> dumps -> papers --------------------------------------------

    def ingest(self, report: PassReport) -> None:
        for path in self.scanner.ready():
            if self.stopping:
                return
            self.ingest_file(path, report)

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
        active = self.store.active_subscriber_ids()
        while batch := self.store.unmatched_papers():
            rows = []
            for paper_id, paper in batch:
                doc = Doc(paper, self.stats)
                self.stats.observe(doc)
                by_subscriber: dict[int, list[tuple[str, tuple[str, ...], float]]] = {}
                for hit in self.engine.match(doc):
                    email, name = cast(tuple[str, str], hit.query)
                    subscriber_id = active.get(email)
                    if subscriber_id is None:
                        continue
                    by_subscriber.setdefault(subscriber_id, []).append((name, hit.terms, hit.score))
                for subscriber_id, hits in by_subscriber.items():
                    terms = sorted({t for _, ts, _ in hits for t in ts})
                    rows.append(
                        (
                            subscriber_id,
                            paper_id,
                            [n for n, _, _ in hits],
                            terms,
                            [s for _, _, s in hits],
                        )
                    )
            report.matches += self.store.record_matches(
                [pid for pid, _ in batch], rows, self.clock()
            )

    # --- matches -> digests -> messages (the outbox) ---------------------------

    def compose(self, report: PassReport) -> None:
        now = self.clock()
        active = self.store.active_subscriber_ids()
        for sub in self.config.subscribers:
            subscriber_id = active.get(sub.email)
            if subscriber_id is None or self.stopping:
                continue
            last = self.store.last_digest_at(subscriber_id)
            since = self.store.subscriber_since(subscriber_id) or now
            schedule = Schedule.parse(sub.schedule)
            if not schedule.is_due(last=last, since=since, now=now, zone=ZoneInfo(sub.timezone)):
                continue
            pending = self.store.pending_matches(subscriber_id)
            if not pending:
                continue
            matched = [Matched(p.paper, p.subscriptions, p.terms, p.scores) for p in pending]
            digest = build_digest(
                recipient(sub),
                matched,
                since=last,
                max_papers=self.config.render.max_papers,
            )
            message_id, data, subject = self.message_bytes(digest, now)
            self.store.enqueue(
                subscriber_id=subscriber_id,
                recipient=sub.email,
                message_id=message_id,
                subject=subject,
                message=data,
                match_ids=[p.id for p in pending],
                now=now,
            )
            report.digests += 1
            log.info(
                "digest queued subscriber=%s papers=%d message_id=%s",
                sub.email,
                digest.count,
                message_id,
            )

    def message_bytes(self, digest: Digest, now: datetime) -> tuple[str, bytes, str]:
        smtp = self.config.smtp
        domain = smtp.sender_address.rpartition("@")[2] or "localhost"
        message_id = make_msgid(idstring="digest", domain=domain)
        mailto = f"mailto:{smtp.sender_address}?subject=" + quote(
            f"unsubscribe {digest.recipient.email}"
        )
        rendered = self.renderer.render(digest, unsubscribe_url=None, manage_hint=MANAGE_HINT)
        message = compose_message(
            digest,
            rendered,
            sender=smtp.sender,
            message_id=message_id,
            date=now,
            list_unsubscribe=[mailto],
            one_click=False,
        )
        return message_id, message.as_bytes(), rendered.subject

    # --- messages -> deliveries ---------------------------------------------

    async def deliver(self, report: PassReport) -> None:
        due = await asyncio.to_thread(self.store.due_deliveries, self.clock())
        if not due:
            return
        sender = self.config.smtp.sender_address
        try:
            async with self.transport() as transport:
                for row in due:
                    if self.stopping:
                        return
                    assert row.id is not None
                    try:
                        reply = await transport.send(sender, row.recipient, row.message)
                    except TransportUnavailableError:
                        raise
                    except DeliveryError as exc:
                        await asyncio.to_thread(self._failed, row.id, exc, report)
                        log.error(
                            "send failed subscriber=%s message_id=%s permanent=%s reply=%s",
                            row.recipient,
                            row.message_id,
                            exc.permanent,
                            exc.message,
                        )
                        continue
                    await asyncio.to_thread(
                        self.store.mark_sent, row.id, reply=reply, now=self.clock()
                    )
                    report.sent += 1
                    log.info(
                        "sent subscriber=%s message_id=%s papers=%d reply=%s",
                        row.recipient,
                        row.message_id,
                        row.papers,
                        reply.strip(),
                    )
        except TransportUnavailableError as exc:
            report.deferred += len(due) - report.sent - report.failed
            report.errors.append(str(exc))
            log.error("delivery paused: %s", exc.message)

    def _failed(self, delivery_id: int, exc: DeliveryError, report: PassReport) -> None:
        if exc.permanent:
            report.failed += 1
        else:
            report.deferred += 1
        self.store.mark_attempt_failed(
            delivery_id,
            reply=exc.message,
            permanent=exc.permanent,
            retry_at=self.clock() + timedelta(seconds=1),
        )


MANAGE_HINT = (
    "Reply to this message, or ask the operator of this digest to change your subscriptions."
)


def recipient(sub: SubscriberConfig) -> Recipient:
    return Recipient(
        email=sub.email, name=sub.name, subscriptions=tuple(q.name for q in sub.subscriptions)
    )


def digest_for_test(
    config: Config, sub: SubscriberConfig, papers: list[Paper], since: datetime
) -> Digest:
    """The digest ``sub`` would get for ``papers``, built without touching the store."""
    stats = Stats()
    docs = [Doc(paper, stats) for paper in papers]
    for doc in docs:
        stats.observe(doc)
    engine = Engine(
        {q.name: parse_query(q.query, stemming=q.stemming) for q in sub.subscriptions}, stats
    )
    matched = []
    for paper, doc in zip(papers, docs, strict=True):
        hits = engine.match(doc)
        if hits:
            matched.append(
                Matched(
                    paper,
                    tuple(str(h.query) for h in hits),
                    tuple(sorted({t for h in hits for t in h.terms})),
                    tuple(h.score for h in hits),
                )
            )
    return build_digest(
        recipient(sub), matched, since=since, max_papers=config.render.max_papers, test=True
    )
