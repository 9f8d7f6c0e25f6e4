"""The command line: a thin layer over the library.

Every command catches only MailerError, prints its message and hint, and
exits with the error's status (2 for configuration, 1 otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from mailer import __version__
from mailer.config import Config, load_config
from mailer.daemon import Daemon
from mailer.delivery import make_transport
from mailer.dumps import paper_json, read_dump
from mailer.errors import ConfigError, DeliveryError, MailerError
from mailer.lock import database_lock
from mailer.outbox import display_status, init_worker
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline, digest_for_test, utc_now
from mailer.store import DeliveryRow, Store

app = typer.Typer(
    name="mailer",
    help="Email digests of new research papers from Hugging Face Daily Papers dumps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
log = logging.getLogger("mailer")


@dataclass
class State:
    config_path: Path | None
    _loaded: tuple[Config, str] | None = None

    def config(self) -> Config:
        if self._loaded is None:
            self._loaded = load_config(self.config_path)
            log.debug("configuration from %s", self._loaded[1])
        return self._loaded[0]

    @property
    def config_source(self) -> str:
        self.config()
        assert self._loaded is not None
        return self._loaded[1]


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger("mailer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _version(value: bool) -> None:
    if value:
        out.print(f"mailer {__version__}")
        raise typer.Exit


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="MAILER_CONFIG",
            help="Configuration file [default: config.toml, else the built-in example].",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _setup_logging(verbose)
    ctx.obj = State(config)


def _state(ctx: typer.Context) -> State:
    state = ctx.obj
    assert isinstance(state, State)
    return state


def _open(config: Config) -> Store:
    return Store(config.database.url)


@app.command()
def run(ctx: typer.Context) -> None:
    """Run the daemon: watch the dumps folder, ingest, match and send digests."""
    state = _state(ctx)
    config = state.config()
    log.info("mailer %s with configuration from %s", __version__, state.config_source)
    with database_lock(config.database.url), compose_pool(config) as pool:
        store = _open(config)
        try:
            pipeline = Pipeline(
                config, store, lambda: make_transport(pipeline.config), compose_pool=pool
            )
            asyncio.run(Daemon(pipeline, config.watch.interval_seconds).run())
        finally:
            store.close()


@app.command()
def ingest(ctx: typer.Context) -> None:
    """Run one pass (ingest new dumps, match, send what is due), then exit."""
    state = _state(ctx)
    config = state.config()
    with database_lock(config.database.url), compose_pool(config) as pool:
        store = _open(config)
        try:
            pipeline = Pipeline(config, store, lambda: make_transport(config), compose_pool=pool)
            report: PassReport = asyncio.run(pipeline.run_pass())
        finally:
            store.close()
    out.print(f"pass done: {report.summary()}")
    if report.deferred:
        raise typer.Exit(3)


@app.command("send-test")
def send_test(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="Address that receives the test digest.")],
    subscriber: Annotated[
        str | None,
        typer.Option(help="Whose digest to send [default: the first configured subscriber]."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Papers first seen in the last N days.")] = 7,
) -> None:
    """Send one test digest now, recording nothing: the real digest is unaffected."""
    config = _state(ctx).config()
    if not config.subscribers:
        raise ConfigError("no [[subscribers]] are configured", hint="add one to the config file")
    sub = config.subscriber(subscriber) if subscriber else config.subscribers[0]
    store = _open(config)
    try:
        now = utc_now()
        since = now - timedelta(days=days)
        papers = store.papers_since(since)
        digest = digest_for_test(config, sub, papers, since)
        pipeline = Pipeline(config, store, lambda: make_transport(config))
    finally:
        store.close()
    digest = type(digest)(
        recipient=type(digest.recipient)(to, sub.name, digest.recipient.subscriptions),
        sections=digest.sections,
        since=digest.since,
        more=digest.more,
        test=True,
    )
    message_id, data, subject = pipeline.message_bytes(digest, now)

    async def send() -> str:
        async with make_transport(config) as transport:
            return await transport.send(config.smtp.sender_address, to, data)

    try:
        reply = asyncio.run(send())
    except DeliveryError as exc:
        raise DeliveryError(f"test digest to {to} not sent: {exc.message}", hint=exc.hint) from exc
    what = f"{digest.count} papers" if digest.count else "no papers matched; said so"
    out.print(f"sent test digest for {sub.email} to {to} ({what}): {subject}")
    out.print(f"Message-ID {message_id}; {reply.strip()}")


@app.command("check-config")
def check_config(ctx: typer.Context) -> None:
    """Validate the configuration and explain what it will do."""
    state = _state(ctx)
    config = state.config()
    out.print(f"[green]configuration OK[/green] ({state.config_source})")
    out.print(f"watch   {config.watch.dir} every {config.watch.interval_seconds:g}s")
    out.print(f"store   {config.database.url}")
    if config.delivery.transport == "smtp":
        s = config.smtp
        auth = f" as {s.username}" if s.username else ""
        out.print(f"deliver by SMTP to {s.host}:{s.port} ({s.security}){auth}, from {s.sender}")
    else:
        out.print(f"deliver into Maildir {config.delivery.maildir}, from {config.smtp.sender}")
    if config.web.listen or config.web.base_url:
        links = config.web.base_url or "none (web.base_url is not set)"
        out.print(f"web     endpoint on {config.web.listen or '-'}; unsubscribe links {links}")
    if not config.subscribers:
        out.print("[yellow]no subscribers: nothing will be sent[/yellow]")
    for sub in config.subscribers:
        out.print(f"subscriber {sub.name or '-'} <{sub.email}>: {sub.schedule}, {sub.timezone}")
        for q in sub.subscriptions:
            out.print(f"  {q.name}: {q.query}")


# --- unsubscribing (RFC 8058) -------------------------------------------------------


def _subscriber_store(ctx: typer.Context) -> tuple[Config, Store]:
    """The store with the configured subscribers recorded, as the daemon sees them."""
    config = _state(ctx).config()
    store = _open(config)
    try:
        Pipeline(config, store, lambda: make_transport(config))
    except BaseException:
        store.close()
        raise
    return config, store


@app.command()
def unsubscribe(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="The address to stop mailing.")]
) -> None:
    """Stop all digests to EMAIL (e.g. after an unsubscribe reply); 'resubscribe' undoes it."""
    _, store = _subscriber_store(ctx)
    try:
        known = store.unsubscribe(email, utc_now())
    finally:
        store.close()
    if not known:
        raise ConfigError(
            f"no subscriber {email!r} in the configuration or the database",
            hint="check the spelling; 'mailer check-config' lists the subscribers",
        )
    out.print(f"unsubscribed {email}: no further digests until 'mailer resubscribe {email}'")


@app.command()
def resubscribe(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="The address to mail again.")]
) -> None:
    """Lift an unsubscribe: EMAIL gets digests again, for papers that arrive from now on."""
    _, store = _subscriber_store(ctx)
    try:
        known = store.resubscribe(email)
    finally:
        store.close()
    if not known:
        raise ConfigError(
            f"no subscriber {email!r} in the configuration or the database",
            hint="check the spelling; 'mailer check-config' lists the subscribers",
        )
    out.print(f"resubscribed {email}")


@app.command()
def parse(
    files: Annotated[list[Path], typer.Argument(help="Dump files to parse.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per record (JSON Lines).")
    ] = False,
) -> None:
    """Parse dumps and print their records; a summary per file goes to stderr."""
    today = date.today()
    refused = 0
    for path in files:
        try:
            parsed = read_dump(path, today=today)
        except MailerError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, soft_wrap=True)
            refused += 1
            continue
        for warning in parsed.warnings:
            err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
        for paper in parsed.papers:
            if as_json:
                sys.stdout.write(json.dumps(paper_json(paper), ensure_ascii=False) + "\n")
            else:
                out.print(f"[bold]{escape(paper.title)}[/bold]", soft_wrap=True)
                out.print(f"  {escape(_meta_line(paper))}", soft_wrap=True)
        page = parsed.page_date.isoformat() if parsed.page_date else "none"
        err.print(
            f"{path}: {len(parsed.papers)} records, page date {page}, "
            f"{len(parsed.warnings)} warnings",
            soft_wrap=True,
        )
    if refused:
        raise typer.Exit(1)


def _meta_line(paper: Paper) -> str:
    who = paper.organization or (
        f"{paper.authors} authors" if paper.authors is not None else "no authors listed"
    )
    when = paper.published.isoformat() if paper.published else "no date"
    return f"{when} · {paper.upvotes} upvotes · {who}"


# --- the outbox -------------------------------------------------------------------

outbox_app = typer.Typer(
    help="List the outbox: queued, deferred, sent and failed messages.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(outbox_app, name="outbox")


@outbox_app.callback()
def outbox_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of messages.")] = False,
    status: Annotated[
        str | None,
        typer.Option(help="Only messages in this state: queued, deferred, sent or failed."),
    ] = None,
) -> None:
    """List the outbox: queued, deferred, sent and failed messages."""
    if ctx.invoked_subcommand is not None:
        return
    config = _state(ctx).config()
    store = _open(config)
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
        when = r["sent_at"] if r["status"] == "sent" else r["next_attempt_at"]
        out.print(
            f"{r['id']:>6} {r['status']:<8} attempts={r['attempts']} {when or '-'} "
            f"{escape(str(r['recipient']))} {escape(str(r['message_id']))}",
            soft_wrap=True,
        )
        if r["last_reply"]:
            out.print(f"       reply: {escape(str(r['last_reply']))}", soft_wrap=True)


def outbox_entry(row: DeliveryRow) -> dict[str, object]:
    def iso(d: datetime | None) -> str | None:
        return d.isoformat(timespec="seconds") if d else None

    state = display_status(row.status, row.attempts)
    return {
        "id": row.id,
        "recipient": row.recipient,
        "message_id": row.message_id,
        "subject": row.subject,
        "papers": row.papers,
        "status": state,
        "attempts": row.attempts,
        "created_at": iso(row.created_at),
        "next_attempt_at": iso(row.next_attempt_at) if state in ("queued", "deferred") else None,
        "sent_at": iso(row.sent_at),
        "last_reply": row.last_reply,
    }


@outbox_app.command("retry")
def outbox_retry(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None, typer.Argument(help="Message ids (see 'mailer outbox').")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every deferred and failed message.")] = False,
) -> None:
    """Make deferred or failed messages due now; the next pass sends them."""
    if not ids and not all_:
        raise ConfigError("say which messages to retry", hint="pass message ids, or --all")
    config = _state(ctx).config()
    store = _open(config)
    try:
        changed = store.retry_deliveries(None if all_ else ids, utc_now())
    finally:
        store.close()
    out.print(f"{changed} message{'s' if changed != 1 else ''} due now")


@contextmanager
def compose_pool(config: Config) -> Iterator[Executor]:
    """Worker processes that render digests, each building its Renderer once.

    Processes, not threads: rendering is CPU-bound Python. Spawned lazily by
    the executor when the first large batch of digests is composed.
    """
    pool = ProcessPoolExecutor(
        max_workers=os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(config.render.templates, config.render.paper_url),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def main() -> None:
    """Entry point: run the app, turning MailerError into a message and a status."""
    try:
        app()
    except MailerError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
