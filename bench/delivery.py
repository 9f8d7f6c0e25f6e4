"""Delivery throughput: 10,000 digests composed and delivered to a loopback sink.

    PYTHONPATH=. python -m bench.delivery [--digests 10000] [--papers 50]

Runs an aiosmtpd sink in its own process and first measures its ceiling
(pre-built messages over ``max_connections`` connections, no rendering); then
seeds a SQLite store with N subscribers each holding ``--papers`` unclaimed
matches and times the real ``Pipeline.compose_and_deliver``: digests composed
(matches read, rendered, queued) on a process pool while the sender drains
the outbox. Prints the rate, CPU per digest by process and the load average.
Target: >= 200/s. Then puts the same messages back in the outbox, measures
the sink's ceiling again and times ``Pipeline.deliver`` alone: delivery's
rate as a share of that ceiling (issue 18's target: 80% or more).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import sqlite3
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aiosmtplib

from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.digests import Ranking
from mailer.mime import message_part
from mailer.pipeline import PassReport, Pipeline, digest_order
from mailer.pipeline.compose import build_message, compose_digest, init_worker
from mailer.store import Store

WORDS = [
    "diffusion",
    "model",
    "sampling",
    "guidance",
    "transformer",
    "attention",
    "sparse",
    "efficient",
    "agents",
    "planning",
    "reinforcement",
    "learning",
    "reward",
    "policy",
    "language",
    "vision",
    "benchmark",
    "dataset",
    "scaling",
    "inference",
]


class CountingSink:
    def __init__(self, counter: Synchronized[int]) -> None:
        self.counter = counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.counter.get_lock():
            self.counter.value += 1
        return "250 OK"


def run_sink(port: int, counter: Synchronized[int], ready: Any, stop: Any) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(CountingSink(counter), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of another process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def blast(port: int, message: bytes, count: int, connections: int) -> float:
    """The sink's ceiling: send pre-built messages as fast as it accepts them."""
    queue = list(range(count))

    async def one() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        while queue:
            queue.pop()
            await client.sendmail("d@example.org", ["r@example.org"], message)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return count / (time.perf_counter() - start)


def make_config(tmp: Path, port: int, digests: int, connections: int) -> Config:
    subs = "".join(
        f"""
[[subscribers]]
email = "reader{i}@example.org"
name = "Reader {i}"
[[subscribers.subscriptions]]
name = "Diffusion"
query = "diffusion"
"""
        for i in range(digests)
    )
    text = f"""
[watch]
dir = "dumps"
[database]
url = "sqlite:///{tmp / "bench.db"}"
[delivery]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
max_connections = {connections}
sender = "Paper Digest <digest@example.org>"
{subs}
"""
    return parse_config(text, source="bench.toml", base_dir=tmp)


