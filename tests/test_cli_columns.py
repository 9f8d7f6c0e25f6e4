from __future__ import annotations

from mailer.cli.columns import aligned_table


def test_columns_are_as_wide_as_their_widest_line_and_nothing_is_cut() -> None:
    text = aligned_table(
        ("who", "queries"),
        [("Ada <ada@example.org>", "LLM: llm\nAgents: agent OR agents"), ("b@c.org", "-")],
    )
    assert text.splitlines() == [
        "who                    queries",
        "---------------------  -----------------------",
        "Ada <ada@example.org>  LLM: llm",
        "                       Agents: agent OR agents",
        "b@c.org                -",
    ]


def test_wide_characters_are_aligned_by_the_cells_they_take() -> None:
    text = aligned_table(("name", "x"), [("日本", "1"), ("ab", "2")])
    assert text.splitlines()[2:] == ["日本  1", "ab    2"]
