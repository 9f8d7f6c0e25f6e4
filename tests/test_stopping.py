"""Signals to a running daemon: SIGTERM mid-batch records every message the
server accepted before exiting, so a restart sends none of them again; SIGHUP
reloads the configuration and the daemon carries on."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import SmtpServer
from tests.process import Mailer
from tests.test_cli import copy_seeds, mailer
from tests.test_faults import write_config
from tests.waiting import passes, wait_for

ACCEPTED_BEFORE_SIGTERM = 60


def outbox(tmp_path: Path) -> dict[str, str]:
    """Message-ID (without angle brackets) -> status, from the database."""
    with closing(sqlite3.connect(tmp_path / "mailer.db")) as db:
        rows = db.execute("SELECT message_id, status FROM deliveries").fetchall()
    return {str(mid).strip("<>"): str(status) for mid, status in rows}


def accepted_ids(server: SmtpServer) -> list[str]:
    return [str(m.message["Message-ID"]).strip("<>") for m in server.messages]


@pytest.mark.slow
def test_sigterm_mid_batch_records_every_accepted_message_and_a_restart_resends_none(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    subs = [(f"reader{i:03d}@example.org", "instant", "UTC") for i in range(400)]
    config = write_config(tmp_path, smtp_server.port, subscribers=subs, interval=0.3)
    sink = smtp_server.sink
    original = sink.handle_DATA
    reached, release = threading.Event(), threading.Event()

    async def slowed(server: SMTP, session: Session, envelope: Envelope) -> str:
        # The server keeps the message, then, from the 60th on, holds its
        # "250 accepted" until the daemon is stopping: the batch is on the wire.
        reply = await original(server, session, envelope)
        if len(sink.messages) >= ACCEPTED_BEFORE_SIGTERM:
            reached.set()
            await asyncio.to_thread(release.wait, 20)
        return reply

    sink.handle_DATA = slowed  # type: ignore[method-assign]
    daemon = Mailer(config, "run")
    try:
        copy_seeds(tmp_path / "dumps")
        wait_for(reached.is_set, timeout=60, what=f"{ACCEPTED_BEFORE_SIGTERM} accepted messages")
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_logged("stopping")
        release.set()
        code = daemon.finish(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        daemon.kill()
    assert code == 0, daemon.log
    assert elapsed < 10
    accepted = accepted_ids(smtp_server)
    assert ACCEPTED_BEFORE_SIGTERM <= len(accepted) < len(subs), "SIGTERM came mid-batch"
    recorded = outbox(tmp_path)
    assert {mid: recorded.get(mid) for mid in accepted} == dict.fromkeys(accepted, "sent")

    sink.handle_DATA = original  # type: ignore[method-assign]
    result = mailer("--config", str(config), "ingest", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    twice = [mid for mid, n in Counter(accepted_ids(smtp_server)).items() if n > 1]
    assert twice == []
    assert len(smtp_server.messages) == len(subs)


@pytest.mark.slow
def test_sighup_reloads_the_edited_config_and_the_daemon_keeps_running(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port, interval=600)
    daemon = Mailer(config, "run")
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        edited = config.read_text(encoding="utf-8").replace(
            'email = "alan@example.org"', 'email = "alan@example.org"\nname = "Alan"'
        )
        config.write_text(edited, encoding="utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_logged("reloaded subscribers=3")
        assert daemon.logged("SIGHUP")
        assert daemon.proc.poll() is None, "SIGHUP must not end the daemon"
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.finish()
    finally:
        daemon.kill()
    assert code == 0, daemon.log
