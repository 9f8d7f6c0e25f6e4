"""Specification of the dump parser: what a Daily Papers page dump yields."""

from __future__ import annotations

import io
import re
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.dumpfiles import read_dump
from mailer.dumps import (
    DumpWarning,
    ParsedDump,
    format_dump,
    paper_json,
    parse_dump,
)
from mailer.errors import DumpError
from mailer.papers import Paper, paper_key

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
# The seeds' explicit years stop at 2024 and the site omits the current year,
# so they were saved in 2025; ingesting them late that year keeps every page
# date in 2025.
INGESTED = date(2025, 12, 20)

HEADER = (
    "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\nDaily Papers\n\n"
    "byAK and the research community\n\n"
)
LONG = " ".join(["This abstract is a full paragraph about the method and what it shows."] * 3)


def page(*records: str, date_line: str = "Dec 18") -> str:
    """A dump with the site's header; records are pre-formatted blocks."""
    return HEADER + "\n\n".join([date_line, *records])


def record(title: str, abstract: str = LONG, meta: str | None = None) -> str:
    parts = [title, abstract] if meta is None else [title, abstract, meta]
    return "\n\n".join(parts)


def parse(text: str | bytes, today: date = INGESTED) -> ParsedDump:
    return parse_dump(text, source="day.txt", today=today)


def seed(name: str) -> ParsedDump:
    return read_dump(next(SEEDS.glob(f"{name}_*.txt")), today=INGESTED)


def titled(dump: ParsedDump, title: str) -> Paper:
    (found,) = [paper for paper in dump.papers if paper.title == title]
    return found


# Counted by hand: blank-line separated paragraphs after the page date, minus
# the three-line meta blocks, halved (title + abstract).
@pytest.mark.parametrize(
    ("name", "records"), [("000", 40), ("001", 85), ("002", 49), ("003", 98), ("004", 43)]
)
def test_every_seed_parses_whole_without_warnings(name: str, records: int) -> None:
    dump = seed(name)
    assert dump.warnings == ()
    assert len(dump.papers) == records
    assert all(paper.title and len(paper.abstract) > 1000 for paper in dump.papers)


@pytest.mark.parametrize(
    ("name", "page_date"),
    [
        ("000", date(2025, 12, 18)),
        ("001", date(2025, 3, 11)),
        ("002", date(2025, 12, 11)),
        ("003", date(2025, 11, 6)),
        ("004", date(2025, 12, 9)),
    ],
)
def test_seed_page_date_is_read_from_the_line_after_the_header(name: str, page_date: date) -> None:
    assert seed(name).page_date == page_date


def test_organisation_line_becomes_organization_and_never_a_title() -> None:
    dump = seed("003")
    orgs = {paper.organization for paper in dump.papers} - {None}
    assert orgs == {"Spiral Works", "inclusionAI", "Microsoft"}
    titles = {paper.title for paper in dump.papers}
    assert not titles & {
        "spiralworks Spiral Works",
        "inclusionAI inclusionAI",
        "microsoft Microsoft",
    }


def test_organisation_record_keeps_its_date_and_upvotes_but_has_no_author_count() -> None:
    paper = titled(seed("003"), "QueST: Incentivizing LLMs to Generate Difficult Problems")
    assert paper.organization == "Microsoft"
    assert paper.authors is None
    assert paper.published == date(2025, 10, 20)
    assert paper.upvotes == 3


def test_record_without_meta_block_has_no_authors_date_or_upvotes() -> None:
    papers = seed("001").papers
    assert {(p.authors, p.organization, p.published, p.upvotes) for p in papers} == {
        (None, None, None, 0)
    }


def test_dump_mixing_records_with_and_without_meta_keeps_both() -> None:
    papers = seed("002").papers
    assert sum(paper.published is None for paper in papers) == 4
    assert sum(paper.authors is not None for paper in papers) == 45


def test_authors_line_gives_the_author_count_even_when_singular_is_plural() -> None:
    paper = titled(seed("000"), "Universal Approximation Theorem for a Single-Layer Transformer")
    assert paper.authors == 1


def test_singular_author_line_is_accepted() -> None:
    dump = parse(page(record("Solo", meta="  • 1 author\n·\nMay 2")))
    assert dump.papers[0].authors == 1
    assert dump.warnings == ()


