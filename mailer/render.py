"""From a Digest to its rendered parts: Jinja2 templates for the HTML and plain text.

Paper titles and abstracts come from scraped dumps and are data, never markup:
highlighting splits them at the matcher's spans and escapes every piece. The
message built from the parts (headers, MIME, encoding) is mailer.mime's.
"""

from __future__ import annotations

import bisect
import re
import sys
import traceback
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import css_inline
import jinja2
import jinja2.nodes
import jinja2.runtime
from markupsafe import Markup

from mailer.digests import SUGGESTED, Digest, Entry, Recipient, Section, Why
from mailer.errors import ConfigError, TemplateError
from mailer.mime import Rendered, header_text, is_web_url
from mailer.papers import Paper
from mailer.sandbox import RenderBudgetError, Sandbox, budget
from mailer.textfmt import (
    excerpt,
    format_date,
    format_since,
    highlight_html,
    highlight_text,
    join_names,
    plural,
    seven_bit_html,
    wrap,
)

DEFAULT_PAPER_URL = "https://arxiv.org/search/?query={title}&searchtype=title"

HTML_TEMPLATE = "digest.html"
TEXT_TEMPLATE = "digest.txt"
TOP_TERMS = 3  # matched terms named under each paper, most relevant first
TERMS_LABELS = {
    Why.MATCHED: "Matched",
    Why.SIMILAR: "Like your examples in",
    Why.SUGGESTED: "Words that weighed most",
}
SUGGESTED_NAME = "Suggested for you"
SUGGESTED_NOTE = (
    "Papers none of your subscriptions matched, but much like those you marked “more like this”."
)
# Gmail clips an HTML part past about 102 KB behind "[Message clipped]",
# hiding the rest of the list and the footer's unsubscribe link; a digest's
# HTML is kept under this many bytes by showing fewer papers.
HTML_MAX_BYTES = 100_000


# Invisible filler after the preheader, so clients don't pad the preview with
# the first lines of the body.
PREHEADER_PAD = "\u034f\u200c\u00a0" * 40
# The same filler for the HTML, as character references over a few lines: a
# line break among them is one more invisible space in a hidden element, and
# it keeps the HTML's lines short enough to send unencoded (seven_bit_html).
_PREHEADER_PAD_HTML = Markup("\n").join(
    Markup("").join(Markup("&#{};").format(ord(c)) for c in PREHEADER_PAD[i : i + 30])
    for i in range(0, len(PREHEADER_PAD), 30)
)

_JINJA = re.compile(r"\{%.*?%\}|\{#.*?#\}|\{\{.*?\}\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"(?:<!--)?@@J(\d+)@@(?:-->)?")
_SAMPLE_TITLE = "Attention Is All You Need & more?"
# What may stay as it is in a paper URL; the rest is percent-encoded.
_URL_SAFE = "%:/?#[]@!$&()*+,;=~-._"
_URL_BREAKERS = frozenset("\"'<>\\` ")
# Control, format (zero-width, bidi), line and paragraph separators, spaces,
# private-use, surrogate and unassigned characters.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cs", "Cn"})
# The inliner writes the at-rules' <style> first in <head>, ahead of <meta
# charset>, which must come within a document's first 1,024 bytes.
_HEAD_STYLES = re.compile(
    r"(<head\b[^>]*>)((?:\s*<style\b[^>]*>.*?</style>)+)(.*?)(</head>)",
    re.DOTALL | re.IGNORECASE,
)


# Per-renderer memory of entry views and wrapped paragraphs: readers who follow
# the same words get the same entries (highlighting, escaping and wrapping
# them is most of rendering); in a pass of varied subscriptions they recur
# rarely, so the memory is kept small.
ENTRY_CACHE = 2048
WRAP_CACHE = 4096


def default_templates_dir() -> Path:
    """Templates ship inside the wheel; a source checkout keeps them at the top."""
    packaged = Path(__file__).parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def check_paper_url(template: str) -> str:
    """Fail at config time rather than ship digests with dead or unsafe links:
    the URL goes into an HTML attribute and a text line as it is, so nothing
    in it may end the attribute or the line, or hide in the text."""
    if "{title}" not in template:
        raise ValueError("must contain {title}, where the URL-encoded title goes")
    for c in template:
        if c in _URL_BREAKERS or unicodedata.category(c) in _INVISIBLE:
            raise ValueError(
                f"must not contain {c!r} (U+{ord(c):04X}): quotes, angle brackets, "
                "backslashes, spaces and control or format characters break the link"
            )
    url = _fill(template, _SAMPLE_TITLE)
    if not is_web_url(url) or not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"must give an http:// or https:// URL with a host, but gives {url!r}")
    return template


