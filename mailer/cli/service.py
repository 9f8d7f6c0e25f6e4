"""Commands that run the service or show what it does and would do: run,
ingest, send-test, check-config, parse, preview and status."""

from __future__ import annotations

import json
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mailer import __version__
from mailer.cli.app import err, log, meta_line, open_existing, open_store, out, state_of
from mailer.errors import ConfigError, DeliveryError, MailerError
from mailer.ops import (
    PreviewFormat,
    dump_progress,
    missing_examples,
    missing_lines,
    next_due,
    status_report,
)

if TYPE_CHECKING:
    from mailer.config import Config
    from mailer.dkim import DkimSigner
    from mailer.pipeline import PassReport


def run(ctx: typer.Context) -> None:
    """Run the daemon: watch the dumps folder, ingest, match and send digests."""
    import asyncio

    from mailer.actions import check_rendering, compose_pool
    from mailer.cluster import joined
    from mailer.daemon import Daemon
    from mailer.delivery import make_transport
    from mailer.pipeline import Pipeline

    state = state_of(ctx)
    config = state.config()
    log.info("mailer %s with configuration from %s", __version__, state.config_source)
    check_rendering(config)
    store = open_store(config)
    try:
        with joined(config, store) as node, compose_pool(config) as pool:
            pipeline = Pipeline(
                config,
                store,
                lambda: make_transport(pipeline.config),
                compose_pool=pool,
                node=node,
            )
            daemon = Daemon(
                pipeline, config.watch.interval_seconds, config_path=state.config_file()
            )
            asyncio.run(daemon.run())
    finally:
        store.close()


def ingest(ctx: typer.Context) -> None:
    """Run one pass (ingest new dumps, match, send what is due), then exit."""
    import asyncio

    from mailer.actions import compose_pool
    from mailer.cluster import joined
    from mailer.delivery import make_transport
    from mailer.pipeline import Pipeline

    state = state_of(ctx)
    config = state.config()
    store = open_store(config)
    try:
        with joined(config, store) as node, compose_pool(config) as pool:
            pipeline = Pipeline(
                config, store, lambda: make_transport(config), compose_pool=pool, node=node
            )
            fancy = state.log_format == "text" and err.is_terminal
            with dump_progress(pipeline, fancy=fancy, console=err):
                report: PassReport = asyncio.run(pipeline.run_pass())
    finally:
        store.close()
    out.print(f"pass done: {report.summary()}")
    if report.deferred:
        raise typer.Exit(3)


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
    import asyncio

    from mailer.actions import trial_digest
    from mailer.delivery import make_transport
    from mailer.matching import Stats
    from mailer.pipeline import like_examples, utc_now
    from mailer.verp import envelope_sender

    config = state_of(ctx).config()
    if not config.subscribers:
        raise ConfigError("no [[subscribers]] are configured", hint="add one to the config file")
    sub = config.subscriber(subscriber) if subscriber else config.subscribers[0]
    now = utc_now()
    since = now - timedelta(days=days)
    store = open_existing(config)
    try:
        papers = store.papers_since(since) if store else []
        stats = store.stats() if store else Stats()
        examples = like_examples(store, [sub]) if store else {}
    finally:
        if store:
            store.close()
    composed = trial_digest(config, sub, to, papers, stats, since, now, examples)

    async def send() -> str:
        async with make_transport(config) as transport:
            # No outbox row, so no VERP token: the plain return_path (or From).
            sender = envelope_sender(config.smtp, None, composed.message_id)
            return await transport.send(sender, to, composed.data)

    try:
        reply = asyncio.run(send())
    except DeliveryError as exc:
        raise DeliveryError(f"test digest to {to} not sent: {exc.message}", hint=exc.hint) from exc
    count = composed.digest.count
    what = f"{count} papers" if count else "no papers matched; said so"
    out.print(f"sent test digest for {sub.email} to {to} ({what}): {composed.subject}")
    out.print(f"Message-ID {composed.message_id}; {reply.strip()}")


