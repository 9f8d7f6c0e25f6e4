"""The configuration: TOML in, validated settings out, every error naming its key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.config import example_config_text, load_config, parse_config
from mailer.errors import ConfigError

VALID = """
[watch]
dir = "dumps"
[[subscribers]]
email = "ada@example.org"
[[subscribers.subscriptions]]
name = "Diffusion"
query = '"diffusion model" OR "score matching"'
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.toml")
    return str(info.value)


def test_example_config_is_valid_and_has_subscribers() -> None:
    config = parse_config(example_config_text(), source="example")
    assert config.delivery.transport == "maildir"
    assert config.subscribers


def test_defaults_fill_missing_sections() -> None:
    config = parse_config("", source="c.toml")
    assert config.database.url == "sqlite:///mailer.db"
    assert config.watch.interval_seconds == 60
    assert config.smtp.security == "starttls"


def test_relative_paths_resolve_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir()
    path.write_text(VALID)
    config, source = load_config(path)
    assert source == str(path)
    assert config.watch.dir == path.parent / "dumps"
    assert config.delivery.maildir == path.parent / "outbox"
    assert config.database.url == f"sqlite:///{path.parent / 'mailer.db'}"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SMTP__PASSWORD", "from-env")
    monkeypatch.setenv("MAILER_SMTP__PORT", "2525")
    config = parse_config('[smtp]\npassword = "file"\nport = 25\n', source="c.toml")
    assert config.smtp.password.get_secret_value() == "from-env"
    assert config.smtp.port == 2525


def test_password_is_not_shown_in_repr() -> None:
    config = parse_config('[smtp]\npassword = "hunter2"\n', source="c.toml")
    assert "hunter2" not in repr(config)


def test_wrong_type_names_the_key() -> None:
    message = error_of('[smtp]\nport = "many"\n')
    assert "c.toml" in message
    assert "smtp.port" in message


def test_unknown_key_is_refused_as_a_likely_typo() -> None:
    assert "watch.intervl_seconds: unknown key" in error_of("[watch]\nintervl_seconds = 5\n")


def test_bad_query_names_subscriber_subscription_and_position() -> None:
    message = error_of(
        '[[subscribers]]\nemail = "a@b.org"\n[[subscribers.subscriptions]]\n'
        'name = "X"\nquery = "diffusion AND"\n'
    )
    assert "subscribers[0] (a@b.org).subscriptions[0] (X).query" in message
    assert "position 13" in message


def test_bad_email_is_refused() -> None:
    assert "not an email address" in error_of('[[subscribers]]\nemail = "nobody"\n')


@pytest.mark.parametrize(
    "entry",
    [
        'email = "a@b.org"\nname = "Ada\\r\\nBcc: x@evil.org"',
        'email = "a@b.org\\r\\nBcc: x@evil.org"',
    ],
)
def test_control_characters_in_header_values_are_refused(entry: str) -> None:
    message = error_of(f"[[subscribers]]\n{entry}\n")
    assert "subscribers[0]" in message
    assert "control characters" in message or "not an email address" in message


def test_unknown_time_zone_is_refused() -> None:
    message = error_of('[[subscribers]]\nemail = "a@b.org"\ntimezone = "Mars/Olympus"\n')
    assert "timezone" in message
    assert "IANA" in message


@pytest.mark.parametrize("schedule", ["hourly", "daily 25:00", "weekly Funday 08:00"])
def test_bad_schedule_is_refused(schedule: str) -> None:
    message = error_of(f'[[subscribers]]\nemail = "a@b.org"\nschedule = "{schedule}"\n')
    assert "schedule" in message


@pytest.mark.parametrize(
    "value",
    ["2026-11-23", "2026-11-23T00:00:00", "2026-11-23T00:00:00Z", '"2026-11-23T01:00:00+01:00"'],
)
def test_resubscribed_takes_a_date_or_time_read_as_utc(value: str) -> None:
    config = parse_config(
        f'[[subscribers]]\nemail = "a@b.org"\nresubscribed = {value}\n', source="c"
    )
    assert config.subscribers[0].resubscribed == datetime(2026, 11, 23, tzinfo=UTC)


def test_resubscribed_that_is_not_a_time_names_the_key() -> None:
    message = error_of('[[subscribers]]\nemail = "a@b.org"\nresubscribed = "soon"\n')
    assert "resubscribed" in message


def test_duplicate_subscribers_are_refused() -> None:
    message = error_of('[[subscribers]]\nemail = "a@b.org"\n[[subscribers]]\nemail = "A@b.org"\n')
    assert "repeated: a@b.org" in message


def test_non_http_paper_url_is_refused() -> None:
    assert "render.paper_url" in error_of('[render]\npaper_url = "javascript:alert({title})"\n')


def test_toml_syntax_error_gives_line() -> None:
    assert "line 2" in error_of("[watch]\ndir = \n")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)
    assert info.value.exit_code == 2


def test_no_file_anywhere_uses_the_embedded_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILER_CONFIG", raising=False)
    config, source = load_config(None)
    assert source == "embedded example"
    assert config.subscribers
