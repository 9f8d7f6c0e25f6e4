"""Seeing what the service does: status, preview, logs, heartbeat, reload, deploy files."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import mailbox
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.cli.app import setup_logging
from mailer.config import parse_config
from mailer.ops import log_fields
from tests.conftest import ROOT
from tests.test_cli import ENV, copy_seeds, database_rows, mailer, write_config
from tests.waiting import passes, wait_for, wait_for_fresh_passes


def ingested(tmp_path: Path, interval: float = 60) -> Path:
    config = write_config(tmp_path, interval=interval)
    (tmp_path / "dumps" / "garbage.txt").write_bytes(b"\x00\xff" * 100)
    copy_seeds(tmp_path / "dumps")
    result = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return config


def status(tmp_path: Path, config: Path) -> dict[str, object]:
    result = mailer("--config", str(config), "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


# --- status ---------------------------------------------------------------------------


def test_status_counts_dumps_papers_outbox_and_the_last_pass(tmp_path: Path) -> None:
    config = ingested(tmp_path)
    report = status(tmp_path, config)
    dumps = report["dumps"]
    assert isinstance(dumps, dict)
    assert (dumps["seen"], dumps["ingested"], dumps["refused"]) == (6, 5, 1)
    (refusal,) = dumps["refusals"]
    assert refusal["path"].endswith("garbage.txt")
    assert "not a Daily Papers dump" in refusal["reason"]
    assert report["papers"] == 290
    assert report["outbox"] == {"pending": 0, "sent": 2, "failed": 0, "bounced": 0}
    assert report["suppressed"] == 0
    assert report["matches_waiting"] == 0
    last = report["last_pass"]
    assert isinstance(last, dict)
    assert "papers_new=290" in last["summary"]
    assert [s["email"] for s in report["next_digests"]] == [  # type: ignore[attr-defined]
        "ada@example.org",
        "grace@example.org",
    ]


def test_status_text_names_each_part(tmp_path: Path) -> None:
    config = ingested(tmp_path)
    result = mailer("--config", str(config), "status", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for part in ("dumps", "6 seen: 5 ingested", "garbage.txt", "290 stored", "2 sent", "last pass"):
        assert part in result.stdout, part
    assert "next digests" in result.stdout


def test_status_without_a_database_creates_none(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    report = status(tmp_path, config)
    assert report["papers"] == 0
    assert report["last_pass"] is None
    assert not (tmp_path / "mailer.db").exists()


# --- preview ----------------------------------------------------------------------------


def pending_config(tmp_path: Path) -> Path:
    """Ada on a weekly schedule whose slot has not come: her matches wait."""
    config = write_config(tmp_path)
    text = config.read_text().replace('name = "Ada"', 'name = "Ada"\nschedule = "weekly mon 08:00"')
    config.write_text(text)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    return config


def test_preview_writes_the_waiting_digest_and_records_nothing(tmp_path: Path) -> None:
    config = pending_config(tmp_path)
    before = status(tmp_path, config)
    assert before["matches_waiting"] == 10
    html = tmp_path / "ada.html"
    result = mailer("--config", str(config), "preview", "--subscriber", "ada@example.org",
                    "--out", str(html), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert "Subject: Paper Digest: 10 new papers" in result.stderr
    text = mailer("--config", str(config), "preview", "--subscriber", "ada@example.org",
                  "--format", "text", cwd=tmp_path)  # fmt: skip
    assert "10 papers matched Diffusion" in text.stdout
    after = status(tmp_path, config)
    assert after["matches_waiting"] == 10
    assert after["outbox"] == before["outbox"]


def test_preview_html_is_the_html_part_that_would_be_sent(tmp_path: Path) -> None:
    config = pending_config(tmp_path)
    web = '[web]\nbase_url = "https://digest.example.org"\nsecret = "0123456789abcdef0123"\n'
    config.write_text(web + config.read_text())
    before = database_rows(tmp_path / "mailer.db")
    preview = mailer("--config", str(config), "preview", "--subscriber", "ada@example.org",
                     "--format", "html", cwd=tmp_path)  # fmt: skip
    assert preview.returncode == 0, preview.stderr
    assert database_rows(tmp_path / "mailer.db") == before
    config.write_text(config.read_text().replace('schedule = "weekly mon 08:00"', ""))
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    (sent,) = [m for m in box if "ada@example.org" in str(m["To"])]
    parsed = email.message_from_bytes(sent.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    html = parsed.get_body(("html",))
    assert html is not None
    assert "https://digest.example.org/unsubscribe/" in preview.stdout
    assert preview.stdout == html.get_content()


def test_preview_with_nothing_waiting_says_so(tmp_path: Path) -> None:
    config = ingested(tmp_path)
    result = mailer("--config", str(config), "preview", "--subscriber", "ada@example.org",
                    "--out", str(tmp_path / "x.html"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0
    assert "nothing waiting for ada@example.org" in result.stderr
    assert not (tmp_path / "x.html").exists()


# --- logs -----------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line_with_fields(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    result = mailer("--log-format", "json", "--config", str(config), "ingest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    dumps = [e for e in events if "ingested records" in e["message"]]
    assert len(dumps) == 5
    assert {"time", "level", "message", "dump", "new", "seen"} <= set(dumps[0])
    sent = [e for e in events if e["message"].startswith("sent ")]
    assert {e["subscriber"] for e in sent} == {"ada@example.org", "grace@example.org"}
    assert all(e["reply"].startswith("stored as") for e in sent)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put back the root logger, mailer's logger and the excepthook after a
    test that sets up the CLI's logging in this process."""
    root, own = logging.getLogger(), logging.getLogger("mailer")
    saved = (root.handlers[:], root.level, own.handlers[:], own.level, own.propagate)
    hook = sys.excepthook
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    own.handlers[:], own.level, own.propagate = saved[2], saved[3], saved[4]
    sys.excepthook = hook
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restored_logging")
def test_json_logs_hold_third_party_lines_and_tracebacks_one_object_per_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging(verbose=False, log_format="json")
    logging.getLogger("apscheduler.scheduler").warning('Execution of job "pass" skipped')
    logging.getLogger("aiohttp.server").info("below WARNING: not shown")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("alembic.runtime.migration").exception("upgrade failed")
        sys.excepthook(*sys.exc_info())
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    lines = capsys.readouterr().err.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["logger"] for e in events] == [
        "apscheduler.scheduler",
        "alembic.runtime.migration",
        "mailer",
        "py.warnings",
    ]
    assert all("Traceback" in e["exc"] and "ValueError: boom" in e["exc"] for e in events[1:3])
    assert events[2]["level"] == "critical"


