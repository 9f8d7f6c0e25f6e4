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
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mailer import __version__, editing
from mailer.config import DEFAULT_CONFIG, Config, load_config
from mailer.daemon import Daemon
from mailer.delivery import make_transport
from mailer.digests import Ranking, Recipient
from mailer.dumps import paper_json, read_dump
from mailer.editing import apply_edit
from mailer.errors import ConfigError, DeliveryError, MailerError, QueryError
from mailer.lock import database_lock
from mailer.matching import Stats, parse_query
from mailer.mime import message_part
from mailer.ops import (
    EMBEDDED,
    JsonFormatter,
    LogFormat,
    PreviewFormat,
    dump_progress,
    highlighted,
    next_due,
    snippet,
    status_report,
    try_query,
)
from mailer.papers import Paper
from mailer.pipeline import (
    PassReport,
    Pipeline,
    digest_order,
    match_rows,
    subscription_engine,
    sync_subscribers,
    unsubscribe_url,
    utc_now,
)
from mailer.pipeline.compose import build_message, compose_digest, init_worker
from mailer.pipeline.send import display_status
from mailer.render import Renderer
from mailer.store import DeliveryRow, DeliveryStatus, PendingMatch, Store, hide_password

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
    log_format: str = "text"

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

    def config_file(self) -> Path | None:
        """The file the configuration came from; None for the embedded example."""
        source = self.config_source
        return None if source == EMBEDDED else Path(source)


def _setup_logging(verbose: bool, log_format: str = "text") -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
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
    log_format: Annotated[
        LogFormat,
        typer.Option("--log-format", help="Log lines as text, or one JSON object per line."),
    ] = LogFormat.text,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _setup_logging(verbose, log_format.value)
    ctx.obj = State(config, log_format=log_format.value)


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
            daemon = Daemon(
                pipeline, config.watch.interval_seconds, config_path=state.config_file()
            )
            asyncio.run(daemon.run())
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
            fancy = state.log_format == "text" and err.is_terminal
            with dump_progress(pipeline, fancy=fancy, console=err):
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
    now = utc_now()
    since = now - timedelta(days=days)
    store = _open_existing(config)
    try:
        papers = store.papers_since(since) if store else []
        stats = store.stats() if store else Stats()
    finally:
        if store:
            store.close()
    by_id = dict(papers)
    pending = [
        PendingMatch(
            m.paper_id, by_id[m.paper_id], m.subscriptions, m.subscription_terms, m.scores, since
        )
        for m in match_rows(subscription_engine(sub, stats), papers, {sub.email: 0})
    ]
    order = replace(
        digest_order(config, sub, 0, since),
        recipient=Recipient(to, sub.name, tuple(q.name for q in sub.subscriptions)),
        unsubscribe_url=unsubscribe_url(config, to),
    )
    digest = compose_digest(order, pending, Ranking(stats), test=True)
    message_id, data, subject = build_message(
        Renderer(config.render.templates, paper_url=config.render.paper_url),
        digest,
        now,
        sender=config.smtp.sender,
        sender_address=config.smtp.sender_address,
        unsubscribe_url=order.unsubscribe_url,
    )

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
    out.print(f"store   {hide_password(config.database.url)}")
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


@app.command()
def unsubscribe(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="The address to stop mailing.")]
) -> None:
    """Stop all digests to EMAIL (e.g. after an unsubscribe reply); 'resubscribe' undoes it."""
    _change_subscription(ctx, email, lambda store: store.unsubscribe(email, utc_now()))
    out.print(f"unsubscribed {email}: no further digests until 'mailer resubscribe {email}'")