def check_config(ctx: typer.Context) -> None:
    """Validate the configuration and explain what it will do."""
    from mailer.actions import check_rendering
    from mailer.dkim import load_signer
    from mailer.store import hide_password

    state = state_of(ctx)
    config = state.config()
    check_rendering(config)
    signer = load_signer(config.dkim)
    if signer is not None:
        signer.check()
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
        if config.web.self_service:
            out.print(
                f"        readers' pages on: {config.web.base_url}/subscribe, and a manage "
                f"link in every digest (config subscribers: {config.web.config_subscriber_pages})"
            )
    _describe_dkim(config, signer)
    _describe_bounces(config)
    if not config.subscribers:
        out.print("[yellow]no subscribers: nothing will be sent[/yellow]")
    for sub in config.subscribers:
        out.print(
            Text(f"subscriber {sub.name or '-'} <{sub.email}>: {sub.schedule}, {sub.timezone}")
        )
        for q in sub.subscriptions:
            out.print(Text(f"  {q.name}: {q.described}"), soft_wrap=True)
    _check_examples(config)


def _check_examples(config: Config) -> None:
    """Say which 'like' titles are not among the stored papers, with the closest."""
    store = open_existing(config)
    try:
        missing = missing_lines(missing_examples(config.subscribers, store))
    finally:
        if store:
            store.close()
    for line in missing:
        out.print(Text(line, style="yellow"), soft_wrap=True)
    if missing:
        out.print("a title not stored yet counts from the pass that stores its paper")


def _describe_dkim(config: Config, signer: DkimSigner | None) -> None:
    """Whom messages are signed as, and which DNS record that needs."""
    if signer is None:
        out.print("dkim    off: messages are not signed ([dkim] domain is empty)")
        return
    out.print(f"dkim    sign as d={signer.domain} s={signer.selector} (rsa-sha256)")
    out.print(
        Text(f"        expects TXT {signer.record_name}: {signer.record_value}"), soft_wrap=True
    )
    sender_domain = config.smtp.sender_address.rpartition("@")[2].lower()
    if sender_domain != signer.domain and not sender_domain.endswith("." + signer.domain):
        out.print(
            f"[yellow]dkim.domain {signer.domain} is not the sender's domain {sender_domain}: "
            "DMARC needs them aligned[/yellow]"
        )


def _describe_bounces(config: Config) -> None:
    """Where bounces are read, and when they suppress an address."""
    b = config.bounces
    if b.maildir is None and not b.imap_url:
        out.print("bounces off: no bounce mailbox is read ([bounces] maildir or imap_url)")
        return
    where = f"Maildir {b.maildir}" if b.maildir else f"IMAP over TLS {b.imap_url}"
    if b.ca_file:
        where += f", trusting the CA in {b.ca_file}"
    out.print(Text(f"bounces read {where} every pass"), soft_wrap=True)
    out.print(
        f"        suppress after {b.hard_limit} hard bounce(s), or {b.soft_limit} soft "
        f"within {b.soft_window_days} days"
    )
    if not config.smtp.return_path:
        out.print(
            "[yellow]smtp.return_path is empty: bounces go to the sender address; point "
            "it at the bounce mailbox so each bounce names its message (VERP)[/yellow]"
        )