@lru_cache(maxsize=8192)  # a paper's link is made for every digest that shows it
def _fill(template: str, title: str) -> str:
    # str.replace, not str.format: a template from config must not reach
    # attributes through format fields, and other braces stay literal. The
    # rest of the template is percent-encoded too (non-ASCII, stray braces).
    return quote(title, safe="").join(
        quote(piece, safe=_URL_SAFE) for piece in template.split("{title}")
    )


# --- view model -----------------------------------------------------------

# A stored paper's "more like this" and "not for me" links, by its id.
Feedback = Callable[[int], tuple[str, str]]


@dataclass(frozen=True, slots=True)
class EntryView:
    title: str
    title_html: Markup
    title_text: str
    url: str
    abstract_html: Markup
    abstract_text: str
    meta: str
    terms: tuple[str, ...]
    also: tuple[str, ...]
    # What ``terms`` are: "Matched" (a query's terms), or the words that
    # weighed most in a paper's likeness to a subscription's examples.
    terms_label: str = "Matched"
    # The reader's feedback links for this paper (HTML part), when [web] is set.
    more_url: str | None = None
    less_url: str | None = None


@dataclass(frozen=True, slots=True)
class SectionView:
    name: str
    entries: tuple[EntryView, ...]
    # "Suggested for you": papers no subscription matched, from the reader's model.
    suggested: bool = False
    note: str = ""


def term_label(term: str) -> str:
    """A matched term as a reader would recognise it from the query: phrases
    quoted, the ``=`` of an unstemmed term dropped, an organisation named."""
    org = term.startswith("org:")
    body = term[4:] if org else term
    body = body.removeprefix("=")
    if " " in body:
        body = f'"{body}"'
    return f"organisation {body}" if org else body


def _meta(entry: Entry) -> str:
    paper = entry.paper
    parts: list[str] = []
    if paper.published is not None:
        parts.append(format_date(paper.published))
    if paper.organization:
        parts.append(paper.organization)
    if paper.authors:
        parts.append(plural(paper.authors, "author"))
    if paper.upvotes:
        parts.append(plural(paper.upvotes, "upvote"))
    return " · ".join(parts)


# --- the renderer ---------------------------------------------------------


_VIEWS = frozenset({EntryView, SectionView, Recipient})


class _InliningLoader(jinja2.FileSystemLoader):
    """Inlines CSS into HTML template sources as they are loaded, so the work
    is done once per template instead of once per message."""

    def __init__(self, searchpath: Path) -> None:
        super().__init__(searchpath)
        self._inliner = css_inline.CSSInliner(keep_at_rules=True, minify_css=True)
        # Per inlined file: (line in the inlined source, line in the file,
        # lines the Jinja tag spans), one per tag, so errors name file lines.
        self._lines: dict[str, list[tuple[int, int, int]]] = {}

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".html"):
            source = self._inline(source, filename)
        return source, filename, uptodate

    def file_line(self, filename: str, line: int) -> int:
        """The line of the file that ``line`` of its inlined source came from:
        errors happen inside Jinja tags, which inlining moves but keeps whole."""
        tags = self._lines.get(filename)
        if not tags:
            return line
        at = bisect.bisect_right(tags, (line, sys.maxsize, 0)) - 1
        if at < 0:
            return line
        inlined, original, span = tags[at]
        return original + min(line - inlined, span)

    def _inline(self, source: str, filename: str) -> str:
        # Jinja syntax is hidden behind placeholders so the HTML parser keeps
        # it where it is: statements become comments, which a table keeps in
        # place, and expressions become plain tokens.
        saved: list[tuple[str, int]] = []

        def hide(m: re.Match[str]) -> str:
            saved.append((m.group(), source.count("\n", 0, m.start()) + 1))
            token = f"@@J{len(saved) - 1}@@"
            return token if m.group().startswith("{{") else f"<!--{token}-->"

        inlined: str = self._inliner.inline(_JINJA.sub(hide, source))
        inlined = _HEAD_STYLES.sub(r"\1\3\2\4", inlined, count=1)
        out: list[str] = []
        tags: list[tuple[int, int, int]] = []
        line, pos = 1, 0
        for m in _PLACEHOLDER.finditer(inlined):
            before = inlined[pos : m.start()]
            tag, original = saved[int(m.group(1))]
            line += before.count("\n")
            tags.append((line, original, tag.count("\n")))
            out += [before, tag]
            line += tag.count("\n")
            pos = m.end()
        out.append(inlined[pos:])
        self._lines[filename] = sorted(tags)
        return "".join(out)


