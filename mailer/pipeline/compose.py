"""Matches -> digests -> messages in the outbox.

Which subscribers are due, what their digests hold, and the message bytes,
composed in this process or, for many digests at once, in worker processes
that open their store once and build their Renderer once per configuration
(so the stylesheet is inlined once per worker and reload, not per message).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from mailer.config import Config, SubscriberConfig
from mailer.digests import SUGGESTED, Digest, Matched, Ranking, Recipient, build_digest
from mailer.dkim import DkimSigner
from mailer.errors import MessageError
from mailer.matching import Stats
from mailer.mime import compose_bytes, new_message_id
from mailer.papers import Paper
from mailer.pipeline.report import Clock, PassReport, Stopping, gc_paused
from mailer.relevance.defaults import DEFAULT_TOP
from mailer.relevance.reader import SUGGESTIONS, Reader, readers
from mailer.render import Renderer
from mailer.schedule import Schedule
from mailer.selfservice.links import manage_url as signed_manage_url
from mailer.store import Outgoing, PendingMatch, Store
from mailer.tokens import feedback_urls
from mailer.tokens import unsubscribe_url as signed_unsubscribe_url

log = logging.getLogger("mailer")

POOL_THRESHOLD = 200  # below this many due digests, rendering in-process is quicker
COMPOSE_CHUNK = 100
POOL_DEPTH = 4  # chunks composing ahead of the one waited for

MANAGE_HINT = (
    "Reply to this message, or ask the operator of this digest to change your subscriptions."
)


def readers_of(store: Store, subscriber_ids: Sequence[int], stats: Stats) -> dict[int, Reader]:
    """What orders these subscribers' digests: their models and "not for me" marks."""
    return readers(store.reader_models(subscriber_ids), store.marks(subscriber_ids), stats)


def recipient(sub: SubscriberConfig) -> Recipient:
    return Recipient(
        email=sub.email, name=sub.name, subscriptions=tuple(q.name for q in sub.subscriptions)
    )


def unsubscribe_url(config: Config, email: str) -> str | None:
    """The signed one-click link for ``email``, when ``[web] base_url`` is set."""
    web = config.web
    if not web.base_url:
        return None
    return signed_unsubscribe_url(web.base_url, email, web.secret.get_secret_value())


def manage_url(config: Config, email: str) -> str | None:
    """The signed link to ``email``'s own page, when the pages are on."""
    web = config.web
    if not (web.self_service and web.base_url):
        return None
    return signed_manage_url(web.base_url, email, web.secret.get_secret_value())


@dataclass(frozen=True, slots=True)
class FeedbackLinks:
    """Makes one subscriber's "more like this" and "not for me" links (when
    ``[web] base_url`` is set); travels to the compose workers with its order."""

    base_url: str
    email: str
    secret: str = field(repr=False)

    def __call__(self, paper_id: int) -> tuple[str, str]:
        return feedback_urls(self.base_url, self.email, paper_id, self.secret)


def feedback_links(config: Config, email: str) -> FeedbackLinks | None:
    web = config.web
    if not web.base_url:
        return None
    return FeedbackLinks(web.base_url, email, web.secret.get_secret_value())


@dataclass(frozen=True, slots=True)
class DigestOrder:
    """One due subscriber's digest, before its matches are read."""

    subscriber_id: int
    recipient: Recipient
    since: datetime | None
    max_papers: int
    unsubscribe_url: str | None = None
    manage_url: str | None = None
    # Similarity subscriptions: their names, and at most how many papers each shows.
    similar: frozenset[str] = frozenset()
    caps: tuple[tuple[str, int], ...] = ()
    feedback: FeedbackLinks | None = None
    suggestions: bool = True  # show "Suggested for you"


