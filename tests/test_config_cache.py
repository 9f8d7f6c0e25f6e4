"""The cache of validated configurations: a file whose very bytes loaded
before is taken from it; anything else is loaded and judged in full."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from mailer import query
from mailer.config import load_config
from mailer.errors import ConfigError
from tests.conftest import ROOT

CONFIG = """
[smtp]
sender = "Digest <digest@example.org>"

[[subscribers]]
email = "ada@Example.ORG"
name = "Ada"
resubscribed = 2026-01-02T03:04:05Z
[[subscribers.subscriptions]]
name = "Agents"
query = 'agents OR "tool use"'
"""


def write(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("config-*.pickle"))


def tamper(cache: Path, name: str) -> None:
    """Keep the cache's key line, change the subscriber's name inside."""
    head, _, body = cache.read_bytes().partition(b"\n")
    cached = pickle.loads(body)
    cached.data["subscribers"][0]["name"] = name
    cache.write_bytes(head + b"\n" + pickle.dumps(cached))


class Planted:
    """Unpickled by plain pickle, it would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.path,)


def test_a_second_load_gives_the_same_configuration(tmp_path: Path, config_cache: Path) -> None:
    path = write(tmp_path)
    cold, _ = load_config(path)
    assert len(cache_files(config_cache)) == 1
    warm, source = load_config(path)
    assert warm == cold
    assert source == str(path)
    assert warm.subscribers[0].email == "ada@example.org"


def test_a_warm_load_is_taken_from_the_cache(tmp_path: Path, config_cache: Path) -> None:
    path = write(tmp_path)
    load_config(path)
    tamper(cache_files(config_cache)[0], "From the cache")
    assert load_config(path)[0].subscribers[0].name == "From the cache"


def test_a_warm_load_parses_no_query_again(tmp_path: Path) -> None:
    path = write(tmp_path)
    load_config(path)
    query.parsed_query.cache_clear()
    load_config(path)
    assert query.parsed_query.cache_info().misses == 0


def test_an_edited_file_is_loaded_in_full(tmp_path: Path, config_cache: Path) -> None:
    path = write(tmp_path)
    load_config(path)
    tamper(cache_files(config_cache)[0], "From the cache")
    write(tmp_path, CONFIG.replace('"Ada"', '"Ada L."'))
    assert load_config(path)[0].subscribers[0].name == "Ada L."


def test_an_invalid_edit_is_refused_as_without_a_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path)
    load_config(path)
    write(tmp_path, CONFIG.replace("agents OR", "agents OR OR"))
    with pytest.raises(ConfigError) as cached:
        load_config(path)
    monkeypatch.setenv("MAILER_CACHE_DIR", "")
    with pytest.raises(ConfigError) as uncached:
        load_config(path)
    assert str(cached.value) == str(uncached.value)
    assert "(ada@Example.ORG).subscriptions[0] (Agents).query: cannot parse" in str(cached.value)


def test_the_environment_is_judged_at_every_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path)
    load_config(path)
    monkeypatch.setenv("MAILER_WEB__LISTEN", "127.0.0.1:8080")
    with pytest.raises(ConfigError, match=r"web\.secret: needs at least 16 characters"):
        load_config(path)


def test_check_config_judges_the_file_not_the_cache(tmp_path: Path, config_cache: Path) -> None:
    path = write(tmp_path)
    load_config(path)
    tamper(cache_files(config_cache)[0], "From the cache")
    result = subprocess.run(
        [sys.executable, "-m", "mailer", "-c", str(path), "check-config"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Ada" in result.stdout
    assert "From the cache" not in result.stdout


def test_a_load_that_leaves_queries_unparsed_writes_no_cache(
    tmp_path: Path, config_cache: Path
) -> None:
    load_config(write(tmp_path), check_queries=False)
    assert cache_files(config_cache) == []


def test_a_torn_cache_is_ignored_and_rewritten(tmp_path: Path, config_cache: Path) -> None:
    path = write(tmp_path)
    cold, _ = load_config(path)
    cache = cache_files(config_cache)[0]
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])
    assert load_config(path)[0] == cold
    assert cache.read_bytes() == whole


def test_a_cache_holding_code_is_refused_unrun(tmp_path: Path, config_cache: Path) -> None:
    path = write(tmp_path)
    cold, _ = load_config(path)
    cache = cache_files(config_cache)[0]
    head = cache.read_bytes().partition(b"\n")[0]
    cache.write_bytes(head + b"\n" + pickle.dumps(Planted(tmp_path / "ran")))
    assert load_config(path)[0] == cold
    assert not (tmp_path / "ran").exists()


def test_no_cache_when_its_folder_is_empty(
    tmp_path: Path, config_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILER_CACHE_DIR", "")
    load_config(write(tmp_path))
    assert cache_files(config_cache) == []
