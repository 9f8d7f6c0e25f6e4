"""Files that are not what they should be: a FIFO or a huge file in the watch
folder, a dump read while still being written, an unreadable dump, and the
SQLite database deleted, replaced or damaged under mailer. The daemon cases
drive the real ``python -m mailer`` process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from mailer.analysis import Stats
from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.dumpfiles import OversizeDumpError, changed_since, load_dump, opened_dump, read_dump
from mailer.dumps import format_dump, parse_dump
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.store import Store
from tests.conftest import SEEDS
from tests.test_cli import ENV, mailer, write_config
from tests.waiting import passes, wait_for, wait_for_fresh_passes

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SEED = sorted(SEEDS.glob("*.txt"))[0]


def start(config: Path, *prefix: str) -> subprocess.Popen[str]:
    """``mailer run`` as a process, its command led by ``prefix``."""
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "mailer", "--config", str(config), "run"],
        cwd=config.parent,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    """Wait for the process to end on its own; kill it (failing the test's
    expectations) if it does not within ``timeout``."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    return finish(proc)


def without_root_privileges() -> tuple[str, ...]:
    """A command prefix under which file permissions hold: as root, the
    capabilities that bypass them are dropped."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")


# --- a FIFO in the watch folder ---------------------------------------------------------


@pytest.mark.slow
def after_three_passes(proc: subprocess.Popen[str], tmp_path: Path) -> str:
    """The daemon's log once it has made three more passes and stopped cleanly."""
    try:
        wait_for_fresh_passes(tmp_path, 3)
        code, stderr = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, stderr
    return stderr


def test_a_fifo_in_the_watch_folder_is_skipped_with_one_warning_and_passes_go_on(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, interval=0.2)
    fifo = tmp_path / "dumps" / "pipe.txt"
    os.mkfifo(fifo)
    stderr = after_three_passes(start(config), tmp_path)
    warnings = [line for line in stderr.splitlines() if "pipe.txt" in line]
    assert len(warnings) == 1, stderr
    assert "not a regular file (a FIFO)" in warnings[0]


def test_parse_of_a_fifo_returns_at_once_with_an_error_naming_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    result = mailer("parse", str(fifo), cwd=tmp_path, timeout=20)
    assert result.returncode == 1
    assert f"{fifo}: not a regular file (a FIFO)" in result.stderr


# --- caps on size and line length ----------------------------------------------------------


def harness_config(tmp_path: Path, database_url: str, extra: str = "") -> Config:
    text = f"""
[watch]
dir = "dumps"
settle_seconds = 0
{extra}
[database]
url = "{database_url}"
[delivery]
transport = "maildir"
maildir = "outbox"
[[subscribers]]
email = "ada@example.org"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model" OR diffusion'
"""
    (tmp_path / "dumps").mkdir(exist_ok=True)
    return parse_config(text, source="test.toml", base_dir=tmp_path)


class Harness:
    """A pipeline in-process, delivering into a Maildir."""

    def __init__(self, tmp_path: Path, database_url: str, extra: str = "") -> None:
        self.dumps = tmp_path / "dumps"
        self.config = harness_config(tmp_path, database_url, extra)
        self.store = Store(self.config.database.url)
        self.pipeline = Pipeline(
            self.config, self.store, lambda: make_transport(self.config), clock=lambda: NOW
        )

    def run(self) -> PassReport:
        return asyncio.run(self.pipeline.run_pass())

    def drop(self, name: str, data: bytes, age: float = 10) -> Path:
        path = self.dumps / name
        path.write_bytes(data)
        then = time.time() - age
        os.utime(path, (then, then))
        return path


@pytest.fixture
def small_caps(tmp_path: Path, database_url: str) -> Iterator[Harness]:
    h = Harness(tmp_path, database_url, "max_dump_bytes = 50000\nmax_line_bytes = 4000")
    yield h
    h.store.close()


