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


def test_a_table_without_rows_is_its_header_and_rule() -> None:
    assert aligned_table(("who", "queries"), []) == "who  queries\n---  -------\n"


def test_a_wide_line_below_the_first_of_its_cell_is_aligned_by_its_cells() -> None:
    text = aligned_table(("name", "x"), [("ab\n日本語", "1"), ("c", "2")])
    assert text.splitlines() == ["name    x", "------  -", "ab      1", "日本語", "c       2"]