@app.command()
def resubscribe(
    ctx: typer.Context, email: Annotated[str, typer.Argument(help="The address to mail again.")]
) -> None:
    """Lift an unsubscribe: EMAIL gets digests again, for papers that arrive from now on."""
    _change_subscription(ctx, email, lambda store: store.resubscribe(email))
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
        when = r["sent_at"] if r["status"] == DeliveryStatus.SENT else r["next_attempt_at"]
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
    """Worker processes that compose digests, each building its Renderer and
    opening the store once.

    Processes, not threads: rendering is CPU-bound Python. Spawned lazily by
    the executor when the first large batch of digests is composed.
    """
    pool = ProcessPoolExecutor(
        max_workers=os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(config.database.url,),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- subs: editing subscriptions in config.toml --------------------------------------

subs_app = typer.Typer(
    name="subs",
    help="List and edit subscribers in the config file (comments and layout are kept).",
    no_args_is_help=True,
)
app.add_typer(subs_app)

EmailArg = Annotated[str, typer.Argument(help="The subscriber's email address.")]
BackfillOpt = Annotated[
    int | None,
    typer.Option(
        "--backfill",
        min=1,
        help="Also give them the stored papers first seen in the last DAYS days.",
        metavar="DAYS",
    ),
]


def _config_to_edit(ctx: typer.Context) -> Path:
    path = _state(ctx).config_path or DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(
            f"{path}: no configuration file to edit",
            hint="copy config.example.toml to config.toml, or pass --config PATH",
        )
    return path


def _edited(path: Path, what: str, config: Config) -> None:
    out.print(f"[green]saved[/green] {escape(str(path))}: {escape(what)}")
    out.print(
        f"{len(config.subscribers)} subscribers; a running daemon picks this up on its next pass"
    )


def _sqlite_missing(config: Config) -> bool:
    """A SQLite database that does not exist yet: read-only commands don't create it."""
    url = config.database.url
    prefix = "sqlite:///"
    return (
        url.startswith(prefix) and ":memory:" not in url and not Path(url[len(prefix) :]).exists()
    )


def _open_existing(config: Config) -> Store | None:
    return None if _sqlite_missing(config) else _open(config)


def _backfill(config: Config, email: str, days: int) -> None:
    """Record matches for papers the regular pass has already matched, for this
    subscriber only; papers not yet matched reach them through the regular pass."""
    sub = config.subscriber(email)
    if not sub.subscriptions:
        out.print(f"nothing to backfill: {escape(sub.email)} has no subscriptions yet")
        return
    store = _open(config)
    try:
        now = utc_now()
        subscriber_id = sync_subscribers(store, config, now)[sub.email]
        rows = match_rows(
            subscription_engine(sub, store.stats()),
            store.backfill_candidates(subscriber_id, now - timedelta(days=days)),
            {sub.email: subscriber_id},
        )
        added = store.add_matches(subscriber_id, rows, now)
    finally:
        store.close()
    out.print(
        f"backfilled {added} papers from the last {days} days for {escape(sub.email)}; "
        "they go out with their next digest"
    )


@subs_app.command("list")
def subs_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The subscribers: schedule, time zone, subscriptions, unsubscribed or not."""
    config = _state(ctx).config()
    store = _open_existing(config)
    try:
        states = store.subscriber_states() if store else {}
    finally:
        if store:
            store.close()
    rows = []
    for sub in config.subscribers:
        state = states.get(sub.email.lower())
        rows.append(
            {
                "email": sub.email,
                "name": sub.name,
                "schedule": sub.schedule,
                "timezone": sub.timezone,
                "subscriptions": [{"name": q.name, "query": q.query} for q in sub.subscriptions],
                "unsubscribed": bool(state and state.unsubscribed_at),
                "unsubscribed_at": state.unsubscribed_at.isoformat()
                if state and state.unsubscribed_at
                else None,
            }
        )
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    table = Table(show_lines=True)
    for column in ("subscriber", "schedule", "time zone", "subscriptions", "unsubscribed"):
        table.add_column(column)
    for row in rows:
        who = f"{row['name']} <{row['email']}>" if row["name"] else str(row["email"])
        queries = "\n".join(f"{q['name']}: {q['query']}" for q in row["subscriptions"])  # type: ignore[attr-defined]
        gone = str(row["unsubscribed_at"])[:16] if row["unsubscribed"] else "no"
        table.add_row(
            Text(who),
            Text(str(row["schedule"])),
            Text(str(row["timezone"])),
            Text(queries or "-"),
            gone,
        )
    out.print(table)
    out.print(f"{len(rows)} subscribers in {escape(_state(ctx).config_source)}")


@subs_app.command("add")
def subs_add(
    ctx: typer.Context,
    email: EmailArg,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    schedule: Annotated[
        str | None, typer.Option(help="instant, 'daily HH:MM' or 'weekly DAY HH:MM'.")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone, e.g. Europe/London.")
    ] = None,
    query: Annotated[
        list[str] | None,
        typer.Option(
            "--query", help="A subscription as NAME=QUERY; repeatable.", metavar="NAME=QUERY"
        ),
    ] = None,
    backfill: BackfillOpt = None,
) -> None:
    """Add a subscriber; they get papers that arrive from now on (or --backfill DAYS)."""
    path = _config_to_edit(ctx)
    queries = []
    for item in query or []:
        qname, sep, text = item.partition("=")
        if not sep or not qname.strip():
            raise ConfigError(
                f"--query {item!r} is not NAME=QUERY", hint='e.g. --query "LLM=llm OR gpt"'
            )
        queries.append((qname.strip(), text))
    config = apply_edit(
        path,
        lambda t: editing.add_subscriber(
            t,
            email,
            name=name,
            schedule=schedule,
            timezone=timezone,
            queries=queries,
            source=str(path),
        ),
    )
    _edited(path, f"added subscriber {email}", config)
    if backfill:
        _backfill(config, email, backfill)


@subs_app.command("remove")
def subs_remove(ctx: typer.Context, email: EmailArg) -> None:
    """Remove a subscriber; their mail stops (history stays in the database)."""
    path = _config_to_edit(ctx)
    config = apply_edit(path, lambda t: editing.remove_subscriber(t, email, source=str(path)))
    _edited(path, f"removed subscriber {email}", config)


@subs_app.command("set")
def subs_set(
    ctx: typer.Context,
    email: EmailArg,
    key: Annotated[
        str,
        typer.Argument(help="name, schedule, timezone, email, max_papers or resubscribed."),
    ],
    value: Annotated[
        str, typer.Argument(help="The new value; for resubscribed a date, time or 'now'.")
    ],
) -> None:
    """Change one of a subscriber's keys ('resubscribed now' lifts an unsubscribe)."""
    if key == "resubscribed" and value == "now":
        value = utc_now().isoformat()  # full precision: lifts exactly what came before
    path = _config_to_edit(ctx)
    config = apply_edit(
        path, lambda t: editing.set_subscriber_key(t, email, key, value, source=str(path))
    )
    _edited(path, f"set {key} of {email} to {value!r}", config)


@subs_app.command("add-query")
def subs_add_query(
    ctx: typer.Context,
    email: EmailArg,
    name: Annotated[str, typer.Argument(help="The subscription's name, shown in digests.")],
    query: Annotated[str, typer.Argument(help='Words, "phrases", AND, OR, NOT, -word, ( ).')],
    replace: Annotated[bool, typer.Option(help="Replace the query of an existing NAME.")] = False,
    backfill: BackfillOpt = None,
) -> None:
    """Add a subscription query to a subscriber (try it first with 'subs try')."""
    path = _config_to_edit(ctx)
    config = apply_edit(
        path,
        lambda t: editing.add_query(t, email, name, query, replace=replace, source=str(path)),
    )
    _edited(path, f"{'replaced' if replace else 'added'} query {name!r} for {email}", config)
    if backfill:
        _backfill(config, email, backfill)


@subs_app.command("remove-query")
def subs_remove_query(
    ctx: typer.Context,
    email: EmailArg,
    name: Annotated[str, typer.Argument(help="The subscription's name.")],
) -> None:
    """Remove one of a subscriber's subscription queries."""
    path = _config_to_edit(ctx)
    config = apply_edit(path, lambda t: editing.remove_query(t, email, name, source=str(path)))
    _edited(path, f"removed query {name!r} of {email}", config)


@subs_app.command("try")
def subs_try(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="The query to try.")],
    since: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only papers first seen in the last DAYS days [default: all].",
            metavar="DAYS",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many papers.")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with the highlight spans.")
    ] = False,
) -> None:
    """Show which stored papers a query would match, with the matched terms highlighted."""
    try:
        parsed = parse_query(query)
    except QueryError as exc:
        caret = "" if exc.position is None else f"\n  {query}\n  {' ' * exc.position}^"
        raise QueryError(
            exc.message + caret, query=query, position=exc.position, hint=exc.hint
        ) from exc
    config = _state(ctx).config()
    store = _open_existing(config)
    try:
        start = utc_now() - timedelta(days=since) if since else datetime.min.replace(tzinfo=UTC)
        papers = [p for _, p in store.papers_since(start)] if store else []
    finally:
        if store:
            store.close()
    found = try_query(parsed, papers)
    if as_json:
        rows = [
            {
                "title": t.paper.title,
                "terms": list(t.terms),
                "title_marks": [list(m) for m in t.title_marks],
                "abstract_marks": [list(m) for m in t.abstract_marks],
                "published": t.paper.published.isoformat() if t.paper.published else None,
                "upvotes": t.paper.upvotes,
            }
            for t in found[:limit]
        ]
        sys.stdout.write(
            json.dumps(
                {"matched": len(found), "of": len(papers), "papers": rows},
                ensure_ascii=False,
                indent=2,
            )
            + "\n"
        )
        return
    for n, t in enumerate(found[:limit], 1):
        line = Text(f"{n:>3}. ")
        line.append_text(highlighted(t.paper.title, t.title_marks))
        out.print(line, soft_wrap=True)
        meta = f"     matched: {', '.join(t.terms)} · {_meta_line(t.paper)}"
        out.print(Text(meta, style="dim"), soft_wrap=True)
        if t.abstract_marks:
            text, marks = snippet(t.paper.abstract, t.abstract_marks)
            out.print(Text("     ").append_text(highlighted(text, marks)), soft_wrap=True)
    window = f"first seen in the last {since} days" if since else "stored"
    more = f" (showing {limit}; --limit N for more)" if len(found) > limit else ""
    out.print(f"{len(found)} of {len(papers)} papers {window} match {escape(query)}{more}")