def parse(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Dump files to parse.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per record (JSON Lines).")
    ] = False,
) -> None:
    """Parse dumps and print their records; a summary per file goes to stderr.

    Files are read as the daemon reads them, with [watch] max_dump_bytes and
    max_line_bytes from the configuration (the defaults if it is invalid)."""
    from mailer.config import WatchConfig
    from mailer.dumpfiles import read_dump
    from mailer.dumps import paper_json

    try:
        watch = state_of(ctx).config().watch
    except ConfigError:
        watch = WatchConfig()
    today = date.today()
    refused = 0
    for path in files:
        try:
            parsed = read_dump(
                path,
                today=today,
                max_bytes=watch.max_dump_bytes,
                max_line_bytes=watch.max_line_bytes,
            )
        except MailerError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, soft_wrap=True)
            refused += 1
            continue
        for warning in parsed.warnings:
            err.print(f"[yellow]warning:[/yellow] {escape(str(warning))}", soft_wrap=True)
        for paper in parsed.papers:
            if as_json:
                sys.stdout.write(json.dumps(paper_json(paper), ensure_ascii=False) + "\n")
            else:
                out.print(f"[bold]{escape(paper.title)}[/bold]", soft_wrap=True)
                out.print(f"  {escape(meta_line(paper))}", soft_wrap=True)
        page = parsed.page_date.isoformat() if parsed.page_date else "none"
        err.print(
            f"{escape(str(path))}: {len(parsed.papers)} records, page date {page}, "
            f"{len(parsed.warnings)} warnings",
            soft_wrap=True,
        )
    if refused:
        raise typer.Exit(1)


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
    from mailer.actions import preview_digest
    from mailer.addresses import address_key
    from mailer.matching import Stats
    from mailer.mime import message_part
    from mailer.pipeline import utc_now
    from mailer.pipeline.compose import readers_of, suggested

    config = state_of(ctx).config()
    sub = config.subscriber(subscriber)
    store = open_existing(config)
    try:
        states = store.subscriber_states() if store else {}
        state = states.get(address_key(sub.email))
        pending = store.pending_matches(state.id) if store and state else []
        stats = store.stats() if store and pending else Stats()
        reader = readers_of(store, [state.id], stats).get(state.id) if store and state else None
    finally:
        if store:
            store.close()
    if all(suggested(m) for m in pending):
        err.print(
            f"nothing waiting for {escape(sub.email)}: no digest would be sent now "
            "(only papers matched since their last digest are sent)"
        )
        return
    assert state is not None
    composed = preview_digest(config, sub, state, pending, stats, utc_now(), reader)
    kind = fmt or (
        PreviewFormat.html
        if out_file and out_file.suffix.lower() in (".html", ".htm")
        else PreviewFormat.text
    )
    body = message_part(composed.data, "html" if kind is PreviewFormat.html else "plain")
    _, when = next_due(sub, state, utc_now())
    err.print(
        f"Subject: {escape(composed.subject)}\n{composed.digest.count} papers for "
        f"{escape(sub.email)}; next due: {escape(when)}",
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


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What the service has done and will do: dumps, papers, subscribers, outbox, schedule."""
    from mailer.pipeline import utc_now
    from mailer.store import hide_password

    state = state_of(ctx)
    config = state.config()
    store = open_existing(config)
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
        *(("  unreadable", f"{u['path']}: {u['reason']}") for u in d["unreadable"]),
        ("papers", f"{report['papers']} stored"),
        (
            "subscribers",
            f"{s['configured']} configured, {s['unsubscribed']} unsubscribed, "
            f"{s['removed']} removed",
        ),
        (
            "  on the web",
            ", ".join(f"{n} {state}" for state, n in s["web"].items()) or "none",
        ),
        ("matches", f"{report['matches_waiting']} waiting for a digest"),
        (
            "outbox",
            f"{o['pending']} pending, {o['sent']} sent, {o['failed']} failed, "
            f"{o['bounced']} bounced",
        ),
        ("suppressed", f"{report['suppressed']} addresses ('mailer suppressions list')"),
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
    if report["nodes"]:
        nodes = Table(title="nodes", title_justify="left")
        for column in ("node", "role", "last heartbeat", "sent in the last hour"):
            nodes.add_column(column)
        for node in report["nodes"]:
            age = f"{node['heartbeat_age_seconds']:.0f}s ago"
            role = node["role"] if node["alive"] or node["role"] == "stopped" else "gone"
            nodes.add_row(
                Text(node["id"]),
                role,
                f"{node['last_heartbeat']} ({age})",
                str(node["sent_last_hour"]),
            )
        out.print(nodes)
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
