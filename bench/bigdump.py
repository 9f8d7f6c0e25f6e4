"""One large dump, as ``mailer ingest`` reads it: peak memory against the size.

    PYTHONPATH=. python -m bench.bigdump [--papers 82000] [--subscribers 0 10]
        [--python OTHER/bin/python ...]

Writes one dump of ``--papers`` synthetic papers (bench.corpus, each abstract
twice over, so 82,000 records make about 200 MB), then for each subscriber
count and ``--python`` (default: this one) runs ``mailer -v ingest`` on it as
a fresh process on a fresh SQLite database, with that many keyword
subscribers (none: ingest alone), and prints its wall time, CPU time and peak
resident memory (VmHWM: the process's, and its largest compose worker's),
with the peak at the end of each stage. Issue 18's target: a 200 MB dump under 500 MB.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.corpus import TODAY, papers, vocabulary
from mailer.dumps import format_dump

# ``pass`` is a keyword: the module is reached by name.
_pass = importlib.import_module("bench.pass")


def write_dump(path: Path, count: int) -> int:
    """One dump of ``count`` papers; its size in bytes."""
    batch = papers(vocabulary(), count, seed=7)
    batch = [
        replace(p, title=f"{p.title}-{i}", abstract=f"{p.abstract} {p.abstract}")
        for i, p in enumerate(batch)
    ]
    path.write_text(format_dump(TODAY, batch), encoding="utf-8")
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=82_000)
    ap.add_argument("--subscribers", type=int, nargs="+", default=[0, 10])
    ap.add_argument("--python", action="append", help="interpreter of a checkout to time")
    args = ap.parse_args()
    pythons: list[str] = args.python or [sys.executable]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dumps = root / "dumps"
        dumps.mkdir()
        size = write_dump(dumps / "big.txt", args.papers)
        print(
            f"# {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, load {_pass.load():.1f}; "
            f"one dump of {args.papers:,} papers, {size / 2**20:.0f} MB"
        )
        print(
            "\n| code | subscribers | wall s | CPU s | peak RSS MB, mailer / largest worker "
            "| peak RSS MB at the end of "
            "scan_parse / store / statistics / compose | load |\n|---|---:|---:|---:|---:|---|---:|"
        )
        for subscribers in args.subscribers:
            for python in pythons:
                folder = root / f"{_pass.label(python)}-{subscribers}"
                folder.mkdir()
                config = folder / "config.toml"
                _pass.write_config(config, dumps, subscribers)
                text = config.read_text(encoding="utf-8")  # past the default limit of 64 MB
                config.write_text(
                    text.replace("[watch]\n", "[watch]\nmax_dump_bytes = 1073741824\n")
                )
                started_load = _pass.load()
                run = _pass.run_pass(python, config)
                stages = " / ".join(
                    f"{run.stages[s][2]:.0f}" if s in run.stages else "-"
                    for s in ("scan_parse", "store", "statistics", "compose")
                )
                print(
                    f"| {_pass.label(python)} | {subscribers} | {run.wall:.1f} | {run.cpu:.1f} | "
                    f"{run.peak_mb:.0f} / {run.worker_peak_mb:.0f} | {stages} | "
                    f"{started_load:.1f} |"
                )


if __name__ == "__main__":
    main()
