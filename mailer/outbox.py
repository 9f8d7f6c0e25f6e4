"""The outbox's rules: back-off between attempts, the send rate, message bytes.

Pure helpers and small async tools used by the pipeline: when a deferred
message is tried again, how fast messages leave, and how due digests become
messages in the outbox (also in worker processes, which open their store
once and build their Renderer once per configuration, so the stylesheet is
inlined once per worker and reload, not per message).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import quote

from mailer.digests import Digest, Ranking, Recipient, build_digest
from mailer.mime import compose_bytes
from mailer.render import Renderer
from mailer.store import DeliveryStatus, Outgoing, PendingMatch, Store

MANAGE_HINT = (
    "Reply to this message, or ask the operator of this digest to change your subscriptions."
)


def backoff_seconds(
    attempts: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before the next try after ``attempts`` failures: ``initial`` doubled
    per failure, capped at ``maximum``, spread by ±20% so a crowd of deferred
    messages does not hit a recovering server in the same second."""
    delay = min(maximum, initial * 2.0 ** max(0, attempts - 1))
    jitter: float = (rng or random).uniform(0.8, 1.2)
    return min(maximum, delay * jitter)


def display_status(status: str, attempts: int) -> str:
    """What an operator calls a message: queued, deferred, sent or failed."""
    if status == DeliveryStatus.PENDING:
        return "deferred" if attempts else "queued"
    return status


class RateLimiter:
    """Spaces sends ``60 / per_minute`` seconds apart across all connections."""

    def __init__(self, per_minute: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.monotonic = monotonic
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = self.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


# --- digests -> message bytes ---------------------------------------------------


def build_message(
    renderer: Renderer,
    digest: Digest,
    now: datetime,
    *,
    sender: str,
    sender_address: str,
    unsubscribe_url: str | None = None,
) -> tuple[str, bytes, str]:
    """(Message-ID, bytes, subject) of a digest. The Message-ID is made here,
    once: the outbox keeps these bytes, so any resend carries the same one."""
    domain = sender_address.rpartition("@")[2] or "localhost"
    message_id = make_msgid(idstring="digest", domain=domain)
    mailto = f"mailto:{sender_address}?subject=" + quote(f"unsubscribe {digest.recipient.email}")
    rendered = renderer.render(digest, unsubscribe_url=unsubscribe_url, manage_hint=MANAGE_HINT)
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
    return message_id, message, rendered.subject


@dataclass(frozen=True, slots=True)
class DigestOrder:
    """One due subscriber's digest, before its matches are read."""

    subscriber_id: int
    recipient: Recipient
    since: datetime | None
    max_papers: int
    unsubscribe_url: str | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """A digest now in the outbox, for the log."""

    recipient: str
    papers: int
    message_id: str


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

    def run(self, store: Store, renderer: Renderer) -> list[Queued]:
        pending = store.pending_matches_for([o.subscriber_id for o in self.orders])
        ranking = Ranking(store.stats())
        messages: list[Outgoing] = []
        for order in self.orders:
            matches = pending.get(order.subscriber_id, [])
            if not matches:
                continue
            digest = compose_digest(order, matches, ranking)
            message_id, data, subject = build_message(
                renderer,
                digest,
                self.now,
                sender=self.sender,
                sender_address=self.sender_address,
                unsubscribe_url=order.unsubscribe_url,
            )
            messages.append(
                Outgoing(
                    order.subscriber_id,
                    order.recipient.email,
                    message_id,
                    subject,
                    data,
                    [m.id for m in matches],
                )
            )
        if messages:
            store.enqueue_many(messages, self.now)
        return [Queued(m.recipient, len(m.match_ids), m.message_id) for m in messages]


def compose_digest(
    order: DigestOrder, matches: Sequence[PendingMatch], ranking: Ranking, *, test: bool = False
) -> Digest:
    """Matches -> Digest: the one path for the outbox, ``preview`` and
    ``send-test``, so each shows what the others would."""
    return build_digest(
        order.recipient,
        [ranking.matched(m.paper, m.subscriptions, m.subscription_terms) for m in matches],
        since=order.since,
        max_papers=order.max_papers,
        test=test,
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


_store: Store | None = None
_renderer: tuple[RenderSettings, Renderer] | None = None


def init_worker(database_url: str) -> None:
    """Process-pool initializer: open the store once per worker."""
    global _store
    _store = Store(database_url)


def compose_chunk(chunk: ComposeChunk, settings: RenderSettings) -> list[Queued]:
    """Run in a worker: a chunk of due digests into the outbox, rendered with
    the Renderer of ``settings`` (built once per worker and configuration)."""
    global _renderer
    assert _store is not None, "init_worker was not run in this process"
    if _renderer is None or _renderer[0] != settings:
        _renderer = (settings, settings.renderer())
    return chunk.run(_store, _renderer[1])
