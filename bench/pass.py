# ruff: noqa: N999  (named for what it times; run with python -m bench.pass)
"""The whole pass and what a person waits for: ``mailer ingest`` of a backlog,
start-up with many subscribers, and the CLI's quick commands.

    PYTHONPATH=. python -m bench.pass [--papers 10000] [--dumps 100] [--pass-only | --skip-pass]
        [--subscribers 100 2000 10000] [--python OTHER/bin/python ...]

Writes the synthetic backlog (bench.corpus papers in ``--dumps`` dumps) and,
for each subscriber count, a config of keyword subscribers (bench.corpus
subscriptions, two each, instant schedule, Maildir transport, SQLite); then,
for each ``--python`` (default: this one; give another virtualenv's to time
another checkout in the same run), runs ``mailer -v ingest`` as a fresh
process on a fresh database and prints its wall time, CPU time (with its
compose workers) and peak resident memory (the largest process), and the
per-stage figures of the pass's ``pass stages`` debug line where the code has
it (wall s / CPU s of the main process / peak RSS MB at the stage's end;
compose and write overlap, and compose's CPU in worker processes is not in
its figure). Then times start-up (config load and validation, store open,
subscriber sync) in-process, cold (no configuration cache) and warm (on the
cache the cold run wrote), and ``mailer --version``, ``--help`` (best of
three) and ``subs list`` (cold, then warm best of three) on the
2,000-subscriber config.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.corpus import TODAY, papers, subscriptions, vocabulary
from mailer.dumps import format_dump
from mailer.pipeline.report import peak_rss_mb

STAGES = (
    "sync",
    "scan_parse",
    "store",
    "statistics",
    "match",
    "record_matches",
    "compose",
    "write",
)
STARTUP = """
import sys, time
from pathlib import Path
def now():
    return time.perf_counter(), time.process_time()
t0 = now()
from mailer.config import load_config
from mailer.pipeline import sync_subscribers, utc_now
from mailer.store import Store
t1 = now()
config, _ = load_config(Path(sys.argv[1]))
t2 = now()
store = Store(config.database.url)
t3 = now()
sync_subscribers(store, config, utc_now())
t4 = now()
sync_subscribers(store, config, utc_now())
t5 = now()
marks = (t0, t1, t2, t3, t4, t5)
print(" ".join(f"{b[0] - a[0]:.3f}/{b[1] - a[1]:.3f}" for a, b in zip(marks, marks[1:])))
"""


@dataclass
class PassRun:
    wall: float
    cpu: float
    peak_mb: float
    summary: str
    stages: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    worker_peak_mb: float = 0.0  # the largest compose worker's


def load() -> float:
    return os.getloadavg()[0]


def write_dumps(folder: Path, count: int, files: int) -> None:
    vocab = vocabulary()
    per_file = -(-count // files)
    for n, start in enumerate(range(0, count, per_file)):
        batch = papers(vocab, min(per_file, count - start), seed=start)
        # Titles carry the paper's number, so papers of different dumps differ.
        batch = [replace(p, title=f"{p.title}-{start}") for p in batch]
        text = format_dump(TODAY - timedelta(days=n % 30), batch)
        (folder / f"{n:05d}.txt").write_text(text, encoding="utf-8")


def write_config(path: Path, dumps: Path, subscribers: int) -> None:
    queries = subscriptions(vocabulary(), subscribers * 2)
    subs = "".join(
        f"""
[[subscribers]]
email = "reader{i}@example.org"
name = "Reader {i}"
[[subscribers.subscriptions]]
name = "First"
query = '{queries[2 * i]}'
[[subscribers.subscriptions]]
name = "Second"
query = '{queries[2 * i + 1]}'
"""
        for i in range(subscribers)
    )
    path.write_text(
        f"""
[watch]
dir = "{dumps}"
settle_seconds = 0
[database]
url = "sqlite:///{path.parent / "mailer.db"}"
[delivery]
transport = "maildir"
maildir = "{path.parent / "outbox"}"
[smtp]
sender = "Paper Digest <digest@example.org>"
{subs}""",
        encoding="utf-8",
    )


def run_pass(python: str, config: Path) -> PassRun:
    """``mailer ingest`` in a fresh process on a fresh database."""
    for old in config.parent.glob("mailer.db*"):
        old.unlink()
    env = {**os.environ, "PYTHONPATH": ""}
    out, err = config.parent / "stdout", config.parent / "stderr"
    start = time.perf_counter()
    with out.open("w") as stdout_f, err.open("w") as stderr_f:
        proc = subprocess.Popen(
            [python, "-m", "mailer", "-c", str(config), "-v", "ingest"],
            stdout=stdout_f,
            stderr=stderr_f,
            env=env,
            cwd=config.parent,
        )
        # wait4: this child's CPU with its reaped compose workers. Peak memory
        # is sampled from /proc (VmHWM): ru_maxrss would also count this
        # bench's own memory, which the child had before it ran mailer.
        peaks = PeakMemory(proc.pid)
        peaks.start()
        _, status, usage = os.wait4(proc.pid, 0)
        peaks.stop()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out.read_text(), err.read_text()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"mailer ingest failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    stages: dict[str, tuple[float, float, float]] = {}
    if m := re.search(r"pass stages (.*)", stderr):
        for part in m.group(1).split():
            name, _, figures = part.partition("=")
            w, c, r = figures.split("/")
            stages[name] = (float(w), float(c), float(r))
    own = peaks.of(proc.pid)
    return PassRun(
        wall, usage.ru_utime + usage.ru_stime, own, summary, stages, peaks.largest_child()
    )


class PeakMemory(threading.Thread):
    """The peak resident memory (VmHWM, MB) of a process and of each of its
    children (the compose workers), sampled every 20 ms until ``stop``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peaks: dict[int, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            for pid in [self.pid, *self._children(self.pid)]:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), peak_rss_mb(pid))

    def stop(self) -> None:
        self._done.set()
        self.join()

    def of(self, pid: int) -> float:
        return self.peaks.get(pid, 0.0)

    def largest_child(self) -> float:
        return max((mb for pid, mb in self.peaks.items() if pid != self.pid), default=0.0)

    @staticmethod
    def _children(pid: int) -> list[int]:
        found: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                found += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
        return found