def digest_order(
    config: Config, sub: SubscriberConfig, subscriber_id: int, since: datetime | None
) -> DigestOrder:
    """What composing ``sub``'s digest needs besides the matches."""
    similar = [q for q in sub.subscriptions if q.similar]
    return DigestOrder(
        subscriber_id,
        recipient(sub),
        since,
        sub.max_papers or config.render.max_papers,
        unsubscribe_url(config, sub.email),
        manage_url(config, sub.email),
        similar=frozenset(q.name for q in similar),
        caps=tuple((q.name, q.top or DEFAULT_TOP) for q in similar),
        feedback=feedback_links(config, sub.email),
        suggestions=sub.suggestions,
    )


def due_subscribers(
    store: Store, config: Config, now: datetime
) -> list[tuple[SubscriberConfig, int, datetime | None]]:
    """(subscriber, id, last digest) of each active subscriber whose schedule is due."""
    active = store.active_subscriber_ids()
    subs = [(s, active[s.email]) for s in config.subscribers if s.email in active]
    state = store.digest_state([i for _, i in subs])
    due = []
    for sub, subscriber_id in subs:
        since, last = state.get(subscriber_id, (now, None))
        schedule = Schedule.parse(sub.schedule)
        if schedule.is_due(last=last, since=since, now=now, zone=ZoneInfo(sub.timezone)):
            due.append((sub, subscriber_id, last))
    return due


def compose_digest(
    order: DigestOrder,
    matches: Sequence[PendingMatch],
    ranking: Ranking,
    *,
    test: bool = False,
    reader: Reader | None = None,
) -> Digest:
    """Matches -> Digest, every paper ranked against the same statistics,
    or by the reader's model when they have one; suggestions (if the reader
    wants them) in a section of their own."""

    def matched(m: PendingMatch) -> Matched:
        return ranking.matched(
            m.paper,
            m.subscriptions,
            m.subscription_terms,
            m.scores,
            similar,
            m.paper_id,
            m.terms,
            m.scored_papers,
        )

    similar = order.similar | {SUGGESTED}
    regular = [matched(m) for m in matches if not suggested(m)]
    extra = [matched(m) for m in matches if suggested(m)] if order.suggestions else []
    return build_digest(
        order.recipient,
        regular,
        since=order.since,
        max_papers=order.max_papers,
        test=test,
        caps=dict(order.caps),
        similar=order.similar,
        rank=None if reader is None else (lambda m: reader.score(ranking.doc(m.paper))),
        suggestions=extra,
        max_suggestions=SUGGESTIONS,
    )


def suggested(match: PendingMatch) -> bool:
    """Whether a match is a suggestion: these only go out with a digest
    that has matched papers, never on their own."""
    return match.subscriptions == (SUGGESTED,)


def build_message(
    renderer: Renderer,
    digest: Digest,
    now: datetime,
    *,
    sender: str,
    sender_address: str,
    unsubscribe_url: str | None = None,
    dkim: DkimSigner | None = None,
    manage_url: str | None = None,
    feedback: FeedbackLinks | None = None,
) -> tuple[str, bytes, str]:
    """(Message-ID, bytes, subject) of a digest. The Message-ID and the DKIM
    signature are made here, once: the outbox keeps these bytes, so any resend
    carries the same ones."""
    message_id = new_message_id(sender_address, now)
    mailto = f"mailto:{quote(sender_address, safe='@')}?subject=" + quote(
        f"unsubscribe {digest.recipient.email}"
    )
    rendered = renderer.render(
        digest,
        unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=mailto,
        manage_hint=MANAGE_HINT,
        manage_url=manage_url,
        feedback=feedback,
    )
    links = [unsubscribe_url, mailto] if unsubscribe_url else [mailto]
    message = compose_bytes(
        digest,
        rendered,
        sender=sender,
        message_id=message_id,
        date=now,
        list_unsubscribe=links,
        one_click=unsubscribe_url is not None,
    )
    if dkim is not None:
        message = dkim.sign(message)
    return message_id, message, rendered.subject


@dataclass(frozen=True, slots=True)
class Composed:
    """A digest and the message it renders to, as the outbox holds it."""

    digest: Digest
    message_id: str
    data: bytes
    subject: str


