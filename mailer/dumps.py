"""Reading and writing Hugging Face "Daily Papers" page dumps.

A dump is the page's text as a browser copies it: a fixed header, the page
date, then records of title, abstract and an optional three-line meta block.
Parsing is pure and never raises for one bad record: problems come back as
`DumpWarning` values so the caller decides whether to log, count or fail.
Only a file that is not a dump at all is refused with `DumpError`.
Reading a file from disk safely is `mailer.dumpfiles`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import chain, repeat
from typing import BinaryIO

from mailer.errors import DumpError
from mailer.papers import Paper, paper_key

__all__ = ["DumpWarning", "ParsedDump", "format_dump", "paper_json", "parse_dump"]

HEADER_LINES = (
    "new",
    "Get trending papers in your email inbox!",
    "Subscribe",
    "Daily Papers",
    "byAK and the research community",
)
_HEADER_SET = frozenset(HEADER_LINES)
# The one header line every page has right above the date; requiring it keeps
# arbitrary text that happens to start with "new" from passing as a dump.
_SIGNATURE = "byAK and the research community"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: number for number, name in enumerate(_MONTHS, start=1)}
_MONTH_RE = "|".join(_MONTHS)

_PAGE_DATE = re.compile(rf"({_MONTH_RE}) (\d{{1,2}})(?:, (\d{{4}}))?")
_META_DATE = re.compile(rf"({_MONTH_RE}) (\d{{1,2}})(?:, (\d{{4}}))?(?: (\d+))?")
_AUTHORS = re.compile(r"•\s*(\d+) authors?")
_BULLET = "•"
_DOT = "·"

_BOM = "\ufeff"
_UTF8_BOM = b"\xef\xbb\xbf"

_NOT_A_DUMP_HINT = "pass the text of a Hugging Face Daily Papers page, saved as a .txt file"
# A day's page is a few hundred kilobytes; these caps only stop a stray file
# (a log, a disk image) from taking the daemon's memory.
# Titles on the site are a line or two; abstracts are paragraphs. Only used to
# word a warning, never to decide what a well-formed record contains.
_TITLE_MAX_CHARS = 400


@dataclass(frozen=True, slots=True)
class DumpWarning:
    """Something in a dump that was skipped or guessed; the rest still parsed."""

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.source}: {self.message}"
        return f"{self.source}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class ParsedDump:
    """Everything one dump yielded, including what went wrong in it."""

    source: str
    page_date: date | None
    papers: tuple[Paper, ...]
    warnings: tuple[DumpWarning, ...]


@dataclass(frozen=True, slots=True)
class _Meta:
    authors: int | None
    organization: str | None
    published: date | None
    upvotes: int


@dataclass(slots=True)
class _Paragraph:
    """A run of non-blank lines: the unit the page separates with blank lines."""

    line: int
    lines: list[str]


class _BadMetaError(Exception):
    """A meta block that cannot be read; the record it belongs to is skipped."""


def parse_dump(data: bytes | bytearray | str | BinaryIO, *, source: str, today: date) -> ParsedDump:
    """Parse one dump; `today` is the day it was ingested, which fixes the page's year.

    Lines are decoded and read one at a time (``_lines``): a large dump is
    never held as a whole text and a list of its lines besides, and read
    from an open binary file (as the pipeline does) not even as bytes."""
    decoding: list[DumpWarning] = []  # invalid UTF-8, found as lines are read
    lines = _lines(data, source, decoding)
    blank = 0
    for first in lines:
        if first.strip():
            break
        blank += 1
    else:
        warnings = [*decoding, DumpWarning(source, None, "file is empty; no records")]
        return ParsedDump(source, None, (), tuple(warnings))
    lines = chain(repeat("", blank), (first,), lines)
    start, page_date = _read_header(lines, source, today)
    records: list[DumpWarning] = []
    papers = _read_records(_paragraphs(lines, start), source, page_date, records)
    warnings = decoding + records
    if not papers:
        detail = f" ({warnings[-1].message})" if warnings else ""
        raise DumpError(
            f"{source}: not a Daily Papers dump: no readable records after the page date{detail}",
            hint=_NOT_A_DUMP_HINT,
        )
    warnings.sort(key=lambda warning: warning.line or 0)
    return ParsedDump(source, page_date, tuple(papers), tuple(warnings))


def paper_json(paper: Paper) -> dict[str, object]:
    """A paper as plain JSON values, for the CLI's machine-readable output."""
    return {
        "title": paper.title,
        "abstract": paper.abstract,
        "authors": paper.authors,
        "organization": paper.organization,
        "published": paper.published.isoformat() if paper.published else None,
        "upvotes": paper.upvotes,
        "key": paper_key(paper.title),
    }


