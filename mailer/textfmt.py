"""Text for digests: counts and dates in words, excerpts around matches,
highlighting, wrapping, and HTML kept to 7-bit lines. Pure functions the
renderer and its templates share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from functools import lru_cache

from markupsafe import Markup, escape

from mailer.digests import Span

TEXT_WIDTH = 72
EXCERPT_CHARS = 350
EXCERPT_SENTENCES = 3
# A window around a match deep in an abstract starts at the match's sentence
# when that begins at most WINDOW_LEAD characters before it, else about
# WINDOW_CONTEXT characters (whole words) before it.
WINDOW_LEAD = 120
WINDOW_CONTEXT = 60
# No-break spaces: an ellipsis must not wrap onto a line of its own.
ELLIPSIS_BEFORE = "…\u00a0"
ELLIPSIS_AFTER_SENTENCE = "\u00a0…"

# Inline because marks are made per message, after the template was inlined;
# the class lets the dark-mode media query override the colours.
MARK_STYLE = "background:#fde68a;color:#1f2328"
# Made once: Markup.format per mark was a sixth of rendering an uncached entry.
_MARK_OPEN = Markup('<mark class="hl" style="{}">').format(MARK_STYLE)
_MARK_CLOSE = Markup("</mark>")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# A sentence ends at . ! or ? (maybe closed by a quote or bracket) before
# whitespace and a capital, digit or opening bracket.
_SENTENCE_END = re.compile(r"""[.!?]['"\u201d\u2019)\]]*(?=\s+['"\u201c\u2018(\[]?[A-Z0-9])""")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "al", "etc", "vs", "fig", "eq", "cf", "resp", "approx"})
# Only ASCII whitespace is collapsed and wrapped at, as textwrap does: a
# no-break space keeps its meaning.
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_UNEVEN_SPACE = ("  ", "\t", "\n", "\r", "\f", "\v")  # what _ASCII_SPACE changes inside a text
_HTML_SPECIAL = re.compile("[&<>\"']")  # what markupsafe.escape changes

# HTML lines are kept this short, well inside SMTP's 998 octets.
HTML_LINE = 900
_TAG_NAME_SPACE = re.compile(r"<[A-Za-z][A-Za-z0-9-]* ")
_RAW_TEXT = re.compile(r"<(style|script)\b.*?</\1", re.DOTALL | re.IGNORECASE)


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def join_names(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C': reads as a sentence in the summary line."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def format_date(d: date) -> str:
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"


def format_since(d: datetime) -> str:
    # Built by hand: strftime names follow the process locale.
    return f"{_DAYS[d.weekday()]} {d.day} {_MONTHS[d.month - 1]}"


def excerpt(
    text: str, marks: Sequence[Span] = (), *, keep_opening: bool = False
) -> tuple[str, tuple[Span, ...]]:
    """What a digest shows of an abstract, with its highlight spans moved to
    fit: the opening sentences, up to EXCERPT_CHARS; but when the first mark
    lies beyond them (and ``keep_opening`` is false: the title did not
    match), a window around that mark instead, so the reader sees why the
    paper is there. Cuts fall between words, each marked by an ellipsis."""
    # Whitespace is left alone so the spans stay valid; both parts collapse it.
    text = text.rstrip()
    clipped = _clip(marks, len(text))
    cut, ending = _opening(text)
    if keep_opening or not clipped or clipped[0][0] < cut:
        return text[:cut] + ending, _clip(clipped, cut)
    return _window(text, clipped)


def _opening(text: str) -> tuple[int, str]:
    """Where the opening excerpt ends, and what marks the cut: the end of
    the first sentences that fit, else the last word that fits."""
    if len(text) <= EXCERPT_CHARS:
        return len(text), ""
    cut = 0
    for count, m in enumerate(_sentence_ends(text), start=1):
        if m > EXCERPT_CHARS:
            break
        cut = m
        if count == EXCERPT_SENTENCES:
            break
    if cut:
        return cut, ELLIPSIS_AFTER_SENTENCE
    return _word_cut(text, 0, EXCERPT_CHARS), "…"


def _word_cut(text: str, start: int, limit: int) -> int:
    """The end of the last whole word of ``text[start:limit]`` (or ``limit``
    when it holds one word), with trailing punctuation that would dangle
    before an ellipsis dropped."""
    space = text.rfind(" ", start, limit + 1)
    cut = space if space > start else limit
    while cut > start and text[cut - 1] in ",;:-\u2013\u2014(":
        cut -= 1
    return len(text[:cut].rstrip())


def _window(text: str, marks: tuple[Span, ...]) -> tuple[str, tuple[Span, ...]]:
    """About EXCERPT_CHARS of ``text`` around its first mark: from the start
    of the mark's sentence when that is near, else from a few words before
    it, on to the end of a sentence or word; an ellipsis at each cut."""
    first, first_end = marks[0]
    start = 0
    for end in _sentence_ends(text):
        if end > first:
            break
        start = end
    start = len(text) - len(text[start:].lstrip())
    if first - start > WINDOW_LEAD:
        space = text.find(" ", first - WINDOW_CONTEXT, first)
        start = space + 1 if space >= 0 else first
    limit = max(start + EXCERPT_CHARS, first_end)
    if limit >= len(text):
        stop, ending = len(text), ""
    else:
        stop = 0
        for end in _sentence_ends(text):
            if end > limit:
                break
            if end >= first_end:
                stop = end
        if stop:
            ending = ELLIPSIS_AFTER_SENTENCE
        else:
            stop, ending = max(_word_cut(text, first_end, limit), first_end), "…"
    opening = ELLIPSIS_BEFORE if start else ""
    shift = len(opening) - start
    moved = tuple((a + shift, b + shift) for a, b in _clip(marks, stop) if a >= start)
    return opening + text[start:stop] + ending, moved


@lru_cache(maxsize=16384)
def _sentence_ends(text: str) -> tuple[int, ...]:
    """Where the sentences of ``text`` end (remembered: a paper's abstract is
    cut for every digest that shows it)."""
    ends = []
    for m in _SENTENCE_END.finditer(text):
        word = _word_before(text, m.start()).casefold()
        if word.rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        ends.append(m.end())
    return tuple(ends)


def _word_before(text: str, at: int) -> str:
    """The last whitespace-separated word of ``text[:at]`` ("" if none),
    found by stepping back from ``at`` rather than splitting all before it."""
    end = at
    while end > 0 and text[end - 1].isspace():
        end -= 1
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end]


