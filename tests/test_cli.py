"""The command line, driven as a user would: real processes, a real SMTP server."""

from __future__ import annotations

import contextlib
import json
import mailbox
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from mailer.cli.app import app
from tests.conftest import ROOT, SEEDS, SmtpServer
from tests.waiting import passes, wait_for, wait_for_fresh_passes

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("MAILER_CONFIG", None)


def mailer(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailer", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(tmp_path: Path, port: int | None = None, interval: float = 60) -> Path:
    transport = (
        f'transport = "smtp"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        if port
        else 'transport = "maildir"\n'
    )
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[watch]
dir = "dumps"
interval_seconds = {interval}
settle_seconds = 0.2
[delivery]
{transport}
[[subscribers]]
email = "ada@example.org"
name = "Ada"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model" OR diffusion'
[[subscribers]]
email = "grace@example.org"
[[subscribers.subscriptions]]
name = "Agents"
query = "agent OR agents"
""",
        encoding="utf-8",
    )
    (tmp_path / "dumps").mkdir(exist_ok=True)
    return path


def copy_seeds(folder: Path) -> None:
    for seed in sorted(SEEDS.glob("*.txt")):
        tmp = folder / (seed.name + ".part")
        tmp.write_bytes(seed.read_bytes())
        tmp.rename(folder / seed.name)


def database_rows(path: Path) -> list[str]:
    """Every row of a SQLite database, as SQL: what a command recorded."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


# --- parse ---------------------------------------------------------------------


def test_parse_json_prints_one_object_per_record(tmp_path: Path) -> None:
    result = mailer("parse", "--json", *map(str, sorted(SEEDS.glob("*.txt"))), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 315
    assert set(records[0]) >= {
        "title",
        "abstract",
        "authors",
        "organization",
        "published",
        "upvotes",
    }
    assert "000_60125a6c42a31246.txt: 40 records" in result.stderr


def test_parse_refuses_a_non_dump_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "photo.txt"
    bad.write_bytes(b"\x89PNG\x00\x00\x00" * 20)
    result = mailer(
        "parse", "--json", str(bad), str(SEEDS / "004_8d3ac697b747adc8.txt"), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "photo.txt" in result.stderr
    assert len(result.stdout.splitlines()) == 43


def test_parse_empty_file_is_a_warning_not_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    result = mailer("parse", "--json", str(empty), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == ""
    assert "empty.txt" in result.stderr


# --- check-config ------------------------------------------------------------------


def test_check_config_explains_a_valid_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "ada@example.org" in result.stdout


def test_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[smtp]\nport = "lots"\n')
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "smtp.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_error_messages_print_bracketed_text_literally_not_as_markup(tmp_path: Path) -> None:
    folder = tmp_path / "[database]"
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text('[smtp]\nport = "lots"\n')
    result = mailer("--config", "[database]/config.toml", "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: [database]/config.toml: invalid configuration" in result.stderr
    missing = mailer("--config", "[bold]x[/bold].toml", "check-config", cwd=tmp_path)
    assert "[bold]x[/bold].toml: cannot read" in missing.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {**ENV, "MAILER_CONFIG": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "mailer", "check-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert str(config) in result.stdout


# --- ingest and send-test ------------------------------------------------------------


def test_ingest_runs_one_pass_into_a_maildir(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    first = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "sent=2" in first.stdout
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    assert sorted(str(m["To"]) for m in box) == ["Ada <ada@example.org>", "grace@example.org"]
    second = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert "sent=0" in second.stdout
    assert len(list(box)) == 2


def test_send_test_sends_exactly_one_message_and_records_nothing(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    copy_seeds(tmp_path / "dumps")
    quiet = tmp_path / "quiet.toml"
    quiet.write_text(config.read_text().replace('transport = "smtp"', 'transport = "maildir"'))
    assert mailer("--config", str(quiet), "ingest", cwd=tmp_path).returncode == 0
    smtp_server.messages.clear()
    before = database_rows(tmp_path / "mailer.db")
    result = mailer(
        "--config", str(config), "send-test", "--to", "me@example.org", "--days", "3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (got,) = smtp_server.messages
    assert got.recipients == ["me@example.org"]
    assert got.message["Subject"].startswith("[test]")
    assert "ada@example.org" in result.stdout
    assert database_rows(tmp_path / "mailer.db") == before
    deliveries = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert "digests=0" in deliveries.stdout


def test_send_test_with_nothing_matching_still_sends_and_says_so(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    result = mailer(
        "--config",
        str(config),
        "send-test",
        "--to",
        "me@example.org",
        "--subscriber",
        "grace@example.org",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (got,) = smtp_server.messages
    text = got.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "No new papers" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "dumps"]


def test_send_test_to_unknown_subscriber_names_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer(
        "--config",
        str(config),
        "send-test",
        "--to",
        "me@example.org",
        "--subscriber",
        "who@example.org",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "who@example.org" in result.stderr


# --- the daemon -----------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_ingests_new_dumps_mails_and_stops_on_sigterm(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port, interval=0.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "run"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        (tmp_path / "dumps" / "garbage.txt").write_bytes(b"\x00\xff" * 100)
        copy_seeds(tmp_path / "dumps")
        wait_for(lambda: len(smtp_server.messages) >= 2, what="two digests")
        wait_for_fresh_passes(tmp_path, 2)
        assert len(smtp_server.messages) == 2
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert re.search(r"garbage\.txt refused", stderr)
    assert "stopped" in stderr


# --- documentation ----------------------------------------------------------------------


def command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and sub-command under ``command``, as the words that run it."""
    for name, sub in getattr(command, "commands", {}).items():
        yield (*path, name)
        yield from command_paths(sub, (*path, name))


def test_every_command_is_documented_in_the_readme() -> None:
    """Each command, sub-commands included, has a row in one of the README's
    command tables (sqlite-utils' practice): a new command cannot ship
    undocumented."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = list(command_paths(typer.main.get_command(app)))
    assert ("subs", "add") in paths
    for path in paths:
        row = re.compile(rf"^\| `mailer {re.escape(' '.join(path))}(?![\w-])", re.MULTILINE)
        assert row.search(readme), f"'mailer {' '.join(path)}' has no row in README.md"


def test_outbox_lists_only_the_state_asked_for(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    sent = mailer("--config", str(config), "outbox", "--json", "--status", "sent", cwd=tmp_path)
    assert [m["status"] for m in json.loads(sent.stdout)] == ["sent", "sent"]
    queued = mailer("--config", str(config), "outbox", "--json", "--status", "queued", cwd=tmp_path)
    assert json.loads(queued.stdout) == []


def test_outbox_refuses_a_state_that_does_not_exist(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer("--config", str(config), "outbox", "--status", "lost", cwd=tmp_path)
    assert result.returncode == 2
    assert "queued" in result.stderr
