"""The readers' pages with 10,000 web subscribers: page loads and saves.

    PYTHONPATH=. python -m bench.selfservice [--subscribers 10000] [--requests 200] [--url URL]

Seeds a database (a fresh SQLite file, or a throwaway database on the
PostgreSQL server ``--url`` names) with N confirmed web subscribers, two
subscriptions each and five sent digests each, the config subscribers of a
small config, and 3,000 papers first seen in the last 30 days; then serves
the pages as ``mailer run`` does (mailer.web with mailer.selfservice, on a
loopback port) and times, over one keep-alive connection as a reverse proxy
would hold, the round trip of:

- ``GET /manage/TOKEN`` of random subscribers (the page load; target < 100 ms),
- ``POST /manage/TOKEN`` saving a changed query and schedule (target < 200 ms),
- ``GET /subscribe``, ``POST /subscribe`` (the answer; the store work follows
  it), ``POST /check`` (a live check over the 30 days' papers, cache warm),
  ``GET /confirm/TOKEN``;

and, on the daemon's side, what a pass pays after a change: rereading the
web subscribers and rebuilding the matching engine (``Pipeline.sync``).
Prints median, 95th percentile and maximum in ms, the targets' ratios, and
the load average (the client shares this process, so its time is counted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.corpus import papers, subscriptions, vocabulary
from bench.ingest import fresh_database
from mailer.config import Config, parse_config
from mailer.pipeline import Pipeline
from mailer.selfservice.app import SelfService
from mailer.selfservice.links import confirm_url, manage_url
from mailer.store import DeliveryKind, DeliveryStatus, Store
from mailer.store.schema import DELIVERIES, SUBSCRIBERS, SUBSCRIPTIONS, WEB_SUBSCRIBERS, Origin
from mailer.web import WebServer, make_app

SECRET = "bench-secret-0123456789abcdef"
BASE = "http://127.0.0.1:8080"
TARGETS = {"manage page": 100.0, "save": 200.0}
DIGESTS_EACH = 5


def config_for(url: str, base: str) -> Config:
    return parse_config(
        f"""
