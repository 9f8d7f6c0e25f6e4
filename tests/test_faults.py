"""The fault-injection suite: what goes wrong on a real mail path, and what
mailer must still guarantee. Each test is one fault from the delivery issue,
against aiosmtpd on loopback; crash tests drive the real ``python -m mailer``
process and kill it at a deterministic point chosen from outside."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr

from mailer.config import Config, parse_config
from mailer.delivery import make_transport
from mailer.dumps import format_dump
from mailer.errors import ConfigError
from mailer.papers import Paper
from mailer.pipeline import PassReport, Pipeline
from mailer.store import Store
from tests.conftest import SEEDS, SMTP_LOGIN, Logins, Received, SmtpServer, free_port
from tests.test_cli import ENV, copy_seeds, mailer
from tests.waiting import passes, wait_for, wait_for_fresh_passes

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DIFFUSION = '"diffusion model" OR diffusion'


def paper(n: int, topic: str = "diffusion model") -> Paper:
    return Paper(f"Paper {n} on a {topic}", f"We train a {topic} in setting {n}.")


def config_text(
    tmp_path: Path,
    port: int,
    *,
    subscribers: list[tuple[str, str, str]] | None = None,
    interval: float = 60,
    settle: float = 0,
    extra: str = "",
) -> str:
    """A config with (email, schedule, timezone) subscribers all asking for diffusion."""
    subs = subscribers or [
        ("ada@example.org", "instant", "UTC"),
        ("grace@example.org", "instant", "UTC"),
        ("alan@example.org", "instant", "UTC"),
    ]
    blocks = "".join(
        f"""
[[subscribers]]
email = "{email}"
schedule = "{schedule}"
timezone = "{zone}"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '{DIFFUSION}'
"""
        for email, schedule, zone in subs
    )
    return f"""
