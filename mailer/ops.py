"""What the operator sees: log formats, progress, query try-outs and the status report.

Values in, values out where possible; the CLI prints what these return.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from mailer.addresses import address_key

if TYPE_CHECKING:
    # Hints only: the CLI imports this module to build its commands, so what
    # it needs of the store, pipeline and matching is imported where used.
    from rich.progress import Progress

    from mailer.config import Config, SubscriberConfig
    from mailer.matching import Doc, Query, Stats
    from mailer.papers import Paper
    from mailer.pipeline import Pipeline
    from mailer.relevance.likes import Like
    from mailer.store import DeliveryRow, Store, SubscriberState, Suppression

log = logging.getLogger("mailer")

EMBEDDED = "embedded example"
HIGHLIGHT = "bold black on yellow"


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


class PreviewFormat(enum.StrEnum):
    html = "html"
    text = "text"


# --- logs -------------------------------------------------------------------------

_FIELD = re.compile(r"(?<![^\s(])([a-z_]+)=(\S+)")
_BASE_KEYS = frozenset({"time", "level", "logger", "message", "exc", "stack"})


def log_fields(message: str) -> dict[str, Any]:
    """The ``key=value`` fields of a log message (``reply=`` takes the rest of
    the line, since SMTP replies hold spaces); whole numbers become numbers."""
    fields: dict[str, Any] = {}
    for m in _FIELD.finditer(message):
        key, value = m.group(1), m.group(2)
        if key in _BASE_KEYS:
            continue
        if key == "reply":
            fields[key] = message[m.start(2) :].strip()
            break
        fields[key] = int(value) if value.isdigit() else value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; a traceback goes into the
    ``exc`` field (escaped newlines), never onto lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            **log_fields(message),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body, ensure_ascii=False, default=str)


# --- progress ---------------------------------------------------------------------


@contextmanager
def dump_progress(
    pipeline: Pipeline, *, fancy: bool, console: Console | None = None
) -> Iterator[None]:
    """Show ingest progress: a rich bar on a terminal, else a log line per dump."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress: Progress | None = None
    task = None

    def bar(done: int, total: int, path: Path) -> None:
        nonlocal progress, task
        if progress is None:
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            progress.start()
            task = progress.add_task("ingesting dumps", total=total)
        assert task is not None
        progress.update(task, total=total, completed=done, description=f"ingested {path.name}")

    def lines(done: int, total: int, path: Path) -> None:
        if total > 1:
            log.info("progress dumps=%d/%d", done, total)

    pipeline.on_dump = bar if fancy else lines
    try:
        yield
    finally:
        pipeline.on_dump = None
        if progress is not None:
            progress.stop()


# --- trying a query -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tried:
    paper: Paper
    terms: tuple[str, ...]
    title_marks: tuple[tuple[int, int], ...]
    abstract_marks: tuple[tuple[int, int], ...]


def try_query(query: Query, papers: Sequence[Paper | Doc]) -> list[Tried]:
    """The papers ``query`` matches, with where its terms occur: ``subs try``
    and the web pages' previews. Papers given analysed (``Doc``, as the
    pages keep the last 30 days') are not analysed again."""
    from mailer.matching import Doc, highlight_spans, match_paper

    found = []
    for item in papers:
        paper = item.paper if isinstance(item, Doc) else item
        for hit in match_paper(item, {"q": query}):
            found.append(
                Tried(
                    paper,
                    hit.terms,
                    tuple(highlight_spans(paper.title, hit.terms)),
                    tuple(highlight_spans(paper.abstract, hit.terms)),
                )
            )
    return found


def tried_rows(found: Sequence[Tried]) -> list[dict[str, object]]:
    """``subs try --json``'s papers: the matched terms and highlight spans."""
    return [
        {
            "title": t.paper.title,
            "terms": list(t.terms),
            "title_marks": [list(m) for m in t.title_marks],
            "abstract_marks": [list(m) for m in t.abstract_marks],
            "published": t.paper.published.isoformat() if t.paper.published else None,
            "upvotes": t.paper.upvotes,
        }
        for t in found
    ]


def highlighted(text: str, marks: Sequence[tuple[int, int]]) -> Text:
    """``text`` as literal rich Text (never markup) with ``marks`` highlighted."""
    out = Text(text)
    for start, end in marks:
        out.stylize(HIGHLIGHT, start, end)
    return out


# --- 'more like these' subscriptions ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class MissingTitle:
    """An example title of a similarity subscription that is not stored."""

    email: str
    subscription: str
    title: str
    closest: tuple[str, ...]


def missing_examples(
    subscribers: Sequence[SubscriberConfig], store: Store | None
) -> list[MissingTitle]:
    """The example titles not among the stored papers, each with the closest
    stored titles (none at all when there is no database yet)."""
    from mailer.pipeline import compile_likes, like_examples
    from mailer.relevance.likes import closest_titles, missing_titles

    likes = compile_likes(subscribers)
    if not likes:
        return []
    stored = like_examples(store, subscribers) if store else {}
    missing = [
        (email, name, title)
        for (email, name), like in likes.items()
        for title in missing_titles(like, stored)
    ]
    titles = store.titles() if store and missing else []
    return [
        MissingTitle(email, name, title, tuple(closest_titles(title, titles)))
        for email, name, title in missing
    ]


