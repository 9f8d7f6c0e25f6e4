"""Who gets digests: the subscribers of config.toml and those who signed up
on the web pages, as one configuration for the match and compose stages.

Web subscribers live in the store (mailer.store.selfservice); they are read
again only when their version changes, and the configuration a pass uses
is rebuilt only when the set of live subscribers does: a change, a pause
that ends, or a reload of config.toml. A web subscriber whose address the
operator writes into config.toml is config.toml's from then on.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from mailer.addresses import address_key
from mailer.config import Config, SubscriberConfig, SubscriptionConfig
from mailer.store import Store, WebSubscriber


def subscriber_config(sub: WebSubscriber) -> SubscriberConfig:
    """A web subscriber as a config entry, unvalidated: it was validated
    with the same rules when saved (mailer.selfservice.profile)."""
    return SubscriberConfig.model_construct(
        email=sub.email,
        name=sub.name,
        schedule=sub.schedule or "instant",
        timezone=sub.timezone or "UTC",
        max_papers=sub.max_papers,
        resubscribed=None,
        subscriptions=[
            SubscriptionConfig.model_construct(name=name, query=query, stemming=True)
            for name, query in sub.subscriptions
        ],
    )


def paused(sub: WebSubscriber, now: datetime) -> bool:
    """Paused until a day not yet begun in the subscriber's time zone."""
    if sub.paused_until is None:
        return False
    return now.astimezone(ZoneInfo(sub.timezone or "UTC")).date() < sub.paused_until


class Roster:
    """The configuration of a pass: config.toml's subscribers and the live web ones."""

    def __init__(self) -> None:
        self._version: str | None = None
        self._web: list[WebSubscriber] = []
        self._key: tuple[object, ...] | None = None
        self._config: Config | None = None
        self._current: Config | None = None
        # Each web subscriber as a config entry, kept while it does not change.
        self._entries: dict[WebSubscriber, SubscriberConfig] = {}

    def current(self, store: Store, config: Config, now: datetime) -> Config:
        """``config`` with the web subscribers who get digests now added;
        the same object as last time when nothing changed."""
        version = store.web.version()
        if version != self._version:
            self._web = store.web.roster() if version else []
            self._version = version
            known = self._entries
            self._entries = {w: known.get(w) or subscriber_config(w) for w in self._web}
        configured = {address_key(s.email) for s in config.subscribers}
        live = [w for w in self._web if w.email_key not in configured and not paused(w, now)]
        key = (version, tuple(w.id for w in live))
        if self._current is None or config is not self._config or key != self._key:
            self._key, self._config = key, config
            self._current = (
                config.model_copy(
                    update={
                        "subscribers": [
                            *config.subscribers,
                            *(self._entries[w] for w in live),
                        ]
                    }
                )
                if live
                else config
            )
        return self._current
