"""``mailer subs``: list subscribers, edit them and their queries in the
config file (comments and layout kept), and try a query before saving it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.text import Text

from mailer.cli.app import meta_line, open_existing, open_store, out, state_of, stored_subscribers
from mailer.errors import ConfigError, QueryError
from mailer.ops import (
    highlighted,
    missing_examples,
    missing_lines,
    tried_rows,
    try_like,
    try_query,
)
from mailer.relevance.defaults import DEFAULT_THRESHOLD, DEFAULT_TOP

if TYPE_CHECKING:
    from mailer import editing
    from mailer.config import Config, SubscriberConfig
    from mailer.matching import Query, Stats
    from mailer.papers import Paper
    from mailer.relevance.likes import Like
    from mailer.store import Store, WebSubscriber


subs_app = typer.Typer(
    name="subs",
    help="List and edit subscribers: config.toml's in the file (comments and layout are "
    "kept), those who signed up on the web pages in the database.",
    no_args_is_help=True,
)

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


LikeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--like",
        help="The title of a stored paper to find more like; repeatable.",
        metavar="TITLE",
    ),
]
LikeTextOpt = Annotated[
    str,
    typer.Option(
        "--like-text", help="Words describing the papers wanted, with or instead of --like."
    ),
]
TopOpt = Annotated[
    int | None,
    typer.Option(min=1, help=f"At most this many papers per digest [default: {DEFAULT_TOP}]."),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help=f"Least similarity a paper needs [default: {DEFAULT_THRESHOLD}; none with a query].",
    ),
]


def _similar(
    like: list[str] | None, like_text: str, top: int | None, threshold: float | None
) -> editing.Similar | None:
    """The 'more like these' keys given on the command line, if any."""
    from mailer import editing

    if not like and not like_text and top is None and threshold is None:
        return None
    return editing.Similar(tuple(like or ()), like_text, top, threshold)


def _report_missing(config: Config, email: str, name: str) -> None:
    """Say which example titles of one subscription are not stored, with the closest."""
    sub = config.subscriber(email)
    wanted = [q for q in sub.subscriptions if q.name == name and q.like]
    if not wanted:
        return
    store = open_existing(config)
    try:
        missing = missing_examples([sub.model_copy(update={"subscriptions": wanted})], store)
    finally:
        if store:
            store.close()
    for line in missing_lines(missing):
        out.print(Text(line, style="yellow"), soft_wrap=True)
    if missing:
        out.print("a title not stored yet counts from the pass that stores its paper")


def _config_to_edit(ctx: typer.Context) -> Path:
    from mailer.config_cache import DEFAULT_CONFIG

    path = state_of(ctx).config_path or DEFAULT_CONFIG
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


def _web_edit(
    ctx: typer.Context,
    email: str,
    edit: Callable[[Store, WebSubscriber], str],
    backfill: int | None = None,
) -> bool:
    """Apply ``edit`` in the database when ``email`` signed up on the web
    pages (config.toml does not have them); False for anyone else."""
    from mailer import actions
    from mailer.pipeline import utc_now
    from mailer.pipeline.roster import subscriber_config
    from mailer.selfservice import admin

    config = state_of(ctx).config()
    store = open_existing(config)
    if store is None:
        return False
    try:
        sub = admin.web_subscriber(store, config, email)
        if sub is None:
            return False
        what = edit(store, sub)
        out.print(f"[green]saved[/green] in the database {escape(store.safe_url)}: {escape(what)}")
        out.print("a web subscriber; a running daemon picks this up on its next pass")
        fresh = store.web.get(sub.id)
        if backfill and fresh is not None and fresh.subscriptions:
            added = actions.backfill(
                store, config, subscriber_config(fresh), backfill, utc_now(), fresh.id
            )
            out.print(
                f"backfilled {added} papers from the last {backfill} days for "
                f"{escape(fresh.email)}; they go out with their next digest"
            )
        return True
    finally:
        store.close()


def _backfill(config: Config, email: str, days: int) -> None:
    """Give a subscriber the already matched papers of the last ``days`` days."""
    from mailer import actions
    from mailer.pipeline import utc_now

    sub = config.subscriber(email)
    if not sub.subscriptions:
        out.print(f"nothing to backfill: {escape(sub.email)} has no subscriptions yet")
        return
    store = open_store(config)
    try:
        added = actions.backfill(store, config, sub, days, utc_now())
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
    """The subscribers of config.toml and of the web pages: origin, schedule, time zone,
    subscriptions, unsubscribed or not."""
    from mailer.cli.listing import listing
    from mailer.subscriber_list import config_rows, subscriber_rows

    state = state_of(ctx)
    config = state.config(check_queries=False)
    stored = stored_subscribers(config)
    rows = subscriber_rows(config_rows(config), stored.unsubscribed, stored.web)
    sys.stdout.write(listing(rows, state.config_source, as_json=as_json))
    sys.stdout.flush()


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
    from mailer import editing
    from mailer.editing import apply_edit
    from mailer.selfservice import admin

    path = _config_to_edit(ctx)
    store = open_existing(state_of(ctx).config())
    try:
        admin.refuse_config_add(store, email)
    finally:
        if store:
            store.close()
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
    from mailer import editing
    from mailer.editing import apply_edit
    from mailer.pipeline import utc_now
    from mailer.selfservice import admin

    if _web_edit(ctx, email, lambda store, sub: admin.remove(store, sub, utc_now())):
        return
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
    from mailer import editing
    from mailer.editing import apply_edit
    from mailer.pipeline import utc_now
    from mailer.selfservice import admin

    if key == "resubscribed" and value == "now":
        value = utc_now().isoformat()  # full precision: lifts exactly what came before
    if _web_edit(ctx, email, lambda store, sub: admin.set_key(store, sub, key, value, utc_now())):
        return
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
    query: Annotated[
        str,
        typer.Argument(help='Words, "phrases", AND, OR, NOT, -word, ( ); optional with --like.'),
    ] = "",
    replace: Annotated[bool, typer.Option(help="Replace the query of an existing NAME.")] = False,
    backfill: BackfillOpt = None,
    like: LikeOpt = None,
    like_text: LikeTextOpt = "",
    top: TopOpt = None,
    threshold: ThresholdOpt = None,
) -> None:
    """Add a subscription to a subscriber: a query, or papers like stored ones
    (--like TITLE, --like-text WORDS); try it first with 'subs try'."""
    from mailer import editing
    from mailer.editing import apply_edit
    from mailer.pipeline import utc_now
    from mailer.selfservice import admin

    similar = _similar(like, like_text, top, threshold)

    def on_the_web(store: Store, sub: WebSubscriber) -> str:
        if similar is not None:
            raise ConfigError(
                f"{email} signed up on the web pages, whose subscriptions are queries: "
                "--like, --like-text, --top and --threshold are for subscribers in the "
                "configuration file",
                hint="give them a query instead",
            )
        return admin.add_query(store, sub, name, query, replace_it=replace, now=utc_now())

    if _web_edit(ctx, email, on_the_web, backfill):
        return
    path = _config_to_edit(ctx)
    config = apply_edit(
        path,
        lambda t: editing.add_query(
            t, email, name, query, replace=replace, source=str(path), similar=similar
        ),
    )
    _edited(path, f"{'replaced' if replace else 'added'} query {name!r} for {email}", config)
    _report_missing(config, email, name)
    if backfill:
        _backfill(config, email, backfill)


@subs_app.command("remove-query")
def subs_remove_query(
    ctx: typer.Context,
    email: EmailArg,
    name: Annotated[str, typer.Argument(help="The subscription's name.")],
) -> None:
    """Remove one of a subscriber's subscription queries."""
    from mailer import editing
    from mailer.editing import apply_edit
    from mailer.pipeline import utc_now
    from mailer.selfservice import admin

    if _web_edit(ctx, email, lambda store, sub: admin.remove_query(store, sub, name, utc_now())):
        return
    path = _config_to_edit(ctx)
    config = apply_edit(path, lambda t: editing.remove_query(t, email, name, source=str(path)))
    _edited(path, f"removed query {name!r} of {email}", config)