def missing_lines(missing: Sequence[MissingTitle]) -> list[str]:
    """What ``check-config`` and ``subs add-query --like`` say about them."""
    lines = []
    for m in missing:
        line = f"{m.email} · {m.subscription}: like title not among the stored papers: {m.title!r}"
        if m.closest:
            line += "; closest: " + "; ".join(repr(t) for t in m.closest)
        lines.append(line)
    return lines


@dataclass(frozen=True, slots=True)
class Taken:
    """A stored paper a similarity subscription would take, and why."""

    paper: Paper
    score: float
    words: tuple[str, ...]


def try_like(
    like: Like,
    query: Query | None,
    papers: Sequence[tuple[int, Paper]],
    examples: Mapping[str, Paper],
    stats: Stats,
) -> list[Taken]:
    """The stored papers a 'more like these' subscription would take, most
    similar first: matched as a pass would (``match_rows``), so the
    threshold, the query and the examples' exclusion all apply."""
    from mailer.pipeline import analysed, build_engine, like_index, match_rows

    key = ("try", "try")
    engine = build_engine({"try": {"try": query}} if query else {}, stats)
    rows = match_rows(
        engine, analysed(papers, stats), {"try": 0}, like_index({key: like}, examples, stats)
    )
    by_id = dict(papers)
    taken = [Taken(by_id[r.paper_id], r.scores[0], r.subscription_terms[0]) for r in rows]
    return sorted(taken, key=lambda t: -t.score)


# --- readers' feedback -----------------------------------------------------------------


def feedback_report(store: Store, email: str) -> dict[str, object] | None:
    """What ``mailer feedback list`` shows: a subscriber's standing marks,
    newest first, and their model; None if the address is not a subscriber."""
    from mailer.relevance.reader import MIN_POSITIVES
    from mailer.store import MarkKind

    labels = {MarkKind.MORE: "more like this", MarkKind.LESS: "not for me"}
    marks = store.marks_of(email)
    if marks is None:
        return None
    subscriber_id = store.subscriber_id(email)
    models = store.reader_models([subscriber_id]) if subscriber_id is not None else {}
    model = next(iter(models.values()), None)
    positives = sum(1 for m in marks if m.kind is MarkKind.MORE)
    if model is not None:
        said = (
            f"model trained {model.trained_at:%Y-%m-%d %H:%M} UTC on {model.positives} "
            f"'more like this' and {model.negatives} other papers"
        )
    elif positives >= MIN_POSITIVES:
        said = "no model yet: the next pass trains one"
    else:
        said = f"no model: it needs {MIN_POSITIVES} 'more like this' marks, there are {positives}"
    return {
        "email": email,
        "marks": [
            {
                "at": m.at.isoformat(timespec="seconds"),
                "mark": labels[m.kind],
                "title": m.paper.title,
            }
            for m in marks
        ],
        "model": None
        if model is None
        else {
            "trained_at": model.trained_at.isoformat(timespec="seconds"),
            "positives": model.positives,
            "negatives": model.negatives,
        },
        "model_text": said,
    }


# --- the status report ----------------------------------------------------------------


def next_due(
    sub: SubscriberConfig, state: SubscriberState | None, now: datetime
) -> tuple[datetime | None, str]:
    """When this subscriber's next digest can go out, and how to say it."""
    if state is None:
        return None, "not yet in the database (the next pass adds them)"
    if state.unsubscribed_at is not None or not state.active:
        return None, "never (unsubscribed)" if state.unsubscribed_at else "never (removed)"
    from zoneinfo import ZoneInfo

    from mailer.schedule import Schedule

    schedule = Schedule.parse(sub.schedule)
    zone = ZoneInfo(sub.timezone)
    last = _aware(state.last_digest_at)
    since = _aware(state.created_at) or now
    due = schedule.is_due(last=last, since=since, now=now, zone=zone)
    if due:
        if state.pending:
            return now, "now (the next pass)"
        return None, "on the next pass that matches a paper"
    slot = schedule.next_slot(now, zone)
    when = slot.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if slot else "unknown"
    return slot, when + ("" if state.pending else " (if anything matches by then)")


def _aware(value: datetime | None) -> datetime | None:
    from mailer.store import utc

    return None if value is None else utc(value)