def format_dump(page_date: date, papers: Iterable[Paper]) -> str:
    """Write papers as the site's page text, so tests and benchmarks get realistic dumps.

    The site does not show organisation slugs; one is derived from the display
    name. Raises ValueError for a paper the format cannot carry (multi-line or
    meta-like text, upvotes or authors without a date, both authors and an
    organisation), since writing it would not parse back to the same paper.
    """
    parts = [*HEADER_LINES, _format_date(page_date, page_date.year)]
    for paper in papers:
        parts.append(_checked_text(paper.title, "title", paper))
        parts.append(_checked_text(paper.abstract, "abstract", paper))
        meta = _format_meta(paper, page_date)
        if meta is not None:
            parts.append(meta)
    return "\n\n".join(parts)


def _lines(
    data: bytes | bytearray | str | BinaryIO, source: str, warnings: list[DumpWarning]
) -> Iterator[str]:
    """The text's lines (split at LF, a CRLF's CR dropped), decoded one at a
    time; invalid UTF-8 is replaced with U+FFFD and warned about once, at its
    first occurrence. NUL bytes refuse the file before any line is read."""
    if isinstance(data, str):
        if "\x00" in data:
            raise _binary(source)
        text = data.removeprefix(_BOM)
        return (line.removesuffix("\r") for line in text.replace("\r\n", "\n").split("\n"))
    if isinstance(data, bytes | bytearray):
        if b"\x00" in data:
            raise _binary(source)
        return _decoded_lines(_buffer_lines(data), source, warnings)
    while chunk := data.read(1 << 20):
        if b"\x00" in chunk:
            raise _binary(source)
    data.seek(0)
    return _decoded_lines(_stream_lines(data), source, warnings)


def _buffer_lines(data: bytes | bytearray) -> Iterator[bytes | bytearray]:
    """The raw lines of a buffer, without their LF; the last one after the last LF."""
    pos = 0
    while pos <= len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            end = len(data)
        yield data[pos:end]
        pos = end + 1


def _stream_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The raw lines of an open file, as ``_buffer_lines`` gives a buffer's."""
    ended = True  # an empty file is one empty line
    for raw in stream:
        ended = raw.endswith(b"\n")
        yield raw[:-1] if ended else raw
    if ended:
        yield b""


def _decoded_lines(
    raw_lines: Iterable[bytes | bytearray], source: str, warnings: list[DumpWarning]
) -> Iterator[str]:
    offset = 0
    pos = 0
    warned = False
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
            offset = pos = len(_UTF8_BOM)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not warned:
                warnings.append(
                    DumpWarning(
                        source,
                        number,
                        f"invalid UTF-8 (first at byte {pos - offset + exc.start}); "
                        "bad bytes replaced with U+FFFD",
                    )
                )
                warned = True
            line = raw.decode("utf-8", errors="replace")
        yield line.removesuffix("\r")
        pos += len(raw) + 1


def _binary(source: str) -> DumpError:
    return DumpError(
        f"{source}: not a Daily Papers dump: contains NUL bytes (binary file?)",
        hint=_NOT_A_DUMP_HINT,
    )


def _read_header(lines: Iterable[str], source: str, today: date) -> tuple[int, date]:
    """Index of the first line after the page date, and the page date itself."""
    seen: set[str] = set()
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        if line in _HEADER_SET:
            seen.add(line)
            continue
        if _SIGNATURE not in seen:
            break
        match = _PAGE_DATE.fullmatch(line)
        if match is None:
            raise DumpError(
                f"{source}:{index + 1}: not a Daily Papers dump: expected the page date "
                f"(like 'Dec 18') after the header, found {_preview(line)}",
                hint=_NOT_A_DUMP_HINT,
            )
        return index + 1, _page_date(match, source, index + 1, today)
    if _SIGNATURE in seen:
        problem = "no page date after the header"
    else:
        problem = f"no Daily Papers header (missing {_SIGNATURE!r})"
    raise DumpError(f"{source}: not a Daily Papers dump: {problem}", hint=_NOT_A_DUMP_HINT)


