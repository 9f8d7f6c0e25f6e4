"""The command line: a thin layer over the library.

The app and what commands share live in ``app``; the commands, grouped by
what the user does, in ``service``, ``outbox``, ``subs``, ``feedback``, ``dkim``
and ``suppressions``. The commands are named here, in the order
``mailer --help`` lists them; each module is imported when one of its
commands runs (``app.LazyCommands``).
"""

from __future__ import annotations

from mailer.cli.app import COMMANDS, app, main

__all__ = ["app", "main"]

COMMANDS.update(
    {
        "run": ("service", "run"),
        "ingest": ("service", "ingest"),
        "send-test": ("service", "send_test"),
        "check-config": ("service", "check_config"),
        "unsubscribe": ("outbox", "unsubscribe"),
        "resubscribe": ("outbox", "resubscribe"),
        "parse": ("service", "parse"),
        "preview": ("service", "preview"),
        "status": ("service", "status"),
        "outbox": ("outbox", "outbox_app"),
        "subs": ("subs", "subs_app"),
        "feedback": ("feedback", "feedback_app"),
        "dkim": ("dkim", "dkim_app"),
        "suppressions": ("suppressions", "suppressions_app"),
    }
)
