"""From a Digest to its rendered parts: Jinja2 templates for the HTML and plain text.

Paper titles and abstracts come from scraped dumps and are data, never markup:
highlighting splits them at the matcher's spans and escapes every piece. The
message built from the parts (headers, MIME, encoding) is mailer.mime's.
"""

from __future__ import annotations

import bisect
import re
import sys
import textwrap
import time
import traceback
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import css_inline
import jinja2
import jinja2.nodes
import jinja2.runtime
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape

from mailer.digests import Digest, Entry, Recipient, Section, Span
from mailer.errors import ConfigError, TemplateError
from mailer.mime import Rendered, header_text, is_web_url
from mailer.papers import Paper

DEFAULT_PAPER_URL = "https://arxiv.org/search/?query={title}&searchtype=title"

HTML_TEMPLATE = "digest.html"
TEXT_TEMPLATE = "digest.txt"
TEXT_WIDTH = 72
EXCERPT_CHARS = 350
EXCERPT_SENTENCES = 3
TOP_TERMS = 3  # matched terms named under each paper, most relevant first
# Gmail clips an HTML part past about 102 KB behind "[Message clipped]",
# hiding the rest of the list and the footer's unsubscribe link; a digest's
# HTML is kept under this many bytes by showing fewer papers.
HTML_MAX_BYTES = 100_000

# Inline because marks are made per message, after the template was inlined;
# the class lets the dark-mode media query override the colours.
MARK_STYLE = "background:#fde68a;color:#1f2328"
# Made once: Markup.format per mark was a sixth of rendering an uncached entry.
_MARK_OPEN = Markup('<mark class="hl" style="{}">').format(MARK_STYLE)
_MARK_CLOSE = Markup("</mark>")

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

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_JINJA = re.compile(r"\{%.*?%\}|\{#.*?#\}|\{\{.*?\}\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"(?:<!--)?@@J(\d+)@@(?:-->)?")
# A sentence ends at . ! or ? (maybe closed by a quote or bracket) before
# whitespace and a capital, digit or opening bracket.
_SENTENCE_END = re.compile(r"""[.!?]['"\u201d\u2019)\]]*(?=\s+['"\u201c\u2018(\[]?[A-Z0-9])""")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "al", "etc", "vs", "fig", "eq", "cf", "resp", "approx"})
# Only ASCII whitespace is collapsed and wrapped at, as textwrap does: a
# no-break space keeps its meaning.
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_SAMPLE_TITLE = "Attention Is All You Need & more?"
# What may stay as it is in a paper URL; the rest is percent-encoded.
_URL_SAFE = "%:/?#[]@!$&()*+,;=~-._"
_URL_BREAKERS = frozenset("\"'<>\\` ")
# Control, format (zero-width, bidi), line and paragraph separators, spaces,
# private-use, surrogate and unassigned characters.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cs", "Cn"})
# HTML lines are kept this short, well inside SMTP's 998 octets.
HTML_LINE = 900
_TAG_NAME_SPACE = re.compile(r"<[A-Za-z][A-Za-z0-9-]* ")
_RAW_TEXT = re.compile(r"<(style|script)\b.*?</\1", re.DOTALL | re.IGNORECASE)
# The inliner writes the at-rules' <style> first in <head>, ahead of <meta
# charset>, which must come within a document's first 1,024 bytes.
_HEAD_STYLES = re.compile(
    r"(<head\b[^>]*>)((?:\s*<style\b[^>]*>.*?</style>)+)(.*?)(</head>)",
    re.DOTALL | re.IGNORECASE,
)


# Per-renderer memory of entry views and wrapped paragraphs: one paper recurs
# in many digests of a pass, and its highlighting, escaping and wrapping
# (most of rendering) come out the same each time.
ENTRY_CACHE = 4096
WRAP_CACHE = 16384


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


def _fill(template: str, title: str) -> str:
    # str.replace, not str.format: a template from config must not reach
    # attributes through format fields, and other braces stay literal. The
    # rest of the template is percent-encoded too (non-ASCII, stray braces).
    return quote(title, safe="").join(
        quote(piece, safe=_URL_SAFE) for piece in template.split("{title}")
    )


# --- text helpers ---------------------------------------------------------


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


