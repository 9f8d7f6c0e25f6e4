"""The command line: a thin layer over the library.

The app and what commands share live in ``app``; the commands, grouped by
what the user does, in ``service``, ``outbox``, ``subs``, ``feedback``, ``dkim``
and ``suppressions``. Top-level commands are registered here, in the order
``mailer --help`` lists them.
"""

from __future__ import annotations

from mailer.cli import dkim, feedback, outbox, service, subs, suppressions
from mailer.cli.app import app, main

__all__ = ["app", "main"]

app.command()(service.run)
app.command()(service.ingest)
app.command("send-test")(service.send_test)
app.command("check-config")(service.check_config)
app.command()(outbox.unsubscribe)
app.command()(outbox.resubscribe)
app.command()(service.parse)
app.command()(service.preview)
app.command()(service.status)
app.add_typer(outbox.outbox_app, name="outbox")
app.add_typer(subs.subs_app)
app.add_typer(feedback.feedback_app)
app.add_typer(dkim.dkim_app)
app.add_typer(suppressions.suppressions_app)
