"""Delivery throughput: 10,000 digests composed and delivered to a loopback sink.

    PYTHONPATH=. python -m bench.delivery [--digests 10000] [--papers 50] [--rounds 5]

Runs an aiosmtpd sink in its own process and first measures its ceiling
(pre-built messages over ``max_connections`` connections, no rendering); then
seeds a SQLite store with N subscribers each holding ``--papers`` unclaimed
matches and times the real ``Pipeline.compose_and_deliver``: digests composed
(matches read, rendered, queued) on a process pool while the sender drains
the outbox. Prints the rate, CPU per digest by process and the load average.
Target: >= 200/s.

Then delivery alone, ``--rounds`` times: the same messages put back in the
outbox and sent by ``Pipeline.deliver``, each round between two measurements
of the sink's ceiling with as many pre-built messages (ceiling, delivery,
ceiling, delivery, ..., ceiling). A round's ratio is its rate over the mean
of the ceilings either side; the median and range over the rounds are
issue 18's figure (target: 80% or more). On a shared machine the ceiling
moves by a quarter from minute to minute; interleaving lets both see the
same load.

To time another checkout in the same run, copy this file out and run it
with that checkout on PYTHONPATH (its ``mailer`` API has not changed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import sqlite3
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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


@dataclass
class Round:
    """One delivery-alone run, between two ceiling measurements."""

    ceiling_before: float
    sent: int
    received: int
    seconds: float
    main_cpu_ms: float
    sink_cpu_ms: float
    ceiling_after: float = 0.0

    @property
    def per_s(self) -> float:
        return self.sent / self.seconds

    @property
    def ratio(self) -> float:
        """Delivery's rate over the ceiling measured on either side of it."""
        return self.per_s / ((self.ceiling_before + self.ceiling_after) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=50)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5, help="delivery-alone rounds")
    parser.add_argument(
        "--profile", metavar="PATH", help="cProfile (CPU time) the delivery-alone rounds to PATH"
    )
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    counter: Synchronized[int] = ctx.Value("q", 0)  # type: ignore[assignment]
    ready, stop = ctx.Event(), ctx.Event()
    port = free_port()
    sink = ctx.Process(target=run_sink, args=(port, counter, ready, stop), daemon=True)
    sink.start()
    ready.wait(30)
    sink_pid = sink.pid or 0

    def ceiling_now(message: bytes, count: int) -> tuple[float, float]:
        """The sink's ceiling (messages/s) and its CPU ms per message."""
        before = cpu_seconds(sink_pid)
        rate = asyncio.run(blast(port, message, count, args.connections))
        return rate, (cpu_seconds(sink_pid) - before) / count * 1000

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
        ceiling, sink_ceiling_ms = ceiling_now(message, ceiling_n)
        counter.value = 0

        workers = [p.pid for p in pool._processes.values() if p.pid]
        load_before = os.getloadavg()
        cpu = (time.process_time(), sum(map(cpu_seconds, workers)), cpu_seconds(sink_pid))
        report = PassReport()
        composed_at: list[float] = []
        compose = pipeline.compose

        def timed_compose(report: PassReport) -> None:
            compose(report)
            composed_at.append(time.perf_counter())

        pipeline.compose = timed_compose  # type: ignore[method-assign]
        start = time.perf_counter()
        asyncio.run(pipeline.compose_and_deliver(report))
        elapsed = time.perf_counter() - start
        main_cpu = time.process_time() - cpu[0]
        workers_cpu = sum(map(cpu_seconds, workers)) - cpu[1]
        sink_cpu = cpu_seconds(sink_pid) - cpu[2]
        load_after = os.getloadavg()
        received = counter.value
        pool.shutdown()

        # Delivery alone: the same messages, composed already, put back in the
        # outbox and sent again, between two measurements of the sink's
        # ceiling with as many pre-built messages, round after round: the
        # machine's load moves both alike, so their ratio holds still.
        profiler = cProfile.Profile(time.thread_time) if args.profile else None
        rounds: list[Round] = []
        before, _ = ceiling_now(message, args.digests)
        for _ in range(args.rounds):
            requeue(tmp / "bench.db")
            counter.value = 0
            alone = PassReport()
            cpu_at = (time.process_time(), cpu_seconds(sink_pid))
            alone_start = time.perf_counter()
            if profiler:
                profiler.enable()
            asyncio.run(pipeline.deliver(alone))
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - alone_start
            sent_n = max(alone.sent, 1)
            done = Round(
                ceiling_before=before,
                sent=alone.sent,
                received=counter.value,
                seconds=seconds,
                main_cpu_ms=(time.process_time() - cpu_at[0]) / sent_n * 1000,
                sink_cpu_ms=(cpu_seconds(sink_pid) - cpu_at[1]) / sent_n * 1000,
            )
            before, _ = ceiling_now(message, args.digests)
            done.ceiling_after = before
            rounds.append(done)
        store.close()
    stop.set()
    sink.join(10)
    if profiler:
        profiler.dump_stats(args.profile)
    sent = max(report.sent, 1)

    def per_digest_ms(seconds: float) -> float:
        return round(seconds / sent * 1000, 2)

    ratios = [r.ratio for r in rounds]
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
        "received_by_sink": received,
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
        "delivery_alone_rounds": [
            {
                "sink_ceiling_before_after_per_s": [
                    round(r.ceiling_before, 1),
                    round(r.ceiling_after, 1),
                ],
                "sent": r.sent,
                "received_by_sink": r.received,
                "seconds": round(r.seconds, 2),
                "per_s": round(r.per_s, 1),
                "per_s_over_sink_ceiling": round(r.ratio, 3),
                "cpu_ms_per_message": {
                    "main_process": round(r.main_cpu_ms, 2),
                    "sink": round(r.sink_cpu_ms, 2),
                },
            }
            for r in rounds
        ],
        "delivery_alone": {
            "rounds": len(rounds),
            "per_s_over_sink_ceiling_median": round(statistics.median(ratios), 3),
            "per_s_over_sink_ceiling_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
            "main_process_cpu_ms_per_message_median": round(
                statistics.median(r.main_cpu_ms for r in rounds), 2
            ),
            "sink_cpu_ms_per_message_median": round(
                statistics.median(r.sink_cpu_ms for r in rounds), 2
            ),
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
        f"delivery alone (the same {args.digests} messages, composed already), {len(rounds)} "
        f"rounds each between two ceilings: {statistics.median(ratios):.0%} of the sink's "
        f"ceiling (median; {min(ratios):.0%}-{max(ratios):.0%}; target 80%), "
        f"mailer {statistics.median(r.main_cpu_ms for r in rounds):.2f} ms CPU per message, "
        f"sink {statistics.median(r.sink_cpu_ms for r in rounds):.2f} ms"
    )


if __name__ == "__main__":
    main()
