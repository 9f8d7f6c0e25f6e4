"""Ingest benchmark: write N papers as dumps, then parse and store them file by file.

    python -m bench.ingest [--papers N] [--per-file N] [--naive-dumps N] [--url URL ...]

Each dump is read, hashed, parsed (``parse_dump``) and stored (``Store.ingest``)
in turn, as the daemon does, so memory should stay flat however long the
backlog is. Prints wall and process CPU time (parse and store apart; other
work on the machine makes wall time noisy, so the load average is printed
too), resident memory every tenth of the way, and the same for a naive store:
the ingest this replaced, one SQLModel object per paper through the ORM,
timed on the first ``--naive-dumps`` dumps and extrapolated (marked ``~``).

``--url`` picks the backends, and may be repeated: ``sqlite`` (the default)
is a fresh file; a ``postgresql+psycopg://`` URL names a server on which a
throwaway database is created for each run and dropped afterwards. CPU time
is this process's; a PostgreSQL server's own CPU shows only in wall time.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import resource
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlmodel import Session, col, select

from bench.corpus import papers, vocabulary
from mailer.dumps import format_dump, parse_dump
from mailer.papers import Paper, paper_key
from mailer.store import DumpRow, IngestOutcome, PaperRow, Store

Ingest = Callable[..., IngestOutcome]
DAY = date(2025, 12, 20)


def rss_mb() -> float:
    with Path("/proc/self/statm").open() as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def load() -> float:
    return os.getloadavg()[0]


def naive_ingest(
    store: Store,
    *,
    path: str,
    sha256: str,
    size: int,
    page_date: date | None,
    papers: Sequence[Paper],
    warnings: int,
    now: datetime,
    batch: int = 1000,
) -> IngestOutcome:
    """The ingest ``Store.ingest`` replaced: ORM rows, one object per new paper,
    flushed per batch, one commit per dump. Same rows and counts."""
    with Session(store.engine, expire_on_commit=False) as s:
        dump = DumpRow(
            path=path,
            sha256=sha256,
            size=size,
            ingested_at=now,
            page_date=page_date,
            records=len(papers),
            warnings=warnings,
            status="ingested" if papers else "empty",
        )
        s.add(dump)
        s.flush()
        unique: dict[str, Paper] = {}
        for paper in papers:
            unique.setdefault(paper_key(paper.title), paper)
        keys = list(unique)
        new = seen = 0
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            existing = {
                row.key: row for row in s.exec(select(PaperRow).where(col(PaperRow.key).in_(chunk)))
            }
            for key in chunk:
                paper = unique[key]
                row = existing.get(key)
                if row is None:
                    new += 1
                    s.add(
                        PaperRow(
                            key=key,
                            title=paper.title,
                            abstract=paper.abstract,
                            authors=paper.authors,
                            organization=paper.organization,
                            published=paper.published,
                            upvotes=paper.upvotes,
                            first_seen_at=now,
                            first_dump_id=dump.id,
                        )
                    )
                else:
                    seen += 1
                    row.upvotes = max(row.upvotes, paper.upvotes)
                    row.authors = row.authors if row.authors is not None else paper.authors
                    row.organization = row.organization or paper.organization
                    row.published = row.published or paper.published
            s.flush()
        dump.new_papers, dump.seen_papers = new, seen
        s.commit()
        assert dump.id is not None
        return IngestOutcome(dump.id, new, seen)


@dataclass
class Run:
    """Figures of one pass over the dumps."""

    files: int = 0
    papers: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    parse_cpu: float = 0.0
    store_cpu: float = 0.0
    load_start: float = 0.0
    load_end: float = 0.0
    rss: list[float] = field(default_factory=list)  # before the first dump, then after each


def ingest_files(store: Store, ingest: Ingest, files: Sequence[Path], label: str) -> Run:
    """Read, hash, parse and store each dump in turn, as the pipeline does."""
    gc.collect()
    run = Run(files=len(files), load_start=load(), rss=[rss_mb()])
    start, cpu_start = time.perf_counter(), time.process_time()
    tenth = max(1, len(files) // 10)
    for i, path in enumerate(files, 1):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        t0 = time.process_time()
        parsed = parse_dump(data, source=str(path), today=DAY)
        t1 = time.process_time()
        outcome = ingest(
            path=str(path),
            sha256=digest,
            size=len(data),
            page_date=parsed.page_date,
            papers=parsed.papers,
            warnings=len(parsed.warnings),
            now=datetime.now(UTC),
        )
        run.parse_cpu += t1 - t0
        run.store_cpu += time.process_time() - t1
        run.papers += outcome.new_papers
        run.rss.append(rss_mb())
        if label and (i % tenth == 0 or i == len(files)):
            print(
                f"  {label} files={i:4d} papers={run.papers:7,d} "
                f"wall={time.perf_counter() - start:6.1f}s "
                f"cpu={time.process_time() - cpu_start:6.1f}s "
                f"rss={run.rss[-1]:6.1f} MB load={load():.1f}",
                flush=True,
            )
    run.wall, run.cpu = time.perf_counter() - start, time.process_time() - cpu_start
    run.load_end = load()
    return run


@contextmanager
def fresh_database(url: str, folder: Path) -> Iterator[str]:
    """A new empty database: a SQLite file, or a throwaway PostgreSQL database."""
    name = f"mailer_bench_{uuid.uuid4().hex[:10]}"
    if url == "sqlite":
        yield f"sqlite:///{folder / (name + '.db')}"
        return
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_dumps(folder: Path, count: int, per_file: int) -> tuple[list[Path], int]:
    vocab = vocabulary()
    written = 0
    files = []
    for start in range(0, count, per_file):
        batch = papers(vocab, min(per_file, count - start), seed=start)
        text = format_dump(DAY - timedelta(days=start // per_file), batch)
        path = folder / f"{start // per_file:05d}.txt"
        path.write_text(text, encoding="utf-8")
        written += path.stat().st_size
        files.append(path)
    return files, written


def timed(url: str, folder: Path, files: Sequence[Path], naive: bool, label: str) -> Run:
    with fresh_database(url, folder) as db:
        store = Store(db)
        try:
            ingest: Ingest = partial(naive_ingest, store) if naive else store.ingest
            run = ingest_files(store, ingest, files, label)
            assert store.count_papers() == run.papers
            return run
        finally:
            store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=100_000)
    ap.add_argument("--per-file", type=int, default=1_000)
    ap.add_argument(
        "--naive-dumps", type=int, default=10, help="dumps to time the naive ORM ingest on"
    )
    ap.add_argument(
        "--url",
        action="append",
        help="'sqlite' (default) or a PostgreSQL server URL; may be repeated",
    )
    args = ap.parse_args()
    urls: list[str] = args.url or ["sqlite"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files, written = write_dumps(folder, args.papers, args.per_file)
        print(
            f"# {len(files)} dumps, {written / 2**20:.0f} MB, {args.papers:,} papers; "
            f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, load {load():.1f}"
        )
        rows = []
        for url in urls:
            backend = "sqlite" if url == "sqlite" else make_url(url).get_backend_name()
            fast = timed(url, folder, files, naive=False, label=backend)
            sample = files[: max(1, args.naive_dumps)]
            naive = timed(url, folder, sample, naive=True, label="")
            scale = len(files) / len(sample)
            mark = "~" if len(sample) < len(files) else ""
            steady = fast.rss[len(fast.rss) // 10 :]
            print(
                f"{backend}: ingested {fast.papers:,} papers from {written / 2**20:.0f} MB in "
                f"{fast.wall:.1f} s wall, {fast.cpu:.1f} s CPU (parse {fast.parse_cpu:.1f}, "
                f"store {fast.store_cpu:.1f}), {fast.papers / fast.wall:,.0f} papers/s; "
                f"load {fast.load_start:.1f} -> {fast.load_end:.1f}\n"
                f"{backend}: naive ORM ingest {mark}{naive.wall * scale:.1f} s wall, "
                f"{mark}{naive.cpu * scale:.1f} s CPU ({naive.papers:,} papers timed); "
                f"x{naive.wall * scale / fast.wall:.1f} wall, "
                f"x{naive.cpu * scale / fast.cpu:.1f} CPU\n"
                f"{backend}: rss {fast.rss[0]:.1f} MB before, "
                f"{min(steady):.1f}-{max(steady):.1f} MB from the first tenth on, "
                f"{fast.rss[-1]:.1f} MB at the end"
            )
            rows.append(
                f"| {backend} | {fast.papers:,} | {fast.wall:.1f} | {fast.cpu:.1f} | "
                f"{fast.parse_cpu:.1f} | {fast.store_cpu:.1f} | {fast.papers / fast.wall:,.0f} | "
                f"{mark}{naive.wall * scale:.1f} | {mark}{naive.cpu * scale:.1f} | "
                f"{naive.wall * scale / fast.wall:.1f} | {naive.cpu * scale / fast.cpu:.1f} | "
                f"{fast.rss[0]:.0f} / {max(fast.rss):.0f} / {fast.rss[-1]:.0f} | "
                f"{fast.load_start:.1f}-{fast.load_end:.1f} |"
            )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak rss of the whole process (writing the dumps included): {peak:.0f} MB\n")
        print(
            "| backend | papers | wall s | CPU s | parse CPU s | store CPU s | papers/s "
            "| naive wall s | naive CPU s | x naive wall | x naive CPU "
            "| RSS MB before / max / end | load |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