def excerpt(text: str, marks: Sequence[Span] = ()) -> tuple[str, tuple[Span, ...]]:
    """The first sentences of ``text`` up to EXCERPT_CHARS, cut at a sentence or
    word boundary, with highlight spans clipped to what is kept."""
    # Whitespace is left alone so the spans stay valid; both parts collapse it.
    text = text.rstrip()
    if len(text) <= EXCERPT_CHARS:
        return text, _clip(marks, len(text))
    cut = 0
    for count, m in enumerate(_sentence_ends(text), start=1):
        if m > EXCERPT_CHARS:
            break
        cut = m
        if count == EXCERPT_SENTENCES:
            break
    if cut:
        # No-break space: the ellipsis must not wrap onto a line of its own.
        return text[:cut] + "\u00a0…", _clip(marks, cut)
    space = text.rfind(" ", 0, EXCERPT_CHARS + 1)
    cut = space if space > 0 else EXCERPT_CHARS
    while cut > 0 and text[cut - 1] in ",;:-\u2013\u2014(":
        cut -= 1
    kept = text[:cut].rstrip()
    return kept + "…", _clip(marks, len(kept))


def _sentence_ends(text: str) -> Iterable[int]:
    for m in _SENTENCE_END.finditer(text):
        word = text[: m.start()].rsplit(None, 1)[-1].casefold() if m.start() else ""
        if word.rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        yield m.end()


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
    out: list[str] = []
    pos = 0
    for start, end in _joined(text, marks):
        out += [escape(text[pos:start]), _MARK_OPEN, escape(text[start:end]), _MARK_CLOSE]
        pos = end
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def highlight_text(text: str, marks: Sequence[Span]) -> str:
    out: list[str] = []
    pos = 0
    for start, end in _joined(text, marks):
        out += [text[pos:start], "*", text[start:end], "*"]
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
    than be broken."""
    return textwrap.fill(
        _ASCII_SPACE.sub(" ", text).strip(),
        width=width,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


# --- view model -----------------------------------------------------------


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class SectionView:
    name: str
    entries: tuple[EntryView, ...]


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


# --- the sandbox ----------------------------------------------------------

# Templates come from the operator's folder and are run in Jinja2's sandbox
# (no attributes starting with _, no unsafe methods) with a budget per
# render: every loop iteration, call and arithmetic operation is a step, and a
# render is stopped past RENDER_STEPS steps or RENDER_SECONDS seconds. The
# budget is counted by the template's own code, not by a signal or a
# watchdog thread, so it works the same in the daemon's threads and the
# compose worker processes. What it cannot stop is one built-in operation
# that is slow by itself; the big ones (huge powers, repetitions and
# formatting widths) are refused before they start.
RENDER_SECONDS = 5.0
RENDER_STEPS = 2_000_000
MAX_BUILT = 1_000_000  # items or characters an operator may make in a template
_WIDE_FORMAT = re.compile(r"%[-+ #0]*\d{7}|%[-+ #0]*\d*\.\d{7}")


class RenderBudgetError(jinja2.exceptions.SecurityError):
    """A template took more steps or time than one render may."""


@dataclass
class _Budget:
    deadline: float
    steps: int = 0


_BUDGET: ContextVar[_Budget | None] = ContextVar("render_budget", default=None)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.steps += 1
    if budget.steps > RENDER_STEPS:
        raise RenderBudgetError(f"more than {RENDER_STEPS} steps (loop iterations and calls)")
    if time.monotonic() > budget.deadline:
        raise RenderBudgetError(f"took more than {RENDER_SECONDS:g} seconds")


def _budgeted(items: Iterable[object]) -> Iterator[object]:
    """Every loop's iterable goes through this, so each iteration is a step."""
    for item in items:
        _step()
        yield item


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> jinja2.nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(jinja2.nodes.For):
            loop.iter = jinja2.nodes.Filter(
                loop.iter, "_budgeted", [], [], None, None, lineno=loop.lineno
            )
        return tree

    def call(
        __self,  # noqa: N805 -- Jinja's positional-only convention
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _step()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # The view objects hold plain values: reading their public fields
        # needs none of the sandbox's checks, which were half of rendering.
        if type(obj) in _VIEWS and not attribute.startswith("_"):
            try:
                return getattr(obj, attribute)
            except AttributeError:
                pass
        return super().getattr(obj, attribute)

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        _step()
        if operator == "**" and isinstance(right, int | float) and abs(right) > 1000:
            raise RenderBudgetError(f"power with an exponent of {right} is too big")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_BUILT
                ):
                    raise RenderBudgetError(f"repeating {len(seq)} items {n} times is too big")
        if operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise RenderBudgetError("a formatting width of a million or more is too big")
        return super().call_binop(context, operator, left, right)


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
                    ),
                ),
            ),
            Section("Agents", (Entry(agents, "Agents", (), ("agent",), ((9, 15),), ()),)),
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
        env = _Sandbox(
            loader=self._loader,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        env.filters["_budgeted"] = _budgeted
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
    ) -> Rendered:
        """Both parts of ``digest``. When its HTML would pass HTML_MAX_BYTES
        (where Gmail clips it), fewer papers are shown, in both parts, and the
        rest are counted with the papers ``max_papers`` left out."""
        if unsubscribe_url is not None and not is_web_url(unsubscribe_url):
            raise ValueError(f"unsubscribe URL {unsubscribe_url!r} is not an http(s) URL")
        if unsubscribe_mailto is not None and not _is_mailto(unsubscribe_mailto):
            raise ValueError(f"unsubscribe address {unsubscribe_mailto!r} is not a mailto: URL")
        links = {
            "unsubscribe_url": unsubscribe_url,
            "unsubscribe_mailto": unsubscribe_mailto,
            "manage_hint": " ".join(manage_hint.split()),
        }
        context = self._context(digest, links)
        html = self._render_html(context)
        if len(html.encode()) > HTML_MAX_BYTES and digest.count > 1:
            digest, html = self._fit(digest, links, len(html.encode()))
            context = self._context(digest, links)
        text = self._run(self._text, context)
        return Rendered(
            subject=str(context["subject"]),
            html=html,
            text=text,
            preheader=str(context["preheader"]),
        )

    def _fit(self, digest: Digest, links: Mapping[str, object], size: int) -> tuple[Digest, str]:
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
            html = self._render_html(self._context(shorter, links))
            found[n] = (shorter, html)
            if len(html.encode()) <= HTML_MAX_BYTES:
                fits = n
            else:
                too_big = n
        if fits not in found:
            shorter = shortened(digest, fits)
            found[fits] = (shorter, self._render_html(self._context(shorter, links)))
        return found[fits]

    def _render_html(self, context: Mapping[str, object]) -> str:
        return seven_bit_html(
            self._run(self._html, {**context, "preheader_pad": _PREHEADER_PAD_HTML})
        )

    def _context(self, digest: Digest, links: Mapping[str, object]) -> dict[str, object]:
        """What the templates are given for ``digest``."""
        sections = tuple(
            SectionView(s.subscription, tuple(self._entry(e) for e in s.entries))
            for s in digest.sections
            if s.entries
        )
        entries = [e for s in sections for e in s.entries]
        matched = [s.name for s in sections]
        since = format_since(digest.since) if digest.since else None
        if entries:
            total = len(entries) + digest.more
            summary = f"{plural(total, 'paper')} matched {join_names(matched)}"
            if since:
                summary += f" since {since}"
            summary += f"; here are the top {len(entries)}." if digest.more else "."
            preheader = " · ".join(e.title for e in entries[:2])
            if len(entries) > 2:
                preheader += f" · and {len(entries) - 2 + digest.more} more"
        else:
            summary = "No new papers matched your subscriptions"
            summary += f" since {since}." if since else "."
            preheader = summary
        return {
            "product": self.product_name,
            "subject": self._subject(digest, matched),
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
        token = _BUDGET.set(_Budget(time.monotonic() + RENDER_SECONDS))
        try:
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
        finally:
            _BUDGET.reset(token)

    def _where(self, filename: str | None, line: int | None) -> str:
        """'path, line N' of the template file (not its inlined source)."""
        if filename is None or line is None:
            return str(filename)
        return f"{filename}, line {self._loader.file_line(filename, line)}"

    def _subject(self, digest: Digest, matched: Sequence[str]) -> str:
        n = digest.count
        if n == 0:
            subject = f"{self.product_name}: no new papers"
        else:
            names = ", ".join(matched[:3]) + (" …" if len(matched) > 3 else "")
            subject = f"{self.product_name}: {plural(n, 'new paper')} — {names}"
        return header_text(("[test] " if digest.test else "") + subject)

    def _entry_view(self, entry: Entry) -> EntryView:
        paper = entry.paper
        title = " ".join(paper.title.split())
        abstract, abstract_marks = excerpt(paper.abstract, entry.abstract_marks)
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
        )
