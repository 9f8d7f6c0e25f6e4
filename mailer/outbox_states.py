"""Where a message in the outbox stands, as the store keeps it and as an
operator calls it.

Apart from the store so the CLI can offer ``mailer outbox --status`` without
importing the database layer (see tests/test_imports.py).
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """Where a message in the outbox stands. A pending message with attempts
    is what an operator calls deferred (see ``OutboxState``)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # recipient unsubscribed, removed or suppressed before sending
    BOUNCED = "bounced"  # accepted, then a bounce came back (mailer.bounces); the reason kept


class OutboxState(StrEnum):
    """What an operator calls a message (``mailer outbox``): a pending one
    is queued until its first failed attempt, then deferred."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BOUNCED = "bounced"

    @classmethod
    def of(cls, status: str, attempts: int) -> OutboxState:
        if status == DeliveryStatus.PENDING:
            return cls.DEFERRED if attempts else cls.QUEUED
        return cls(status)
