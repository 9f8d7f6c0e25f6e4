"""Hostile queries: too long, too deep, too many terms, too many digits.

Each is refused with a QueryError naming the position (exit 2 from the CLI,
the subscription named in the config), never a RecursionError or a parser
that runs for minutes. Sizes are checked by a linear scan before luqum sees
the text; timings are measured in bench/, never here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.config import parse_config
from mailer.errors import ConfigError, QueryError
from mailer.query import MAX_DEPTH, MAX_DIGITS, MAX_QUERY_CHARS, MAX_TERMS, parse_query
from tests.test_cli import mailer, write_config


def refusal(query: str) -> QueryError:
    with pytest.raises(QueryError) as caught:
        parse_query(query)
    return caught.value


def test_a_query_at_every_limit_is_accepted() -> None:
    parse_query("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)
    parse_query("NOT " * MAX_DEPTH + "a")
    parse_query(" OR ".join(f"w{i}" for i in range(MAX_TERMS)))
    parse_query("upvotes>=" + "9" * MAX_DIGITS)


def test_deeply_nested_parentheses_are_refused_at_the_first_too_deep() -> None:
    error = refusal("(" * 490 + "a" + ")" * 490)
    assert error.position == MAX_DEPTH
    assert f"nested more than {MAX_DEPTH} deep" in error.message


@pytest.mark.parametrize("prefix", ["NOT ", "-", "+-", "!"])
def test_long_runs_of_negations_are_refused_as_too_deep(prefix: str) -> None:
    error = refusal(prefix * 900 + "a")
    assert f"nested more than {MAX_DEPTH} deep" in error.message


def test_negations_and_parentheses_count_together() -> None:
    assert "deep" in refusal("NOT (" * (MAX_DEPTH // 2) + "NOT a" + ")" * (MAX_DEPTH // 2)).message


def test_too_many_terms_are_refused_at_the_first_one_too_many() -> None:
    words = [f"w{i}" for i in range(MAX_TERMS + 1)]
    error = refusal(" ".join(words))
    assert error.position == len(" ".join(words[:-1])) + 1
    assert f"more than {MAX_TERMS} terms" in error.message


def test_a_query_of_100000_terms_is_refused_by_its_length_before_parsing() -> None:
    query = " ".join(f"w{i}" for i in range(100_000))
    error = refusal(query)
    assert error.position == MAX_QUERY_CHARS
    assert f"longer than {MAX_QUERY_CHARS} characters" in error.message
    assert f"... ({len(query)} characters)" in error.message  # quoted cut short, not whole


@pytest.mark.parametrize(
    ("query", "position"),
    [
        ("upvotes>=" + "9" * 50, 9),
        ("authors<" + "1" * (MAX_DIGITS + 1), 8),
        ("upvotes:[1 TO " + "9" * 20 + "]", 14),
        ('"a b"~' + "9" * 50, 6),
    ],
)
def test_numbers_longer_than_the_limit_are_refused(query: str, position: int) -> None:
    error = refusal(query)
    assert error.position == position
    assert f"at most {MAX_DIGITS} digits" in error.message


def test_long_digit_words_are_still_text() -> None:
    parse_query("gpt 12345678901234567890")


def test_config_refuses_a_hostile_query_naming_the_subscription() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            '[[subscribers]]\nemail = "ada@example.org"\n'
            '[[subscribers.subscriptions]]\nname = "Diffusion"\nquery = "diffusion"\n'
            f'[[subscribers.subscriptions]]\nname = "Agents"\nquery = "{"NOT " * 5000}agents"\n',
            source="c.toml",
        )
    message = str(caught.value)
    assert "subscribers[0] (ada@example.org).subscriptions[1] (Agents).query" in message
    assert f"position {MAX_QUERY_CHARS}" in message


def test_check_config_exits_2_on_a_deeply_nested_query(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("agent OR agents", "(" * 490 + "a" + ")" * 490))
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "subscriptions[0] (Agents).query" in result.stderr
    assert "Traceback" not in result.stderr


def test_subs_try_refuses_a_hostile_query_showing_where(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = mailer("--config", str(config), "subs", "try", "NOT " * 5000 + "a", cwd=tmp_path)
    assert result.returncode == 2
    assert f"position {MAX_QUERY_CHARS}" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr) < 1000  # the query is shown around the position only


def test_subs_add_query_refuses_a_hostile_query(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = config.read_bytes()
    query = "upvotes>=" + "9" * 5000
    result = mailer("--config", str(config), "subs", "add-query", "ada@example.org", "X", query,
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert f"at most {MAX_DIGITS} digits" in result.stderr or "4000" in result.stderr
    assert config.read_bytes() == before