def test_date_with_year_and_upvotes_is_read_whole() -> None:
    paper = titled(
        seed("000"), "Law of the Weakest Link: Cross Capabilities of Large Language Models"
    )
    assert (paper.authors, paper.published, paper.upvotes) == (17, date(2024, 9, 30), 2)


def test_date_without_year_takes_the_page_year_and_upvotes_follow_the_day() -> None:
    paper = next(p for p in seed("003").papers if p.title.startswith("MOOSE-Chem2:"))
    assert (paper.published, paper.upvotes) == (date(2025, 5, 25), 2)


def test_upvotes_are_zero_when_the_date_has_no_count() -> None:
    dump = parse(page(record("T", meta="  • 3 authors\n·\nMar 10, 2023")))
    assert dump.papers[0].upvotes == 0


def test_page_date_after_the_ingest_day_belongs_to_the_previous_year() -> None:
    dump = parse(page(record("T", meta="  • 3 authors\n·\nJun 4")), today=date(2026, 11, 23))
    assert dump.page_date == date(2025, 12, 18)
    assert dump.papers[0].published == date(2025, 6, 4)


def test_page_date_on_the_ingest_day_is_this_year() -> None:
    assert parse(page(record("T")), today=date(2026, 12, 18)).page_date == date(2026, 12, 18)


def test_page_date_feb_29_takes_the_latest_leap_year_not_after_today() -> None:
    dump = parse(page(record("T"), date_line="Feb 29"), today=date(2027, 3, 1))
    assert dump.page_date == date(2024, 2, 29)


def test_record_feb_29_in_a_non_leap_page_year_warns_and_has_no_date() -> None:
    text = page(record("Leap", meta="  • 2 authors\n·\nFeb 29 4"), date_line="Mar 1")
    dump = parse(text, today=date(2025, 3, 2))
    assert dump.papers[0].published is None
    assert dump.papers[0].upvotes == 4
    assert len(dump.warnings) == 1
    assert "Feb 29" in dump.warnings[0].message


def test_record_date_with_the_page_year_spelled_out_warns_the_page_year_is_doubtful() -> None:
    dump = parse(page(record("T", meta="  • 2 authors\n·\nFeb 2, 2025")))
    assert dump.papers[0].published == date(2025, 2, 2)
    assert [w.line for w in dump.warnings] == [19]


def test_crlf_line_endings_parse_like_lf() -> None:
    text = page(record("A", meta="  • 2 authors\n·\nMay 2 3"), record("B"))
    assert parse(text.replace("\n", "\r\n")).papers == parse(text).papers
    assert parse(text.replace("\n", "\r\n")).warnings == ()


def test_utf8_byte_order_mark_is_ignored() -> None:
    text = page(record("A"))
    dump = parse(b"\xef\xbb\xbf" + text.encode())
    assert dump.papers == parse(text).papers
    assert dump.warnings == ()


def test_trailing_newline_is_optional() -> None:
    text = page(record("A"), record("B"))
    assert parse(text + "\n").papers == parse(text).papers == (Paper("A", LONG), Paper("B", LONG))


def test_invalid_utf8_is_replaced_with_exactly_one_warning() -> None:
    data = page(record("Caf\udcff", "Na\udcfeve abstract"), record("B\udcc3")).encode(
        "utf-8", "surrogateescape"
    )
    dump = parse(data)
    assert [paper.title for paper in dump.papers] == ["Caf\ufffd", "B\ufffd"]
    assert len(dump.warnings) == 1
    assert dump.warnings[0].line == 13
    assert "UTF-8" in dump.warnings[0].message