def compose(
    order: DigestOrder,
    matches: Sequence[PendingMatch],
    ranking: Ranking,
    renderer: Renderer,
    now: datetime,
    *,
    sender: str,
    sender_address: str,
    test: bool = False,
    dkim: DkimSigner | None = None,
    reader: Reader | None = None,
) -> Composed:
    """Matches -> digest -> message: the one path for the outbox, ``preview``
    and ``send-test``, so each shows exactly what the others would."""
    digest = compose_digest(order, matches, ranking, test=test, reader=reader)
    message_id, data, subject = build_message(
        renderer,
        digest,
        now,
        sender=sender,
        sender_address=sender_address,
        unsubscribe_url=order.unsubscribe_url,
        dkim=dkim,
        manage_url=order.manage_url,
        feedback=order.feedback,
    )
    return Composed(digest, message_id, data, subject)


@dataclass(frozen=True, slots=True)
class Queued:
    """A digest now in the outbox, for the log."""

    recipient: str
    papers: int
    message_id: str
    failed: str | None = None  # why no message could be built


@dataclass(frozen=True, slots=True)
class ComposeChunk:
    """Some due digests, composed and queued as one unit of work: their
    unclaimed matches read, rendered, and written to the outbox with the
    claims in one transaction. A worker process does all of it with its own
    store connection, so the process that sends spends nothing on composing
    and no message bytes cross between processes."""

    orders: tuple[DigestOrder, ...]
    now: datetime
    sender: str
    sender_address: str
    dkim: DkimSigner | None = None  # the key travels with the chunk to a worker
    # The compose stage the chunk is of: chunks of one stage share the papers
    # they read (``_papers_read``); "" shares nothing.
    stage: str = ""

    def run(self, store: Store, renderer: Renderer) -> list[Queued]:
        with gc_paused():
            return self._run(store, renderer)

    def _run(self, store: Store, renderer: Renderer) -> list[Queued]:
        ids = [o.subscriber_id for o in self.orders]
        pending = store.pending_matches_for(ids, _papers_read(self.stage))
        stats = store.stats()
        ranking = _ranking(stats)
        ordering = readers_of(store, ids, stats)
        messages: list[Outgoing] = []
        for order in self.orders:
            matches = pending.get(order.subscriber_id, [])
            if all(suggested(m) for m in matches):
                continue
            match_ids = [m.id for m in matches]
            try:
                made = compose(
                    order,
                    matches,
                    ranking,
                    renderer,
                    self.now,
                    sender=self.sender,
                    sender_address=self.sender_address,
                    dkim=self.dkim,
                    reader=ordering.get(order.subscriber_id),
                )
            except MessageError as exc:
                # This digest alone: it goes in the outbox as failed, with
                # the reason, and claims its matches so it is not retried
                # (and failed again) every pass.
                messages.append(_not_composed(order, match_ids, self.sender_address, self.now, exc))
                continue
            messages.append(
                Outgoing(
                    order.subscriber_id,
                    order.recipient.email,
                    made.message_id,
                    made.subject,
                    made.data,
                    match_ids,
                )
            )
        if messages:
            store.enqueue_many(messages, self.now)
        return [Queued(m.recipient, len(m.match_ids), m.message_id, m.failed) for m in messages]


# What the chunks composed in one process share, since they share most of
# their papers: the last chunk's Ranking, kept while the statistics stay the
# same (each paper analysed once); and the papers read for the chunks of one
# compose stage (papers change only at ingest, which never runs while the
# leader composes).
_last_ranking: Ranking | None = None
_last_papers: tuple[str, dict[int, tuple[Paper, datetime]]] | None = None


def _ranking(stats: Stats) -> Ranking:
    global _last_ranking
    _last_ranking = Ranking(stats) if _last_ranking is None else _last_ranking.of(stats)
    return _last_ranking


