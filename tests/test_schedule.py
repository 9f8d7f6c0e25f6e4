"""Schedules: a digest is due once per slot, in the subscriber's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailer.schedule import Schedule

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_instant_is_always_due() -> None:
    assert Schedule.parse("instant").is_due(
        last=at(2026, 1, 1), since=at(2025, 1, 1), now=at(2026, 1, 1), zone=LONDON
    )


def test_daily_slot_is_local_time() -> None:
    slot = Schedule.parse("daily 08:00").latest_slot(at(2026, 7, 1, 12), LONDON)
    assert slot == at(2026, 7, 1, 7)  # 08:00 BST


def test_daily_not_due_twice_in_one_day() -> None:
    daily = Schedule.parse("daily 08:00")
    sent = at(2026, 7, 1, 7, 0, 5)
    assert not daily.is_due(last=sent, since=at(2026, 1, 1), now=at(2026, 7, 1, 20), zone=LONDON)
    assert daily.is_due(last=sent, since=at(2026, 1, 1), now=at(2026, 7, 2, 7), zone=LONDON)


def test_missed_slots_coalesce_into_one_digest() -> None:
    daily = Schedule.parse("daily 08:00")
    last = at(2026, 7, 1, 7)
    now = at(2026, 7, 5, 9)
    assert daily.is_due(last=last, since=last, now=now, zone=LONDON)
    assert not daily.is_due(last=now, since=last, now=now + timedelta(hours=1), zone=LONDON)


def test_weekly_slot_is_on_its_day() -> None:
    weekly = Schedule.parse("weekly Monday 09:00")
    slot = weekly.latest_slot(at(2026, 11, 25, 12), LONDON)  # a Wednesday
    assert slot == at(2026, 11, 23, 9)


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        (LONDON, (2026, 3, 29)),
        (LONDON, (2026, 10, 25)),
        (NEW_YORK, (2026, 3, 8)),
        (NEW_YORK, (2026, 11, 1)),
    ],
)
def test_one_digest_per_day_across_daylight_saving_changes(
    zone: ZoneInfo, day: tuple[int, int, int]
) -> None:
    daily = Schedule.parse("daily 08:00")
    start = datetime(*day, tzinfo=zone) - timedelta(days=1)
    last = start.astimezone(UTC)
    sends = []
    for minute in range(0, 3 * 24 * 60, 5):
        now = last if not sends else sends[-1]
        moment = (start + timedelta(minutes=minute)).astimezone(UTC)
        if daily.is_due(last=now, since=start.astimezone(UTC), now=moment, zone=zone):
            sends.append(moment)
    local = [s.astimezone(zone) for s in sends]
    assert [(t.hour, t.minute) for t in local] == [(8, 0)] * len(local)
    assert len({t.date() for t in local}) == len(local) == 3


def test_next_slot_is_after_now() -> None:
    daily = Schedule.parse("daily 08:00")
    now = at(2026, 7, 1, 12)
    assert daily.next_slot(now, LONDON) == at(2026, 7, 2, 7)
    assert Schedule.parse("instant").next_slot(now, LONDON) is None