[watch]
dir = "dumps"
interval_seconds = {interval}
settle_seconds = {settle}
[database]
url = "sqlite:///{tmp_path / "mailer.db"}"
[delivery]
transport = "smtp"
retry_initial_seconds = 60
retry_max_seconds = 600
give_up_after_seconds = 3600
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout_seconds = 5
max_connections = 2
sender = "Paper Digest <digest@example.org>"
{extra}
{blocks}
"""


class Rig:
    """A Pipeline in-process with a clock the test moves."""

    def __init__(self, tmp_path: Path, port: int, now: datetime = START, **kwargs: Any) -> None:
        self.dumps = tmp_path / "dumps"
        self.dumps.mkdir(exist_ok=True)
        self.now = now  # subscribers are synced, so subscribed, at this time
        self.config: Config = parse_config(
            config_text(tmp_path, port, **kwargs), source="faults.toml", base_dir=tmp_path
        )
        self.store = Store(self.config.database.url)
        self.pipeline = Pipeline(
            self.config, self.store, lambda: make_transport(self.config), clock=lambda: self.now
        )
        self.drops = 0

    def run(self) -> PassReport:
        return asyncio.run(self.pipeline.run_pass())

    def later(self, **delta: float) -> PassReport:
        self.now += timedelta(**delta)
        return self.run()

    def drop(self, *papers: Paper, day: date = date(2026, 11, 23)) -> None:
        self.drops += 1
        path = self.dumps / f"dump-{self.drops}.txt"
        path.write_text(format_dump(day, papers), encoding="utf-8")
        old = time.time() - 10
        os.utime(path, (old, old))

    def use_port(self, port: int) -> None:
        self.config = self.config.model_copy(
            update={"smtp": self.config.smtp.model_copy(update={"port": port})}
        )
        self.pipeline.configure(self.config)


@pytest.fixture
def rig(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Rig]:
    r = Rig(tmp_path, smtp_server.port)
    yield r
    r.store.close()


def recipients(messages: list[Received]) -> Counter[str]:
    return Counter(r for m in messages for r in m.recipients)


def statuses(store: Store) -> dict[str, str]:
    return {d.recipient: d.status for d in store.deliveries()}


# --- 1. server down ---------------------------------------------------------------


def test_1_server_down_during_a_pass_loses_nothing_and_all_go_out_once_back(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    rig = Rig(tmp_path, free_port())
    rig.drop(paper(1), paper(2))
    down = rig.run()
    assert (down.digests, down.sent, down.deferred) == (3, 0, 3)
    assert set(statuses(rig.store).values()) == {"pending"}
    rig.use_port(smtp_server.port)
    assert rig.later(seconds=10).sent == 0, "sending paused with back-off, not a tight loop"
    back = rig.later(minutes=5)
    again = rig.later(minutes=5)
    rig.store.close()
    assert (back.sent, again.sent) == (3, 0)
    assert recipients(smtp_server.messages) == {
        "ada@example.org": 1,
        "grace@example.org": 1,
        "alan@example.org": 1,
    }


def test_1_refused_login_pauses_sending_with_a_clear_error_then_delivers_once_fixed(
    tmp_path: Path,
    auth_smtp_server: tuple[SmtpServer, Logins],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, logins = auth_smtp_server
    user, password = SMTP_LOGIN
    rig = Rig(tmp_path, server.port, extra=f'username = "{user}"\npassword = "stale"')
    rig.drop(paper(1))
    with caplog.at_level("ERROR", logger="mailer"):
        first = rig.run()
    assert (first.sent, first.deferred, first.failed) == (0, 3, 0)
    tried = logins.attempts
    assert any(
        "refused the login for 'digest'" in r.getMessage() and "paused" in r.getMessage()
        for r in caplog.records
    )
    assert set(statuses(rig.store).values()) == {"pending"}
    assert rig.later(seconds=10).sent == 0
    assert logins.attempts == tried, "no new login attempt before the pause ends"
    smtp = rig.config.smtp.model_copy(update={"password": SecretStr(password)})
    rig.config = rig.config.model_copy(update={"smtp": smtp})
    rig.pipeline.configure(rig.config)
    assert rig.later(minutes=5).sent == 3
    assert rig.later(minutes=5).sent == 0
    rig.store.close()
    assert recipients(server.messages) == {
        "ada@example.org": 1,
        "grace@example.org": 1,
        "alan@example.org": 1,
    }


# --- 2. temporary replies ------------------------------------------------------------


@pytest.mark.parametrize(
    "reply", ["421 4.3.2 service shutting down", "451 4.3.0 local error, try again"]
)
def test_2_temporary_reply_is_deferred_retried_and_delivered_once(
    rig: Rig, smtp_server: SmtpServer, reply: str
) -> None:
    smtp_server.sink.refuse["ada@example.org"] = reply
    rig.drop(paper(1))
    first = rig.run()
    assert (first.sent, first.deferred, first.failed) == (2, 1, 0)
    (ada,) = [d for d in rig.store.deliveries() if d.recipient == "ada@example.org"]
    assert (ada.status, ada.attempts) == ("pending", 1)
    assert reply.split()[0] in (ada.last_reply or "")
    assert ada.next_attempt_at is not None
    assert ada.next_attempt_at.replace(tzinfo=UTC) >= START + timedelta(seconds=48)
    assert rig.later(seconds=5).sent == 0, "not retried before its back-off"
    del smtp_server.sink.refuse["ada@example.org"]
    assert rig.later(minutes=5).sent == 1
    assert rig.later(minutes=5).sent == 0
    assert recipients(smtp_server.messages)["ada@example.org"] == 1


def test_2_temporary_failures_back_off_exponentially_then_give_up(
    rig: Rig, smtp_server: SmtpServer
) -> None:
    smtp_server.sink.refuse["ada@example.org"] = "451 4.3.0 try later"
    rig.drop(paper(1))
    rig.run()
    waits = []
    for _ in range(30):
        (ada,) = [d for d in rig.store.deliveries() if d.recipient == "ada@example.org"]
        if ada.status != "pending":
            break
        assert ada.next_attempt_at is not None
        due = ada.next_attempt_at.replace(tzinfo=UTC)
        waits.append((due - rig.now).total_seconds())
        rig.now = due
        rig.run()
    assert 48 <= waits[0] <= 72
    assert 96 <= waits[1] <= 144
    assert all(w <= 600 for w in waits)  # retry_max_seconds
    (ada,) = [d for d in rig.store.deliveries() if d.recipient == "ada@example.org"]
    assert ada.status == "failed"  # give_up_after_seconds = 3600
    assert "gave up" in (ada.last_reply or "")


# --- 3. one recipient refused -------------------------------------------------------


def test_3_permanent_refusal_of_one_recipient_fails_only_that_one(
    rig: Rig, smtp_server: SmtpServer
) -> None:
    smtp_server.sink.refuse["grace@example.org"] = "550 5.1.1 no such mailbox"
    rig.drop(paper(1))
    report = rig.run()
    assert (report.sent, report.failed, report.deferred) == (2, 1, 0)
    assert statuses(rig.store) == {
        "ada@example.org": "sent",
        "grace@example.org": "failed",
        "alan@example.org": "sent",
    }
    assert rig.later(hours=1).sent == 0
    assert recipients(smtp_server.messages) == {"ada@example.org": 1, "alan@example.org": 1}


# --- crash tests: the real process ---------------------------------------------------


def write_config(tmp_path: Path, port: int, **kwargs: Any) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, port, **kwargs), encoding="utf-8")
    (tmp_path / "dumps").mkdir(exist_ok=True)
    return path


def start(config: Path, *args: str, markers: Path | None = None) -> subprocess.Popen[str]:
    """Run mailer; with ``markers``, through tests.hooked_mailer, which marks
    points inside the process there for the test to wait on."""
    module, env = "mailer", ENV
    if markers is not None:
        markers.mkdir(exist_ok=True)
        module, env = "tests.hooked_mailer", {**ENV, "MAILER_TEST_MARKERS": str(markers)}
    return subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(config), *args],
        cwd=config.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr


def message_ids(messages: list[Received]) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for m in messages:
        ids.setdefault(m.recipients[0], set()).add(str(m.message["Message-ID"]))
    return ids


@pytest.mark.slow
def test_4_sigkill_after_the_server_accepted_resends_with_the_same_message_id(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    copy_seeds(tmp_path / "dumps")
    victim: list[subprocess.Popen[str]] = []
    original = smtp_server.sink.handle_DATA

    async def accept_then_kill(server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await original(server, session, envelope)  # stored: the server accepted it
        if victim and victim[0].poll() is None:
            os.kill(victim[0].pid, signal.SIGKILL)  # before mailer can record it
        return reply

    smtp_server.sink.handle_DATA = accept_then_kill  # type: ignore[method-assign]
    victim.append(start(config, "ingest"))
    code, _ = finish(victim[0])
    assert code == -signal.SIGKILL
    assert len(smtp_server.messages) >= 1
    killed_during = message_ids(smtp_server.messages)

    smtp_server.sink.handle_DATA = original  # type: ignore[method-assign]
    result = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = message_ids(smtp_server.messages)
    assert set(after) == {"ada@example.org", "grace@example.org", "alan@example.org"}
    for rcpt, ids in after.items():
        assert len(ids) == 1, f"{rcpt} got different Message-IDs: {ids}"
    for rcpt, ids in killed_during.items():
        assert after[rcpt] == ids
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    assert message_ids(smtp_server.messages) == after


def db_rows(tmp_path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "mailer.db") as db:
        return db.execute(query).fetchall()


@pytest.mark.slow
def test_5_sigkill_mid_ingest_then_restart_ingests_completely_and_mails_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    first = mailer("--config", str(config), "ingest", cwd=tmp_path)  # creates the database
    assert first.returncode == 0, first.stderr
    copy_seeds(tmp_path / "dumps")
    # Hold SQLite's write lock: mailer parses the first dump, opens its
    # transaction and blocks inside it on its first write; it is killed there.
    holder = sqlite3.connect(tmp_path / "mailer.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        markers = tmp_path / "markers"
        proc = start(config, "ingest", markers=markers)
        wait_for(
            lambda: (markers / "inserting-dump").exists() or proc.poll() is not None,
            what="mailer to write its first dump (inside the 10 s busy timeout)",
        )
        assert proc.poll() is None, "mailer should be blocked inside its ingest transaction"
        proc.kill()
        code, _ = finish(proc)
    finally:
        holder.rollback()
        holder.close()
    assert code == -signal.SIGKILL
    assert db_rows(tmp_path, "SELECT count(*) FROM dumps") == [(0,)]
    assert smtp_server.messages == []

    again = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert db_rows(tmp_path, "SELECT count(*), sum(records) FROM dumps") == [(5, 315)]
    assert db_rows(tmp_path, "SELECT count(*) FROM papers") == [(290,)]
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    assert recipients(smtp_server.messages) == {
        "ada@example.org": 1,
        "grace@example.org": 1,
        "alan@example.org": 1,
    }
    for m in smtp_server.messages:
        text = m.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        titles = [line for line in text.splitlines() if line.startswith("Solving Inverse")]
        assert len(titles) <= 1


@pytest.mark.slow
def test_6_sigterm_while_sending_exits_0_within_10s_and_loses_nothing(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    subs = [(f"reader{i}@example.org", "instant", "UTC") for i in range(12)]
    config = write_config(tmp_path, smtp_server.port, subscribers=subs, interval=0.3)
    original = smtp_server.sink.handle_DATA
    stopping = threading.Event()

    async def held(server: SMTP, session: Session, envelope: Envelope) -> str:
        # Once one message is in, the others wait for the SIGTERM: it comes mid-batch.
        if smtp_server.messages:
            await asyncio.to_thread(stopping.wait, 15)
        return await original(server, session, envelope)

    smtp_server.sink.handle_DATA = held  # type: ignore[method-assign]
    proc = start(config, "run")
    try:
        copy_seeds(tmp_path / "dumps")
        wait_for(lambda: len(smtp_server.messages) >= 1, what="the first message")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stopping.set()
        code, stderr = finish(proc, timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, stderr
    assert elapsed < 10
    assert "stopped" in stderr
    assert 1 <= len(smtp_server.messages) < 12, "SIGTERM came mid-batch"
    smtp_server.sink.handle_DATA = original  # type: ignore[method-assign]
    result = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ids = message_ids(smtp_server.messages)
    assert set(ids) == {e for e, _, _ in subs}
    assert all(len(v) == 1 for v in ids.values()), "a repeat must carry the same Message-ID"


@pytest.mark.slow
def test_7_second_daemon_on_the_same_sqlite_database_refuses_naming_db_and_pid(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port, interval=0.3)
    copy_seeds(tmp_path / "dumps")
    first = start(config, "run")
    try:
        wait_for(lambda: len(smtp_server.messages) >= 3, what="the first daemon's digests")
        second = start(config, "run")
        code, stderr = finish(second, timeout=30)
        once = mailer("--config", str(config), "ingest", cwd=tmp_path)
        wait_for_fresh_passes(tmp_path)  # the first daemon carries on
        first.send_signal(signal.SIGTERM)
        first_code, first_err = finish(first)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 1
    assert "in use by another mailer" in stderr
    assert f"pid {first.pid}" in stderr
    assert "mailer.db" in stderr
    assert once.returncode == 1
    assert "in use by another mailer" in once.stderr
    assert first_code == 0, first_err
    assert recipients(smtp_server.messages) == {
        "ada@example.org": 1,
        "grace@example.org": 1,
        "alan@example.org": 1,
    }


# --- schedules and clocks ------------------------------------------------------------


def test_8_clock_jump_forward_a_day_sends_the_missed_digest_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    rig = Rig(tmp_path, smtp_server.port, subscribers=[("ada@example.org", "daily 08:00", "UTC")])
    rig.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    rig.run()  # subscribed at 09:00: the first slot is tomorrow 08:00
    rig.drop(paper(1))
    assert rig.later(minutes=30).digests == 0
    rig.now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # jumped past two slots
    jumped = rig.run()
    assert (jumped.digests, jumped.sent) == (1, 1)
    assert rig.later(minutes=30).digests == 0
    rig.drop(paper(2))
    assert rig.later(hours=2).digests == 0, "the next digest waits for the next slot"
    assert rig.later(hours=20).digests == 1
    rig.store.close()
    assert recipients(smtp_server.messages) == {"ada@example.org": 2}


@pytest.mark.parametrize(
    ("zone", "day", "at"),
    [
        ("Europe/London", date(2026, 3, 29), "01:30"),  # 01:00 -> 02:00: 01:30 does not exist
        ("Europe/London", date(2026, 10, 25), "01:30"),  # 02:00 -> 01:00: 01:30 happens twice
        ("America/New_York", date(2026, 3, 8), "02:30"),
        ("America/New_York", date(2026, 11, 1), "01:30"),
    ],
)
def test_9_daylight_saving_change_days_get_one_digest_each_at_local_time(
    tmp_path: Path, smtp_server: SmtpServer, zone: str, day: date, at: str
) -> None:
    tz = ZoneInfo(zone)
    noon_before = datetime.combine(day - timedelta(days=1), datetime.min.time(), tz).replace(
        hour=12
    )
    rig = Rig(
        tmp_path,
        smtp_server.port,
        now=noon_before.astimezone(UTC),
        subscribers=[("ada@example.org", f"daily {at}", zone)],
    )
    rig.run()
    n = 0
    end = rig.now + timedelta(days=2, hours=12)
    while rig.now < end:
        local = rig.now.astimezone(tz)
        if local.minute == 0 and local.hour in (0, 12):
            n += 1
            rig.drop(paper(n))
        rig.later(minutes=30)
    rig.store.close()
    sent = [m.message["Date"].datetime.astimezone(tz) for m in smtp_server.messages]
    per_day = Counter(d.date() for d in sent)
    assert per_day == {day: 1, day + timedelta(days=1): 1}
    hour, minute = (int(x) for x in at.split(":"))
    for d in sent:
        wall = datetime.combine(d.date(), datetime.min.time()).replace(hour=hour, minute=minute)
        slot = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        assert timedelta(0) <= d.astimezone(UTC) - slot <= timedelta(minutes=90)


# --- 11. header injection ----------------------------------------------------------------


@pytest.mark.parametrize("bad", ["\r\nBcc: evil@example.org", "\nX-Injected: 1", "\x00", "\x1b[2J"])
def test_11_control_characters_in_config_names_are_refused(
    tmp_path: Path, smtp_server: SmtpServer, bad: str
) -> None:
    escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in bad)
    text = config_text(tmp_path, smtp_server.port).replace(
        'name = "Diffusion"', f'name = "Diffusion{escaped}"', 1
    )
    text = text.replace(
        'email = "ada@example.org"', f'email = "ada@example.org"\nname = "Ada{escaped}"'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="evil.toml")
    assert "control characters" in info.value.message
    assert "ada@example.org" in info.value.message


def test_11_a_dump_with_nul_bytes_is_refused_whole(rig: Rig, smtp_server: SmtpServer) -> None:
    path = rig.dumps / "nul.txt"
    path.write_text(format_dump(date(2026, 11, 23), [paper(1)]) + "\x00", encoding="utf-8")
    old = time.time() - 10
    os.utime(path, (old, old))
    report = rig.run()
    assert (report.refused, report.sent) == (1, 0)
    assert smtp_server.messages == []


def test_11_control_characters_in_a_dump_never_reach_the_headers(
    rig: Rig, smtp_server: SmtpServer
) -> None:
    evil = "Diffusion model \x1b[31mred\x1b[0m\rBcc: evil@example.org\r\nX-Injected: 1"
    marker = "Diffusion model in red"
    text = format_dump(date(2026, 11, 23), [paper(1), Paper(marker, "A diffusion model, red.")])
    path = rig.dumps / "evil.txt"
    path.write_text(text.replace(marker, evil), encoding="utf-8")
    old = time.time() - 10
    os.utime(path, (old, old))
    rig.run()
    assert smtp_server.messages, "the dump's other papers still go out"
    for m in smtp_server.messages:
        head = m.data.split(b"\r\n\r\n", 1)[0]
        assert b"\x00" not in m.data
        assert b"\x1b" not in m.data
        assert b"evil@example.org" not in head
        assert b"x-injected" not in head.lower()
        names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] != b" "]
        assert b"bcc" not in names
        assert m.recipients in (["ada@example.org"], ["grace@example.org"], ["alan@example.org"])


# --- 12. a dump arriving in two halves ---------------------------------------------------


@pytest.mark.slow
def test_12_dump_written_in_two_halves_is_ingested_once_and_complete(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = write_config(tmp_path, smtp_server.port, interval=0.2, settle=1.5)
    seed = sorted(SEEDS.glob("*.txt"))[0].read_bytes()
    half = len(seed) // 2
    markers = tmp_path / "markers"
    proc = start(config, "run", markers=markers)
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        target = tmp_path / "dumps" / "halves.txt"
        with target.open("wb") as f:
            f.write(seed[:half])
            f.flush()
            wait_for(
                lambda: (markers / "settling").exists(),
                what="the daemon to wait for the half-written dump to settle",
            )
            f.write(seed[half:])
        wait_for(lambda: len(smtp_server.messages) >= 1, timeout=15, what="a digest")
        wait_for_fresh_passes(tmp_path, 2)
        proc.send_signal(signal.SIGTERM)
        code, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, stderr
    (dump,) = db_rows(tmp_path, "SELECT records, status FROM dumps")
    complete = subprocess.run(
        [sys.executable, "-m", "mailer", "parse", "--json", str(target)],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert dump == (len(complete.stdout.splitlines()), "ingested")
    assert all(n == 1 for n in recipients(smtp_server.messages).values())