[database]
url = "{url}"
[web]
listen = "127.0.0.1:0"
base_url = "{base}"
secret = "{SECRET}"
self_service = true
signups_per_ip_per_hour = 10000
signups_per_address_per_hour = 100
[[subscribers]]
email = "ada@example.org"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model"'
""",
        source="bench",
    )


def seed(store: Store, config: Config, count: int, now: datetime) -> list[str]:
    """``count`` confirmed web subscribers with their digests, and 3,000 recent papers."""
    vocab = vocabulary()
    queries = subscriptions(vocab, 2 * count)
    store.sync_subscribers([("ada@example.org", "", [("Diffusion", '"diffusion model"')])], now)
    emails = [f"reader{n}@example.org" for n in range(count)]
    with store.transaction() as conn:
        conn.execute(
            SUBSCRIBERS.insert(),
            [
                {
                    "email": e,
                    "email_key": e,
                    "name": f"Reader {n}",
                    "active": True,
                    "created_at": now - timedelta(days=40),
                    "origin": Origin.WEB,
                }
                for n, e in enumerate(emails)
            ],
        )
        ids = dict(
            conn.execute(
                SUBSCRIBERS.select().with_only_columns(SUBSCRIBERS.c.email, SUBSCRIBERS.c.id)
            ).all()
        )
        conn.execute(
            WEB_SUBSCRIBERS.insert(),
            [
                {
                    "subscriber_id": ids[e],
                    "schedule": "daily 08:00",
                    "timezone": "Europe/Paris",
                    "max_papers": None,
                    "paused_until": None,
                    "confirmed_at": now - timedelta(days=40),
                    "confirm_nonce": None,
                    "signed_up_at": now - timedelta(days=40),
                    "updated_at": now - timedelta(days=40),
                }
                for e in emails
            ],
        )
        conn.execute(
            SUBSCRIPTIONS.insert(),
            [
                {
                    "subscriber_id": ids[e],
                    "name": f"Topic {k}",
                    "query": queries[2 * n + k],
                    "active": True,
                }
                for n, e in enumerate(emails)
                for k in (0, 1)
            ],
        )
        body = b"x" * 40_000  # a digest's size on the wire
        conn.execute(
            DELIVERIES.insert(),
            [
                {
                    "subscriber_id": ids[e],
                    "recipient": e,
                    "message_id": f"<{n}.{d}@bench>",
                    "subject": "digest",
                    "papers": 12,
                    "message": body,
                    "status": DeliveryStatus.SENT,
                    "attempts": 1,
                    "created_at": now - timedelta(days=d),
                    "sent_at": now - timedelta(days=d),
                    "kind": DeliveryKind.DIGEST,
                }
                for n, e in enumerate(emails)
                for d in range(DIGESTS_EACH)
            ],
        )
    store.web.pause(ids[emails[0]], None, now)  # a version, as any change makes
    recent = papers(vocab, 3000)
    for start in range(0, len(recent), 500):
        store.ingest(
            path=f"bench-{start}.txt",
            sha256=f"{start:064d}",
            size=1,
            page_date=None,
            papers=recent[start : start + 500],
            warnings=0,
            now=now - timedelta(days=start // 500),
        )
    return emails


def summary(label: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    target = TARGETS.get(label)
    verdict = f"{p95 / target:.2f} of target {target:.0f}" if target else ""
    return (
        f"| {label} | {len(ms)} | {statistics.median(ms):.1f} | {p95:.1f} | {ms[-1]:.1f} "
        f"| {verdict} |"
    )


async def timed(
    times: list[float], request: Callable[[], Awaitable[tuple[int, str]]], status: int = 200
) -> str:
    started = time.perf_counter()
    got, text = await request()
    times.append(time.perf_counter() - started)
    assert got == status, (got, text[:300])
    return text


async def serve_and_time(store: Store, config: Config, emails: list[str], n: int) -> list[str]:
    site = SelfService(store, config=lambda: config, clock=lambda: datetime.now(UTC))
    app = make_app(store, secret=lambda: SECRET, clock=lambda: datetime.now(UTC), self_service=site)
    server = WebServer(app, "127.0.0.1:0")
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    rng = random.Random(3)
    rows = []
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:

            async def get(url: str) -> tuple[int, str]:
                async with session.get(url) as r:
                    return r.status, await r.text()

            async def post(url: str, data: dict[str, Any]) -> tuple[int, str]:
                async with session.post(url, data=data) as r:
                    return r.status, await r.text()

            page = await timed([], lambda: get(base + "/subscribe"))  # the cookie
            found = re.search(r'name="csrf" value="([^"]+)"', page)
            assert found is not None
            csrf = found.group(1)
            for _ in range(20):  # warm up: connections, templates, the papers' cache
                await get(base + "/subscribe")
                await post(base + "/check", {"csrf": csrf, "query": "diffusion"})
            loads: list[float] = []
            saves: list[float] = []
            for k in range(n):
                email = rng.choice(emails)
                url = manage_url(base, email, SECRET)
                await timed(loads, lambda u=url: get(u))
                if k % 2 == 0:
                    fields = {
                        "csrf": csrf,
                        "action": "save",
                        "name": "Reader",
                        "schedule": rng.choice(["instant", "daily", "weekly"]),
                        "time": "07:15",
                        "day": "tue",
                        "timezone": "Europe/Paris",
                        "sub-0-name": "Topic 0",
                        "sub-0-query": "diffusion OR agents",
                        "sub-1-name": "Topic 1",
                        "sub-1-query": '"language model"',
                    }
                    shown = await timed(saves, lambda u=url, f=fields: post(u, f))
                    assert "Saved." in shown
            rows += [summary("manage page", loads), summary("save", saves)]
            subscribe: list[float] = []
            signup: list[float] = []
            check: list[float] = []
            confirm: list[float] = []
            for k in range(n):
                await timed(subscribe, lambda: get(base + "/subscribe"))
                fields = {
                    "csrf": csrf,
                    "action": "subscribe",
                    "email": f"new{k}@example.org",
                    "sub-0-name": "A",
                    "sub-0-query": "agents",
                    "timezone": "UTC",
                }
                await timed(signup, lambda f=fields: post(base + "/subscribe", f))
                query = rng.choice(["diffusion model", '"language model" agents', "robot* -survey"])
                await timed(
                    check, lambda q=query: post(base + "/check", {"csrf": csrf, "query": q})
                )
            await site.drained()
            pending = [
                w for w in store.web.listing() if w.status == "pending"
            ]  # the sign-ups just made
            for w in pending[:n]:
                assert w.signed_up_at is not None
            for k in range(min(n, len(pending))):
                url = confirm_url(base, pending[k].id, "unknown-nonce", datetime.now(UTC), SECRET)
                await timed(confirm, lambda u=url: get(u), status=404)
            rows += [
                summary("subscribe page", subscribe),
                summary("sign-up answer", signup),
                summary("live check", check),
                summary("confirm page", confirm),
            ]
    finally:
        await server.stop()
    return rows


def pass_side(store: Store, config: Config) -> list[str]:
    """What a pass pays for the web subscribers: the first sync, one with
    nothing changed, and one after a reader saved."""
    pipeline = Pipeline(config, store, lambda: None, clock=lambda: datetime.now(UTC))
    times = {}
    started = time.perf_counter()
    pipeline.sync()
    times["first sync (read + engine)"] = time.perf_counter() - started
    started = time.perf_counter()
    pipeline.sync()
    times["sync, nothing changed"] = time.perf_counter() - started
    first = store.web.roster()[0]
    store.web.pause(first.id, None, datetime.now(UTC))
    started = time.perf_counter()
    pipeline.sync()
    times["sync after one change"] = time.perf_counter() - started
    assert len(pipeline.subscribers.subscribers) == len(store.web.roster()) + 1
    return [f"| {k} | {v * 1000:.0f} ms |" for k, v in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--url", default="sqlite", help="sqlite, or a postgresql+psycopg:// URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, fresh_database(args.url, Path(folder)) as url:
        config = config_for(url, BASE)
        store = Store(url)
        now = datetime.now(UTC)
        started = time.perf_counter()
        emails = seed(store, config, args.subscribers, now)
        print(
            f"seeded {args.subscribers} web subscribers ({2 * args.subscribers} subscriptions, "
            f"{DIGESTS_EACH * args.subscribers} digests) and 3000 papers on "
            f"{store.engine.url.get_backend_name()} in {time.perf_counter() - started:.1f}s"
        )
        load = os.getloadavg()
        rows = asyncio.run(serve_and_time(store, config, emails, args.requests))
        print(f"\nload average before: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}\n")
        print("| request | n | median ms | p95 ms | max ms | p95 / target |")
        print("|---|---:|---:|---:|---:|---|")
        print("\n".join(rows))
        print("\n| daemon side | wall |")
        print("|---|---:|")
        print("\n".join(pass_side(store, config)))
        store.close()


if __name__ == "__main__":
    main()
