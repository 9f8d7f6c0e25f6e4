"""A reader's choices checked with the rules of ``check-config``.

The web forms and ``mailer subs`` (for web subscribers) both call
``check_profile``: it validates the choices as a ``[[subscribers]]`` table
of config.toml would be (address, schedule, time zone, ``max_papers``,
every query with the position of an error, unique subscription names),
plus what only a page needs (at least one subscription, at most
``MAX_SUBSCRIPTIONS``, names of a sensible length).
"""

from __future__ import annotations

from pydantic import ValidationError

from mailer.config import SubscriberConfig
from mailer.store import Profile

MAX_SUBSCRIPTIONS = 20
MAX_NAME_CHARS = 200  # a reader's name, or a subscription's

# Field names as the forms and messages use them: "email", "name",
# "schedule", "timezone", "max_papers", "subscriptions" (the list as a
# whole) and "subscriptions.N.name" / "subscriptions.N.query".
Errors = dict[str, str]


def check_profile(profile: Profile, *, need_subscription: bool = True) -> tuple[Profile, Errors]:
    """The profile as it will be stored (address and schedule normalised)
    and what is wrong with it, by field; valid when there are no errors."""
    errors: Errors = {}
    if need_subscription and not profile.subscriptions:
        errors["subscriptions"] = "add at least one subscription: a name and a query"
    if len(profile.subscriptions) > MAX_SUBSCRIPTIONS:
        errors["subscriptions"] = f"at most {MAX_SUBSCRIPTIONS} subscriptions"
    if len(profile.name) > MAX_NAME_CHARS:
        errors["name"] = f"at most {MAX_NAME_CHARS} characters"
    for n, (name, _) in enumerate(profile.subscriptions):
        if len(name) > MAX_NAME_CHARS:
            errors[f"subscriptions.{n}.name"] = f"at most {MAX_NAME_CHARS} characters"
    try:
        checked = SubscriberConfig.model_validate(
            {
                "email": profile.email,
                "name": profile.name,
                "schedule": profile.schedule,
                "timezone": profile.timezone,
                "max_papers": profile.max_papers,
                "subscriptions": [{"name": n, "query": q} for n, q in profile.subscriptions],
            }
        )
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"][:3]) or "subscriptions"
            errors.setdefault(field, error["msg"].removeprefix("Value error, "))
        return profile, errors
    normalised = Profile(
        checked.email,
        checked.name,
        checked.schedule,
        checked.timezone,
        checked.max_papers,
        tuple((s.name, s.query) for s in checked.subscriptions),
    )
    return normalised, errors