def shortened(digest: Digest, keep: int) -> Digest:
    """``digest`` showing only ``keep`` papers, the rest added to ``more``:
    each subscription's first papers are kept before any one's later ones,
    so a long section does not push a short one out."""
    kept = [0] * len(digest.sections)
    left = keep
    for rank in range(max((len(s.entries) for s in digest.sections), default=0)):
        for i, section in enumerate(digest.sections):
            if left and rank < len(section.entries):
                kept[i] += 1
                left -= 1
    sections = tuple(
        Section(s.subscription, s.entries[:k])
        for s, k in zip(digest.sections, kept, strict=True)
        if k
    )
    shown = sum(kept)
    return replace(digest, sections=sections, more=digest.more + digest.count - shown)


def _is_mailto(url: str) -> bool:
    """A mailto: link safe to write into an attribute and a line of text."""
    return (
        url.startswith("mailto:")
        and "@" in url
        and not any(c in _URL_BREAKERS or unicodedata.category(c) in _INVISIBLE for c in url)
    )


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """The template's line in the innermost of its frames in the traceback
    (Jinja maps its frames to template lines)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if filename is not None and frame.filename == filename:
            line = frame.lineno
    return line


_SAMPLE_MANAGE = "Reply to this message to change your subscriptions."
_SAMPLE_MANAGE_URL = "https://digest.example.org/manage/sample"


def _sample_feedback(paper_id: int) -> tuple[str, str]:
    base = f"https://digest.example.org/feedback/sample{paper_id}"
    return f"{base}/more", f"{base}/less"


_SAMPLE_MAILTO = "mailto:digest@example.org?subject=unsubscribe%20ada%40example.org"


def sample_digests() -> list[tuple[Digest, str | None]]:
    """Digests every template must render: two subscriptions with highlighted
    papers, more than shown, and an empty one without unsubscribe link."""
    attention = Paper(
        title="Attention Is All You Need & more? <b>",
        abstract=(
            "The dominant sequence transduction models are based on recurrent networks. "
            "We propose the Transformer, based solely on attention mechanisms. "
            "Experiments on two machine translation tasks show it is superior in quality. "
            + "It generalizes well. "
            * 30
        ),
        authors=8,
        organization="Google",
        published=date(2017, 6, 12),
        upvotes=120,
    )
    agents = Paper(title="Language Agents: a survey — ünïcode", abstract="Agents act.")
    recipient = Recipient("ada@example.org", "Ada", ("Transformers", "Agents"))
    full = Digest(
        recipient,
        (
            Section(
                "Transformers",
                (
                    Entry(
                        attention,
                        "Transformers",
                        ("Agents",),
                        ("attention", '"sequence"'),
                        ((0, 9),),
                        ((60, 70),),
                        paper_id=1,
                    ),
                ),
            ),
            Section(
                "Agents",
                (Entry(agents, "Agents", (), ("agent",), ((9, 15),), (), Why.SIMILAR, 2),),
            ),
            Section(
                SUGGESTED,
                (Entry(agents, SUGGESTED, (), ("agent",), ((9, 15),), (), Why.SUGGESTED, 3),),
            ),
        ),
        since=datetime(2024, 11, 16, 7, 0, tzinfo=UTC),
        more=3,
    )
    empty = Digest(recipient, (), test=True)
    return [(full, "https://digest.example.org/unsubscribe?token=sample"), (empty, None)]


class Renderer:
    """Loads and checks the templates once; renders any number of digests."""

    def __init__(
        self,
        templates_dir: Path | None = None,
        *,
        paper_url: str = DEFAULT_PAPER_URL,
        product_name: str = "Paper Digest",
    ) -> None:
        self.templates_dir = templates_dir or default_templates_dir()
        try:
            self.paper_url = check_paper_url(paper_url)
        except ValueError as exc:
            raise ConfigError(
                f"[render] paper_url {paper_url!r}: {exc}", hint="see config.example.toml"
            ) from None
        self.product_name = header_text(product_name)
        if not self.templates_dir.is_dir():
            raise TemplateError(
                f"templates directory {self.templates_dir} does not exist",
                hint="point templates_dir at a folder holding digest.html and digest.txt",
            )
        self._loader = _InliningLoader(self.templates_dir)
        env = Sandbox(
            plain=_VIEWS,
            loader=self._loader,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        env.filters["wrap"] = lru_cache(maxsize=WRAP_CACHE)(wrap)
        env.filters["plural"] = plural
        env.filters["join_names"] = join_names
        self._entry = lru_cache(maxsize=ENTRY_CACHE)(self._entry_view)
        self._html = self._load(env, HTML_TEMPLATE)
        self._text = self._load(env, TEXT_TEMPLATE)
        self._check()

    def _check(self) -> None:
        """Render the sample digests once, so templates (and paper_url) that
        fail, loop or refer to what is not there are refused at load, not at
        the first pass."""
        for digest, unsubscribe in sample_digests():
            self.render(
                digest,
                unsubscribe_url=unsubscribe,
                unsubscribe_mailto=_SAMPLE_MAILTO,
                manage_hint=_SAMPLE_MANAGE,
                manage_url=_SAMPLE_MANAGE_URL if unsubscribe else None,
                feedback=_sample_feedback if unsubscribe else None,
            )

    def _load(self, env: jinja2.Environment, name: str) -> jinja2.Template:
        path = self.templates_dir / name
        try:
            return env.get_template(name)
        except jinja2.TemplateNotFound:
            raise TemplateError(
                f"template {path} is missing",
                hint="restore it from the mailer package or point templates_dir elsewhere",
            ) from None
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"template {self._where(e.filename or str(path), e.lineno)}: {e.message}",
                hint="fix the Jinja2 syntax there",
            ) from None

    def render(
        self,
        digest: Digest,
        *,
        unsubscribe_url: str | None,
        manage_hint: str,
        unsubscribe_mailto: str | None = None,
        manage_url: str | None = None,
        feedback: Feedback | None = None,
    ) -> Rendered:
        """Both parts of ``digest``. When its HTML would pass HTML_MAX_BYTES
        (where Gmail clips it), fewer papers are shown, in both parts, and the
        rest are counted with the papers ``max_papers`` left out. ``feedback``
        gives a stored paper's "more like this" and "not for me" links."""
        if unsubscribe_url is not None and not is_web_url(unsubscribe_url):
            raise ValueError(f"unsubscribe URL {unsubscribe_url!r} is not an http(s) URL")
        if unsubscribe_mailto is not None and not _is_mailto(unsubscribe_mailto):
            raise ValueError(f"unsubscribe address {unsubscribe_mailto!r} is not a mailto: URL")
        if manage_url is not None and not is_web_url(manage_url):
            raise ValueError(f"manage URL {manage_url!r} is not an http(s) URL")
        links = {
            "unsubscribe_url": unsubscribe_url,
            "unsubscribe_mailto": unsubscribe_mailto,
            "manage_hint": " ".join(manage_hint.split()),
            # The reader's own page (mailer.selfservice), when the pages are on.
            "manage_url": manage_url,
        }
        context = self._context(digest, links, feedback)
        html = self._render_html(context)
        if len(html.encode()) > HTML_MAX_BYTES and digest.count > 1:
            digest, html = self._fit(digest, links, len(html.encode()), feedback)
            context = self._context(digest, links, feedback)
        text = self._run(self._text, context)
        return Rendered(
            subject=str(context["subject"]),
            html=html,
            text=text,
            preheader=str(context["preheader"]),
        )

    def _fit(
        self,
        digest: Digest,
        links: Mapping[str, object],
        size: int,
        feedback: Feedback | None,
    ) -> tuple[Digest, str]:
        """The most papers whose HTML fits, with its HTML: a first guess in
        proportion to the size, then halving. One paper is shown whatever its
        size (an excerpt is short)."""
        fits, too_big = 1, digest.count
        found: dict[int, tuple[Digest, str]] = {}
        guess = digest.count * HTML_MAX_BYTES // size
        while too_big - fits > 1:
            n = guess if fits < guess < too_big else (fits + too_big) // 2
            guess = 0
            shorter = shortened(digest, n)
            html = self._render_html(self._context(shorter, links, feedback))
            found[n] = (shorter, html)
            if len(html.encode()) <= HTML_MAX_BYTES:
                fits = n
            else:
                too_big = n
        if fits not in found:
            shorter = shortened(digest, fits)
            found[fits] = (shorter, self._render_html(self._context(shorter, links, feedback)))
        return found[fits]

    def _render_html(self, context: Mapping[str, object]) -> str:
        return seven_bit_html(
            self._run(self._html, {**context, "preheader_pad": _PREHEADER_PAD_HTML})
        )

    def _context(
        self, digest: Digest, links: Mapping[str, object], feedback: Feedback | None = None
    ) -> dict[str, object]:
        """What the templates are given for ``digest``."""
        sections = tuple(self._section(s, feedback) for s in digest.sections if s.entries)
        entries = [e for s in sections if not s.suggested for e in s.entries]
        suggested = sum(len(s.entries) for s in sections if s.suggested)
        matched = [s.name for s in sections if not s.suggested]
        since = format_since(digest.since) if digest.since else None
        if entries:
            total = len(entries) + digest.more
            summary = f"{plural(total, 'paper')} matched {join_names(matched)}"
            if since:
                summary += f" since {since}"
            summary += f"; here are the top {len(entries)}." if digest.more else "."
            if suggested:
                summary += f" {plural(suggested, 'paper')} suggested for you."
            preheader = " · ".join(e.title for e in entries[:2])
            if len(entries) > 2:
                preheader += f" · and {len(entries) - 2 + digest.more} more"
        else:
            summary = "No new papers matched your subscriptions"
            summary += f" since {since}." if since else "."
            preheader = summary
        return {
            "product": self.product_name,
            "subject": self._subject(digest, matched, len(entries)),
            "preheader": preheader,
            "preheader_pad": PREHEADER_PAD,
            "summary": summary,
            "since": since,
            "sections": sections,
            "count": len(entries),
            "more": digest.more,
            "test": digest.test,
            "recipient": digest.recipient,
            "subscriptions": digest.recipient.subscriptions,
            **links,
        }

    def _run(self, template: jinja2.Template, context: Mapping[str, object]) -> str:
        """One template rendered within the budget; any failure is a
        TemplateError naming the file and line where it happened."""
        try:
            with budget():
                return template.render(context)
        except Exception as e:  # a template can raise anything
            where = self._where(template.filename, _template_line(e, template.filename))
            if isinstance(e, RenderBudgetError):
                what = f"stopped: {e}"
                hint = (
                    "look for a loop or recursion that does not end, or an operation on huge values"
                )
            elif isinstance(e, RecursionError):
                what, hint = "recursion too deep", "look for a macro or loop calling itself"
            elif isinstance(e, jinja2.TemplateError):
                what = f"failed to render: {e}"
                hint = "a template refers to a value the renderer does not provide"
            else:
                what, hint = f"failed to render: {type(e).__name__}: {e}", "fix the template there"
            raise TemplateError(f"template {where}: {what}", hint=hint) from e

    def _where(self, filename: str | None, line: int | None) -> str:
        """'path, line N' of the template file (not its inlined source)."""
        if filename is None or line is None:
            return str(filename)
        return f"{filename}, line {self._loader.file_line(filename, line)}"

    def _section(self, section: Section, feedback: Feedback | None) -> SectionView:
        entries = tuple(self._with_links(e, feedback) for e in section.entries)
        if section.subscription == SUGGESTED:
            return SectionView(SUGGESTED_NAME, entries, suggested=True, note=SUGGESTED_NOTE)
        return SectionView(section.subscription, entries)

    def _subject(self, digest: Digest, matched: Sequence[str], n: int) -> str:
        if n == 0:
            subject = f"{self.product_name}: no new papers"
        else:
            names = ", ".join(matched[:3]) + (" …" if len(matched) > 3 else "")
            subject = f"{self.product_name}: {plural(n, 'new paper')} — {names}"
        return header_text(("[test] " if digest.test else "") + subject)

    def _with_links(self, entry: Entry, feedback: Feedback | None) -> EntryView:
        """The entry's view (shared by every digest that shows the paper),
        with this reader's feedback links when there are some."""
        view = self._entry(entry)
        if feedback is None or entry.paper_id is None:
            return view
        more, less = feedback(entry.paper_id)
        if not (is_web_url(more) and is_web_url(less)):
            raise ValueError(f"feedback link {more!r} is not an http(s) URL")
        return replace(view, more_url=more, less_url=less)

    def _entry_view(self, entry: Entry) -> EntryView:
        paper = entry.paper
        title = " ".join(paper.title.split())
        abstract, abstract_marks = excerpt(
            paper.abstract, entry.abstract_marks, keep_opening=bool(entry.title_marks)
        )
        return EntryView(
            title=title,
            title_html=highlight_html(paper.title, entry.title_marks),
            title_text=highlight_text(paper.title, entry.title_marks),
            url=_fill(self.paper_url, title),
            abstract_html=highlight_html(abstract, abstract_marks),
            abstract_text=highlight_text(abstract, abstract_marks),
            meta=_meta(entry),
            terms=tuple(term_label(t) for t in entry.terms[:TOP_TERMS]),
            also=entry.also,
            terms_label=TERMS_LABELS[entry.why],
        )
