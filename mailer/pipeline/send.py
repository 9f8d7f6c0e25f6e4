"""Messages -> deliveries: draining the outbox over the transport.

A message is marked sent only after the server accepted it; one cut off by
a stop or crash stays pending and goes again, with the same bytes and
Message-ID. A refused message is deferred with back-off or failed; a failed
transport pauses all sending with back-off instead of a tight retry loop.
Every send is fenced on the database's lock (mailer.lock): a mailer that
lost it sends nothing more. A stop lets the messages on the wire get their
reply, and what the server accepted is recorded even when the pass is
cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from mailer.bounces.classify import status_code
from mailer.config import Config
from mailer.delivery import RecipientRefusedError, Transport, TransportUnavailableError
from mailer.errors import DeliveryError
from mailer.lock import DatabaseLock, lock_lost
from mailer.pipeline.report import Clock, PassReport, Stopping
from mailer.store import DeliveryRow, Store
from mailer.verp import envelope_sender

log = logging.getLogger("mailer")
T = TypeVar("T")

DELIVER_BATCH = 1000
SEND_CHUNK = 10  # messages per connection between unsubscribe checks and sent records


def backoff_seconds(
    attempts: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before the next try after ``attempts`` failures: ``initial`` doubled
    per failure, capped at ``maximum``, spread by ±20% so a crowd of deferred
    messages does not hit a recovering server in the same second."""
    delay = min(maximum, initial * 2.0 ** max(0, attempts - 1))
    jitter: float = (rng or random).uniform(0.8, 1.2)
    return min(maximum, delay * jitter)


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


@dataclass
class TransportPause:
    """After the transport itself failed (down, TLS, login), sending waits
    until ``until``, with back-off over consecutive ``failures``; kept from
    one pass to the next."""

    until: datetime | None = None
    failures: int = 0


@dataclass(frozen=True)
class Send:
    """The send stage: the due part of the outbox over ``smtp.max_connections``
    connections at most ``smtp.rate_per_minute``."""

    store: Store
    config: Config
    transport: Callable[[], Transport]
    clock: Clock
    limiter: RateLimiter
    pause: TransportPause
    lock: DatabaseLock = field(default_factory=DatabaseLock)

    async def deliver(self, report: PassReport, stopping: Stopping) -> None:
        """Drain the due part of the outbox, DELIVER_BATCH rows at a time,
        until it is empty, a stop is requested or the transport fails."""
        now = self.clock()
        if self.pause.until is not None and now < self.pause.until:
            ids = await asyncio.to_thread(lambda: [r.id for r in self.store.due_deliveries(now)])
            report.deferred_ids.update(i for i in ids if i is not None)
            return
        unavailable: list[TransportUnavailableError] = []
        lost: list[bool] = []
        while not stopping() and not unavailable and not lost:
            due = await asyncio.to_thread(self.store.due_deliveries, self.clock(), DELIVER_BATCH)
            due = [r for r in due if r.id not in report.deferred_ids]
            if not due:
                break
            queue = deque(due)
            workers = min(self.config.smtp.max_connections, len(due))

            try:
                await asyncio.gather(
                    *(
                        self._drain(queue, unavailable, lost, report, stopping)
                        for _ in range(workers)
                    )
                )
            except TransportUnavailableError as exc:
                unavailable.append(exc)
            report.deferred_ids.update(r.id for r in queue if r.id is not None)
            if len(due) < DELIVER_BATCH:
                break
        if lost:
            raise lock_lost(self.lock)
        if unavailable:
            first = unavailable[0]
            self.pause.failures += 1
            delay = self._backoff(self.pause.failures)
            self.pause.until = self.clock() + timedelta(seconds=delay)
            report.errors.append(str(first))
            log.error("delivery paused for %.0fs: %s", delay, first.message)
        elif report.sent:
            self.pause.failures, self.pause.until = 0, None

    async def _drain(
        self,
        queue: deque[DeliveryRow],
        unavailable: list[TransportUnavailableError],
        lost: list[bool],
        report: PassReport,
        stopping: Stopping,
    ) -> None:
        """One connection's share of a batch; stops all when the transport fails.

        Rows are taken a few at a time: one transaction cancels those whose
        recipient has unsubscribed meanwhile and records the previous few as
        sent. So an unsubscribe is honoured up to one chunk (SEND_CHUNK
        messages, a fraction of a second) after it, and a crash may resend up
        to one chunk per connection, with the same Message-IDs. Rows not
        tried go back to the queue and are reported deferred.

        Before each send the database lock must still be held; the send on
        the wire when the pass is stopped or cancelled gets its reply, and
        ``sent`` is recorded in ``finally``, so a stop never forgets what the
        server accepted."""
        chunk_size = 1 if self.limiter.interval else SEND_CHUNK
        sent: list[tuple[DeliveryRow, str]] = []

        def halted() -> bool:
            return stopping() or bool(unavailable) or bool(lost)

        try:
            async with self.transport() as transport:
                while queue and not halted():
                    chunk = [queue.popleft() for _ in range(min(chunk_size, len(queue)))]
                    done, sent = sent, []
                    cancelled = await completed(asyncio.to_thread(self._settle, done, chunk))
                    _count_sent(done, report)
                    for n, row in enumerate(chunk):
                        if row.id in cancelled:
                            continue
                        await self.limiter.wait()
                        if not halted() and not await asyncio.to_thread(self.lock.held):
                            lost.append(True)
                        if halted():
                            queue.extendleft(reversed(chunk[n:]))
                            break
                        sending = asyncio.ensure_future(
                            transport.send(
                                envelope_sender(self.config.smtp, row.id, row.message_id),
                                row.recipient,
                                row.message,
                            )
                        )
                        try:
                            reply = await completed(sending)
                        except asyncio.CancelledError:
                            if not sending.cancelled() and sending.exception() is None:
                                sent.append((row, sending.result()))
                            raise
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
                await completed(asyncio.to_thread(self._settle, sent, []))
                _count_sent(sent, report)

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

    def cancel_unwanted(self, rows: Sequence[DeliveryRow]) -> set[int]:
        """Ids among ``rows`` (now marked cancelled) whose recipient unsubscribed
        (RFC 8058) or was removed after they were composed: they must not be sent."""
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
            self._suppress_unknown(row, exc)
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

    def _suppress_unknown(self, row: DeliveryRow, exc: DeliveryError) -> None:
        """A 5.1.x reply to RCPT TO (no such user, bad address) suppresses the
        address, as a hard bounce would; any other refusal does not."""
        if not isinstance(exc, RecipientRefusedError) or not exc.permanent:
            return
        status = status_code(exc.reply)
        if status is None or not status.startswith("5.1."):
            return
        reason = f"refused at RCPT TO: {exc.code} {' '.join(exc.reply.split())}"
        if self.store.suppress(row.recipient, reason=reason, source="smtp", now=self.clock()):
            log.warning(
                "suppressed subscriber=%s: no more mail until 'mailer suppressions remove'; "
                "reason=%s",
                row.recipient,
                reason,
            )


async def completed(step: Awaitable[T]) -> T:
    """Await ``step`` to its end even if the caller is cancelled meanwhile,
    then re-raise the cancellation: a message on the wire gets its reply and
    an accepted one gets recorded. Bounded by the SMTP and database timeouts."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def _count_sent(sent: Sequence[tuple[DeliveryRow, str]], report: PassReport) -> None:
    report.sent += len(sent)
    report.deferred_ids.difference_update(r.id for r, _ in sent)
