"""The command line: a thin layer over the library.

The app and what commands share live in ``app``; the commands, grouped by
what the user does, in ``service``, ``outbox``, ``subs``, ``feedback``, ``dkim``
and ``suppressions``. The commands are named here, in the order
``mailer --help`` lists them; each module is imported when one of its
commands runs (``app.LazyCommands``). ``main`` first asks ``quick``, which
answers the plain form of a read-only command from a warm cache without
loading typer (``app.app``) at all.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

# The commands: name -> (module of mailer.cli, its function or Typer).
COMMANDS: dict[str, tuple[str, str]] = {
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


def main() -> None:
    """Entry point: a quick command's answer, else the full command line."""
    from mailer.cli.quick import answer

    text = answer(sys.argv[1:])
    if text is not None:
        sys.stdout.write(text)
        return
    from mailer.cli.app import main as command_line

    command_line()
