"""``mailer feedback``: what readers marked from their digests' feedback
links, and what their models learned from it."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mailer.cli.app import open_existing, out, state_of
from mailer.errors import ConfigError
from mailer.ops import feedback_report

feedback_app = typer.Typer(
    name="feedback",
    help="What readers marked from their digests: 'more like this', 'not for me'.",
    no_args_is_help=True,
)


@feedback_app.command("list")
def feedback_list(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The subscriber's email address.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """A subscriber's marks, newest first, and the model trained from them."""
    config = state_of(ctx).config()
    store = open_existing(config)
    try:
        report = feedback_report(store, email) if store else None
    finally:
        if store:
            store.close()
    if report is None:
        raise ConfigError(
            f"no subscriber {email!r} in the database",
            hint="'mailer subs list' shows who is configured; the next pass adds new ones",
        )
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        return
    marks = report["marks"]
    assert isinstance(marks, list)
    table = Table()
    for column in ("when", "mark", "paper"):
        table.add_column(column)
    for mark in marks:
        table.add_row(str(mark["at"])[:16], str(mark["mark"]), Text(str(mark["title"])))
    if marks:
        out.print(table)
    out.print(
        f"{len(marks)} marks by {escape(str(report['email']))}; {escape(str(report['model_text']))}"
    )