def test_log_fields_take_key_values_and_the_whole_reply() -> None:
    assert log_fields("sent subscriber=a@b.org papers=3 reply=250 2.0.0 Ok: queued") == {
        "subscriber": "a@b.org",
        "papers": 3,
        "reply": "250 2.0.0 Ok: queued",
    }


def test_ingest_without_a_terminal_logs_progress_lines(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    result = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert "progress dumps=1/5" in result.stderr
    assert "progress dumps=5/5" in result.stderr


def test_secrets_never_appear_in_output_or_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace(
            "[delivery]",
            '[database]\nurl = "postgresql+psycopg://mailer:hunter2-db@127.0.0.1:9/x"\n'
            '[smtp]\npassword = "hunter2-smtp"\n[delivery]',
        )
    )
    runs = [
        mailer("--config", str(config), "check-config", cwd=tmp_path),
        mailer("--config", str(config), "status", cwd=tmp_path),
        mailer("--config", str(config), "ingest", cwd=tmp_path),
        mailer(
            "--config",
            str(config),
            "subs",
            "set",
            "ada@example.org",
            "timezone",
            "X/Y",
            cwd=tmp_path,
        ),
    ]
    for result in runs:
        assert "hunter2" not in result.stdout + result.stderr, result.args
    assert "***" in runs[0].stdout


# --- the daemon: heartbeat and reload ---------------------------------------------------


def heartbeat(tmp_path: Path) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads((tmp_path / "mailer.heartbeat").read_text())
    except (OSError, ValueError):
        return None
    return data


def passes_in(beat: dict[str, object]) -> int:
    count = beat["passes"]
    assert isinstance(count, int)
    return count


