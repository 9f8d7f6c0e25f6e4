"""What ``mailer subs`` does to subscribers who signed up on the web pages.

Their choices live in the database, not in config.toml, so the operator's
edits go there, checked with the same rules as the pages and
``check-config`` (mailer.selfservice.profile), and refused with a message
naming the subscriber and key. Config subscribers are edited in config.toml
as before (mailer.editing).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from mailer.addresses import address_key, normalise_address
from mailer.config import Config
from mailer.editing import SETTABLE_KEYS
from mailer.errors import ConfigError
from mailer.selfservice.profile import check_profile
from mailer.store import Profile, Store, WebSubscriber

HINT = "'mailer subs list' shows each subscriber with its origin"


def web_subscriber(store: Store | None, config: Config, email: str) -> WebSubscriber | None:
    """The web subscriber ``email`` names, when config.toml does not have it
    (there, config.toml owns the address) and it was not removed."""
    key = address_key(email)
    if store is None or any(address_key(s.email) == key for s in config.subscribers):
        return None
    found = store.web.find(key)
    if found is None or not found.web or found.status == "removed":
        return None
    return found


def refuse_config_add(store: Store | None, email: str) -> None:
    """``subs add`` for an address that signed up on the web: one owner per subscriber."""
    found = store.web.find(address_key(email)) if store else None
    if found is not None and found.web and found.status != "removed":
        raise ConfigError(
            f"{email} signed up on the web pages ({found.status}); config.toml was not changed",
            hint="edit them with 'mailer subs set/add-query/remove-query', or "
            "'mailer subs remove' them first to add them to config.toml",
        )


def _save(store: Store, sub: WebSubscriber, profile: Profile, what: str, now: datetime) -> str:
    checked, errors = check_profile(profile, need_subscription=False)
    if errors:
        problems = "; ".join(f"{key}: {message}" for key, message in errors.items())
        raise ConfigError(f"web subscriber {sub.email}: {problems}; nothing was changed", hint=HINT)
    store.web.save(sub.id, checked, now)
    return what


def set_key(store: Store, sub: WebSubscriber, key: str, value: str, now: datetime) -> str:
    """``subs set`` for a web subscriber; says what changed."""
    if key not in SETTABLE_KEYS:
        raise ConfigError(
            f"cannot set {key!r} on a subscriber",
            hint=f"settable keys: {', '.join(SETTABLE_KEYS)}; queries: 'mailer subs add-query'",
        )
    profile = sub.profile()
    if key == "email":
        return _set_email(store, sub, value, now)
    if key == "resubscribed":
        when = _time(value, sub.email)
        lifted = store.lift_unsubscribes({sub.email: when})
        return f"lifted the unsubscribe of {sub.email}" if lifted else "nothing to lift"
    if key == "max_papers":
        text = value.strip()
        if not text.isdigit():
            raise ConfigError(
                f"web subscriber {sub.email}: max_papers: {value!r} is not a whole number",
                hint="a number from 1 to 1000",
            )
        profile = replace(profile, max_papers=int(text))
    elif key == "name":
        profile = replace(profile, name=value)
    elif key == "schedule":
        profile = replace(profile, schedule=value)
    else:
        profile = replace(profile, timezone=value)
    return _save(store, sub, profile, f"set {key} of {sub.email} to {value!r}", now)


def _set_email(store: Store, sub: WebSubscriber, value: str, now: datetime) -> str:
    try:
        email = normalise_address(value)
    except ValueError as exc:
        raise ConfigError(f"web subscriber {sub.email}: email: {exc}", hint=HINT) from exc
    other = store.web.find(address_key(email))
    if other is not None and other.id != sub.id:
        raise ConfigError(f"subscriber {email!r} already exists", hint=HINT)
    store.web.change_email(sub.id, email, now)
    return f"changed the address of {sub.email} to {email}"


def _time(value: str, email: str) -> datetime:
    for kind in (datetime, date):
        try:
            found = kind.fromisoformat(value.strip())
        except ValueError:
            continue
        if not isinstance(found, datetime):
            return datetime(found.year, found.month, found.day, tzinfo=UTC)
        return found if found.tzinfo else found.replace(tzinfo=UTC)
    raise ConfigError(
        f"web subscriber {email}: resubscribed: {value!r} is not a date or time",
        hint="a date (2026-11-23), a date-time, or 'now'",
    )


def add_query(
    store: Store, sub: WebSubscriber, name: str, query: str, *, replace_it: bool, now: datetime
) -> str:
    subscriptions = dict(sub.subscriptions)
    if name in subscriptions and not replace_it:
        raise ConfigError(
            f"web subscriber {sub.email} already has a subscription named {name!r}",
            hint="pass --replace to change its query, or choose another name",
        )
    subscriptions[name] = query
    profile = replace(sub.profile(), subscriptions=tuple(subscriptions.items()))
    verb = "replaced" if name in dict(sub.subscriptions) else "added"
    return _save(store, sub, profile, f"{verb} query {name!r} for {sub.email}", now)


def remove_query(store: Store, sub: WebSubscriber, name: str, now: datetime) -> str:
    names = [n for n, _ in sub.subscriptions]
    if name not in names:
        raise ConfigError(
            f"web subscriber {sub.email} has no subscription named {name!r}",
            hint=f"their subscriptions: {', '.join(names) or 'none'}",
        )
    kept = tuple(s for s in sub.subscriptions if s[0] != name)
    profile = replace(sub.profile(), subscriptions=kept)
    return _save(store, sub, profile, f"removed query {name!r} of {sub.email}", now)


def remove(store: Store, sub: WebSubscriber, now: datetime) -> str:
    store.web.remove(sub.id, now)
    return f"removed web subscriber {sub.email}"
