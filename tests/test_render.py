"""Rendering: what a subscriber reads, in both parts, and the message around it."""

from __future__ import annotations

import email
import email.message
import email.policy
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.digests import Digest, Entry, Matched, Recipient, Section, build_digest
from mailer.dumpfiles import read_dump
from mailer.errors import ConfigError, TemplateError
from mailer.mime import Rendered, compose_bytes, compose_message
from mailer.papers import Paper
from mailer.pipeline.compose import build_message
from mailer.render import (
    DEFAULT_PAPER_URL,
    HTML_MAX_BYTES,
    Renderer,
    check_paper_url,
    default_templates_dir,
    shortened,
    term_label,
)
from mailer.textfmt import EXCERPT_CHARS, excerpt, seven_bit_html

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
GOLDEN = Path(__file__).parent / "golden" / "digest.txt"
UNSUBSCRIBE = "https://digest.example.org/unsubscribe?token=abc123"
MANAGE = "Reply to this message to change your subscriptions."
MAILTO = "mailto:digest@example.org?subject=unsubscribe%20ada%40example.org"
SINCE = datetime(2024, 11, 16, 7, 0, tzinfo=UTC)


# --- sample data ----------------------------------------------------------


def seed_papers() -> list[Paper]:
    """Papers from the sample dumps, as the parser reads them in Dec 2025."""
    return [
        paper
        for path in sorted(SEEDS.glob("*.txt"))
        for paper in read_dump(path, today=date(2025, 12, 20)).papers
    ]


def spans(text: str, terms: Iterable[str]) -> tuple[tuple[int, int], ...]:
    found = {
        m.span()
        for t in terms
        for m in re.finditer(rf"\b{re.escape(t)}\b", text, flags=re.IGNORECASE)
    }
    return tuple(sorted(found))


def entry(paper: Paper, sub: str, terms: Sequence[str] = (), also: Sequence[str] = ()) -> Entry:
    return Entry(
        paper=paper,
        subscription=sub,
        also=tuple(also),
        terms=tuple(terms),
        title_marks=spans(paper.title, terms),
        abstract_marks=spans(paper.abstract, terms),
    )


def recipient(*subs: str, name: str = "Ada Lovelace") -> Recipient:
    return Recipient("ada@example.org", name, subs or ("Diffusion",))


def digest_of(
    *entries: Entry,
    subs: Sequence[str] = (),
    recipient: Recipient | None = None,
    since: datetime | None = SINCE,
    more: int = 0,
    test: bool = False,
) -> Digest:
    sections: dict[str, list[Entry]] = {}
    for e in entries:
        sections.setdefault(e.subscription, []).append(e)
    names = tuple(subs) or tuple(sections) or ("Diffusion",)
    return Digest(
        recipient=recipient or Recipient("ada@example.org", "Ada Lovelace", names),
        sections=tuple(Section(s, tuple(es)) for s, es in sections.items()),
        since=since,
        more=more,
        test=test,
    )


def paper(title: str = "Diffusion Models Beat GANs", abstract: str | None = None) -> Paper:
    return Paper(
        title=title,
        abstract=abstract or "We show that diffusion models beat GANs on image synthesis.",
        authors=4,
        published=date(2024, 6, 4),
        upvotes=12,
    )


def realistic_digest(*, more: int = 0, test: bool = False) -> Digest:
    """A fixed digest of real seed papers for a subscriber with three
    subscriptions; shared with the browser test."""
    papers = {p.title: p for p in seed_papers()}

    def pick(title_start: str) -> Paper:
        return next(p for t, p in papers.items() if t.startswith(title_start))

    entries = (
        entry(
            pick("Solving Inverse Problems via Diffusion"), "Diffusion", ["diffusion"], ["Theory"]
        ),
        entry(pick("Adversarial Adaptive Sampling"), "Diffusion", ["sampling", "diffusion"]),
        entry(pick("Universal Approximation Theorem"), "Theory", ["approximation", "theorem"]),
        entry(pick("Computational Limits of Low-Rank"), "Theory", ["complexity"], ["LLM agents"]),
        entry(pick("Capability Instruction Tuning"), "LLM agents", ["llm", "llms", "routing"]),
    )
    return digest_of(
        *entries,
        subs=("Diffusion", "Theory", "LLM agents"),
        recipient=Recipient(
            "ada@example.org", "Ada Lovelace", ("Diffusion", "Theory", "LLM agents")
        ),
        more=more,
        test=test,
    )


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def render(renderer: Renderer, digest: Digest, unsubscribe: str | None = UNSUBSCRIBE) -> Rendered:
    return renderer.render(digest, unsubscribe_url=unsubscribe, manage_hint=MANAGE)


