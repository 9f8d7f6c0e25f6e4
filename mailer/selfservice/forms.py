"""The subscription form, both ways: posted fields into a ``Profile`` (and
errors back onto the fields they belong to), a stored subscriber into the
fields that show it. Pure: no request, no store.

Fields: ``email``, ``name``, ``schedule`` (instant, daily, weekly),
``time`` (HH:MM), ``day`` (mon to sun), ``timezone``, ``max_papers``, and
per subscription ``sub-N-name``, ``sub-N-query`` and ``sub-N-remove``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from mailer.selfservice.preview import Check
from mailer.selfservice.profile import MAX_SUBSCRIPTIONS, Errors, check_profile
from mailer.store import Profile

DAYS = (
    ("mon", "Monday"),
    ("tue", "Tuesday"),
    ("wed", "Wednesday"),
    ("thu", "Thursday"),
    ("fri", "Friday"),
    ("sat", "Saturday"),
    ("sun", "Sunday"),
)
KINDS = ("instant", "daily", "weekly")
MAX_ROWS = MAX_SUBSCRIPTIONS + 10  # rows read from a form; more are refused, not dropped
_TIME = re.compile(r"^(\d\d:\d\d)(:\d\d(\.\d+)?)?$")
_NAME_FROM_QUERY = 60


@dataclass
class Row:
    """One subscription's fields, with what is wrong with them and, once
    checked, its query's check."""

    index: int
    name: str = ""
    query: str = ""
    remove: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    check: Check | None = None

    @property
    def blank(self) -> bool:
        return not self.name.strip() and not self.query.strip()


@dataclass
class SubscriptionForm:
    email: str = ""
    name: str = ""
    schedule: str = "instant"
    time: str = "08:00"
    day: str = "mon"
    timezone: str = "UTC"
    max_papers: str = ""
    rows: list[Row] = field(default_factory=list)
    errors: Errors = field(default_factory=dict)
    too_many_rows: bool = False

    @property
    def schedule_text(self) -> str:
        """The schedule as config.toml spells it."""
        if self.schedule == "daily":
            return f"daily {self.time}"
        if self.schedule == "weekly":
            return f"weekly {self.day} {self.time}"
        return self.schedule

    def kept(self) -> list[Row]:
        """The rows that make subscriptions: not blank, not ticked for removal."""
        return [r for r in self.rows if not r.blank and not r.remove]

    def profile(self) -> Profile:
        max_papers = self.max_papers.strip()
        return Profile(
            self.email.strip(),
            self.name.strip(),
            self.schedule_text,
            self.timezone.strip(),
            int(max_papers) if max_papers.isdigit() else None,
            tuple((subscription_name(r), r.query.strip()) for r in self.kept()),
        )

    def checked(self) -> Profile | None:
        """The profile if every field is valid, else None with the errors set
        on the form and its rows."""
        profile, errors = check_profile(self.profile())
        if self.max_papers.strip() and not self.max_papers.strip().isdigit():
            errors["max_papers"] = "must be a whole number from 1 to 1000, or empty"
        if self.too_many_rows:
            errors["subscriptions"] = f"at most {MAX_SUBSCRIPTIONS} subscriptions"
        kept = self.kept()
        for key, message in errors.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "subscriptions" and parts[1].isdigit():
                kept[int(parts[1])].errors.setdefault(parts[2], message)
            elif parts[0] == "subscriptions" and len(parts) > 1:
                self.errors.setdefault("subscriptions", message)
            else:
                self.errors.setdefault(parts[0], message)
        return None if errors else profile

    def with_blank_row(self) -> SubscriptionForm:
        """One empty row after the others, to add a subscription without JavaScript."""
        if len(self.kept()) < MAX_SUBSCRIPTIONS and (not self.rows or not self.rows[-1].blank):
            self.rows.append(Row(index=max((r.index for r in self.rows), default=-1) + 1))
        return self


def subscription_name(row: Row) -> str:
    """The name given, or the start of the query when none was."""
    name = row.name.strip()
    if name:
        return name
    query = " ".join(row.query.split())
    return query if len(query) <= _NAME_FROM_QUERY else query[: _NAME_FROM_QUERY - 1] + "…"


def read_form(data: Mapping[str, str], *, email: str | None = None) -> SubscriptionForm:
    """The posted fields; ``email`` given (a manage page) overrides any posted."""
    time = data.get("time", "").strip() or "08:00"
    if m := _TIME.match(time):
        time = m.group(1)  # some browsers add seconds
    form = SubscriptionForm(
        email=email if email is not None else data.get("email", ""),
        name=data.get("name", ""),
        schedule=data.get("schedule", "instant"),
        time=time,
        day=data.get("day", "mon"),
        timezone=data.get("timezone", "UTC") or "UTC",
        max_papers=data.get("max_papers", ""),
    )
    indices = sorted(
        {
            int(m.group(1))
            for key in data
            if (m := re.fullmatch(r"sub-(\d{1,4})-(?:name|query|remove)", key))
        }
    )
    form.too_many_rows = len(indices) > MAX_ROWS
    for n in indices[:MAX_ROWS]:
        form.rows.append(
            Row(
                index=n,
                name=data.get(f"sub-{n}-name", ""),
                query=data.get(f"sub-{n}-query", ""),
                remove=bool(data.get(f"sub-{n}-remove")),
            )
        )
    return form


def form_for(profile: Profile) -> SubscriptionForm:
    """The fields that show a stored profile."""
    kind, time, day = schedule_parts(profile.schedule)
    return SubscriptionForm(
        email=profile.email,
        name=profile.name,
        schedule=kind,
        time=time,
        day=day,
        timezone=profile.timezone,
        max_papers=str(profile.max_papers) if profile.max_papers else "",
        rows=[Row(n, name, query) for n, (name, query) in enumerate(profile.subscriptions)],
    )


def schedule_parts(schedule: str) -> tuple[str, str, str]:
    """(kind, HH:MM, day) of a valid schedule; the defaults for what it lacks."""
    parts = schedule.lower().split()
    if not parts or parts[0] not in KINDS or parts[0] == "instant":
        return "instant", "08:00", "mon"
    if parts[0] == "daily":
        return "daily", parts[-1], "mon"
    return "weekly", parts[-1], parts[1][:3]
