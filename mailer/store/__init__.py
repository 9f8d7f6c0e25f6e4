"""The database: dumps ingested, papers seen, subscribers, matches and the outbox.

Every state change a crash could interrupt happens in one transaction:
a dump and its papers together; matches together with the papers they cover;
a composed message together with the matches it claims. SQLite (WAL) by
default; the same code runs on PostgreSQL.

``Store`` (``database``) is the one object callers hold: it opens the engine
and hands a transaction helper to the parts, each owning some tables
(``schema`` defines them all): ``papers`` (dumps, papers, corpus statistics),
``people`` (subscribers, subscriptions), ``matches``, ``outbox`` (deliveries
and their claims) and ``nodes`` (the daemons sharing the database). All of
them speak SQLAlchemy Core on the tables' columns; ``listing`` holds the reads
``mailer subs list`` makes as plain SQL, which the Store and a quick path on
the driver alone both run.

The names below are imported from their modules on first use, so that
``import mailer.store.listing`` (or ``records``) loads no SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailer.outbox_states import DeliveryStatus, OutboxState
    from mailer.store.database import LAST_PASS, Store
    from mailer.store.feedback import Feedback, Mark, MarkOutcome, ReaderModel
    from mailer.store.matches import Matches, MatchFields, NewMatch, PendingMatch
    from mailer.store.nodes import NodeBeat, Nodes
    from mailer.store.outbox import Claimed, Outbox, Outgoing
    from mailer.store.papers import IngestOutcome, Papers, add_statistics
    from mailer.store.people import People, SubscriberState
    from mailer.store.records import Origin, Profile, WebSubscriber, utc
    from mailer.store.schema import (
        CorpusRow,
        DeliveryKind,
        DeliveryRow,
        DumpRow,
        DumpStatus,
        FeedbackRow,
        MarkKind,
        MatchRow,
        NodeRow,
        PaperRow,
        ReaderModelRow,
        StateRow,
        SubscriberRow,
        SubscriptionRow,
        TermRow,
        hide_password,
        paper_from_row,
    )
    from mailer.store.selfservice import SentDigest, SignUp, WebSubscribers
    from mailer.store.suppressions import BounceLimits, BounceRecord, Suppression, Suppressions

# Where each name lives: the module of this package (or of mailer) that defines it.
_MODULES = {
    "mailer.outbox_states": ("DeliveryStatus", "OutboxState"),
    "mailer.store.database": ("LAST_PASS", "Store"),
    "mailer.store.feedback": ("Feedback", "Mark", "MarkOutcome", "ReaderModel"),
    "mailer.store.matches": ("MatchFields", "Matches", "NewMatch", "PendingMatch"),
    "mailer.store.nodes": ("NodeBeat", "Nodes"),
    "mailer.store.outbox": ("Claimed", "Outbox", "Outgoing"),
    "mailer.store.papers": ("IngestOutcome", "Papers", "add_statistics"),
    "mailer.store.people": ("People", "SubscriberState"),
    "mailer.store.records": ("Origin", "Profile", "WebSubscriber", "utc"),
    "mailer.store.schema": (
        "CorpusRow",
        "DeliveryKind",
        "DeliveryRow",
        "DumpRow",
        "DumpStatus",
        "FeedbackRow",
        "MarkKind",
        "MatchRow",
        "NodeRow",
        "PaperRow",
        "ReaderModelRow",
        "StateRow",
        "SubscriberRow",
        "SubscriptionRow",
        "TermRow",
        "hide_password",
        "paper_from_row",
    ),
    "mailer.store.selfservice": ("SentDigest", "SignUp", "WebSubscribers"),
    "mailer.store.suppressions": ("BounceLimits", "BounceRecord", "Suppression", "Suppressions"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "LAST_PASS",
    "BounceLimits",
    "BounceRecord",
    "Claimed",
    "CorpusRow",
    "DeliveryKind",
    "DeliveryRow",
    "DeliveryStatus",
    "DumpRow",
    "DumpStatus",
    "Feedback",
    "FeedbackRow",
    "IngestOutcome",
    "Mark",
    "MarkKind",
    "MarkOutcome",
    "MatchFields",
    "MatchRow",
    "Matches",
    "NewMatch",
    "NodeBeat",
    "NodeRow",
    "Nodes",
    "Origin",
    "Outbox",
    "OutboxState",
    "Outgoing",
    "PaperRow",
    "Papers",
    "PendingMatch",
    "People",
    "Profile",
    "ReaderModel",
    "ReaderModelRow",
    "SentDigest",
    "SignUp",
    "StateRow",
    "Store",
    "SubscriberRow",
    "SubscriberState",
    "SubscriptionRow",
    "Suppression",
    "Suppressions",
    "TermRow",
    "WebSubscriber",
    "WebSubscribers",
    "add_statistics",
    "hide_password",
    "paper_from_row",
    "utc",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
