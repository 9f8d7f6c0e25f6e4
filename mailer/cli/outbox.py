"""Commands about messages and who gets them: the outbox (list, retry) and
unsubscribing (RFC 8058) or resubscribing an address by hand."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mailer.cli.app import open_store, out, state_of
from mailer.errors import ConfigError
from mailer.ops import outbox_entry
from mailer.outbox_states import DeliveryStatus, OutboxState

if TYPE_CHECKING:
    from mailer.config import Config
    from mailer.store import Store


outbox_app = typer.Typer(
    help="List the outbox: queued, deferred, sent and failed messages.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@outbox_app.callback()
def outbox_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of messages.")] = False,
    status: Annotated[
        OutboxState | None,
        typer.Option(help="Only messages in this state."),
    ] = None,
) -> None:
    """List the outbox: queued, deferred, sent and failed messages."""
    if ctx.invoked_subcommand is not None:
        return
    config = state_of(ctx).config()
    store = open_store(config)
    try:
        rows = [outbox_entry(r) for r in store.deliveries()]
    finally:
        store.close()
    if status:
        rows = [r for r in rows if r["status"] == status]
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
        return
    if not rows:
        out.print("the outbox is empty")
        return
    for r in rows:
        when = r["sent_at"] if r["status"] == DeliveryStatus.SENT else r["next_attempt_at"]
        out.print(
            f"{r['id']:>6} {r['status']:<8} attempts={r['attempts']} {when or '-'} "
            f"{escape(str(r['recipient']))} {escape(str(r['message_id']))}",
            soft_wrap=True,
        )
        if r["last_reply"]:
            out.print(f"       reply: {escape(str(r['last_reply']))}", soft_wrap=True)


@outbox_app.command("retry")
def outbox_retry(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None, typer.Argument(help="Message ids (see 'mailer outbox').")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every deferred and failed message.")] = False,
) -> None:
    """Make deferred or failed messages due now; the next pass sends them."""
    from mailer.pipeline import utc_now

    if not ids and not all_:
        raise ConfigError("say which messages to retry", hint="pass message ids, or --all")
    config = state_of(ctx).config()
    store = open_store(config)
    try:
        changed = store.retry_deliveries(None if all_ else ids, utc_now())
    finally:
        store.close()
    out.print(f"{changed} message{'s' if changed != 1 else ''} due now")


def _subscriber_store(ctx: typer.Context) -> tuple[Config, Store]:
    """The store with the configured subscribers recorded, as the daemon sees them."""
    from mailer.pipeline import sync_subscribers, utc_now

    config = state_of(ctx).config()
    store = open_store(config)
    try:
        sync_subscribers(store, config, utc_now())
    except BaseException:
        store.close()
        raise
    return config, store


def _change_subscription(ctx: typer.Context, email: str, change: Callable[[Store], bool]) -> None:
    _, store = _subscriber_store(ctx)
    try:
        known = change(store)
    finally:
        store.close()
    if not known:
        raise ConfigError(
            f"no subscriber {email!r} in the configuration or the database",
            hint="check the spelling; 'mailer check-config' lists the subscribers",
        )


def unsubscribe(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="The address to stop mailing.")]
) -> None:
    """Stop all digests to EMAIL (e.g. after an unsubscribe reply); 'resubscribe' undoes it."""
    from mailer.pipeline import utc_now

    _change_subscription(ctx, email, lambda store: store.unsubscribe(email, utc_now()))
    out.print(f"unsubscribed {email}: no further digests until 'mailer resubscribe {email}'")


def resubscribe(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="The address to mail again.")]
) -> None:
    """Lift an unsubscribe: EMAIL gets digests again, for papers that arrive from now on."""
    _change_subscription(ctx, email, lambda store: store.resubscribe(email))
    out.print(f"resubscribed {email}")