def _page_date(match: re.Match[str], source: str, line: int, today: date) -> date:
    month, day = _MONTH_NUMBER[match[1]], int(match[2])
    if match[3] is not None:
        candidates: Iterable[int] = (int(match[3]),)
    else:
        # The page shows no year; it is the latest year whose month/day is not
        # after the ingest day. Feb 29 may need to go back up to 8 years.
        candidates = range(today.year, today.year - 9, -1)
    for year in candidates:
        try:
            found = date(year, month, day)
        except ValueError:
            continue
        if match[3] is not None or found <= today:
            return found
    raise DumpError(
        f"{source}:{line}: page date {match[0]!r} is not a date",
        hint="the page date must be a real day, like 'Dec 18'",
    )


def _paragraphs(lines: Iterable[str], start: int) -> Iterator[_Paragraph]:
    """The paragraphs of the lines left after the header (``start`` of them
    were read), numbered as in the file, each as soon as it ends."""
    current: _Paragraph | None = None
    for number, raw in enumerate(lines, start + 1):
        line = raw.strip()
        if not line:
            if current is not None:
                yield current
            current = None
        elif current is None:
            current = _Paragraph(number, [line])
        else:
            current.lines.append(line)
    if current is not None:
        yield current


def _is_meta_like(line: str) -> bool:
    """A single line that can only be a stray piece of a meta block, never a title.

    Every title and abstract is checked, so the date pattern only runs on lines
    that start with a month name, as any line it matches must.
    """
    return (
        line == _DOT
        or line.startswith(_BULLET)
        or (line[:3] in _MONTH_NUMBER and _META_DATE.fullmatch(line) is not None)
    )


def _read_records(
    paragraphs: Iterable[_Paragraph],
    source: str,
    page_date: date,
    warnings: list[DumpWarning],
) -> list[Paper]:
    """Pair title and abstract paragraphs between meta blocks.

    A meta block (or anything that is not a one-line paragraph) ends a run of
    title/abstract paragraphs; an odd run means one record lost a line, and
    only that run is affected.
    """
    papers: list[Paper] = []
    run: list[_Paragraph] = []
    year_clash: list[int] = []
    for paragraph in paragraphs:
        if len(paragraph.lines) == 1 and not _is_meta_like(paragraph.lines[0]):
            run.append(paragraph)
            continue
        meta: _Meta | None = None
        problem: str | None = None
        try:
            meta = _parse_meta(paragraph, source, page_date, warnings, year_clash)
        except _BadMetaError as exc:
            problem = str(exc)
        records = _pair_run(run, source, warnings)
        run = []
        if meta is None and not any(map(_is_meta_like, paragraph.lines)):
            # Not a broken meta block, just stray text: the records before it stand.
            papers.extend(_paper(title, abstract, None) for title, abstract in records)
            warnings.append(DumpWarning(source, paragraph.line, f"{problem}; skipped"))
            continue
        if not records:
            what = problem or "meta block with no title and abstract before it"
            warnings.append(DumpWarning(source, paragraph.line, f"{what}; skipped"))
            continue
        last_title, last_abstract = records.pop()
        papers.extend(_paper(title, abstract, None) for title, abstract in records)
        if meta is None:
            warnings.append(
                DumpWarning(
                    source,
                    paragraph.line,
                    f"{problem}; record {_preview(last_title.lines[0])} "
                    f"(line {last_title.line}) skipped",
                )
            )
        else:
            papers.append(_paper(last_title, last_abstract, meta))
    papers.extend(
        _paper(title, abstract, None) for title, abstract in _pair_run(run, source, warnings)
    )
    if year_clash:
        warnings.append(
            DumpWarning(
                source,
                year_clash[0],
                f"a record date carries the page's own year {page_date.year}, which the site "
                "omits; the page year is probably wrong (was 'today' the ingest day?)",
            )
        )
    return papers


def _paper(title: _Paragraph, abstract: _Paragraph, meta: _Meta | None) -> Paper:
    if meta is None:
        return Paper(title.lines[0], abstract.lines[0])
    return Paper(
        title.lines[0],
        abstract.lines[0],
        authors=meta.authors,
        organization=meta.organization,
        published=meta.published,
        upvotes=meta.upvotes,
    )


