"""When a subscriber's digest is due: ``instant``, ``daily HH:MM`` or ``weekly DAY HH:MM``
in the subscriber's time zone.

Pure: the caller passes the time of the last digest and now. A schedule says
the latest slot at or before now; a digest is due when that slot came after
the previous digest, so a daemon that was down sends the missed digest once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: str  # instant | daily | weekly
    at: time | None = None
    weekday: int | None = None  # Monday = 0

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse a schedule already validated by the config."""
        parts = text.lower().split()
        if parts[0] == "instant":
            return cls("instant")
        hour, minute = (int(x) for x in parts[-1].split(":"))
        if parts[0] == "daily":
            return cls("daily", time(hour, minute))
        return cls("weekly", time(hour, minute), _DAYS.index(parts[1][:3]))

    def latest_slot(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """The most recent due time at or before ``now`` (aware, UTC), or None for instant."""
        if self.at is None:
            return None
        local = now.astimezone(zone)
        day = local.date()
        # Back to the same weekday a week earlier and one day more: a day a
        # zone skipped (Pacific/Apia, 30 December 2011) pushes that day's
        # slot past now, and the one a week before it is then the latest.
        for back in range(9):
            candidate = day - timedelta(days=back)
            if self.weekday is not None and candidate.weekday() != self.weekday:
                continue
            slot = _wall_to_utc(datetime.combine(candidate, self.at), zone)
            if slot <= now:
                return slot
        return None

    def is_due(
        self, *, last: datetime | None, since: datetime, now: datetime, zone: ZoneInfo
    ) -> bool:
        """Due when a slot passed after the previous digest (or after ``since``,
        when the subscriber has had none)."""
        slot = self.latest_slot(now, zone)
        if slot is None:
            return True
        return slot > (last or since)

    def next_slot(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        if self.at is None:
            return None
        probe = now + timedelta(days=8 if self.weekday is not None else 2)
        slot = self.latest_slot(probe, zone)
        while slot is not None:
            earlier = self.latest_slot(slot - timedelta(minutes=1), zone)
            if earlier is None or earlier <= now:
                return slot
            slot = earlier
        return None


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A local wall time in UTC; a time skipped by a DST jump moves forward
    by the gap, and a repeated time takes its first occurrence."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
