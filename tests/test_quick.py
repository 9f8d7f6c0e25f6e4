"""Commands answered before the command line loads (mailer.cli.quick): the
same output as the full command line, and only when everything is at hand;
anything else is left to the full command line (None)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from mailer.cli.quick import answer
from mailer.config import load_config
from mailer.editing import add_subscriber, apply_edit
from mailer.store import Profile, Store
from tests.conftest import ROOT
from tests.test_migrations import fill_old_database

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def write_config(folder: Path, database_url: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"

[[subscribers]]
email = "ada@Example.ORG"
name = "Ada Lovelace"
schedule = "daily   08:00"
timezone = "Europe/Berlin"
[[subscribers.subscriptions]]
name = "Agents"
query = 'agents OR "tool use"'
[[subscribers.subscriptions]]
name = "Like these"
like = ["Attention Is All You Need"]
like_text = "sparse mixtures of experts"

[[subscribers]]
email = "grace@example.org"
name = "Grâce Hopper 💾"
[[subscribers.subscriptions]]
name = "Compilers"
query = "compiler"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    """``listed_in`` a SQLite database."""
    return listed_in(tmp_path, f"sqlite:///{tmp_path / 'mailer.db'}")


@pytest.fixture
def listed_any(tmp_path: Path, database_url: str) -> Path:
    """``listed_in`` a SQLite database, and in a PostgreSQL one."""
    return listed_in(tmp_path, database_url)


def listed_in(tmp_path: Path, database_url: str) -> Path:
    """A configuration with a database that has one of its subscribers
    unsubscribed and one reader who signed up on the web pages."""
    path = write_config(tmp_path, database_url)
    store = Store(database_url)
    try:
        store.sync_subscribers(
            [
                ("ada@example.org", "Ada Lovelace", [("Agents", "agents")]),
                ("grace@example.org", "Grâce Hopper 💾", [("Compilers", "compiler")]),
            ],
            NOW,
        )
        store.unsubscribe("GRACE@example.org", NOW)
        profile = Profile("bob@example.org", "Bob", "instant", "UTC", 20, (("RL", "bandits"),))
        made = store.web.sign_up(profile, NOW, "nonce")
        assert store.web.confirm(made.subscriber_id, "nonce", NOW) == "confirmed"
    finally:
        store.close()
    return path


def full_command_line(*args: str, cwd: Path) -> str:
    """What ``mailer ARGS`` prints, in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "mailer", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize("options", [(), ("--json",)], ids=["table", "json"])
def test_a_warm_listing_prints_what_the_full_command_line_prints(
    listed_any: Path, options: tuple[str, ...]
) -> None:
    listed = listed_any
    argv = ["--config", str(listed), "subs", "list", *options]
    assert answer(argv) is None  # cold: the next line runs the full command line
    full = full_command_line(*argv, cwd=listed.parent)
    load_config(listed)  # a full load caches the file
    assert answer(argv) == full
    assert full_command_line(*argv, cwd=listed.parent) == full


def test_the_listing_shows_the_database_and_the_web_pages_subscribers(listed_any: Path) -> None:
    listed = listed_any
    load_config(listed)
    table = answer(["-c", str(listed), "subs", "list"])
    assert table is not None
    assert "Ada Lovelace <ada@example.org>" in table
    assert "daily 08:00" in table
    assert "Like these: like 'Attention Is All You Need'; like_text" in table
    assert "web" in table
    assert "Bob <bob@example.org>" in table
    assert table.endswith(f"2 subscribers in {listed}, 1 signed up on the web pages\n")


@pytest.mark.parametrize(
    "spelling",
    [
        lambda p: ["--config", p],
        lambda p: [f"--config={p}"],
        lambda p: ["-c", p],
        lambda p: [f"-c{p}"],
    ],
    ids=["--config PATH", "--config=PATH", "-c PATH", "-cPATH"],
)
def test_every_spelling_of_the_config_option_is_answered(listed: Path, spelling: object) -> None:
    load_config(listed)
    assert callable(spelling)
    found = answer([*spelling(str(listed)), "subs", "list"])
    assert found is not None
    assert "ada@example.org" in found


