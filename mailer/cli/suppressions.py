"""The suppression list: addresses that get no mail after bouncing (see
mailer.store.suppressions), listed and lifted by hand."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.text import Text

from mailer.cli.app import open_existing, out, state_of
from mailer.errors import ConfigError
from mailer.ops import suppression_entry
from mailer.pipeline import utc_now

suppressions_app = typer.Typer(
    name="suppressions",
    help="Addresses that get no mail because they bounced: list them, lift one.",
    no_args_is_help=True,
)


@suppressions_app.command("list")
def suppressions_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of addresses.")] = False,
) -> None:
    """List the suppressed addresses: since when, why, and from what (bounce or smtp)."""
    config = state_of(ctx).config()
    store = open_existing(config)
    try:
        rows = [suppression_entry(s) for s in store.suppressed()] if store else []
    finally:
        if store:
            store.close()
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
        return
    if not rows:
        out.print("no address is suppressed")
        return
    for r in rows:
        out.print(Text(f"{r['address']}  since {r['since']} ({r['source']})"), soft_wrap=True)
        out.print(Text(f"    {r['reason']}"), soft_wrap=True)


@suppressions_app.command("remove")
def suppressions_remove(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The address to mail again.")],
) -> None:
    """Lift the suppression of ADDRESS: it gets digests again, and only bounces
    from now on count towards suppressing it again."""
    config = state_of(ctx).config()
    store = open_existing(config)
    try:
        lifted = store.lift_suppression(address, utc_now()) if store else False
    finally:
        if store:
            store.close()
    if not lifted:
        raise ConfigError(
            f"{address!r} is not suppressed",
            hint="'mailer suppressions list' shows the suppressed addresses",
        )
    out.print(Text(f"lifted the suppression of {address}: it gets digests again"))
