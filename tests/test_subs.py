"""Editing subscriptions: comments and layout kept, whole file validated, atomic writes."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import pytest

from mailer import editing
from mailer.errors import ConfigError
from mailer.ops import highlighted
from tests.test_cli import ENV, copy_seeds, mailer, write_config

COMMENTED = """\
# Operator's notes: keep this header.
[watch]
dir = "dumps"          # where dumps land
settle_seconds = 0.2

[[subscribers]]
email = "ada@example.org"   # Ada, since 2024
name = "Ada"
# her main interest
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model" OR diffusion'

[render]
max_papers = 20   # keep digests short
"""


def lines_in_order(original: str, edited: str) -> bool:
    remaining = iter(edited.splitlines())
    return all(any(line == other for other in remaining) for line in original.splitlines())


# --- the pure edits -------------------------------------------------------------------


def test_adding_a_subscriber_keeps_comments_order_and_formatting() -> None:
    edited = editing.add_subscriber(
        COMMENTED, "bob@example.org", name="Bob", queries=[("LLM", '"language model" OR llm')]
    )
    assert lines_in_order(COMMENTED, edited)
    assert edited.index("[render]") > edited.index('email = "bob@example.org"')
    assert "query = '\"language model\" OR llm'" in edited
    data = tomllib.loads(edited)
    assert [s["email"] for s in data["subscribers"]] == ["ada@example.org", "bob@example.org"]
    assert data["render"] == {"max_papers": 20}


def test_setting_a_key_changes_only_that_value() -> None:
    edited = editing.set_subscriber_key(COMMENTED, "ADA@example.org", "name", "Ada L.")
    assert edited == COMMENTED.replace('name = "Ada"', 'name = "Ada L."')


def test_a_new_key_goes_before_the_nested_subscriptions() -> None:
    edited = editing.set_subscriber_key(COMMENTED, "ada@example.org", "schedule", "daily 08:00")
    ada = tomllib.loads(edited)["subscribers"][0]
    assert ada["schedule"] == "daily 08:00"
    assert len(ada["subscriptions"]) == 1


def test_max_papers_and_resubscribed_are_written_as_toml_number_and_date() -> None:
    edited = editing.set_subscriber_key(COMMENTED, "ada@example.org", "max_papers", "10")
    edited = editing.set_subscriber_key(edited, "ada@example.org", "resubscribed", "2026-11-23")
    assert "max_papers = 10\n" in edited
    assert "resubscribed = 2026-11-23\n" in edited
    ada = tomllib.loads(edited)["subscribers"][0]
    assert (ada["max_papers"], ada["resubscribed"]) == (10, date(2026, 11, 23))


def test_adding_and_removing_a_query_round_trips_to_the_same_text() -> None:
    added = editing.add_query(COMMENTED, "ada@example.org", "RL", "reinforcement AND learning")
    assert tomllib.loads(added)["subscribers"][0]["subscriptions"][1]["name"] == "RL"
    assert editing.remove_query(added, "ada@example.org", "RL").rstrip() == COMMENTED.rstrip()


def test_adding_an_existing_query_name_needs_replace() -> None:
    with pytest.raises(ConfigError, match="already has a subscription named 'Diffusion'"):
        editing.add_query(COMMENTED, "ada@example.org", "Diffusion", "x")
    replaced = editing.add_query(COMMENTED, "ada@example.org", "Diffusion", "x", replace=True)
    assert tomllib.loads(replaced)["subscribers"][0]["subscriptions"] == [
        {"name": "Diffusion", "query": "x"}
    ]


def test_editing_an_unknown_subscriber_names_them() -> None:
    with pytest.raises(ConfigError, match=r"no subscriber 'who@example\.org'"):
        editing.remove_subscriber(COMMENTED, "who@example.org")


def test_only_subscriber_keys_can_be_set() -> None:
    with pytest.raises(ConfigError, match="cannot set 'subscriptions'"):
        editing.set_subscriber_key(COMMENTED, "ada@example.org", "subscriptions", "x")


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    with pytest.raises(ConfigError, match="changed by someone else"):
        editing.write_atomic(path, b"new", expected=b"something else")
    assert path.read_text() == COMMENTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_highlighting_treats_titles_as_text_not_markup() -> None:
    text = highlighted("[bold]Agents[/bold] for planning", [(6, 12)])
    assert text.plain == "[bold]Agents[/bold] for planning"
    assert [(s.start, s.end) for s in text.spans] == [(6, 12)]


# --- the commands ----------------------------------------------------------------------


def commented_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_bytes(COMMENTED.replace("\n", "\r\n").encode())  # CRLF: byte-exactness shows
    (tmp_path / "dumps").mkdir()
    return path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "bob@example", "--name", "Bob"], "is not a valid email address"),
        (["add", "bob@example.org", "--timezone", "Mars/Olympus"], "subscribers[1]"),
        (["set", "ada@example.org", "schedule", "hourly"], "subscribers[0] (ada@example.org).sch"),
        (["add-query", "ada@example.org", "RL", "agents AND (planning OR"], "at position 23"),
        (["add", "ada@example.org"], "already exists"),
        (["remove-query", "ada@example.org", "Nope"], "no subscription named 'Nope'"),
    ],
)
def test_a_failed_edit_leaves_the_file_byte_for_byte_unchanged(
    tmp_path: Path, args: list[str], says: str
) -> None:
    config = commented_config(tmp_path)
    before = config.read_bytes()
    result = mailer("--config", str(config), "subs", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert config.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "dumps"]


def test_subs_commands_edit_the_file_in_place(tmp_path: Path) -> None:
    config = commented_config(tmp_path)
    steps = [
        ["add", "bob@example.org", "--name", "Bob", "--schedule", "daily 07:30"],
        ["set", "bob@example.org", "timezone", "Europe/Berlin"],
        ["add-query", "bob@example.org", "LLM", '"language model" OR llm'],
        ["add-query", "ada@example.org", "RL", "reinforcement learning"],
        ["remove-query", "ada@example.org", "RL"],
        ["remove", "ada@example.org"],
    ]
    for step in steps:
        result = mailer("--config", str(config), "subs", *step, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "saved" in result.stdout
    text = config.read_bytes().decode()
    assert text.startswith("# Operator's notes: keep this header.\r\n")
    assert "max_papers = 20   # keep digests short" in text
    assert tomllib.loads(text)["subscribers"] == [
        {
            "email": "bob@example.org",
            "name": "Bob",
            "schedule": "daily 07:30",
            "timezone": "Europe/Berlin",
            "subscriptions": [{"name": "LLM", "query": '"language model" OR llm'}],
        }
    ]


def test_subs_list_shows_a_table_and_json(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    table = mailer("--config", str(config), "subs", "list", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "Ada <ada@example.org>" in table.stdout
    assert "Agents: agent OR agents" in table.stdout
    assert "unsubscribed" in table.stdout
    rows = json.loads(
        mailer("--config", str(config), "subs", "list", "--json", cwd=tmp_path).stdout
    )
    assert rows[1] == {
        "email": "grace@example.org",
        "name": "",
        "schedule": "instant",
        "timezone": "UTC",
        "subscriptions": [{"name": "Agents", "query": "agent OR agents"}],
        "unsubscribed": False,
        "unsubscribed_at": None,
        "origin": "config",
        "status": "active",
    }
    assert not (tmp_path / "mailer.db").exists()


def test_subs_list_names_a_config_path_as_written_without_emoji(tmp_path: Path) -> None:
    folder = tmp_path / ":fire:"
    folder.mkdir()
    config = write_config(folder)
    done = mailer("--config", str(config), "subs", "list", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert f"2 subscribers in {config}," in " ".join(done.stdout.split())


def test_subs_list_reads_unsubscribed_from_the_database(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from sqlmodel import select

    from mailer.store import Store, SubscriberRow

    config = write_config(tmp_path)
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    with store.session() as s:
        for row in s.exec(select(SubscriberRow).where(SubscriberRow.email == "grace@example.org")):
            row.unsubscribed_at = datetime(2025, 3, 1, 12, tzinfo=UTC)
    store.close()
    rows = json.loads(
        mailer("--config", str(config), "subs", "list", "--json", cwd=tmp_path).stdout
    )
    assert [r["unsubscribed"] for r in rows] == [False, True]
    assert rows[1]["unsubscribed_at"].startswith("2025-03-01T12:00")


def test_subs_try_lists_matching_papers_with_highlight_spans(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    result = mailer(
        "--config", str(config), "subs", "try", '"language model" AND agents', "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["of"] == 290
    assert 0 < found["matched"] < 290
    for paper in found["papers"]:
        marked = {paper["title"][a:b].lower() for a, b in paper["title_marks"]}
        assert all(m.startswith(("agent", "language model")) for m in marked), marked
        assert paper["title_marks"] or paper["abstract_marks"]
    text = mailer("--config", str(config), "subs", "try", '"language model" AND agents',
                  "--limit", "2", cwd=tmp_path)  # fmt: skip
    assert f"{found['matched']} of 290 papers stored match" in text.stdout
    assert found["papers"][0]["title"][:40] in text.stdout
    assert "matched: agents, language model" in text.stdout


def test_subs_try_points_at_a_query_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer("--config", str(config), "subs", "try", "agents AND (", cwd=tmp_path)
    assert result.returncode == 2
    assert "position 12" in result.stderr
    assert "  agents AND (\n" + " " * 14 + "^" in result.stderr


def test_subs_try_since_days_only_looks_at_recent_papers(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    result = mailer("--config", str(config), "subs", "try", "agents", "--since", "1", "--json",
                    cwd=tmp_path)  # fmt: skip
    assert json.loads(result.stdout)["of"] == 290


# --- adding subscribers and the back catalogue ----------------------------------------


def test_subs_set_resubscribed_now_lifts_an_unsubscribe_on_the_next_pass(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    run = ["--config", str(config)]
    assert mailer(*run, "unsubscribe", "grace@example.org", cwd=tmp_path).returncode == 0
    done = mailer(*run, "subs", "set", "grace@example.org", "resubscribed", "now", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resubscribed = 20" in config.read_text()
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    rows = json.loads(
        mailer("--config", str(config), "subs", "list", "--json", cwd=tmp_path).stdout
    )
    assert [r["unsubscribed"] for r in rows] == [False, False]


def digests_for(tmp_path: Path, address: str) -> int:
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    return sum(1 for m in box if address in str(m["To"]))


def test_a_new_subscriber_does_not_get_the_back_catalogue(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    added = mailer("--config", str(config), "subs", "add", "bob@example.org",
                   "--query", "Agents=agents", cwd=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    again = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert "digests=0" in again.stdout
    assert digests_for(tmp_path, "bob@example.org") == 0


def test_backfill_gives_a_new_subscriber_recent_stored_papers(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    added = mailer("--config", str(config), "subs", "add", "bob@example.org",
                   "--query", "Agents=agents", "--backfill", "7", cwd=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "backfilled" in added.stdout
    again = mailer("--config", str(config), "ingest", cwd=tmp_path)
    assert "digests=1" in again.stdout
    assert digests_for(tmp_path, "bob@example.org") == 1
    assert digests_for(tmp_path, "ada@example.org") == 1


def test_removing_a_subscriber_stops_their_mail(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert mailer("--config", str(config), "subs", "remove", "grace@example.org",
                  cwd=tmp_path).returncode == 0  # fmt: skip
    copy_seeds(tmp_path / "dumps")
    assert mailer("--config", str(config), "ingest", cwd=tmp_path).returncode == 0
    assert digests_for(tmp_path, "grace@example.org") == 0
    assert digests_for(tmp_path, "ada@example.org") == 1


def test_concurrent_adds_are_all_saved_and_none_reports_a_lost_edit(tmp_path: Path) -> None:
    config = commented_config(tmp_path)
    emails = [f"user{i:02d}@example.org" for i in range(20)]
    command = [sys.executable, "-m", "mailer", "--config", str(config), "subs", "add"]
    processes = [
        subprocess.Popen(
            [*command, email],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for email in emails
    ]
    succeeded = []
    for email, process in zip(emails, processes, strict=True):
        out, errors = process.communicate(timeout=120)
        if process.returncode == 0:
            assert "saved" in out
            succeeded.append(email)
        else:
            assert "Traceback" not in errors
    saved = [s["email"] for s in tomllib.loads(config.read_text())["subscribers"]]
    assert set(succeeded) <= set(saved)
    assert sorted(saved) == sorted(["ada@example.org", *emails])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "dumps"]