def _pair_run(
    run: Sequence[_Paragraph], source: str, warnings: list[DumpWarning]
) -> list[tuple[_Paragraph, _Paragraph]]:
    """Pair one-line paragraphs as (title, abstract); drop one if the count is odd.

    The dropped paragraph is the one that leaves the most pairs with a title
    shorter than its abstract, so a lost abstract costs one record, not all
    records after it.
    """
    if len(run) % 2 == 0:
        return [(run[i], run[i + 1]) for i in range(0, len(run), 2)]

    def plausible(i: int) -> int:
        return int(len(run[i].lines[0]) < len(run[i + 1].lines[0]))

    pairs = len(run) // 2
    # before[k]: plausible pairs among (0,1)..(2k-2,2k-1); after[k]: among
    # (2k+1,2k+2).. to the end. Dropping paragraph 2k scores before[k] + after[k].
    before = [0] * (pairs + 1)
    for k in range(pairs):
        before[k + 1] = before[k] + plausible(2 * k)
    after = [0] * (pairs + 1)
    for k in range(pairs - 1, -1, -1):
        after[k] = after[k + 1] + plausible(2 * k + 1)
    drop = 2 * max(range(pairs + 1), key=lambda k: before[k] + after[k])
    lost = run[drop]
    text = lost.lines[0]
    if len(text) <= _TITLE_MAX_CHARS:
        message = f"record {_preview(text)} has a title but no abstract; skipped"
    else:
        message = "abstract with no title before it; skipped"
    warnings.append(DumpWarning(source, lost.line, message))
    kept = [*run[:drop], *run[drop + 1 :]]
    return [(kept[i], kept[i + 1]) for i in range(0, len(kept), 2)]


def _parse_meta(
    paragraph: _Paragraph,
    source: str,
    page_date: date,
    warnings: list[DumpWarning],
    year_clash: list[int],
) -> _Meta:
    lines = paragraph.lines
    if len(lines) != 3 or lines[1] != _DOT:
        raise _BadMetaError(f"unreadable block {_preview(' | '.join(lines))}")
    first, when = lines[0], lines[2]
    authors: int | None = None
    organization: str | None = None
    if first.startswith(_BULLET):
        match = _AUTHORS.fullmatch(first)
        if match is None:
            raise _BadMetaError(f"garbled author count {_preview(first)}")
        authors = int(match[1])
    else:
        _, _, name = first.partition(" ")
        name = name.strip()
        if not name or _is_meta_like(first):
            raise _BadMetaError(f"garbled meta block: {_preview(first)} is not 'slug Organisation'")
        organization = name
    date_match = _META_DATE.fullmatch(when)
    if date_match is None:
        raise _BadMetaError(
            f"garbled meta block: {_preview(when)} is not a date like 'Sep 30, 2024 2'"
        )
    month, day = _MONTH_NUMBER[date_match[1]], int(date_match[2])
    year = page_date.year if date_match[3] is None else int(date_match[3])
    if date_match[3] is not None and year == page_date.year and not year_clash:
        year_clash.append(paragraph.line + 2)
    published: date | None
    try:
        published = date(year, month, day)
    except ValueError:
        published = None
        warnings.append(
            DumpWarning(
                source,
                paragraph.line + 2,
                f"{when!r} is not a day in {year}; record kept without a publication date",
            )
        )
    upvotes = int(date_match[4]) if date_match[4] is not None else 0
    return _Meta(authors, organization, published, upvotes)


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _format_date(day: date, page_year: int) -> str:
    if day.year == page_year:
        return f"{_MONTHS[day.month - 1]} {day.day}"
    return f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"


def _checked_text(text: str, field: str, paper: Paper) -> str:
    if not text or text != text.strip() or "\n" in text or "\r" in text or _is_meta_like(text):
        raise ValueError(f"{field} cannot be written as one dump line: {paper.title!r}")
    return text


def _format_meta(paper: Paper, page_date: date) -> str | None:
    if paper.published is None:
        if paper.authors is not None or paper.organization is not None or paper.upvotes:
            raise ValueError(f"meta block needs a publication date: {paper.title!r}")
        return None
    if (paper.authors is None) == (paper.organization is None):
        raise ValueError(f"meta block needs exactly one of authors, organization: {paper.title!r}")
    if paper.upvotes < 0:
        raise ValueError(f"upvotes cannot be negative: {paper.title!r}")
    if paper.authors is not None:
        if paper.authors < 0:
            raise ValueError(f"authors cannot be negative: {paper.title!r}")
        first = f"  {_BULLET} {paper.authors} authors"
    else:
        name = paper.organization or ""
        slug = "".join(name.split()).lower()
        first = f"{slug} {name}"
        if not slug or name != name.strip() or "\n" in name or _is_meta_like(first):
            raise ValueError(f"organization cannot be written: {paper.title!r}")
    when = _format_date(paper.published, page_date.year)
    if paper.upvotes:
        when = f"{when} {paper.upvotes}"
    return f"{first}\n{_DOT}\n{when}"