def _clip(marks: Sequence[Span], limit: int) -> tuple[Span, ...]:
    """Spans in order, inside ``limit``, never overlapping: data from elsewhere
    is not trusted to be tidy."""
    kept: list[Span] = []
    for start, end in sorted(marks):
        start, end = max(start, kept[-1][1] if kept else 0), min(end, limit)
        if start < end:
            kept.append((start, end))
    return tuple(kept)


def _joined(text: str, marks: Sequence[Span]) -> list[Span]:
    """Spans clipped to ``text``, neighbours separated only by spaces joined,
    so a matched phrase reads as one highlight."""
    joined: list[Span] = []
    for start, end in _clip(marks, len(text)):
        if joined and not text[joined[-1][1] : start].strip():
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def highlight_html(text: str, marks: Sequence[Span]) -> Markup:
    """Escape each piece between the spans; only the <mark> tags are markup."""
    if _HTML_SPECIAL.search(text) is None:  # most titles and abstracts: nothing to escape
        return Markup(highlight_text(text, marks, _MARK_OPEN, _MARK_CLOSE))  # noqa: S704 (nothing in it to escape)
    out: list[str] = []
    pos = 0
    for start, end in _joined(text, marks):
        out += [escape(text[pos:start]), _MARK_OPEN, escape(text[start:end]), _MARK_CLOSE]
        pos = end
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def highlight_text(text: str, marks: Sequence[Span], before: str = "*", after: str = "*") -> str:
    out: list[str] = []
    pos = 0
    for start, end in _joined(text, marks):
        out += [text[pos:start], before, text[start:end], after]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def seven_bit_html(html: str) -> str:
    """The same document in ASCII with lines of at most HTML_LINE characters,
    so the HTML part can travel unencoded (7bit) instead of quoted-printable,
    which takes three times the lines, and lines are what a receiving SMTP
    server spends its time on. Characters beyond ASCII become numeric
    character references; long lines are broken only at the space after a
    tag's name, where a line break means the same to HTML. Left as it is
    when style or script text (where references are not decoded) is not
    ASCII; a line with no place to break just stays long, and the message
    then falls back to quoted-printable."""
    if not all(m.group().isascii() for m in _RAW_TEXT.finditer(html)):
        return html
    html = html.encode("ascii", "xmlcharrefreplace").decode("ascii")
    if all(len(line) <= HTML_LINE for line in html.split("\n")):
        return html
    lines: list[str] = []
    for line in html.split("\n"):
        while len(line) > HTML_LINE:
            cut = 0
            for m in _TAG_NAME_SPACE.finditer(line, 0, HTML_LINE + 1):
                cut = m.end() - 1
            if not cut:
                break
            lines.append(line[:cut])
            line = line[cut + 1 :]
        lines.append(line)
    return "\n".join(lines)


def wrap(text: str, indent: str = "", width: int = TEXT_WIDTH) -> str:
    """Wrap prose; words are never split, so a long token may overrun rather
    than be broken. What ``textwrap.fill`` gives with those settings, each
    line found by a regular expression (the longest run of whole words that
    fits, else one word): it runs for every paragraph of every digest, and
    textwrap's general chunking was a tenth of composing one."""
    if width <= 0:
        raise ValueError(f"invalid width {width!r} (must be > 0)")
    if any(uneven in text for uneven in _UNEVEN_SPACE):  # most text is evenly spaced
        text = _ASCII_SPACE.sub(" ", text)
    words = text.strip(" ")
    return "\n".join(indent + m.group(1) for m in _line(width - len(indent)).finditer(words))


@lru_cache(maxsize=64)
def _line(room: int) -> re.Pattern[str]:
    """One line of words separated by single spaces: as many as fit in
    ``room`` characters, or the next word alone when it does not fit."""
    if room < 1:
        return re.compile("([^ ]+)(?: |$)")
    return re.compile(f"([^ ].{{0,{room - 1}}}|[^ ]+)(?: |$)")