def seed(db: Path, subscriber_ids: list[int], papers_per_digest: int, pool_size: int) -> None:
    """Papers and unclaimed matches written directly: matching is not timed here."""
    now = datetime.now(UTC).isoformat(sep=" ")
    con = sqlite3.connect(db)
    papers = []
    for i in range(pool_size):
        words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)]
        title = f"Diffusion {' '.join(words[:6]).title()} {i}"
        abstract = (f"We study a diffusion model for {' '.join(words)}. " * 6).strip()
        papers.append((f"key{i}", title, abstract, 4, i % 97, now, 0))
    con.executemany(
        "INSERT INTO papers (key, title, abstract, authors, upvotes, first_seen_at, matched) "
        "VALUES (?, ?, ?, ?, ?, ?, 1)",
        [p[:6] for p in papers],
    )
    paper_ids = [r[0] for r in con.execute("SELECT id FROM papers ORDER BY id")]
    rows = []
    for n, sid in enumerate(subscriber_ids):
        for k in range(papers_per_digest):
            pid = paper_ids[(n * 13 + k) % len(paper_ids)]
            rows.append((sid, pid, '["Diffusion"]', '["diffusion"]', f"[{1.0 + k / 100}]", now))
    con.executemany(
        "INSERT INTO matches (subscriber_id, paper_id, subscriptions, terms, scores, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.commit()
    con.close()


def requeue(db: Path) -> None:
    """Every message pending again, as composed: delivery timed on its own."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # as the store writes it
    con = sqlite3.connect(db)
    con.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, sent_at = NULL, "
        "last_reply = NULL, claimed_by = NULL, claimed_until = NULL, next_attempt_at = ?",
        (now,),
    )
    con.commit()
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=50)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--profile", metavar="PATH", help="cProfile (CPU time) the event loop thread to PATH"
    )
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    counter: Synchronized[int] = ctx.Value("q", 0)  # type: ignore[assignment]
    ready, stop = ctx.Event(), ctx.Event()
    port = free_port()
    sink = ctx.Process(target=run_sink, args=(port, counter, ready, stop), daemon=True)
    sink.start()
    ready.wait(30)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "dumps").mkdir()
        config = make_config(tmp, port, args.digests, args.connections)
        store = Store(config.database.url)
        pool = ProcessPoolExecutor(
            max_workers=args.workers,
            mp_context=ctx,
            initializer=init_worker,
            initargs=(config.database.url,),
        )
        pipeline = Pipeline(config, store, lambda: make_transport(config), compose_pool=pool)
        pipeline.sync()
        ids = sorted(store.active_subscriber_ids().values())
        seed(tmp / "bench.db", ids, args.papers, pool_size=max(500, args.papers * 4))
        list(pool.map(abs, range(args.workers * 2)))  # start the workers before timing

        # a sample message, for the sink's ceiling and the size figures
        pending = store.pending_matches_for(ids[:1])[ids[0]]
        order = digest_order(config, config.subscribers[0], ids[0], None)
        digest = compose_digest(order, pending, Ranking(store.stats()))
        _, message, _ = build_message(
            pipeline.renderer,
            digest,
            datetime.now(UTC),
            sender=config.smtp.sender,
            sender_address=config.smtp.sender_address,
        )
        html = len(message_part(message, "html"))
        ceiling_n = min(3000, args.digests)
        sink_cpu = cpu_seconds(sink.pid or 0)
        ceiling = asyncio.run(blast(port, message, ceiling_n, args.connections))
        sink_ceiling_ms = (cpu_seconds(sink.pid or 0) - sink_cpu) / ceiling_n * 1000
        counter.value = 0

        workers = [p.pid for p in pool._processes.values() if p.pid]
        load_before = os.getloadavg()
        cpu = (time.process_time(), sum(map(cpu_seconds, workers)), cpu_seconds(sink.pid or 0))
        profiler = cProfile.Profile(time.thread_time) if args.profile else None
        report = PassReport()
        composed_at: list[float] = []
        compose = pipeline.compose

        def timed_compose(report: PassReport) -> None:
            compose(report)
            composed_at.append(time.perf_counter())

        pipeline.compose = timed_compose  # type: ignore[method-assign]
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        asyncio.run(pipeline.compose_and_deliver(report))
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - start
        main_cpu = time.process_time() - cpu[0]
        workers_cpu = sum(map(cpu_seconds, workers)) - cpu[1]
        sink_cpu = cpu_seconds(sink.pid or 0) - cpu[2]
        load_after = os.getloadavg()
        pool.shutdown()

        # The same 10,000 messages again, composed already: delivery alone,
        # against the sink's ceiling measured again just before.
        requeue(tmp / "bench.db")
        alone_ceiling = asyncio.run(blast(port, message, ceiling_n, args.connections))
        counter.value = 0
        alone = PassReport()
        alone_cpu = (time.process_time(), cpu_seconds(sink.pid or 0))
        alone_start = time.perf_counter()
        asyncio.run(pipeline.deliver(alone))
        alone_elapsed = time.perf_counter() - alone_start
        alone_main_cpu = time.process_time() - alone_cpu[0]
        alone_sink_cpu = cpu_seconds(sink.pid or 0) - alone_cpu[1]
        alone_received = counter.value
        store.close()
    stop.set()
    sink.join(10)
    if profiler:
        profiler.dump_stats(args.profile)
    sent = max(report.sent, 1)

    def per_digest_ms(seconds: float) -> float:
        return round(seconds / sent * 1000, 2)

    figures = {
        "digests": args.digests,
        "papers_per_digest": args.papers,
        "message_bytes": len(message),
        "html_bytes": html,
        "cpu_count": os.cpu_count(),
        "compose_workers": args.workers,
        "smtp_connections": args.connections,
        "sink_ceiling_per_s": round(ceiling, 1),
        "sink_ceiling_cpu_ms_per_message": round(sink_ceiling_ms, 2),
        "composed": report.digests,
        "sent": report.sent,
        "received_by_sink": counter.value,
        "seconds": round(elapsed, 2),
        "all_composed_after_s": round(composed_at[0] - start, 2) if composed_at else None,
        "per_s": round(report.sent / elapsed, 1),
        "per_s_over_sink_ceiling": round(report.sent / elapsed / ceiling, 2),
        "cpu_ms_per_digest": {
            "compose_workers": per_digest_ms(workers_cpu),
            "main_process": per_digest_ms(main_cpu),
            "sink": per_digest_ms(sink_cpu),
            "total": per_digest_ms(workers_cpu + main_cpu + sink_cpu),
        },
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "target_per_s": 200,
        "delivery_alone": {
            "sink_ceiling_per_s": round(alone_ceiling, 1),
            "sent": alone.sent,
            "received_by_sink": alone_received,
            "seconds": round(alone_elapsed, 2),
            "per_s": round(alone.sent / alone_elapsed, 1),
            "per_s_over_sink_ceiling": round(alone.sent / alone_elapsed / alone_ceiling, 2),
            "cpu_ms_per_message": {
                "main_process": round(alone_main_cpu / max(alone.sent, 1) * 1000, 2),
                "sink": round(alone_sink_cpu / max(alone.sent, 1) * 1000, 2),
            },
            "target_over_sink_ceiling": 0.8,
        },
    }
    print(json.dumps(figures, indent=1))
    total_ms = per_digest_ms(workers_cpu + main_cpu + sink_cpu)
    print(
        f"{report.sent} digests composed and delivered in {elapsed:.1f}s = "
        f"{report.sent / elapsed:.0f}/s (target 200/s; sink ceiling {ceiling:.0f}/s "
        f"with pre-built messages); CPU {total_ms} ms per digest in all "
        f"(= {2000 / total_ms:.0f}/s on 2 idle cores); load {load_before[0]:.1f}"
    )
    print(
        f"delivery alone (the same messages, composed already): {alone.sent} in "
        f"{alone_elapsed:.1f}s = {alone.sent / alone_elapsed:.0f}/s = "
        f"{alone.sent / alone_elapsed / alone_ceiling:.0%} of the sink's ceiling "
        f"{alone_ceiling:.0f}/s measured just before (target 80%)"
    )


if __name__ == "__main__":
    main()