def test_binary_file_is_refused_naming_it() -> None:
    with pytest.raises(DumpError, match=r"^day\.txt: .*NUL") as info:
        parse(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert info.value.hint


@pytest.mark.parametrize(
    "data",
    [
        page(record("A", meta="  • 2 authors\n·\nMay 2 3"), record("B")).encode(),
        page(record("A"), record("B")).replace("\n", "\r\n").encode() + b"\r\n",
        b"\xef\xbb\xbf" + page(record("A")).encode(),
        page(record("Caf\udcff", "Na\udcfeve abstract"), record("B")).encode(
            "utf-8", "surrogateescape"
        ),
        b"\xef\xbb\xbf" + page(record("B\udcc3")).encode("utf-8", "surrogateescape"),
    ],
    ids=["lf", "crlf", "bom", "invalid-utf8", "bom-then-invalid"],
)
def test_a_dump_parses_from_an_open_file_as_from_its_bytes(data: bytes) -> None:
    assert parse_dump(io.BytesIO(data), source="day.txt", today=INGESTED) == parse(data)


@pytest.mark.parametrize("data", [b"", b"\n\n", b"no header"], ids=["empty", "blank", "text"])
def test_a_file_that_is_no_dump_is_refused_or_empty_alike_from_an_open_file(data: bytes) -> None:
    try:
        expected: object = parse(data)
    except DumpError as exc:
        expected = exc.message
    try:
        got: object = parse_dump(io.BytesIO(data), source="day.txt", today=INGESTED)
    except DumpError as exc:
        got = exc.message
    assert got == expected


def test_an_open_binary_file_is_refused_before_any_line_is_read() -> None:
    with pytest.raises(DumpError, match=r"^day\.txt: .*NUL"):
        parse_dump(
            io.BytesIO(page(record("A")).encode() + b"\x00"), source="day.txt", today=INGESTED
        )


def test_text_without_the_header_is_refused_naming_it() -> None:
    with pytest.raises(DumpError, match=r"^day\.txt: .*header"):
        parse("Dec 18\n\nA title\n\nAn abstract.")


def test_header_without_a_page_date_is_refused() -> None:
    with pytest.raises(DumpError, match=r"^day\.txt:11: .*page date"):
        parse(HEADER + "A title\n\nAn abstract.")


def test_header_and_page_date_without_records_is_refused() -> None:
    with pytest.raises(DumpError, match=r"^day\.txt: .*no readable records"):
        parse(page())


@pytest.mark.parametrize("data", [b"", b"   \n\n\t\r\n", "\ufeff\n"])
def test_empty_or_blank_file_gives_no_records_and_a_warning(data: bytes | str) -> None:
    dump = parse(data)
    assert dump.papers == ()
    assert dump.page_date is None
    assert [str(w) for w in dump.warnings] == ["day.txt: file is empty; no records"]


def test_garbled_meta_block_skips_only_its_record_with_file_and_line() -> None:
    text = page(
        record("Good one", meta="  • 2 authors\n·\nMay 2"),
        record("Broken", meta="  • two authors\n·\nMay 3"),
        record("Good two", meta="  • 4 authors\n·\nMay 4"),
    )
    dump = parse(text)
    assert [paper.title for paper in dump.papers] == ["Good one", "Good two"]
    assert [str(w).split(": ")[0] for w in dump.warnings] == ["day.txt:25"]
    assert "'Broken'" in dump.warnings[0].message


def test_meta_block_missing_its_dot_line_skips_its_record() -> None:
    text = page(record("Broken", meta="  • 2 authors\nMay 2"), record("Good"))
    dump = parse(text)
    assert [paper.title for paper in dump.papers] == ["Good"]
    assert [w.line for w in dump.warnings] == [17]


def test_title_without_abstract_is_skipped_and_later_records_stay_aligned() -> None:
    text = page(
        record("First"),
        "Orphan title",
        record("Second", meta="  • 2 authors\n·\nMay 2"),
        record("Third"),
    )
    dump = parse(text)
    assert [(p.title, p.abstract) for p in dump.papers] == [
        ("First", LONG),
        ("Second", LONG),
        ("Third", LONG),
    ]
    assert dump.papers[1].authors == 2
    assert [str(w) for w in dump.warnings] == [
        "day.txt:17: record 'Orphan title' has a title but no abstract; skipped"
    ]


def test_title_at_end_of_file_without_abstract_is_skipped() -> None:
    dump = parse(page(record("Whole"), "Cut off"))
    assert [paper.title for paper in dump.papers] == ["Whole"]
    assert [w.line for w in dump.warnings] == [17]


def test_stray_multi_line_text_is_skipped_without_costing_neighbours() -> None:
    dump = parse(page(record("Before"), "two lines\nof stray text", record("After")))
    assert [paper.title for paper in dump.papers] == ["Before", "After"]
    assert [w.line for w in dump.warnings] == [17]


def test_read_dump_names_the_file_as_source(tmp_path: Path) -> None:
    path = tmp_path / "2025-12-18.txt"
    path.write_text(page(record("A")), encoding="utf-8")
    dump = read_dump(path, today=INGESTED)
    assert dump.source == str(path)
    assert dump.papers == (Paper("A", LONG),)


def test_read_dump_of_a_missing_file_raises_dump_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.txt"
    with pytest.raises(DumpError, match=re.escape(str(path))) as info:
        read_dump(path, today=INGESTED)
    assert info.value.hint


def test_refusal_from_read_dump_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"\x00\x01\x02")
    with pytest.raises(DumpError, match=re.escape(str(path))):
        read_dump(path, today=INGESTED)