def _papers_read(stage: str) -> dict[int, tuple[Paper, datetime]] | None:
    global _last_papers
    if not stage:
        return None
    if _last_papers is None or _last_papers[0] != stage:
        _last_papers = (stage, {})
    return _last_papers[1]


def _not_composed(
    order: DigestOrder, match_ids: list[int], sender_address: str, now: datetime, exc: MessageError
) -> Outgoing:
    return Outgoing(
        order.subscriber_id,
        order.recipient.email,
        new_message_id(sender_address, now),
        "",
        b"",
        match_ids,
        failed=f"not composed: {exc.message}",
    )


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """What a Renderer is built from. ``generation`` counts configuration
    loads, so a worker builds a new Renderer after every reload (templates
    edited on disk included) and never renders with an old one."""

    templates: Path | None
    paper_url: str
    generation: int = 0

    def renderer(self) -> Renderer:
        return Renderer(self.templates, paper_url=self.paper_url)


@dataclass(frozen=True)
class Compose:
    """The compose stage: every due digest into the outbox, in chunks. With a
    worker pool (whose initializer is ``init_worker``), workers read, render
    and queue chunks themselves, POOL_DEPTH ahead of the one waited for."""

    store: Store
    config: Config
    clock: Clock
    renderer: Renderer
    settings: RenderSettings
    pool: Executor | None = None
    dkim: DkimSigner | None = None

    def run(self, report: PassReport, stopping: Stopping) -> None:
        now = self.clock()
        due = due_subscribers(self.store, self.config, now)
        pool = self.pool if len(due) >= POOL_THRESHOLD else None
        stage = secrets.token_hex(8)
        smtp = self.config.smtp
        in_flight: deque[Future[list[Queued]]] = deque()
        for start in range(0, len(due), COMPOSE_CHUNK):
            if stopping():
                break
            chunk = ComposeChunk(
                tuple(
                    digest_order(self.config, sub, subscriber_id, last)
                    for sub, subscriber_id, last in due[start : start + COMPOSE_CHUNK]
                ),
                now,
                smtp.sender,
                smtp.sender_address,
                self.dkim,
                stage,
            )
            if pool is None:
                _queued(chunk.run(self.store, self.renderer), report)
                continue
            in_flight.append(pool.submit(compose_chunk, chunk, self.settings))
            while len(in_flight) > POOL_DEPTH:
                _queued(in_flight.popleft().result(), report)
        for future in in_flight:
            _queued(future.result(), report)


def _queued(queued: list[Queued], report: PassReport) -> None:
    for q in queued:
        if q.failed:
            report.failed += 1
            log.error(
                "digest failed subscriber=%s papers=%d message_id=%s reason=%s",
                q.recipient,
                q.papers,
                q.message_id,
                q.failed,
            )
            continue
        report.digests += 1
        log.info(
            "digest queued subscriber=%s papers=%d message_id=%s",
            q.recipient,
            q.papers,
            q.message_id,
        )


# --- the worker processes -------------------------------------------------------

_store: Store | None = None
_renderer: tuple[RenderSettings, Renderer] | None = None


def init_worker(database_url: str) -> None:
    """Process-pool initializer: open the store once per worker, and leave
    with the daemon."""
    global _store
    _exit_with_parent()
    _store = Store(database_url)


def _exit_with_parent() -> None:
    """A worker whose daemon died without shutting the pool down (SIGKILL,
    the OOM killer) would wait for work forever, holding its memory and a
    database connection: it exits when its parent's sentinel says so."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def compose_chunk(chunk: ComposeChunk, settings: RenderSettings) -> list[Queued]:
    """Run in a worker: a chunk of due digests into the outbox, rendered with
    the Renderer of ``settings`` (built once per worker and configuration)."""
    global _renderer
    assert _store is not None, "init_worker was not run in this process"
    if _renderer is None or _renderer[0] != settings:
        _renderer = (settings, settings.renderer())
    return chunk.run(_store, _renderer[1])