class Page(HTMLParser):
    """The HTML part as a reader sees it: its text, links and marks."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.marks: list[str] = []
        self._in_mark = False
        self._skip = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")
        if tag in ("style", "title"):
            self._skip += 1
        self._in_mark = tag == "mark"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1
        if tag == "mark":
            self._in_mark = False

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._in_mark:
            self.marks.append(data)

    @property
    def plain(self) -> str:
        return " ".join("".join(self.text).split())


# --- subject --------------------------------------------------------------


def test_subject_counts_papers_and_names_subscriptions(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    assert out.subject == "Paper Digest: 5 new papers — Diffusion, Theory, LLM agents"


def test_subject_is_singular_for_one_paper(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper(), "Diffusion", ["diffusion"])))
    assert out.subject == "Paper Digest: 1 new paper — Diffusion"


def test_subject_of_a_test_send_is_prefixed(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest(test=True))
    assert out.subject.startswith("[test] Paper Digest: 5 new papers")


def test_product_name_is_used_in_subject() -> None:
    out = render(Renderer(product_name="ArXiv Watch"), digest_of(entry(paper(), "Diffusion")))
    assert out.subject.startswith("ArXiv Watch: 1 new paper")


# --- content --------------------------------------------------------------

EVIL_TITLE = "<script>alert(1)</script> & {{ config }} {% raw %} R&D"
EVIL_ABSTRACT = (
    "We inject <b>bold</b> & <script>x()</script> and {{ 7*7 }} {% if 1 %}yes{% endif %}."
)


def test_markup_in_title_and_abstract_is_literal_in_html(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper(EVIL_TITLE, EVIL_ABSTRACT), "Diffusion")))
    page = Page(out.html)
    assert EVIL_TITLE in page.plain
    assert EVIL_ABSTRACT in page.plain
    assert "script" not in page.tags
    assert "b" not in page.tags


def test_markup_in_title_and_abstract_is_literal_in_text(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper(EVIL_TITLE, EVIL_ABSTRACT), "Diffusion")))
    flat = " ".join(out.text.split())
    assert EVIL_TITLE in flat
    assert EVIL_ABSTRACT in flat
    assert "&amp;" not in out.text


_DATA = st.text(alphabet="ab <>&\"'{}%#/=;é日😀", min_size=1, max_size=40).filter(str.strip)


@settings(max_examples=60, deadline=None)
@given(title=_DATA, abstract=_DATA)
def test_any_title_and_abstract_text_is_shown_literally(title: str, abstract: str) -> None:
    out = Renderer().render(
        digest_of(entry(paper(title, abstract + "."), "S", ["a", "b"])),
        unsubscribe_url=None,
        manage_hint="",
    )
    page = Page(out.html)
    assert " ".join(title.split()) in page.plain
    assert " ".join(abstract.split()) in page.plain
    assert set(page.tags) <= {
        "html", "head", "meta", "title", "style", "body", "div", "table", "tbody",
        "tr", "td", "h1", "h2", "h3", "span", "a", "p", "mark",
    }  # fmt: skip
    assert " ".join(title.split()) in " ".join(out.text.replace("*", "").split())


def test_highlighted_terms_are_marked_in_html(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper(), "Diffusion", ["diffusion", "gans"])))
    assert Page(out.html).marks == ["Diffusion", "GANs", "diffusion", "GANs"]
    assert '<mark class="hl" style="background:' in out.html


def test_highlighted_terms_are_starred_in_text(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper(), "Diffusion", ["diffusion"])))
    assert "*Diffusion* Models Beat GANs" in out.text
    assert "that *diffusion* models" in out.text


def test_highlight_markup_around_escaped_text(renderer: Renderer) -> None:
    p = paper("A <b> & diffusion </b> model")
    out = render(renderer, digest_of(entry(p, "Diffusion", ["diffusion"])))
    assert "A &lt;b&gt; &amp; <mark" in out.html
    assert Page(out.html).marks[0] == "diffusion"


def test_abstract_is_shortened_to_a_few_sentences(renderer: Renderer) -> None:
    long = max(seed_papers(), key=lambda p: len(p.abstract))
    text, _ = excerpt(long.abstract)
    assert len(text) <= EXCERPT_CHARS + 2
    assert text.endswith("…")
    assert long.abstract.startswith(text.removesuffix("…").rstrip())


@given(st.lists(st.text(alphabet="abcdefgh .,!?XYZ", min_size=1, max_size=14), max_size=80))
def test_abstract_cut_never_falls_mid_word(words: list[str]) -> None:
    text = " ".join(words)
    cut, _ = excerpt(text)
    if not cut.endswith("…"):
        assert cut == text.rstrip()
        return
    kept = cut.removesuffix("…").rstrip()
    assert text.startswith(kept)
    rest = text[len(kept) :]
    assert not rest or rest[0].isspace() or not kept or not kept[-1].isalnum()


def test_highlight_spans_are_clipped_to_the_cut() -> None:
    abstract = "Short first sentence here. " + "word " * 100 + "diffusion end."
    start = abstract.index("diffusion")
    first = abstract.index("first")
    text, marks = excerpt(abstract, [(first, first + 5), (start, start + 9), (300, 400)])
    assert (first, first + 5) in marks
    assert all(end <= len(text.removesuffix("…").rstrip()) for _, end in marks)


def test_highlight_spans_crossing_the_cut_are_shortened() -> None:
    abstract = "alpha " * 100
    text, marks = excerpt(abstract, [(340, 360)])
    assert marks
    assert marks[0][1] <= len(text.removesuffix("…"))


def test_summary_line_names_count_subscriptions_and_date(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    line = "5 papers matched Diffusion, Theory and LLM agents since Sat 16 Nov."
    assert line in Page(out.html).plain
    assert line in " ".join(out.text.split())


def test_preheader_names_first_two_titles(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    first, second = (e.paper.title for e in realistic_digest().entries[:2])
    assert out.preheader.startswith(f"{first} · {second}")
    assert out.preheader in Page(out.html).plain


def test_more_papers_are_counted_after_the_list(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest(more=7))
    assert "and 7 more papers matched" in Page(out.html).plain
    assert "and 7 more papers matched" in out.text


def test_sections_appear_in_order_with_headings(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    plain = Page(out.html).plain
    positions = [plain.index(f"{name} ·") for name in ("Diffusion", "Theory", "LLM agents")]
    assert positions == sorted(positions)


def test_other_matching_subscriptions_are_listed(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    assert "Also matches: Theory" in Page(out.html).plain
    assert "Also matches: LLM agents" in out.text


def test_top_matched_terms_are_named_best_first_in_both_parts(renderer: Renderer) -> None:
    p = paper("Graph models", "Sampling with graph transformers and diffusion.")
    terms = ["graph transformer", "sampling", "diffusion", "graph"]
    out = render(renderer, digest_of(entry(p, "Diffusion", terms)))
    line = 'Matched: "graph transformer", sampling, diffusion'
    assert line in Page(out.html).plain
    assert line + "\n" in out.text


def test_paper_without_recorded_terms_has_no_matched_line(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper("A", "B."), "Diffusion")))
    assert "Matched:" not in out.text
    assert "Matched:" not in Page(out.html).plain


@pytest.mark.parametrize(
    ("term", "label"),
    [
        ("diffusion", "diffusion"),
        ("=RL", "RL"),
        ("transform*", "transform*"),
        ("graph transformer", '"graph transformer"'),
        ("org:microsoft", "organisation microsoft"),
    ],
)
def test_matched_terms_are_labelled_as_the_query_wrote_them(term: str, label: str) -> None:
    assert term_label(term) == label


def test_meta_line_shows_date_authors_and_upvotes(renderer: Renderer) -> None:
    p = Paper(
        "T",
        "An abstract.",
        authors=5,
        organization="Microsoft",
        published=date(2024, 6, 4),
        upvotes=1,
    )
    out = render(renderer, digest_of(entry(p, "Diffusion")))
    assert "Jun 4, 2024 · Microsoft · 5 authors · 1 upvote" in Page(out.html).plain
    assert "Jun 4, 2024 · Microsoft · 5 authors · 1 upvote" in out.text


def test_footer_gives_reason_unsubscribe_and_manage_hint(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    page = Page(out.html)
    assert "subscribed to Diffusion, Theory and LLM agents" in page.plain
    assert MANAGE in page.plain
    assert UNSUBSCRIBE in page.hrefs
    assert UNSUBSCRIBE in out.text.splitlines()
    assert MANAGE in " ".join(out.text.split())


def test_without_unsubscribe_url_footer_says_how_to_unsubscribe(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest(), unsubscribe=None)
    assert "reply to this message with “unsubscribe”" in Page(out.html).plain
    assert 'reply to this message with "unsubscribe"' in out.text


def test_empty_digest_says_nothing_matched(renderer: Renderer) -> None:
    empty = Digest(recipient=recipient("Diffusion", "Agents"), sections=(), since=SINCE, test=True)
    out = render(renderer, empty)
    expected = "No new papers matched your subscriptions since Sat 16 Nov."
    assert expected in Page(out.html).plain
    assert expected in out.text
    assert out.subject == "[test] Paper Digest: no new papers"
    assert "subscribed to Diffusion and Agents" in out.text


def test_text_lines_fit_72_columns_except_urls(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest(more=3))
    long = [line for line in out.text.splitlines() if len(line) > 72]
    assert long
    assert all(re.fullmatch(r"https?://\S+", line) for line in long)


def test_text_part_keeps_links_whole_on_their_own_lines(renderer: Renderer) -> None:
    lines = render(renderer, realistic_digest()).text.splitlines()
    for e in realistic_digest().entries:
        url = DEFAULT_PAPER_URL.replace("{title}", quote(e.paper.title, safe=""))
        assert url in lines
    assert not any(re.search(r"\S\s*https?://", line) for line in lines)


def test_links_are_only_http_or_https(renderer: Renderer) -> None:
    out = render(renderer, realistic_digest())
    hrefs = Page(out.html).hrefs
    assert len(hrefs) == 7
    assert all(h.startswith(("https://", "http://")) for h in hrefs)


def test_paper_link_encodes_the_title(renderer: Renderer) -> None:
    out = render(renderer, digest_of(entry(paper("A&B? #1 / ünï"), "Diffusion")))
    href = Page(out.html).hrefs[1]
    assert (
        href
        == "https://arxiv.org/search/?query=A%26B%3F%20%231%20%2F%20%C3%BCn%C3%AF&searchtype=title"
    )


@pytest.mark.parametrize(
    "template",
    [
        "javascript:alert({title})",
        "ftp://example.org/{title}",
        "{title}",
        "https://example.org/search",
        "https:///{title}",
        "data:text/html,{title}",
        "https://exa mple.org/{title}",
    ],
)
def test_paper_url_template_must_give_a_web_url(template: str) -> None:
    with pytest.raises(ValueError, match="must"):
        check_paper_url(template)
    with pytest.raises(ConfigError, match=r"\[render\] paper_url"):
        Renderer(paper_url=template)


def test_paper_url_template_accepts_https_with_title() -> None:
    url = "https://huggingface.co/papers?q={title}"
    assert check_paper_url(url) == url


def test_unicode_emoji_cjk_and_rtl_are_preserved(renderer: Renderer) -> None:
    title = "🚀 Ünïcode 扩散模型 نموذج الانتشار S^{2}FT at 1.3times"
    abstract = "Über 😀 diffusion — 日本語の要約。 مرحبا بالعالم. Café."
    out = render(renderer, digest_of(entry(paper(title, abstract), "Diffusion", ["diffusion"])))
    page = Page(out.html)
    assert title in page.plain
    assert abstract in page.plain
    assert re.search(r'<h3[^>]*dir="auto"', out.html)
    assert re.search(r'<p[^>]*class="abstract"[^>]*dir="auto"|<p[^>]*dir="auto"', out.html)
    assert title in out.text
    msg = compose(digest_of(entry(paper(title, abstract), "Diffusion")), out)
    parsed = roundtrip(msg)
    parts = [p.get_content() for p in parsed.iter_parts()]
    assert title in parts[0]
    assert title in Page(parts[1]).plain


# --- form -----------------------------------------------------------------


def test_html_declares_language_charset_and_color_schemes(renderer: Renderer) -> None:
    html = render(renderer, realistic_digest()).html
    assert '<html lang="en" dir="ltr">' in html
    assert '<meta charset="utf-8">' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="supported-color-schemes" content="light dark">' in html


def test_styles_are_inlined_and_style_block_holds_only_at_rules(renderer: Renderer) -> None:
    html = render(renderer, realistic_digest()).html
    blocks = re.findall(r"<style[^>]*>(.*?)</style>", html, flags=re.DOTALL)
    assert len(blocks) == 1
    assert blocks[0].lstrip().startswith("@media")
    assert "prefers-color-scheme: dark" in blocks[0]
    assert re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*\s*\}", "", blocks[0]).strip() == ""
    assert re.search(r'<table[^>]*class="card"[^>]*style="[^"]*max-width:600px', html)


def test_meta_charset_comes_first_within_1024_bytes_before_any_style(
    renderer: Renderer,
) -> None:
    html = render(renderer, realistic_digest()).html
    head = html[html.index("<head>") + len("<head>") :]
    assert head.lstrip().startswith('<meta charset="utf-8">')
    assert html.index('<meta charset="utf-8">') + len('<meta charset="utf-8">') <= 1024
    assert html.index('<meta charset="utf-8">') < html.index("<style")


def test_every_meta_name_has_content(renderer: Renderer) -> None:
    html = render(renderer, realistic_digest()).html
    metas = re.findall(r"<meta\b[^>]*\bname=[^>]*>", html)
    assert all(re.search(r'\bcontent="', m) for m in metas)
    assert (
        '<meta name="format-detection" content="telephone=no, date=no, address=no, email=no">'
        in html
    )


def test_sent_html_holds_the_card_in_a_600px_table_for_outlook(renderer: Renderer) -> None:
    d = realistic_digest()
    part = roundtrip(compose(d, render(renderer, d))).get_body(("html",))
    assert part is not None
    html = part.get_content()
    opening = re.search(
        r'<!--\[if mso\]><table role="presentation" width="600"[^>]*><tr><td><!\[endif\]-->', html
    )
    closing = html.rfind("<!--[if mso]></td></tr></table><![endif]-->")
    assert opening is not None
    card = html.index('class="card"')
    assert opening.end() < card < closing
    assert html.rfind("</table>", 0, closing) > html.rfind("Unsubscribe", 0, closing)


@pytest.mark.parametrize("web", [True, False], ids=["one-click", "mailto"])
def test_unsubscribe_link_is_under_the_header_and_in_the_footer(
    renderer: Renderer, web: bool
) -> None:
    link = UNSUBSCRIBE if web else MAILTO
    out = renderer.render(
        realistic_digest(),
        unsubscribe_url=UNSUBSCRIBE if web else None,
        unsubscribe_mailto=MAILTO,
        manage_hint=MANAGE,
    )
    hrefs = Page(out.html).hrefs
    assert hrefs[0] == link
    assert hrefs[-1] == link
    assert out.html.index(f'href="{link}"') < out.html.index('class="summary"')


def long_paper(n: int) -> Paper:
    words = " ".join(f"word{n}x{i}" for i in range(12))
    return Paper(
        title=f"Paper {n}: a long title about diffusion models and {words}",
        abstract=" ".join(
            f"Sentence {i} of paper {n} studies diffusion models at length, {words}."
            for i in range(20)
        ),
        authors=9,
        organization="Some Research Lab",
        published=date(2024, 6, 4),
        upvotes=n,
    )


def test_html_stays_under_100_kb_at_200_papers_with_the_rest_counted(renderer: Renderer) -> None:
    subs = ("Diffusion", "Theory")
    matched = [
        Matched(long_paper(n), (subs[n % 2],), ("diffusion", "models"), (1.0,)) for n in range(230)
    ]
    d = build_digest(Recipient("ada@example.org", "Ada", subs), matched, max_papers=200)
    assert d.count == 200
    assert d.more == 30
    out = render(renderer, d)
    assert len(out.html.encode()) < HTML_MAX_BYTES
    html_titles = re.findall(r'class="title-link"[^>]*>(Paper \d+):', out.html)
    text_titles = re.findall(r"^(Paper \d+):", out.text, flags=re.MULTILINE)
    assert 20 < len(html_titles) < 200
    assert html_titles == text_titles
    rest = 230 - len(html_titles)
    assert f"…and {rest} more papers matched your subscriptions." in Page(out.html).plain
    assert f"…and {rest} more papers matched your subscriptions." in out.text
    assert "Unsubscribe" in Page(out.html).plain[-400:]


def test_papers_left_out_for_size_are_the_last_of_each_section() -> None:
    d = digest_of(
        *(entry(paper(f"A{i}"), "A") for i in range(5)),
        *(entry(paper(f"B{i}"), "B") for i in range(2)),
        more=1,
    )
    short = shortened(d, 5)
    assert [[e.paper.title for e in s.entries] for s in short.sections] == [
        ["A0", "A1", "A2"],
        ["B0", "B1"],
    ]
    assert short.more == 3


def test_without_web_both_parts_offer_a_mailto_unsubscribe(renderer: Renderer) -> None:
    d = realistic_digest()
    _, data, _ = build_message(
        renderer, d, SINCE, sender="digest@example.org", sender_address="digest@example.org"
    )
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    html, text = parsed.get_body(("html",)), parsed.get_body(("plain",))
    assert html is not None
    assert text is not None
    assert MAILTO in Page(html.get_content()).hrefs
    assert MAILTO in text.get_content().splitlines()
    assert MAILTO.startswith("mailto:digest@example.org?subject=unsubscribe")


def test_unsubscribe_mailto_must_be_a_mailto_url(renderer: Renderer) -> None:
    with pytest.raises(ValueError, match="mailto"):
        renderer.render(
            realistic_digest(),
            unsubscribe_url=None,
            unsubscribe_mailto='mailto:a@example.org" onclick="x',
            manage_hint=MANAGE,
        )


def test_hidden_preheader_has_no_text_colour_matching_a_background(renderer: Renderer) -> None:
    html = render(renderer, realistic_digest()).html
    style = re.search(r'<div class="preheader"[^>]*style="([^"]*)"', html)
    assert style is not None
    declarations = dict(d.split(":", 1) for d in style.group(1).split(";") if d)
    assert declarations["display"] == "none"
    backgrounds = set(re.findall(r"background(?:-color)?:\s*(#[0-9a-fA-F]+)", html))
    assert backgrounds
    assert declarations.get("color") not in backgrounds | {"transparent"}


def test_html_of_fifty_long_papers_is_under_100_kb(renderer: Renderer) -> None:
    longest = sorted(seed_papers(), key=lambda p: len(p.abstract), reverse=True)[:50]
    subs = ("Diffusion models", "Theory", "LLM agents")
    entries = [
        entry(p, subs[i % 3], ["model", "models", "learning", "the"], subs[:1])
        for i, p in enumerate(longest)
    ]
    html = render(renderer, digest_of(*entries, subs=subs, more=12)).html
    assert len(html.encode()) < 100_000


# --- templates ------------------------------------------------------------


def test_default_templates_dir_holds_the_templates() -> None:
    folder = default_templates_dir()
    assert (folder / "digest.html").is_file()
    assert (folder / "digest.txt").is_file()


def test_missing_templates_dir_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="nowhere"):
        Renderer(tmp_path / "nowhere")


def test_missing_template_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "digest.html").write_text("<p>{{ summary }}</p>", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"digest\.txt"):
        Renderer(tmp_path)


def test_broken_template_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "digest.html").write_text("<p>\n{% for x in %}</p>", encoding="utf-8")
    (tmp_path / "digest.txt").write_text("{{ summary }}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"digest\.html, line 2") as info:
        Renderer(tmp_path)
    assert info.value.hint


def test_template_using_unknown_value_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "digest.html").write_text("<p>{{ nonsense }}</p>", encoding="utf-8")
    (tmp_path / "digest.txt").write_text("{{ summary }}", encoding="utf-8")
    with pytest.raises(TemplateError, match="nonsense"):
        render(Renderer(tmp_path), realistic_digest())


# --- the message ----------------------------------------------------------


def compose(
    digest: Digest,
    rendered: Rendered,
    *,
    one_click: bool = True,
    sender: str = "Paper Digest <digest@example.org>",
) -> email.message.EmailMessage:
    return compose_message(
        digest,
        rendered,
        sender=sender,
        message_id="<20241116.abc@example.org>",
        date=SINCE,
        list_unsubscribe=[UNSUBSCRIBE, "mailto:unsubscribe@example.org?subject=unsubscribe"],
        one_click=one_click,
    )


def roundtrip(msg: email.message.EmailMessage) -> email.message.EmailMessage:
    data = msg.as_bytes(policy=email.policy.SMTP)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_message_is_multipart_alternative_text_then_html(renderer: Renderer) -> None:
    d = realistic_digest()
    parsed = roundtrip(compose(d, render(renderer, d)))
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert parsed["MIME-Version"] == "1.0"


def test_message_headers_address_the_recipient(renderer: Renderer) -> None:
    d = realistic_digest()
    rendered = render(renderer, d)
    parsed = roundtrip(compose(d, rendered))
    assert parsed["To"] == "Ada Lovelace <ada@example.org>"
    assert parsed["From"] == "Paper Digest <digest@example.org>"
    assert parsed["Subject"] == rendered.subject
    assert parsed["Message-ID"] == "<20241116.abc@example.org>"
    assert parsed["Date"].datetime == SINCE


def test_list_unsubscribe_headers_with_one_click(renderer: Renderer) -> None:
    d = realistic_digest()
    parsed = roundtrip(compose(d, render(renderer, d)))
    assert parsed["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@example.org?subject=unsubscribe>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_list_unsubscribe_post_only_with_one_click(renderer: Renderer) -> None:
    d = realistic_digest()
    parsed = roundtrip(compose(d, render(renderer, d), one_click=False))
    assert parsed["List-Unsubscribe"]
    assert "List-Unsubscribe-Post" not in parsed


def test_long_list_unsubscribe_is_folded_between_urls_not_encoded(renderer: Renderer) -> None:
    d = realistic_digest()
    long = "https://digest.example.org/unsubscribe?token=" + "a1B2" * 60
    data = compose_bytes(
        d,
        render(renderer, d),
        sender="digest@example.org",
        message_id="x@example.org",
        date=SINCE,
        list_unsubscribe=[long, "mailto:unsubscribe@example.org"],
        one_click=True,
    )
    assert f"List-Unsubscribe: <{long}>,\n <mailto:unsubscribe@example.org>\n".encode() in data
    assert b"=?utf-8?" not in data.split(b"List-Unsubscribe:")[1].split(b"\nList")[0]


def test_unusable_list_unsubscribe_entries_are_dropped(renderer: Renderer) -> None:
    d = realistic_digest()
    msg = compose_message(
        d,
        render(renderer, d),
        sender="digest@example.org",
        message_id="x@example.org",
        date=SINCE,
        list_unsubscribe=["javascript:alert(1)", "https://x.example/u>, <https://evil.example"],
        one_click=True,
    )
    assert "List-Unsubscribe" not in msg
    assert "List-Unsubscribe-Post" not in msg


def test_unsubscribe_url_must_be_http(renderer: Renderer) -> None:
    with pytest.raises(ValueError, match="unsubscribe URL"):
        render(renderer, realistic_digest(), unsubscribe="javascript:alert(1)")


def test_header_injection_through_name_and_title_is_stripped(renderer: Renderer) -> None:
    evil = "Ada\r\nBcc: victim@example.com\r\n\r\nbody"
    p = paper("Diffusion\r\nX-Injected: yes")
    d = digest_of(
        entry(p, "Diff\nusion\x00\x1b[31m\u2028X-Evil: 1", ["diffusion"]),
        recipient=Recipient("ada@example.org", evil, ("Diffusion",)),
    )
    rendered = render(renderer, d)
    parsed = roundtrip(
        compose(d, rendered, sender="Digest\r\nX-Sender-Evil: 1 <digest@example.org>")
    )
    names = {k.lower() for k in parsed}
    assert names == {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
        "list-help",
        "auto-submitted",
        "precedence",
        "feedback-id",
        "mime-version",
        "content-type",
    }
    assert parsed["To"].addresses[0].addr_spec == "ada@example.org"
    assert "\n" not in str(parsed["Subject"])
    assert not any(ord(c) < 32 for c in str(parsed["Subject"]))


class Events(HTMLParser):
    """Everything an HTML parser reports, text unnormalised."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[object, ...]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        if self.events and self.events[-1][0] == "data":
            data = str(self.events.pop()[1]) + data
        self.events.append(("data", data))


