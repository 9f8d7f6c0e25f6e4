"""The configuration: TOML in, validated settings out, every error naming its key."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mailer.config import (
    Config,
    SubscriberConfig,
    SubscriptionConfig,
    example_config_text,
    load_config,
    parse_config,
)
from mailer.errors import ConfigError
from tests.conftest import ROOT

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


def test_only_a_variable_naming_a_key_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILER_CONFIG", "elsewhere.toml")
    monkeypatch.setenv("MAILER_CACHE_DIR", "")
    assert type(parse_config("", source="c.toml")) is Config
    monkeypatch.setenv("mailer_smtp__port", "2525")
    assert parse_config("", source="c.toml").smtp.port == 2525


def test_the_environment_reader_validates_a_file_as_the_plain_configuration_does() -> None:
    from mailer.config_env import EnvConfig

    for text in (example_config_text(), VALID):
        data = tomllib.loads(text)
        assert EnvConfig(**data).model_dump() == Config(**data).model_dump()


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


def test_a_load_for_showing_queries_leaves_them_unparsed_and_the_next_load_checks_them() -> None:
    text = (
        '[[subscribers]]\nemail = "a@b.org"\n[[subscribers.subscriptions]]\n'
        'name = "X"\nquery = "diffusion AND"\n'
    )
    shown = parse_config(text, source="c.toml", check_queries=False)
    assert shown.subscribers[0].subscriptions[0].query == "diffusion AND"
    with pytest.raises(ConfigError, match="position 13"):
        parse_config(text, source="c.toml")


def test_bad_email_is_refused() -> None:
    assert "not a valid email address" in error_of('[[subscribers]]\nemail = "nobody"\n')


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
    assert "control characters" in message or "not a valid email address" in message


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


# --- config.example.toml documents the code's defaults ----------------------------

EXAMPLE_TEXT = (ROOT / "config.example.toml").read_text(encoding="utf-8")
EXAMPLE: dict[str, Any] = tomllib.loads(EXAMPLE_TEXT)

# Tables whose values in the example are per install (who gets mail), not defaults.
PER_INSTALL_SECTIONS = {"subscribers"}

# Settings the example cannot show as a value; each must still be documented there
# as a commented-out line ("# key = ...").
NOT_SHOWN_AS_VALUE = {
    ("render", "templates"),  # default None (built-in templates): TOML has no null
    ("dkim", "private_key_file"),  # default None (no signing): TOML has no null
    ("bounces", "maildir"),  # default None (no bounce mailbox): TOML has no null
    ("bounces", "ca_file"),  # default None (the system's CAs only): TOML has no null
}

SETTINGS_SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in Config.model_fields.items()
    if name not in PER_INSTALL_SECTIONS
    and isinstance(field.annotation, type)
    and issubclass(field.annotation, BaseModel)
}
SETTINGS = [
    (section, key) for section, model in SETTINGS_SECTIONS.items() for key in model.model_fields
]
EXAMPLE_SETTINGS = [
    (section, key)
    for section, values in EXAMPLE.items()
    if section not in PER_INSTALL_SECTIONS
    for key in values
]


def commented_out(key: str) -> bool:
    return re.search(rf"^#\s*{re.escape(key)}\s*=", EXAMPLE_TEXT, re.MULTILINE) is not None


def test_every_top_level_key_of_the_model_is_a_settings_section_or_per_install() -> None:
    assert set(Config.model_fields) == set(SETTINGS_SECTIONS) | PER_INSTALL_SECTIONS


def test_every_settings_section_is_in_the_example() -> None:
    assert sorted(set(SETTINGS_SECTIONS) - set(EXAMPLE)) == []


@pytest.mark.parametrize(("section", "key"), SETTINGS, ids=[f"{s}.{k}" for s, k in SETTINGS])
def test_every_setting_is_in_the_example(section: str, key: str) -> None:
    if (section, key) in NOT_SHOWN_AS_VALUE:
        assert commented_out(key), f"[{section}] {key} should be shown commented out"
    else:
        assert key in EXAMPLE[section], f"[{section}] {key} is missing from config.example.toml"


@pytest.mark.parametrize(
    ("section", "key"), EXAMPLE_SETTINGS, ids=[f"{s}.{k}" for s, k in EXAMPLE_SETTINGS]
)
def test_the_examples_value_is_the_codes_default(section: str, key: str) -> None:
    model = SETTINGS_SECTIONS[section]
    field = model.model_fields[key]
    default = field.get_default(call_default_factory=True)
    # Validated through the model, as a config file's value would be (60 -> 60.0, str -> Path).
    shown = getattr(model.model_validate({key: EXAMPLE[section][key]}), key)
    assert shown == default, f"[{section}] {key}: example says {shown!r}, code says {default!r}"


SUBSCRIBER_FIELDS = [("subscribers", key) for key in SubscriberConfig.model_fields] + [
    ("subscribers.subscriptions", key) for key in SubscriptionConfig.model_fields
]


@pytest.mark.parametrize(
    ("table", "key"), SUBSCRIBER_FIELDS, ids=[f"{t}.{k}" for t, k in SUBSCRIBER_FIELDS]
)
def test_every_subscriber_key_is_shown_in_the_example(table: str, key: str) -> None:
    """Per-install values, but the example is where an operator learns the keys."""
    shown = {k for sub in EXAMPLE["subscribers"] for k in sub}
    if table == "subscribers.subscriptions":
        shown = {k for sub in EXAMPLE["subscribers"] for q in sub["subscriptions"] for k in q}
    assert key in shown or commented_out(key), f"[[{table}]] {key} is not in the example"
