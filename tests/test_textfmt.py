"""Snippets that show the match: what a digest shows of an abstract, in both
parts, when the words that matched lie deep in it."""

from __future__ import annotations

import re
import textwrap
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from mailer.digests import Digest, Entry, Recipient, Section
from mailer.matching import highlight_spans
from mailer.papers import Paper
from mailer.render import Renderer
from mailer.textfmt import (
    EXCERPT_CHARS,
    _joined,
    _word_before,
    excerpt,
    highlight_html,
    wrap,
)

OPENING = (
    "Physics-informed neural networks leverage neural networks to solve partial differential "
    "equations with soft constraints. These soft constraints are often considered to be the "
    "sources of the complexity in the training phase. Here we demonstrate that the challenge "
    "persists even when the boundary conditions are strictly enforced. "
)
MIDDLE = (
    "Given this realization, we describe the mechanism underlying several training schemes. "
    "For an important category of equations, governed by non-linear convection-diffusion, "
    "we propose reformulating the networks on a Lagrangian frame of reference. "
)
CLOSING = "A parallel architecture with two branches is proposed. " * 6
ABSTRACT = OPENING + MIDDLE + CLOSING


def marks_of(text: str, *terms: str) -> list[tuple[int, int]]:
    return highlight_spans(text, terms)


def marked(snippet: tuple[str, tuple[tuple[int, int], ...]]) -> list[str]:
    text, marks = snippet
    return [text[a:b] for a, b in marks]


def test_a_match_deep_in_the_abstract_is_shown_in_a_window_around_it() -> None:
    text, marks = excerpt(ABSTRACT, marks_of(ABSTRACT, "diffusion"))
    assert "convection-diffusion" in text
    assert [text[a:b] for a, b in marks] == ["diffusion"]
    assert "Physics-informed" not in text
    assert len(text) <= EXCERPT_CHARS + 4


def test_the_window_starts_at_the_matched_sentence_when_it_is_near() -> None:
    text, _ = excerpt(ABSTRACT, marks_of(ABSTRACT, "diffusion"))
    assert text.startswith("…\u00a0For an important category")


def test_the_window_has_an_ellipsis_at_each_cut() -> None:
    text, _ = excerpt(ABSTRACT, marks_of(ABSTRACT, "diffusion"))
    assert text.startswith("…")
    assert text.endswith("…")
    inner = text.strip("…\u00a0")
    assert inner in ABSTRACT


def test_a_match_in_a_long_sentence_starts_a_few_whole_words_before_it() -> None:
    sentence = " ".join(f"filler{i}" for i in range(80)) + " diffusion " + "tail " * 80
    text, marks = excerpt(sentence, marks_of(sentence, "diffusion"))
    assert text.startswith("…\u00a0filler")
    inner = text.removeprefix("…\u00a0").removesuffix("…")
    assert sentence.index(inner) > 0
    assert sentence[sentence.index(inner) - 1] == " "
    assert marked((text, marks)) == ["diffusion"]
    assert text.index("diffusion") < 80


def test_a_match_in_the_title_keeps_the_opening_sentences() -> None:
    text, marks = excerpt(ABSTRACT, marks_of(ABSTRACT, "diffusion"), keep_opening=True)
    assert text.startswith("Physics-informed neural networks")
    assert text.endswith("\u00a0…")
    assert marks == ()


def test_a_match_within_the_opening_keeps_the_opening() -> None:
    text, marks = excerpt(ABSTRACT, marks_of(ABSTRACT, "constraints", "diffusion"))
    assert text.startswith("Physics-informed")
    assert marked((text, marks)) == ["constraints", "constraints"]


def test_two_matches_deep_in_the_abstract_are_both_highlighted() -> None:
    text, marks = excerpt(ABSTRACT, marks_of(ABSTRACT, "diffusion", "lagrangian"))
    assert marked((text, marks)) == ["diffusion", "Lagrangian"]


def test_a_second_match_beyond_the_window_is_left_out() -> None:
    abstract = OPENING + MIDDLE + "word " * 120 + "Lagrangian again."
    text, marks = excerpt(abstract, marks_of(abstract, "diffusion", "lagrangian"))
    assert marked((text, marks)) == ["diffusion", "Lagrangian"]
    assert "again" not in text


def test_a_match_in_the_last_word_ends_the_window_without_an_ellipsis() -> None:
    abstract = OPENING + CLOSING + "The method is tested on diffusion"
    text, marks = excerpt(abstract, marks_of(abstract, "diffusion"))
    assert text.endswith("tested on diffusion")
    assert text.startswith("…\u00a0")
    assert marked((text, marks)) == ["diffusion"]


