"""What every stage of a pass is handed: the report it fills and the clock it reads.

Apart from the orchestrator so the stages can import it without importing
the ``Pipeline`` that imports them.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mailer.collector import gc_paused as gc_paused

Clock = Callable[[], datetime]
# Polled by the loops of a pass, so a stop requested meanwhile cuts them short.
Stopping = Callable[[], bool]


def utc_now() -> datetime:
    return datetime.now(UTC)


def peak_rss_mb(pid: int | None = None) -> float:
    """A process's peak resident memory so far, in MB (this one's by
    default): Linux's VmHWM, which counts this program only; ru_maxrss
    (elsewhere, or 0.0 for another process) also keeps the peak of the
    process that started it, from before it ran this one."""
    try:
        with Path(f"/proc/{pid or 'self'}/status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    if pid is not None:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    # Stage name -> [wall s, CPU s of this process, peak RSS MB at its end]; see ``timed``.
    stages: dict[str, list[float]] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall and CPU time of the block to ``stage``: where a pass's
        time goes, for the debug log and bench/pass.py. CPU is the whole
        process's, so stages that overlap (compose, write) share theirs."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            spent = self.stages.setdefault(stage, [0.0, 0.0, 0.0])
            spent[0] += time.perf_counter() - wall
            spent[1] += time.process_time() - cpu
            spent[2] = peak_rss_mb()

    def timings(self) -> str:
        """``stage=WALL/CPU/PEAK`` per stage: seconds, seconds, MB of resident
        memory at most so far (Linux reports ru_maxrss in KiB)."""
        return " ".join(
            f"{name}={w:.3f}/{c:.3f}/{rss:.0f}" for name, (w, c, rss) in self.stages.items()
        )

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
