"""The outbox's rules: back-off between attempts, the send rate, message bytes.

Pure helpers and small async tools used by the pipeline: when a deferred
message is tried again, how fast messages leave, and how a digest becomes the
bytes stored in the outbox (also in worker processes, which build their own
Renderer once so the stylesheet is inlined once per worker, not per message).
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

from mailer.digests import Digest, Matched, Recipient, build_digest
from mailer.render import Renderer, compose_bytes

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


_worker_renderer: Renderer | None = None


def init_worker(templates: Path | None, paper_url: str) -> None:
    """Process-pool initializer: load and inline the templates once per worker."""
    global _worker_renderer
    _worker_renderer = Renderer(templates, paper_url=paper_url)


def render_jobs(jobs: Sequence[RenderJob]) -> list[tuple[str, bytes, str]]:
    """Run in a worker: a chunk of digests to message bytes."""
    assert _worker_renderer is not None, "init_worker was not run in this process"
    return [j.run(_worker_renderer) for j in jobs]