def test_a_short_abstract_is_shown_whole_with_its_marks() -> None:
    abstract = "We study diffusion."
    assert excerpt(abstract, marks_of(abstract, "diffusion")) == (abstract, ((9, 18),))


@given(
    st.lists(
        st.sampled_from(["alpha", "beta.", "Gamma", "delta,", "eps"]), min_size=1, max_size=300
    ),
    st.integers(min_value=0, max_value=299),
)
def test_a_window_cuts_only_between_words_and_keeps_the_match(words: list[str], at: int) -> None:
    words = [*words]
    at = min(at, len(words) - 1)
    words[at] = "target"
    text = " ".join(words)
    snippet, marks = excerpt(text, marks_of(text, "target"))
    assert "target" in [snippet[a:b] for a, b in marks]
    inner = snippet.removeprefix("…\u00a0").removesuffix("\u00a0…").removesuffix("…")
    start = text.find(inner)
    assert start >= 0
    assert start == 0 or text[start - 1] == " "
    end = start + len(inner)
    assert end == len(text) or not text[end].isalnum()
    assert (start > 0) == snippet.startswith("…")


# --- in both parts of a digest ---------------------------------------------------


def digest_with(paper: Paper, terms: tuple[str, ...]) -> Digest:
    entry = Entry(
        paper=paper,
        subscription="Diffusion",
        also=(),
        terms=terms,
        title_marks=tuple(highlight_spans(paper.title, terms)),
        abstract_marks=tuple(highlight_spans(paper.abstract, terms)),
    )
    recipient = Recipient("ada@example.org", "Ada", ("Diffusion",))
    return Digest(recipient, (Section("Diffusion", (entry,)),))


def test_both_parts_show_the_window_with_the_match_highlighted() -> None:
    paper = Paper("Lagrangian PINNs", ABSTRACT, published=date(2024, 1, 2))
    rendered = Renderer().render(
        digest_with(paper, ("diffusion",)), unsubscribe_url=None, manage_hint=""
    )
    assert re.search(r"convection-<mark[^>]*>diffusion</mark>", rendered.html)
    assert "convection-*diffusion*" in " ".join(rendered.text.split())
    assert "Physics-informed" not in rendered.text


def test_both_parts_keep_the_opening_when_the_title_matched() -> None:
    paper = Paper("Diffusion in Lagrangian PINNs", ABSTRACT)
    rendered = Renderer().render(
        digest_with(paper, ("diffusion",)), unsubscribe_url=None, manage_hint=""
    )
    assert "Physics-informed" in rendered.text
    assert "*Diffusion* in Lagrangian PINNs" in rendered.text


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "word", "longerword", "x" * 80, " ", "  ", "\n", "\t", "é", "-"])
    ),
    st.sampled_from(["", "    ", "> "]),
    st.integers(min_value=1, max_value=80),
)
def test_wrap_fills_lines_as_textwrap_does(pieces: list[str], indent: str, width: int) -> None:
    text = "".join(pieces)
    expected = textwrap.fill(
        re.sub(r"[ \t\n\r\f\v]+", " ", text).strip(),
        width=width,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    assert wrap(text, indent, width) == expected


def _escaped_piecewise(text: str, marks: list[tuple[int, int]]) -> str:
    """highlight_html's reference: every piece escaped, marks joined as it joins them."""
    out, pos = [], 0
    for start, end in _joined(text, marks):
        out += [str(escape(text[pos:start])), "<mark>", str(escape(text[start:end])), "</mark>"]
        pos = end
    return "".join([*out, str(escape(text[pos:]))])


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(["a", "b", " ", "&", "<", ">", '"', "'", "é", "\n"])),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30))),
)
def test_highlight_html_escapes_text_with_and_without_html_characters(
    text: str, marks: list[tuple[int, int]]
) -> None:
    html = str(highlight_html(text, marks))
    assert re.sub(r"<mark [^>]*>", "<mark>", html) == _escaped_piecewise(text, marks)


def _last_word(text: str) -> str:
    """The reference for the word before a sentence end: split everything."""
    words = text.split()
    return words[-1] if words else ""


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "B", " ", "\n", "\u2003", "\x1c", ".", "?", "x"])))
def test_the_word_before_a_point_is_the_last_of_the_text_before_it(text: str) -> None:
    for at in range(len(text) + 1):
        assert _word_before(text, at) == _last_word(text[:at])


def test_an_abstract_opening_with_a_stray_point_is_excerpted() -> None:
    assert excerpt("  . Then a sentence. And another one.")[0].startswith("  . Then")
