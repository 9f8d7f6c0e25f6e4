"""What every stage of a pass is handed: the report it fills and the clock it reads.

Apart from the orchestrator so the stages can import it without importing
the ``Pipeline`` that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

Clock = Callable[[], datetime]
# Polled by the loops of a pass, so a stop requested meanwhile cuts them short.
Stopping = Callable[[], bool]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class PassReport:
    """What one pass did, for the log line, ``mailer run`` and the stored passes."""

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