def test_the_config_of_mailer_config_is_answered(
    listed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_config(listed)
    monkeypatch.setenv("MAILER_CONFIG", str(listed))
    found = answer(["subs", "list"])
    assert found is not None
    assert f"in {listed}," in found


def test_config_toml_in_the_current_folder_is_answered(
    listed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILER_CONFIG", raising=False)
    monkeypatch.chdir(listed.parent)
    load_config(None)
    found = answer(["subs", "list"])
    assert found is not None
    assert found.endswith("2 subscribers in config.toml, 1 signed up on the web pages\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "subs", "list"],
        ["--log-format", "json", "subs", "list"],
        ["subs", "list", "--help"],
        ["subs", "list", "--json", "--json"],
        ["subs", "list", "--jsonx"],
        ["subs", "--json", "list"],
        ["subs", "list", "extra"],
        ["subs", "list", "--", "--json"],
        ["subs"],
        ["--version"],
        ["--help"],
        ["status"],
        [],
        ["--config", "", "subs", "list"],
        ["--config"],
    ],
)
def test_anything_but_a_plain_quick_command_is_left_to_the_full_command_line(
    listed: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    load_config(listed)
    monkeypatch.setenv("MAILER_CONFIG", str(listed))
    assert answer(["subs", "list"]) is not None
    assert answer(argv) is None


def test_an_edited_file_is_left_to_the_full_command_line(listed: Path) -> None:
    load_config(listed)
    with listed.open("a", encoding="utf-8") as f:
        f.write("# edited\n")
    assert answer(["-c", str(listed), "subs", "list"]) is None


def test_a_load_that_leaves_queries_unparsed_leaves_the_cache_cold(listed: Path) -> None:
    load_config(listed, check_queries=False)
    assert answer(["-c", str(listed), "subs", "list"]) is None


def test_an_edit_through_mailer_leaves_the_cache_warm_for_the_listing(listed: Path) -> None:
    load_config(listed)
    apply_edit(listed, lambda t: add_subscriber(t, "lin@example.org", queries=[("RL", "bandits")]))
    found = answer(["-c", str(listed), "subs", "list"])
    assert found is not None
    assert "lin@example.org" in found


@pytest.mark.parametrize(
    "variable", ["MAILER_DATABASE__URL", "mailer_render__max_papers", "MAILER_SUBSCRIBERS"]
)
def test_variables_over_the_files_keys_are_left_to_the_full_command_line(
    listed: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    load_config(listed)
    monkeypatch.setenv(variable, "[]" if "SUBSCRIBERS" in variable else "5")
    assert answer(["-c", str(listed), "subs", "list"]) is None


def test_other_mailer_variables_do_not_stop_a_quick_answer(
    listed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_config(listed)
    monkeypatch.setenv("MAILER_TEST_SOMETHING", "1")
    assert answer(["-c", str(listed), "subs", "list"]) is not None


def test_no_cache_folder_means_no_quick_answer(
    listed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_config(listed)
    monkeypatch.setenv("MAILER_CACHE_DIR", "")
    assert answer(["-c", str(listed), "subs", "list"]) is None


def test_a_database_not_created_yet_lists_the_file_and_stays_uncreated(tmp_path: Path) -> None:
    database = tmp_path / "mailer.db"
    path = write_config(tmp_path, "sqlite:///mailer.db")
    load_config(path)
    found = answer(["-c", str(path), "subs", "list"])
    assert found is not None
    assert found.endswith(f"2 subscribers in {path}, 0 signed up on the web pages\n")
    assert not database.exists()


def test_a_database_at_an_older_revision_is_left_to_the_full_command_line(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'mailer.db'}")
    try:
        fill_old_database(engine)
    finally:
        engine.dispose()
    path = write_config(tmp_path, "sqlite:///mailer.db")
    load_config(path)
    assert answer(["-c", str(path), "subs", "list"]) is None


def plant(listed: Path, cache_folder: Path, **summary: object) -> None:
    """Rewrite the file's cache with the same key and ``summary``'s fields changed."""
    (cache,) = cache_folder.glob("config-*.pickle")
    head, _, body = cache.read_bytes().partition(b"\n")
    cached = pickle.loads(body)
    cached = replace(cached, summary=replace(cached.summary, **summary))
    cache.write_bytes(head + b"\n" + pickle.dumps(cached))


@pytest.mark.parametrize(
    "summary",
    [
        {"subscribers": [{"email": "ada@example.org"}]},
        {"subscribers": "not rows"},
        {"fields": 7},
        {"database_url": None},
    ],
    ids=["row without keys", "rows of another type", "fields", "url"],
)
def test_a_summary_of_another_shape_is_left_to_the_full_command_line(
    listed: Path, config_cache: Path, summary: dict[str, object]
) -> None:
    load_config(listed)
    plant(listed, config_cache, **summary)
    assert answer(["-c", str(listed), "subs", "list"]) is None


def test_a_summary_with_control_characters_is_left_to_the_full_command_line(
    listed: Path, config_cache: Path
) -> None:
    load_config(listed)
    row = {"email": "ada@example.org", "name": "\x1b]0;owned\x07", "schedule": "instant"}
    plant(listed, config_cache, subscribers=[{**row, "timezone": "UTC", "subscriptions": []}])
    assert answer(["-c", str(listed), "subs", "list"]) is None


def test_a_file_cached_under_variables_over_its_keys_is_left_to_the_full_command_line(
    listed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's environment may point at another database than the
    operator's shell: the summary is of the file alone, or none."""
    monkeypatch.setenv("MAILER_DATABASE__URL", f"sqlite:///{listed.parent / 'other.db'}")
    load_config(listed)
    monkeypatch.delenv("MAILER_DATABASE__URL")
    assert answer(["-c", str(listed), "subs", "list"]) is None
