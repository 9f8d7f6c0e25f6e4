"""The outbox's rules: back-off between attempts, the send rate, message bytes.

Pure helpers and small async tools used by the pipeline: when a deferred
message is tried again, how fast messages leave, and how due digests become
messages in the outbox (also in worker processes, which build their own
Renderer and store connection once, so the stylesheet is inlined once per
worker, not per message).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import quote

from mailer.digests import Digest, Matched, Recipient, build_digest
from mailer.render import Renderer, compose_bytes
from mailer.store import Outgoing, Store

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
    if status == "pending":
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
class RenderJob:
    """Everything needed to turn one subscriber's matches into message bytes."""

    recipient: Recipient
    matched: tuple[Matched, ...]
    since: datetime | None
    max_papers: int
    now: datetime
    sender: str
    sender_address: str
    unsubscribe_url: str | None = None

    def run(self, renderer: Renderer) -> tuple[str, bytes, str]:
        digest = build_digest(
            self.recipient, self.matched, since=self.since, max_papers=self.max_papers
        )
        return build_message(
            renderer,
            digest,
            self.now,
            sender=self.sender,
            sender_address=self.sender_address,
            unsubscribe_url=self.unsubscribe_url,
        )


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
        messages: list[Outgoing] = []
        for order in self.orders:
            matches = pending.get(order.subscriber_id, [])
            if not matches:
                continue
            job = RenderJob(
                order.recipient,
                tuple(Matched(m.paper, m.subscriptions, m.terms, m.scores) for m in matches),
                order.since,
                order.max_papers,
                self.now,
                self.sender,
                self.sender_address,
                order.unsubscribe_url,
            )
            message_id, data, subject = job.run(renderer)
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


_worker: tuple[Store, Renderer] | None = None


def init_worker(templates: Path | None, paper_url: str, database_url: str) -> None:
    """Process-pool initializer: load and inline the templates and open the
    store once per worker."""
    global _worker
    _worker = (Store(database_url), Renderer(templates, paper_url=paper_url))


def compose_chunk(chunk: ComposeChunk) -> list[Queued]:
    """Run in a worker: a chunk of due digests into the outbox."""
    assert _worker is not None, "init_worker was not run in this process"
    return chunk.run(*_worker)
