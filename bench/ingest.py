"""Ingest benchmark: write ~100k papers as dumps, then parse and store them.

    python -m bench.ingest [--papers N] [--per-file N]

Parses file by file and stores each dump in batches (``Store.ingest``), so
memory stays flat as the backlog grows; prints time and resident memory
every tenth of the way.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import resource
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bench.corpus import papers, vocabulary
from mailer.dumps import format_dump, parse_dump
from mailer.store import Store


def rss_mb() -> float:
    with Path("/proc/self/statm").open() as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=100_000)
    ap.add_argument("--per-file", type=int, default=1_000)
    args = ap.parse_args()
    vocab = vocabulary()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        day = date(2025, 12, 20)
        written = 0
        for start in range(0, args.papers, args.per_file):
            batch = papers(vocab, min(args.per_file, args.papers - start), seed=start)
            text = format_dump(day - timedelta(days=start // args.per_file), batch)
            path = folder / f"{start // args.per_file:05d}.txt"
            path.write_text(text, encoding="utf-8")
            written += path.stat().st_size
        files = sorted(folder.glob("*.txt"))
        print(f"# {len(files)} dumps, {written / 2**20:.0f} MB, {args.papers:,} papers")
        store = Store(f"sqlite:///{folder / 'bench.db'}")
        gc.collect()
        start_rss = rss_mb()
        start = time.perf_counter()
        stored = 0
        for i, path in enumerate(files, 1):
            data = path.read_bytes()
            parsed = parse_dump(data, source=str(path), today=day)
            outcome = store.ingest(
                path=str(path),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                page_date=parsed.page_date,
                papers=parsed.papers,
                warnings=len(parsed.warnings),
                now=datetime.now(UTC),
            )
            stored += outcome.new_papers
            if i % max(1, len(files) // 10) == 0 or i == len(files):
                print(
                    f"files={i:4d} papers={stored:7,d} elapsed={time.perf_counter() - start:6.1f}s "
                    f"rss={rss_mb():6.1f} MB (start {start_rss:.1f} MB)",
                    flush=True,
                )
        took = time.perf_counter() - start
        print(
            f"ingested {stored:,} papers from {written / 2**20:.0f} MB in {took:.1f} s "
            f"({stored / took:,.0f} papers/s); store holds {store.count_papers():,}"
        )
        store.close()


if __name__ == "__main__":
    main()