@pytest.mark.slow
def test_daemon_reloads_an_edited_config_and_survives_an_invalid_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, interval=0.3)
    config.write_text(config.read_text().replace("agent OR agents", "zzzunmatchable"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "run"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: heartbeat(tmp_path) is not None, what="a heartbeat")
        first = heartbeat(tmp_path)
        assert first is not None
        assert first["pid"] == proc.pid
        wait_for(lambda: passes(tmp_path) > passes_in(first), what="a second heartbeat")
        edit = mailer("--config", str(config), "subs", "add-query", "grace@example.org",
                      "Agents", "agents", "--replace", cwd=tmp_path)  # fmt: skip
        assert edit.returncode == 0, edit.stderr
        wait_for_fresh_passes(tmp_path)  # a pass that began after the edit reloaded it
        copy_seeds(tmp_path / "dumps")
        outbox = tmp_path / "outbox" / "new"
        wait_for(lambda: outbox.exists() and len(list(outbox.iterdir())) == 2, what="two digests")
        grace = [p.read_text() for p in outbox.iterdir() if "grace@example.org" in p.read_text()]
        assert len(grace) == 1
        config.write_text(
            config.read_text().replace('email = "grace@example.org"', 'email = "grace"')
        )
        wait_for_fresh_passes(tmp_path, 2)  # read the invalid config, and passed again
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "reloaded subscribers=2 subscriptions=2" in stderr
    assert "not reloaded, still running on the last good configuration" in stderr
    assert "subscribers[1] (grace).email" in stderr
    assert stderr.count("not reloaded") == 1


# --- deploy files ------------------------------------------------------------------------


def test_the_compose_configuration_is_valid() -> None:
    path = ROOT / "deploy" / "config" / "config.toml"
    config = parse_config(path.read_text(), source=str(path))
    assert config.smtp.host == "mailpit"
    assert config.daemon.heartbeat == Path("/data/mailer.heartbeat")


def test_the_systemd_unit_restarts_runs_unprivileged_and_reads_secrets() -> None:
    unit = (ROOT / "deploy" / "mailer.service").read_text()
    for line in (
        "Restart=on-failure",
        "User=mailer",
        "EnvironmentFile=/etc/mailer/mailer.env",
        "ExecStart=/opt/mailer/bin/mailer run",
        "LimitNOFILE=4096",
    ):
        assert f"\n{line}\n" in unit, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "mailer.service").read_text()
    copy = tmp_path / "mailer.service"
    copy.write_text(unit.replace("/opt/mailer/bin/mailer", sys.executable + " -m mailer"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- the store's operator queries, on SQLite and PostgreSQL -------------------------------


def test_store_operator_queries(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from mailer.papers import Paper
    from mailer.store import NewMatch, Store

    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    store = Store(database_url)
    try:
        ids = store.sync_subscribers([("a@example.org", "A", [("x", "x")])], now)
        store.ingest(path="d1", sha256="1" * 64, size=1, page_date=None, warnings=0, now=now,
                     papers=[Paper("Old paper", "text"), Paper("New paper", "text")])  # fmt: skip
        store.record_refused(path="bad", sha256="2" * 64, size=1, error="bad: nope", now=now)
        papers = store.unmatched_papers()
        store.record_matches([pid for pid, _ in papers], [], now)
        candidates = store.backfill_candidates(ids["a@example.org"], now - timedelta(days=1))
        assert [p.title for _, p in candidates] == ["Old paper", "New paper"]
        sid = ids["a@example.org"]
        rows = [
            NewMatch(sid, pid, ("x",), (("paper",),), (1.0,), ("paper",)) for pid, _ in candidates
        ]
        assert store.add_matches(ids["a@example.org"], rows, now) == 2
        assert store.add_matches(ids["a@example.org"], rows, now) == 0
        assert store.backfill_candidates(ids["a@example.org"], now - timedelta(days=1)) == []
        state = store.subscriber_states()["a@example.org"]
        assert (state.pending, state.active, state.unsubscribed_at) == (2, True, None)
        assert store.dump_counts() == {"ingested": 1, "refused": 1}
        assert store.outbox_counts() == {}
        store.record_pass("dumps=1", now)
        store.record_pass("dumps=0", now + timedelta(minutes=1))
        last = store.get_state("last_pass")
        assert last is not None
        assert last.value == "dumps=0"
    finally:
        store.close()