def test_warning_text_is_file_colon_line_colon_message() -> None:
    assert str(DumpWarning("seeds/x.txt", 42, "oops")) == "seeds/x.txt:42: oops"
    assert str(DumpWarning("seeds/x.txt", None, "oops")) == "seeds/x.txt: oops"


def test_paper_json_gives_plain_values_and_the_identity_key() -> None:
    paper = Paper("A Title!", "Abs.", None, "Microsoft", date(2025, 10, 20), 3)
    assert paper_json(paper) == {
        "title": "A Title!",
        "abstract": "Abs.",
        "authors": None,
        "organization": "Microsoft",
        "published": "2025-10-20",
        "upvotes": 3,
        "key": paper_key("A Title!"),
    }


@pytest.mark.parametrize("name", ["000", "002", "004"])
def test_format_dump_writes_a_parsed_seed_back_byte_for_byte(name: str) -> None:
    path = next(SEEDS.glob(f"{name}_*.txt"))
    dump = read_dump(path, today=INGESTED)
    assert dump.page_date is not None
    assert format_dump(dump.page_date, dump.papers) == path.read_text(encoding="utf-8")


def test_format_dump_derives_an_organisation_slug() -> None:
    text = format_dump(
        date(2025, 11, 6), [Paper("T", "A", None, "Spiral Works", date(2025, 9, 25), 2)]
    )
    assert text.endswith("T\n\nA\n\nspiralworks Spiral Works\n·\nSep 25 2")


@pytest.mark.parametrize(
    "paper",
    [
        Paper("two\nlines", "A"),
        Paper("T", ""),
        Paper("T", "A", authors=3),
        Paper("T", "A", upvotes=2),
        Paper("T", "A", 3, "Org", date(2025, 1, 1)),
        Paper("Jun 4", "A"),
    ],
)
def test_format_dump_refuses_a_paper_that_would_not_parse_back(paper: Paper) -> None:
    with pytest.raises(ValueError):
        format_dump(date(2025, 12, 18), [paper])


_DATE_LIKE = re.compile(r"[A-Z][a-z]{2} \d{1,2}(, \d{4})?( \d+)?")
_HEADER_LINES = set(HEADER.split("\n\n"))


def _line_text(max_size: int) -> st.SearchStrategy[str]:
    """One line of printable text that is neither a header line nor part of a meta block."""
    chars = st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="•·"
    )
    return st.text(chars, min_size=1, max_size=max_size).filter(
        lambda s: s == s.strip() and s not in _HEADER_LINES and not _DATE_LIKE.fullmatch(s)
    )


_days = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))


@st.composite
def _papers(draw: st.DrawFn) -> Paper:
    title, abstract = draw(_line_text(120)), draw(_line_text(400))
    if draw(st.booleans()):
        return Paper(title, abstract)
    by_org = draw(st.booleans())
    return Paper(
        title,
        abstract,
        authors=None if by_org else draw(st.integers(0, 500)),
        organization=draw(_line_text(30)) if by_org else None,
        published=draw(_days),
        upvotes=draw(st.integers(0, 10_000)),
    )


@settings(max_examples=300, deadline=None)
@given(page_date=_days, papers=st.lists(_papers(), min_size=1, max_size=8))
def test_parse_gives_back_what_format_wrote(page_date: date, papers: list[Paper]) -> None:
    dump = parse(format_dump(page_date, papers), today=page_date)
    assert dump.page_date == page_date
    assert dump.papers == tuple(papers)
    assert dump.warnings == ()
