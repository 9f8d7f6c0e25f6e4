"""Sign-ups per client address and per email address per hour.

Kept in the daemon's memory: one daemon serves the pages of a database, and
a restart forgetting the last hour's counts costs little. Keys are
forgotten an hour after their last use, and the table is trimmed when it
grows past ``MAX_KEYS``, so a flood of addresses cannot grow it for ever.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

HOUR = 3600.0
MAX_KEYS = 100_000


class HourlyLimit:
    """At most ``per_hour()`` uses of a key in any hour (read at each use,
    so a reloaded configuration applies at once)."""

    def __init__(
        self, per_hour: Callable[[], int], monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_hour = per_hour
        self.monotonic = monotonic
        self._uses: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count a use of ``key`` and say yes, or say no and count nothing."""
        now = self.monotonic()
        uses = self._uses.setdefault(key, deque())
        while uses and uses[0] <= now - HOUR:
            uses.popleft()
        if len(uses) >= self.per_hour():
            return False
        uses.append(now)
        if len(self._uses) > MAX_KEYS:
            self._trim(now)
        return True

    def _trim(self, now: float) -> None:
        """Forget the keys not used in the last hour; if that is not enough, the oldest."""
        self._uses = {k: u for k, u in self._uses.items() if u and u[-1] > now - HOUR}
        if len(self._uses) > MAX_KEYS:
            newest = sorted(self._uses.items(), key=lambda kv: kv[1][-1])[-MAX_KEYS // 2 :]
            self._uses = dict(newest)
