"""Messages -> deliveries: draining the outbox over the transport.

A message is marked sent only after the server accepted it; one cut off by
a stop or crash stays pending and goes again, with the same bytes and
Message-ID. A refused message is deferred with back-off or failed; a failed
transport pauses all sending with back-off instead of a tight retry loop.
Messages are claimed a few at a time for this node (mailer.cluster), so
several nodes on one database share the outbox, and every send is fenced:
it starts only while the node's claim lasts and it still holds what it runs
on (the database's lock, its PostgreSQL session), so a node cut off sends
nothing more. A stop lets the messages on the wire get their reply, and
what the server accepted is recorded even when the pass is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from mailer.bounces.classify import status_code
from mailer.cluster import Claim, Node
from mailer.config import Config
from mailer.delivery import RecipientRefusedError, Transport, TransportUnavailableError
from mailer.errors import DeliveryError
from mailer.pipeline.report import Clock, PassReport, Stopping
from mailer.store import DeliveryRow, Store
from mailer.verp import envelope_sender

log = logging.getLogger("mailer")
T = TypeVar("T")

SEND_CHUNK = (
    10  # messages claimed per connection at a time, between unsubscribe checks and sent records
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


class SharedRateLimiter(RateLimiter):
    """Spaces sends ``60 / per_minute`` seconds apart across every node of the
    database: each send reserves the next moment in the store."""

    def __init__(self, store: Store, per_minute: float) -> None:
        super().__init__(per_minute)
        self.store = store

    async def wait(self) -> None:
        if not self.interval:
            return
        delay = await asyncio.to_thread(self.store.take_send_slot, self.interval)
        if delay > 0:
            await asyncio.sleep(delay)


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
    connections (across all nodes) at most ``smtp.rate_per_minute``."""

    store: Store
    config: Config
    transport: Callable[[], Transport]
    clock: Clock
    limiter: RateLimiter
    pause: TransportPause
    node: Node

    async def deliver(self, report: PassReport, stopping: Stopping) -> None:
        """Drain the due part of the outbox until nothing this node can claim
        is left, a stop is requested or the transport fails."""
        now = self.clock()
        if self.pause.until is not None and now < self.pause.until:
            ids = await asyncio.to_thread(lambda: [r.id for r in self.store.due_deliveries(now)])
            report.deferred_ids.update(i for i in ids if i is not None)
            return
        most = self.config.smtp.max_connections
        waiting = await asyncio.to_thread(
            self.store.claimable, now, limit=most, exclude=frozenset(report.deferred_ids)
        )
        if not waiting or stopping():
            return
        unavailable: list[TransportUnavailableError] = []
        lost: list[bool] = []
        # None at all when every connection is another node's now: they send.
        connections = await asyncio.to_thread(self.node.take_connections, waiting, most)
        try:
            await asyncio.gather(
                *(self._drain(unavailable, lost, report, stopping) for _ in range(connections))
            )
        except TransportUnavailableError as exc:
            unavailable.append(exc)
        finally:
            await completed(asyncio.to_thread(self.node.give_connections))
        if lost:
            raise self.node.lost_error()
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
        unavailable: list[TransportUnavailableError],
        lost: list[bool],
        report: PassReport,
        stopping: Stopping,
    ) -> None:
        """One connection's share: claim a few due messages, send them, again,
        until none is left; stops all when the transport fails.

        Each round is one step (``_next``), one transaction: record the
        previous few as sent, claim the next few, cancel those whose recipient
        has unsubscribed meanwhile. So an unsubscribe is honoured up to one
        chunk (SEND_CHUNK messages, a fraction of a second) after it, and a
        crash may resend up to one chunk per connection, with the same
        Message-IDs. Claimed rows not tried are given back and reported deferred.

        Before each send the node must still hold its claim and what it runs
        on (``Node.may_send``); the send on the wire when the pass is stopped
        or cancelled gets its reply, and ``sent`` is recorded in ``finally``,
        so a stop never forgets what the server accepted."""
        chunk_size = 1 if self.limiter.interval else SEND_CHUNK
        sent: list[tuple[DeliveryRow, str]] = []
        claim: Claim | None = None
        left: list[DeliveryRow] = []  # the claimed rows not tried yet

        def halted() -> bool:
            return stopping() or bool(unavailable) or bool(lost)

        try:
            async with self.transport() as transport:
                while not halted():
                    done, sent = sent, []
                    step = asyncio.ensure_future(
                        asyncio.to_thread(self._next, done, claim, chunk_size, report)
                    )
                    try:
                        current, left = await completed(step)
                    except BaseException:
                        if step.cancelled() or step.exception() is not None:
                            sent = done  # rolled back with the claim: ``finally`` records them
                        raise
                    claim = current
                    _count_sent(done, report)
                    if not current.rows:
                        break
                    while left:
                        row = left[0]
                        await self.limiter.wait()
                        if not halted() and not await self._may_send(current, row):
                            lost.append(True)
                        if halted():
                            break
                        left.pop(0)
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
                            await asyncio.to_thread(self._attempt_failed, row, exc, report)
                            return
                        except DeliveryError as exc:
                            await asyncio.to_thread(self._attempt_failed, row, exc, report)
                            continue
                        sent.append((row, reply))
        finally:
            try:
                if sent:
                    await completed(asyncio.to_thread(self._settle, sent))
                    _count_sent(sent, report)
            finally:
                if claim is not None:
                    unsent = [r.id for r in left if r.id is not None]
                    report.deferred_ids.update(unsent)
                    await completed(asyncio.to_thread(self.node.done, claim, unsent))

    async def _may_send(self, claim: Claim, row: DeliveryRow) -> bool:
        """``Node.may_send`` before every send. A node sharing its database asks
        the database server, in a thread; a lone node looks at its lock file
        (a few system calls), here: a thread's round trip cost more than that."""
        if self.node.shared:
            return await asyncio.to_thread(self.node.may_send, claim, row)
        return self.node.may_send(claim, row)

    def _next(
        self,
        done: Sequence[tuple[DeliveryRow, str]],
        previous: Claim | None,
        size: int,
        report: PassReport,
    ) -> tuple[Claim, list[DeliveryRow]]:
        """Record ``done`` as sent, claim the next ``size`` due messages (none
        this pass deferred) and cancel the unwanted among them, in one
        transaction; then finish with the ``previous`` claim. Returns the
        claim and its rows still wanted."""
        now = self.clock()
        claim = self.node.claim(
            now,
            size,
            frozenset(report.deferred_ids),
            sent=[(r.id, reply) for r, reply in done if r.id],
            sent_at=now,
        )
        self._log_sent(done)
        if previous is not None:
            self.node.done(previous, ())
        self._log_cancelled(claim.rows, claim.cancelled)
        return claim, [r for r in claim.rows if r.id not in claim.cancelled]

    def _settle(self, sent: Sequence[tuple[DeliveryRow, str]]) -> None:
        """Record ``sent`` as sent."""
        self.node.settle([(r.id, reply) for r, reply in sent if r.id], self.clock())
        self._log_sent(sent)

    def _log_sent(self, sent: Sequence[tuple[DeliveryRow, str]]) -> None:
        for row, reply in sent:
            log.info(
                "sent subscriber=%s message_id=%s papers=%d node=%s reply=%s",
                row.recipient,
                row.message_id,
                row.papers,
                self.node.id,
                reply.strip(),
            )

    def _log_cancelled(self, rows: Sequence[DeliveryRow], cancelled: Mapping[int, str]) -> None:
        """Rows whose recipient unsubscribed (RFC 8058) or was removed after
        they were composed: cancelled as they were claimed, never sent."""
        for row in rows:
            why = cancelled.get(row.id) if row.id is not None else None
            if why is not None:
                log.info(
                    "not sent: subscriber=%s %s; message_id=%s cancelled",
                    row.recipient,
                    why,
                    row.message_id,
                )

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
