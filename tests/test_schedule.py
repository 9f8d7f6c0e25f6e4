"""Schedules: a digest is due once per slot, in the subscriber's time zone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from zoneinfo import ZoneInfo

import pytest

from mailer.schedule import Schedule

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


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
    sends: list[datetime] = []
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


HONOLULU = ZoneInfo("Pacific/Honolulu")  # UTC-10, no daylight saving
AUCKLAND = ZoneInfo("Pacific/Auckland")  # UTC+12 in July


@pytest.fixture
def machine_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is UTC+14, so any use of it shows."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("instant", Schedule("instant")),
        ("daily 08:30", Schedule("daily", dt_time(8, 30))),
        ("Daily 23:59", Schedule("daily", dt_time(23, 59))),
        ("weekly Friday 17:45", Schedule("weekly", dt_time(17, 45), 4)),
        ("weekly mon 00:05", Schedule("weekly", dt_time(0, 5), 0)),
        ("WEEKLY SUN 06:07", Schedule("weekly", dt_time(6, 7), 6)),
    ],
)
def test_parse_gives_kind_time_and_weekday(text: str, parsed: Schedule) -> None:
    assert Schedule.parse(text) == parsed


def test_daily_slot_keeps_its_minutes() -> None:
    slot = Schedule.parse("daily 08:30").latest_slot(at(2026, 7, 1, 12), LONDON)
    assert slot == at(2026, 7, 1, 7, 30)


def test_instant_has_no_slots() -> None:
    instant = Schedule.parse("instant")
    assert instant.latest_slot(at(2026, 7, 1, 12), LONDON) is None


def test_daily_slot_is_on_the_local_date_not_the_utc_date() -> None:
    # 20:00 UTC on 1 July is 08:00 on 2 July in Auckland: today's 07:00 has passed there.
    slot = Schedule.parse("daily 07:00").latest_slot(at(2026, 7, 1, 20), AUCKLAND)
    assert slot == at(2026, 7, 1, 19)


def test_daily_slot_before_todays_time_is_yesterdays() -> None:
    slot = Schedule.parse("daily 08:00").latest_slot(at(2026, 7, 1, 6), LONDON)
    assert slot == at(2026, 6, 30, 7)


def test_a_slot_exactly_now_is_the_latest() -> None:
    slot = Schedule.parse("daily 08:00").latest_slot(at(2026, 7, 1, 7), LONDON)
    assert slot == at(2026, 7, 1, 7)


def test_weekly_slot_on_its_day_before_its_time_is_last_weeks() -> None:
    weekly = Schedule.parse("weekly Monday 09:00")
    slot = weekly.latest_slot(at(2026, 11, 23, 8), LONDON)  # a Monday, 08:00 GMT
    assert slot == at(2026, 11, 16, 9)


def test_due_compares_with_since_when_there_was_no_digest_yet() -> None:
    daily = Schedule.parse("daily 08:00")
    now = at(2026, 7, 1, 12)
    assert daily.is_due(last=None, since=at(2026, 7, 1, 6), now=now, zone=LONDON)
    assert not daily.is_due(last=None, since=at(2026, 7, 1, 8), now=now, zone=LONDON)


def test_not_due_when_the_last_digest_was_sent_at_the_slot() -> None:
    daily = Schedule.parse("daily 08:00")
    slot = at(2026, 7, 1, 7)
    assert not daily.is_due(last=slot, since=at(2026, 1, 1), now=at(2026, 7, 1, 12), zone=LONDON)


def test_a_wall_time_skipped_by_daylight_saving_moves_forward_by_the_gap() -> None:
    # 29 March 2026, London: 01:00 GMT jumps to 02:00 BST; 01:30 is 02:30 BST.
    slot = Schedule.parse("daily 01:30").latest_slot(at(2026, 3, 29, 12), LONDON)
    assert slot == at(2026, 3, 29, 1, 30)


def test_a_wall_time_repeated_by_daylight_saving_takes_its_first_occurrence() -> None:
    # 25 October 2026, London: 01:30 happens at 00:30 UTC (BST) and 01:30 UTC (GMT).
    slot = Schedule.parse("daily 01:30").latest_slot(at(2026, 10, 25, 12), LONDON)
    assert slot == at(2026, 10, 25, 0, 30)


def test_a_weekly_slot_on_a_day_the_zone_skipped_leaves_last_weeks_as_the_latest() -> None:
    # Samoa skipped Friday 30 December 2011: that Friday's 10:00 became
    # Saturday's, still ahead at 09:00 Saturday, so the latest is the 23rd's.
    apia = ZoneInfo("Pacific/Apia")
    now = datetime(2011, 12, 31, 9, 0, tzinfo=apia)
    weekly = Schedule.parse("weekly fri 10:00")
    assert weekly.latest_slot(now, apia) == datetime(2011, 12, 23, 10, 0, tzinfo=apia)
    assert not weekly.is_due(last=at(2011, 12, 29), since=at(2011, 1, 1), now=now, zone=apia)


def test_next_slot_of_a_slot_exactly_now_is_the_following_one() -> None:
    daily = Schedule.parse("daily 08:00")
    assert daily.next_slot(at(2026, 7, 1, 7), LONDON) == at(2026, 7, 2, 7)


def test_next_weekly_slot_is_on_its_day_next_week() -> None:
    weekly = Schedule.parse("weekly Monday 09:00")
    assert weekly.next_slot(at(2026, 11, 25, 12), LONDON) == at(2026, 11, 30, 9)  # a Wednesday


def test_next_weekly_slot_later_the_same_day() -> None:
    weekly = Schedule.parse("weekly Monday 09:00")
    assert weekly.next_slot(at(2026, 11, 23, 8), LONDON) == at(2026, 11, 23, 9)


def test_next_weekly_slot_in_a_zone_behind_utc() -> None:
    # Saturday 21:00 UTC; Monday 09:00 in Honolulu is Monday 19:00 UTC.
    weekly = Schedule.parse("weekly Monday 09:00")
    assert weekly.next_slot(at(2026, 11, 21, 21), HONOLULU) == at(2026, 11, 23, 19)


def test_slots_do_not_depend_on_the_machines_time_zone(machine_far_from_utc: None) -> None:
    daily = Schedule.parse("daily 08:00")
    slot = daily.latest_slot(at(2026, 7, 1, 12), LONDON)
    following = daily.next_slot(at(2026, 7, 1, 12), LONDON)
    assert (slot, following) == (at(2026, 7, 1, 7), at(2026, 7, 2, 7))


def test_slots_are_in_utc(machine_far_from_utc: None) -> None:
    daily = Schedule.parse("daily 08:00")
    slot = daily.latest_slot(at(2026, 7, 1, 12), LONDON)
    following = daily.next_slot(at(2026, 7, 1, 12), LONDON)
    assert slot is not None
    assert following is not None
    assert (slot.utcoffset(), following.utcoffset()) == (timedelta(0), timedelta(0))