# --- preview and status: what the service would do, and what it did ------------------------


@app.command()
def preview(
    ctx: typer.Context,
    subscriber: Annotated[str, typer.Option("--subscriber", help="Whose digest to render.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write to FILE instead of standard output.")
    ] = None,
    fmt: Annotated[
        PreviewFormat | None,
        typer.Option("--format", help="html or text [default: from --out's suffix, else text]."),
    ] = None,
) -> None:
    """Render the digest a subscriber would get now, without sending or recording anything."""
    config = _state(ctx).config()
    sub = config.subscriber(subscriber)
    store = _open_existing(config)
    try:
        states = store.subscriber_states() if store else {}
        state = states.get(sub.email.lower())
        pending = store.pending_matches(state.id) if store and state else []
        stats = store.stats() if store and pending else Stats()
    finally:
        if store:
            store.close()
    if not pending:
        err.print(
            f"nothing waiting for {escape(sub.email)}: no digest would be sent now "
            "(only papers matched since their last digest are sent)"
        )
        return
    assert state is not None
    order = digest_order(config, sub, state.id, state.last_digest_at)
    digest = compose_digest(order, pending, Ranking(stats))
    _, message, subject = build_message(
        Renderer(config.render.templates, paper_url=config.render.paper_url),
        digest,
        utc_now(),
        sender=config.smtp.sender,
        sender_address=config.smtp.sender_address,
        unsubscribe_url=order.unsubscribe_url,
    )
    kind = fmt or (
        PreviewFormat.html
        if out_file and out_file.suffix.lower() in (".html", ".htm")
        else PreviewFormat.text
    )
    body = message_part(message, "html" if kind is PreviewFormat.html else "plain")
    _, when = next_due(sub, state, utc_now())
    err.print(
        f"Subject: {escape(subject)}\n{digest.count} papers for {escape(sub.email)}; "
        f"next due: {escape(when)}",
        soft_wrap=True,
    )
    if out_file is None:
        sys.stdout.write(body)
        return
    try:
        out_file.write_text(body, encoding="utf-8")
    except OSError as exc:
        raise MailerError(f"{out_file}: cannot write the preview: {exc.strerror}") from exc
    err.print(f"wrote {escape(str(out_file))} ({kind.value})")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What the service has done and will do: dumps, papers, subscribers, outbox, schedule."""
    state = _state(ctx)
    config = state.config()
    store = _open_existing(config)
    try:
        report = status_report(config, store, state.config_source, utc_now())
    finally:
        if store:
            store.close()
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        return
    d, s, o = report["dumps"], report["subscribers"], report["outbox"]
    lines = [
        ("configuration", report["configuration"]),
        (
            "database",
            report["database"] or f"{hide_password(config.database.url)} (not created yet)",
        ),
        (
            "dumps",
            f"{d['seen']} seen: {d['ingested']} ingested ({d['empty']} empty), "
            f"{d['refused']} refused",
        ),
        *(("  refused", f"{r['path']}: {r['reason']}") for r in d["refusals"]),
        ("papers", f"{report['papers']} stored"),
        (
            "subscribers",
            f"{s['configured']} configured, {s['unsubscribed']} unsubscribed, "
            f"{s['removed']} removed",
        ),
        ("matches", f"{report['matches_waiting']} waiting for a digest"),
        ("outbox", f"{o['pending']} pending, {o['sent']} sent, {o['failed']} failed"),
    ]
    last = report["last_pass"]
    lines.append(("last pass", f"{last['at']}: {last['summary']}" if last else "none yet"))
    beat = report["heartbeat"]
    lines.append(
        (
            "heartbeat",
            f"{beat['path']} ({beat['age_seconds']:.0f}s old)" if beat else "none (daemon not run)",
        )
    )
    for label, value in lines:
        out.print(Text(f"{label:<14} {value}"), soft_wrap=True)
    table = Table(title="next digests", title_justify="left")
    for column in ("subscriber", "schedule", "waiting", "last digest", "next due"):
        table.add_column(column)
    for row in report["next_digests"]:
        table.add_row(
            Text(row["email"]),
            Text(f"{row['schedule']} ({row['timezone']})"),
            str(row["waiting"]),
            Text(row["last_digest_at"] or "never"),
            Text(row["next_due_text"]),
        )
    out.print(table)


def main() -> None:
    """Entry point: run the app, turning MailerError into a message and a status."""
    try:
        app()
    except MailerError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