def status_report(
    config: Config, store: Store | None, source: str, now: datetime
) -> dict[str, Any]:
    """Everything ``mailer status`` shows, as plain JSON-able values."""
    from mailer.pipeline.ingest import UNREADABLE_DUMPS
    from mailer.store import LAST_PASS, DeliveryStatus, DumpStatus, Origin

    dumps = store.dump_counts() if store else {}
    outbox = store.outbox_counts() if store else {}
    states = store.subscriber_states() if store else {}
    last = store.get_state(LAST_PASS) if store else None
    unreadable = store.get_state(UNREADABLE_DUMPS) if store else None
    configured = {address_key(s.email) for s in config.subscribers}
    subscribers = []
    for sub in config.subscribers:
        state = states.get(address_key(sub.email))
        when, said = next_due(sub, state, now)
        subscribers.append(
            {
                "email": sub.email,
                "schedule": sub.schedule,
                "timezone": sub.timezone,
                "subscriptions": len(sub.subscriptions),
                "unsubscribed_at": _iso(state.unsubscribed_at if state else None),
                "waiting": state.pending if state else 0,
                "last_digest_at": _iso(state.last_digest_at if state else None),
                "next_due": _iso(when),
                "next_due_text": said,
            }
        )
    heartbeat = config.daemon.heartbeat
    beat = None
    if heartbeat.exists():
        age = now.timestamp() - heartbeat.stat().st_mtime
        beat = {"path": str(heartbeat), "age_seconds": round(age, 1)}
    return {
        "configuration": source,
        "database": store.safe_url if store else None,
        "dumps": {
            "seen": sum(dumps.values()),
            "ingested": dumps.get(DumpStatus.INGESTED, 0) + dumps.get(DumpStatus.EMPTY, 0),
            "empty": dumps.get(DumpStatus.EMPTY, 0),
            "refused": dumps.get(DumpStatus.REFUSED, 0),
            "refusals": [
                {
                    "path": d.path,
                    "reason": (d.error or "").removeprefix(f"{d.path}: "),
                    "at": _iso(d.ingested_at),
                }
                for d in (store.refused_dumps() if store else [])
            ],
            # As the last pass found them: files in the watch folder it could not read.
            "unreadable": json.loads(unreadable.value) if unreadable else [],
        },
        "papers": store.count_papers() if store else 0,
        "subscribers": {
            "configured": len(config.subscribers),
            "unsubscribed": sum(1 for s in states.values() if s.unsubscribed_at is not None),
            "removed": sum(
                1
                for k, s in states.items()
                if k not in configured and not s.active and s.origin == Origin.CONFIG
            ),
            # Signed up on the web pages, by state: active, paused, pending, unsubscribed, removed.
            "web": store.web.counts() if store else {},
        },
        "matches_waiting": sum(
            s.pending for k, s in states.items() if k in configured or s.origin == Origin.WEB
        ),
        "outbox": {
            str(k): outbox.get(k, 0)
            for k in (
                DeliveryStatus.PENDING,
                DeliveryStatus.SENT,
                DeliveryStatus.FAILED,
                DeliveryStatus.BOUNCED,
            )
        },
        "suppressed": len(store.suppressed_keys()) if store else 0,
        "last_pass": (
            {"at": _iso(last.updated_at), "summary": last.value} if last is not None else None
        ),
        "heartbeat": beat,
        "nodes": node_report(store, config.daemon.lease_seconds, now) if store else [],
        "next_digests": subscribers,
    }


def node_report(store: Store, lease: float, now: datetime) -> list[dict[str, Any]]:
    """The daemons on this database (mailer.cluster), as ``mailer status``
    lists them: a node is alive while its heartbeat is younger than ``lease``."""
    from mailer.store import utc

    rows, db_now = store.node_rows()
    sent = store.sent_by_node(now - timedelta(hours=1))
    nodes = []
    for row in rows:
        age = (db_now - utc(row.heartbeat_at)).total_seconds()
        nodes.append(
            {
                "id": row.id,
                "host": row.host,
                "pid": row.pid,
                "role": row.role,
                "alive": row.role != "stopped" and age < lease,
                "started_at": _iso(row.started_at),
                "last_heartbeat": _iso(row.heartbeat_at),
                "heartbeat_age_seconds": round(age, 1),
                "sent_last_hour": sent.get(row.id, 0),
            }
        )
    return nodes


def _iso(value: datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat(timespec="seconds") if value else None


# --- the outbox and the subscribers ------------------------------------------------------


def outbox_entry(row: DeliveryRow) -> dict[str, object]:
    """One outbox message as ``mailer outbox`` lists it, in the state the
    operator thinks in (queued, deferred, sent, failed)."""

    def iso(d: datetime | None) -> str | None:
        return d.isoformat(timespec="seconds") if d else None

    from mailer.store import OutboxState

    state = OutboxState.of(row.status, row.attempts)
    return {
        "id": row.id,
        "recipient": row.recipient,
        "message_id": row.message_id,
        "subject": row.subject,
        "papers": row.papers,
        "status": str(state),
        "attempts": row.attempts,
        "created_at": iso(row.created_at),
        "next_attempt_at": (
            iso(row.next_attempt_at)
            if state in (OutboxState.QUEUED, OutboxState.DEFERRED)
            else None
        ),
        "sent_at": iso(row.sent_at),
        "last_reply": row.last_reply,
    }


def suppression_entry(suppression: Suppression) -> dict[str, object]:
    """One suppressed address as ``mailer suppressions list`` shows it."""
    return {
        "address": suppression.address,
        "since": _iso(suppression.since),
        "source": suppression.source,
        "reason": suppression.reason,
    }