def best_of(cmd: list[str], times: int = 3, cache: Path | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": ""} | ({"MAILER_CACHE_DIR": str(cache)} if cache else {})
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd="/")
        best = min(best, time.perf_counter() - start)
    return best


def label(python: str) -> str:
    return Path(python).parent.parent.parent.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=10_000)
    ap.add_argument("--dumps", type=int, default=100)
    ap.add_argument("--subscribers", type=int, nargs="+", default=[100, 2000, 10_000])
    ap.add_argument("--python", action="append", help="interpreter of a checkout to time")
    ap.add_argument("--skip-pass", action="store_true", help="start-up and CLI only")
    ap.add_argument("--pass-only", action="store_true", help="the whole pass only")
    args = ap.parse_args()
    pythons: list[str] = args.python or [sys.executable]
    print(
        f"# {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, load {load():.1f}; "
        f"{args.papers:,} papers in {args.dumps} dumps"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dumps = root / "dumps"
        dumps.mkdir()
        write_dumps(dumps, args.papers, args.dumps)
        configs = {}
        for n in sorted({*args.subscribers, 2000}):
            folder = root / f"s{n}"
            folder.mkdir()
            configs[n] = folder / "config.toml"
            write_config(configs[n], dumps, n)

        if not args.skip_pass:
            print(
                "\n| code | subscribers | wall s | CPU s | peak RSS MB, mailer / largest worker "
                "| digests | load |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            details = []
            for n in args.subscribers:
                for python in pythons:
                    before = load()
                    run = run_pass(python, configs[n])
                    digests = re.search(r"digests=(\d+)", run.summary)
                    print(
                        f"| {label(python)} | {n:,} | {run.wall:.1f} | {run.cpu:.1f} | "
                        f"{run.peak_mb:.0f} / {run.worker_peak_mb:.0f} | "
                        f"{digests.group(1) if digests else '?'} | "
                        f"{before:.1f} |",
                        flush=True,
                    )
                    details.append((label(python), n, run))
            print("\nper stage (wall s / CPU s / peak RSS MB at its end):\n")
            print("| code | subscribers | " + " | ".join(STAGES) + " |")
            print("|---|---:|" + "---:|" * len(STAGES))
            for name, n, run in details:
                cells = [
                    "/".join(f"{x:.2f}" if i < 2 else f"{x:.0f}" for i, x in enumerate(s))
                    if (s := run.stages.get(stage))
                    else "-"
                    for stage in STAGES
                ]
                print(f"| {name} | {n:,} | " + " | ".join(cells) + " |")
        if args.pass_only:
            return

        print(
            "\nstart-up in-process, wall s / CPU s: imports, config load, store open, "
            "first sync into an empty database, resync; cold: no configuration cache "
            "(an empty cache folder), warm: a second run on the cache the first wrote\n"
        )
        print("| code | subscribers | run | imports | config | store | first sync | resync |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for n in sorted({*args.subscribers, 2000}):
            for python in pythons:
                cache = Path(tempfile.mkdtemp(dir=root))
                for kind in ("cold", "warm"):
                    steps = startup(python, configs[n], cache)
                    print(
                        f"| {label(python)} | {n:,} | {kind} | " + " | ".join(steps) + " |",
                        flush=True,
                    )

        print(
            "\nCLI on the 2,000-subscriber config (its database holding them), wall s: "
            "--version and --help best of 3; subs list cold (first run, empty "
            "configuration cache) and warm (best of 3 after check-config wrote the cache)\n"
        )
        print("| code | --version | --help | subs list cold | subs list warm |")
        print("|---|---:|---:|---:|---:|")
        for python in pythons:
            # The database made by this checkout: a newer one's is refused.
            startup(python, configs[2000], Path(tempfile.mkdtemp(dir=root)))
            cache = Path(tempfile.mkdtemp(dir=root))
            base = [python, "-m", "mailer", "-c", str(configs[2000])]
            times = [best_of([*base, *cmd], cache=cache) for cmd in (["--version"], ["--help"])]
            times.append(best_of([*base, "subs", "list"], 1, cache))
            best_of([*base, "check-config"], 1, cache)  # a full load writes the cache
            times.append(best_of([*base, "subs", "list"], 3, cache))
            print(f"| {label(python)} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


def startup(python: str, config: Path, cache: Path) -> list[str]:
    """One in-process start-up on a fresh database: wall/CPU seconds per step."""
    for old in config.parent.glob("mailer.db*"):
        old.unlink()
    done = subprocess.run(
        [python, "-c", STARTUP, str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": "", "MAILER_CACHE_DIR": str(cache)},
        cwd=config.parent.parent,
    )
    if done.returncode:
        raise SystemExit(f"start-up failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.split()


if __name__ == "__main__":
    main()
