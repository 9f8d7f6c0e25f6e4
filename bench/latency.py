"""Pick-up latency: from the rename of a dump into the watch folder to the
SMTP server's 250 for an ``instant`` subscriber's digest.

    PYTHONPATH=. python -m bench.latency [--samples 20] [--poll-samples 6] [--interval 60]
                                         [--url postgresql+psycopg://...]

Runs the real ``mailer run`` as a subprocess twice in one run, with the same
configuration but ``[watch] events``: on (file events, the rescan every
``--interval`` seconds kept) and off (the rescan alone: the polling of
earlier releases). Each sample writes a dump holding one new paper under a
``.part`` name, renames it into the folder and waits for the digest at a
loopback aiosmtpd server in this process, which timestamps its 250 reply.
Before each sample it waits a random part of the interval, so a sample
lands anywhere in the polling cycle. Prints the median, 95th percentile and
maximum of each, and their ratio; ``settle_seconds`` stays at its default.
Targets (issue 17): with events, median under 1 s and p95 under 2 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailer.dumps import format_dump
from mailer.papers import Paper

ROOT = Path(__file__).resolve().parent.parent


class Sink:
    """Records when each digest's 250 goes back, by recipient order."""

    def __init__(self) -> None:
        self.replied: list[float] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.arrived:
            self.replied.append(time.monotonic())
            self.arrived.notify_all()
        return "250 OK"

    def wait(self, count: int, timeout: float) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.replied) >= count, timeout):
                raise SystemExit(f"no digest within {timeout:g}s")
            return self.replied[count - 1]


def config_text(folder: Path, port: int, interval: float, events: bool, url: str) -> str:
    return f"""
[watch]
dir = "dumps"
interval_seconds = {interval}
events = {str(events).lower()}
[database]
url = "{url or f"sqlite:///{folder / 'mailer.db'}"}"
[delivery]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
sender = "Paper Digest <digest@example.org>"
[[subscribers]]
email = "ada@example.org"
schedule = "instant"
[[subscribers.subscriptions]]
name = "Probes"
query = "latencyprobe"
"""


def fresh_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def measure(samples: int, interval: float, events: bool, url: str) -> list[float]:
    """Latencies, in seconds, of ``samples`` dumps with one daemon."""
    sink, port = Sink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    if url:
        fresh_postgres(url)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        dumps = folder / "dumps"
        dumps.mkdir()
        config = folder / "config.toml"
        config.write_text(config_text(folder, port, interval, events, url), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config), "run"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (folder / "mailer.heartbeat").exists():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            latencies = []
            for n in range(samples):
                # Anywhere in the rescan cycle (with events, just a pause).
                time.sleep(random.uniform(0, interval if not events else 1.0))
                dump = format_dump(
                    date.today(),
                    [Paper(f"Latencyprobe {n} of {events}", f"A latencyprobe abstract, {n}.")],
                )
                partial = dumps / f"probe-{n}.txt.part"
                partial.write_text(dump, encoding="utf-8")
                renamed = time.monotonic()
                partial.rename(dumps / f"probe-{n}.txt")
                replied = sink.wait(n + 1, timeout=interval * 3 + 30)
                latencies.append(replied - renamed)
                print(f"  {'events' if events else 'polling'} sample {n + 1}: {latencies[-1]:.3f}s")
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            controller.stop()
    return latencies


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    parser.add_argument("--samples", type=int, default=20, help="samples with file events")
    parser.add_argument("--poll-samples", type=int, default=6, help="samples polling alone")
    parser.add_argument("--interval", type=float, default=60.0, help="[watch] interval_seconds")
    parser.add_argument("--url", default="", help="a PostgreSQL URL (emptied!); default SQLite")
    args = parser.parse_args()
    results = {
        "events + rescan": measure(args.samples, args.interval, True, args.url),
        "rescan alone (polling)": measure(args.poll_samples, args.interval, False, args.url),
    }
    load = os.getloadavg()[0]
    print(f"\nrename -> 250, interval_seconds={args.interval:g}, load average {load:.2f}")
    print("| pick-up | samples | median s | p95 s | max s |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.3f} | "
            f"{percentile(values, 95):.3f} | {max(values):.3f} |"
        )
    events, polling = (statistics.median(v) for v in results.values())
    print(f"median ratio polling / events: {polling / events:.0f}x")


if __name__ == "__main__":
    main()