def test_a_dump_over_max_dump_bytes_is_refused_naming_the_file(small_caps: Harness) -> None:
    big = small_caps.drop("big.txt", SEED.read_bytes())
    assert big.stat().st_size > 50000
    report = small_caps.run()
    assert (report.refused, report.dumps) == (1, 0)
    (refused,) = small_caps.store.refused_dumps()
    assert refused.path == str(big)
    assert refused.error == f"{big}: larger than 50000 bytes ([watch] max_dump_bytes); not read"
    assert small_caps.store.count_papers() == 0
    assert small_caps.run().refused == 0, "a refusal is recorded once"


def test_a_dump_with_a_line_over_max_line_bytes_is_refused_naming_the_line(
    small_caps: Harness,
) -> None:
    dump = format_dump(date(2026, 11, 23), [Paper("A title", ("diffusion " * 500).strip())])
    long = small_caps.drop("long.txt", dump.encode())
    report = small_caps.run()
    assert report.refused == 1
    (refused,) = small_caps.store.refused_dumps()
    assert refused.error is not None
    assert refused.error.startswith(f"{long}:15: line longer than 4000 bytes")


def test_a_file_over_the_cap_is_never_held_in_memory(tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"x" * (40 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(OversizeDumpError) as refused:
            load_dump(huge, max_bytes=4 * 1024 * 1024, max_line_bytes=50 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.size == 40 * 1024 * 1024
    assert peak < 8 * 1024 * 1024


def test_a_dump_opened_for_parsing_keeps_no_bytes_and_parses_as_read(tmp_path: Path) -> None:
    dump = tmp_path / "day.txt"
    dump.write_text(format_dump(date(2026, 11, 20), papers(50)), encoding="utf-8")
    with opened_dump(dump) as (loaded, stream):
        assert loaded.data is None
        assert loaded.size == dump.stat().st_size
        parsed = parse_dump(stream, source=str(dump), today=NOW.date())
    assert parsed == read_dump(dump, today=NOW.date())
    assert len(parsed.papers) == 50


def test_a_dump_written_to_after_it_was_hashed_counts_as_changed(tmp_path: Path) -> None:
    dump = tmp_path / "day.txt"
    dump.write_text(format_dump(date(2026, 11, 20), papers(5)), encoding="utf-8")
    with opened_dump(dump) as (loaded, stream):
        assert not changed_since(stream, loaded)
        with dump.open("a", encoding="utf-8") as more:
            more.write("\n\nA late title\n\nA late abstract.")
        assert changed_since(stream, loaded)


# --- a dump read while still being written ---------------------------------------------------

ABSTRACT = "We train a diffusion model to denoise protein structures in a single pass."


def papers(n: int) -> list[Paper]:
    return [
        Paper(
            f"Paper {i} on diffusion",
            ABSTRACT.replace("protein", f"protein {i}"),
            authors=3,
            published=date(2026, 11, 20),
        )
        for i in range(n)
    ]


def stored_abstracts(store: Store) -> dict[str, str]:
    with store.transaction() as conn:
        return dict(conn.execute(text("SELECT title, abstract FROM papers")).all())


def recounted(store: Store) -> tuple[int, int, int, dict[str, int]]:
    """The corpus statistics counted afresh from the stored papers."""
    stats = Stats()
    for paper in stored_abstracts(store).items():
        stats.observe_paper(Paper(*paper))
    return stats.papers, stats.title_length, stats.abstract_length, dict(stats.df)


def stored_statistics(store: Store) -> tuple[int, int, int, dict[str, int]]:
    with store.transaction() as conn:
        papers, title, abstract = conn.execute(
            text("SELECT papers, title_tokens, abstract_tokens FROM corpus")
        ).one()
        df: dict[str, int] = dict(
            conn.execute(text("SELECT term, df FROM terms WHERE df > 0")).all()
        )
    return papers, title, abstract, df


def test_a_dump_completed_after_a_partial_ingest_completes_abstracts_and_mails_nothing_twice(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url)
    try:
        complete = format_dump(date(2026, 11, 23), papers(3)).encode()
        # The writer paused mid-way through the last abstract, for longer than settle_seconds.
        cut = complete.index(b"protein 2") + len(b"prot")
        h.drop("day.txt", complete[:cut], age=20)
        first = h.run()
        assert (first.papers_new, first.sent) == (3, 1)
        assert stored_abstracts(h.store)["Paper 2 on diffusion"].endswith("denoise prot")

        h.drop("day.txt", complete)
        second = h.run()
        assert (second.dumps, second.papers_new, second.sent) == (1, 0, 0)
        abstracts = stored_abstracts(h.store)
        assert abstracts["Paper 2 on diffusion"] == ABSTRACT.replace("protein", "protein 2")
        assert len(list((tmp_path / "outbox" / "new").iterdir())) == 1
        # The paper was counted when matched, cut short; its counts are restated.
        assert stored_statistics(h.store) == recounted(h.store)
        assert h.store.stats().abstract_length == recounted(h.store)[2]
    finally:
        h.store.close()


def test_a_longer_abstract_that_does_not_extend_the_stored_one_is_not_taken(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url)
    try:
        h.drop("one.txt", format_dump(date(2026, 11, 23), [Paper("A title", "Short.")]).encode())
        h.run()
        other = format_dump(date(2026, 11, 24), [Paper("A title", "Another, longer text.")])
        h.drop("two.txt", other.encode())
        h.run()
        assert stored_abstracts(h.store) == {"A title": "Short."}
    finally:
        h.store.close()


# --- an unreadable dump --------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unreadable_dump_is_warned_once_and_shown_by_status(tmp_path: Path) -> None:
    prefix = without_root_privileges()
    config = write_config(tmp_path, interval=0.2)
    locked = tmp_path / "dumps" / "locked.txt"
    locked.write_bytes(SEED.read_bytes())
    locked.chmod(0)
    stderr = after_three_passes(start(config, *prefix), tmp_path)
    warnings = [line for line in stderr.splitlines() if "locked.txt" in line]
    assert len(warnings) == 1, stderr
    assert "Permission denied" in warnings[0]

    shown = mailer("--config", str(config), "status", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    (entry,) = json.loads(shown.stdout)["dumps"]["unreadable"]
    assert entry["path"] == str(locked)
    assert entry["reason"] == "cannot read dump: Permission denied"
    as_text = mailer("--config", str(config), "status", cwd=tmp_path)
    assert f"  unreadable   {locked}: cannot read dump: Permission denied" in as_text.stdout


# --- the database file ----------------------------------------------------------------------------


@pytest.mark.slow
def test_deleting_the_sqlite_file_under_the_daemon_stops_it_with_an_error_naming_it(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, interval=0.2)
    database = tmp_path / "mailer.db"
    proc = start(config)
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        database.unlink()
        code, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1, stderr
    assert f"error: database file {database} was deleted while mailer was running" in stderr
    assert "Traceback" not in stderr
    assert not database.exists(), "the daemon must not create a new database"


@pytest.mark.slow
def test_replacing_the_sqlite_file_under_the_daemon_stops_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, interval=0.2)
    database = tmp_path / "mailer.db"
    proc = start(config)
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        copy = tmp_path / "copy.db"
        with sqlite3.connect(database) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        copy.replace(database)
        code, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1, stderr
    assert f"database file {database} was replaced by another file" in stderr


@pytest.mark.parametrize("command", [["status"], ["ingest"]])
def test_a_corrupt_database_header_is_one_paragraph_naming_the_file_and_exit_1(
    tmp_path: Path, command: list[str]
) -> None:
    config = write_config(tmp_path)
    database = tmp_path / "mailer.db"
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    with database.open("r+b") as f:
        f.write(b"\xff" * 100)
    result = mailer("--config", str(config), *command, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        f"error: database file {database} is damaged or not a SQLite database "
        "(file is not a database); mailer did not change it"
    )
    assert len(lines) == 2
    assert "restore it from a backup" in lines[1]