def test_html_is_sent_as_seven_bit_lines_that_parse_the_same(renderer: Renderer) -> None:
    long_line = "".join(
        f'<p class="abstract" dir="auto" style="margin:0 0 8px">Ünïcode · wörds … {n} '
        f'<mark class="hl" style="background:#fde68a">mark</mark> &amp; &lt;b&gt;\u00a0…</p>'
        for n in range(40)
    )
    html = f"<html><head><style>p {{ color: red; }}</style></head><body>{long_line}</body></html>"
    safe = seven_bit_html(html)
    assert safe.isascii()
    assert max(len(line) for line in safe.split("\n")) <= 900
    assert Events(safe).events == Events(html).events
    d = realistic_digest()
    data = compose(d, render(renderer, d)).get_body(("html",))
    assert data is not None
    assert data["Content-Transfer-Encoding"] == "7bit"


def test_html_with_non_ascii_style_text_is_left_for_quoted_printable() -> None:
    html = '<style>p::after { content: "…"; }</style><p>é</p>'
    assert seven_bit_html(html) == html


def _email_package_reading(text: str) -> str:
    """What a reader gets from the email package's own encoding of ``text``."""
    msg = email.message.EmailMessage()
    msg.set_content(text, charset="utf-8")
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return str(parsed.get_content())


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])
        | st.sampled_from([" ", "\t", "\n", "\r", "=", ".", "-", "\u00a0", "F"]),
        max_size=400,
    ),
    st.text(max_size=200),
)
def test_message_parts_read_back_as_the_email_package_would_give_them(text: str, html: str) -> None:
    """The hand-written quoted-printable body is valid MIME that reads back to
    what the email package's own (slow) encoder gives, with short lines."""
    d = Digest(Recipient("ada@example.org", "Ada", ("Diffusion",)), ())
    data = compose_bytes(
        d,
        Rendered(subject="s", html=html, text=text, preheader=""),
        sender="digest@example.org",
        message_id="x@example.org",
        date=SINCE,
        list_unsubscribe=[UNSUBSCRIBE],
        one_click=True,
    )
    assert all(len(line) <= 998 for line in data.split(b"\n"))
    data.decode("ascii")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    plain, rich = parsed.iter_parts()
    assert isinstance(plain, email.message.EmailMessage)
    assert isinstance(rich, email.message.EmailMessage)
    assert plain.get_content() == _email_package_reading(text)
    assert rich.get_content() == _email_package_reading(html)
    assert [p.get_content_type() for p in (plain, rich)] == ["text/plain", "text/html"]


# --- golden ---------------------------------------------------------------


def test_text_part_matches_golden_file(renderer: Renderer) -> None:
    text = render(renderer, realistic_digest(more=2)).text
    if os.environ.get("MAILER_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), (
        "text part changed; if intended, rerun with MAILER_UPDATE_GOLDEN=1 and review the diff"
    )