def _caret(query: str, position: int, width: int = 70) -> str:
    """The query under the message with a caret at ``position``; a long one
    is shown only around it."""
    start = max(0, min(position - width // 2, len(query) - width))
    shown = query[start : start + width]
    return f"\n  {shown}\n  {' ' * (position - start)}^"


@subs_app.command("try")
def subs_try(
    ctx: typer.Context,
    query: Annotated[
        str, typer.Argument(help="The query to try; optional with --like or --like-text.")
    ] = "",
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
    like: LikeOpt = None,
    like_text: LikeTextOpt = "",
    top: TopOpt = None,
    threshold: ThresholdOpt = None,
) -> None:
    """Show which stored papers a query would match, with the matched terms
    highlighted; with --like, which a 'more like these' subscription would
    take, with their similarity."""
    from mailer.matching import Stats, parse_query
    from mailer.pipeline import like_examples, utc_now
    from mailer.pipeline.match import like_of
    from mailer.textfmt import excerpt

    similar = _similar(like, like_text, top, threshold)
    if not query and similar is None:
        raise ConfigError(
            "give a QUERY to try, or --like TITLE (or --like-text WORDS)",
            hint="e.g. mailer subs try --like 'Fast Model Editing at Scale'",
        )
    parsed = None
    if query:
        try:
            parsed = parse_query(query)
        except QueryError as exc:
            caret = "" if exc.position is None else _caret(query, exc.position)
            raise QueryError(
                exc.message + caret, query=query, position=exc.position, hint=exc.hint
            ) from exc
    config = state_of(ctx).config()
    store = open_existing(config)
    try:
        start = utc_now() - timedelta(days=since) if since else datetime.min.replace(tzinfo=UTC)
        stored = store.papers_since(start) if store else []
        if similar is not None:
            subscription = _try_subscription(query, similar)
            missing = missing_lines(missing_examples([subscription], store))
            examples = like_examples(store, [subscription]) if store else {}
            stats = store.stats() if store else Stats()
    finally:
        if store:
            store.close()
    window = f"first seen in the last {since} days" if since else "stored"
    if similar is not None:
        _print_taken(
            like_of(subscription.subscriptions[0]),
            parsed,
            stored,
            examples,
            stats,
            missing,
            limit=limit,
            as_json=as_json,
            window=window,
        )
        return
    assert parsed is not None
    papers = [p for _, p in stored]
    found = try_query(parsed, papers)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {"matched": len(found), "of": len(papers), "papers": tried_rows(found[:limit])},
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
        meta = f"     matched: {', '.join(t.terms)} · {meta_line(t.paper)}"
        out.print(Text(meta, style="dim"), soft_wrap=True)
        if t.abstract_marks:
            text, marks = excerpt(t.paper.abstract, t.abstract_marks)
            out.print(Text("     ").append_text(highlighted(text, marks)), soft_wrap=True)
    more = f" (showing {limit}; --limit N for more)" if len(found) > limit else ""
    out.print(f"{len(found)} of {len(papers)} papers {window} match {escape(query)}{more}")


def _try_subscription(query: str, similar: editing.Similar) -> SubscriberConfig:
    """A subscriber holding just the subscription being tried, validated as
    the configuration would be (so a bad value names its option)."""
    from pydantic import ValidationError

    from mailer.config import SubscriberConfig, SubscriptionConfig

    try:
        return SubscriberConfig(
            email="try@example.org",
            subscriptions=[
                SubscriptionConfig(
                    name="try",
                    query=query,
                    like=list(similar.like),
                    like_text=similar.like_text,
                    top=similar.top,
                    threshold=similar.threshold,
                )
            ],
        )
    except ValidationError as exc:
        raise ConfigError(
            f"cannot try that: {exc.errors()[0]['msg'].removeprefix('Value error, ')}",
            hint="see 'mailer subs try --help'",
        ) from exc


def _print_taken(
    like: Like,
    query: Query | None,
    stored: list[tuple[int, Paper]],
    examples: dict[str, Paper],
    stats: Stats,
    missing: list[str],
    *,
    limit: int,
    as_json: bool,
    window: str,
) -> None:
    from mailer.matching import highlight_spans

    taken = try_like(like, query, stored, examples, stats)
    if as_json:
        rows = [
            {"title": t.paper.title, "score": round(t.score, 4), "words": list(t.words)}
            for t in taken[:limit]
        ]
        body = {
            "taken": len(taken),
            "of": len(stored),
            "threshold": like.least if like.least >= 0 else None,
            "top": like.top,
            "missing": missing,
            "papers": rows,
        }
        sys.stdout.write(json.dumps(body, ensure_ascii=False, indent=2) + "\n")
        return
    for warning in missing:
        out.print(Text(warning, style="yellow"), soft_wrap=True)
    for n, t in enumerate(taken[:limit], 1):
        marks = highlight_spans(t.paper.title, t.words)
        line = Text(f"{n:>3}. {t.score:.3f}  ", style="bold" if n <= like.top else "dim")
        line.append_text(highlighted(t.paper.title, marks))
        out.print(line, soft_wrap=True)
        why = f"     like the examples in: {', '.join(t.words)} · {meta_line(t.paper)}"
        out.print(Text(why, style="dim"), soft_wrap=True)
    least = f"at or above {like.least:.2f}" if like.least >= 0 else "matching the query"
    more = f" (showing {limit}; --limit N for more)" if len(taken) > limit else ""
    out.print(
        f"{len(taken)} of {len(stored)} papers {window} are {least}{more}; "
        f"a digest shows at most the {like.top} most similar"
    )
