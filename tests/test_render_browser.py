"""The HTML part in a real browser engine: phone and desktop widths, light and
dark schemes, with screenshots to look at.

Screenshots go to test-artifacts/; MAILER_UPDATE_SCREENSHOTS=1 also rewrites
the two in docs/ that the README shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mailer.mime import Rendered
from mailer.render import Renderer
from tests.test_render import MANAGE, UNSUBSCRIBE, realistic_digest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DOCS = ROOT / "docs"
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTHS = (375, 800)
SCHEMES = ("light", "dark")

# Worst WCAG contrast ratio between each text element's colour and the
# first opaque background behind it.
CONTRAST_JS = """
(selectors) => {
  const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const sel of selectors) {
    for (const el of document.querySelectorAll(sel)) {
      const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
      out.push([sel, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
    }
  }
  return out;
}
"""
TEXT_SELECTORS = [
    ".brand",
    ".top-unsubscribe a",
    ".summary",
    ".section-name",
    ".count",
    ".title-link",
    ".abstract",
    "mark",
    ".meta",
    ".also",
    ".more",
    ".footer p",
    ".footer a",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        reason = f"no Chromium at {CHROMIUM} (Debian package 'chromium')"
        if os.environ.get("MAILER_TEST_REQUIRE_BROWSER"):
            pytest.fail(reason + ", but MAILER_TEST_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return Renderer().render(
        realistic_digest(more=4), unsubscribe_url=UNSUBSCRIBE, manage_hint=MANAGE
    )


def open_page(browser: Browser, html: str, width: int, scheme: str) -> Page:
    page = browser.new_page(
        viewport={"width": width, "height": 900},
        color_scheme=scheme,  # type: ignore[arg-type]
    )
    page.set_content(html, wait_until="load")
    return page


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("width", WIDTHS)
def test_digest_reads_well_at_width_and_scheme(
    browser: Browser, rendered: Rendered, width: int, scheme: str
) -> None:
    page = open_page(browser, rendered.html, width, scheme)
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"digest-{width}-{scheme}.png"), full_page=True)

        scroll, inner = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
        assert scroll <= inner, f"horizontal scrolling at {width}px: {scroll} > {inner}"

        for e in realistic_digest().entries:
            link = page.locator("h3 a", has_text=e.paper.title[:40])
            assert link.count() == 1, e.paper.title
            assert link.is_visible()
            assert (link.get_attribute("href") or "").startswith(("https://", "http://"))
            box = link.bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= width

        marks = page.locator("mark")
        assert marks.count() >= 5
        assert marks.first.is_visible()

        unsubscribe = page.get_by_role("link", name="Unsubscribe").all()
        assert len(unsubscribe) == 2  # under the header and in the footer
        for link in unsubscribe:
            assert link.is_visible()
            assert link.get_attribute("href") == UNSUBSCRIBE

        assert not page.get_by_text(rendered.preheader[:30]).first.is_visible()

        low = [
            (sel, round(ratio, 2))
            for sel, ratio in page.evaluate(CONTRAST_JS, TEXT_SELECTORS)
            if ratio < 4.5
        ]
        assert not low, f"below WCAG AA contrast in {scheme}: {low}"
    finally:
        page.close()


def test_dark_scheme_switches_to_dark_background(browser: Browser, rendered: Rendered) -> None:
    page = open_page(browser, rendered.html, 800, "dark")
    try:
        bg = page.evaluate("getComputedStyle(document.querySelector('.card')).backgroundColor")
        assert bg == "rgb(22, 27, 34)"
    finally:
        page.close()


def test_readme_screenshots(browser: Browser, rendered: Rendered) -> None:
    """Kept in docs/ only on request, so ordinary runs leave the tree clean."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, rendered.html, 800, "light")
    try:
        page.screenshot(path=str(ARTIFACTS / "digest-light.png"), full_page=True)
    finally:
        page.close()
    text_html = (
        '<!DOCTYPE html><html lang="en"><meta charset="utf-8">'
        '<body style="margin:0;background:#fff;color:#1f2328">'
        '<pre style="margin:0;padding:24px;white-space:pre-wrap;overflow-wrap:anywhere;'
        "font:13px/1.45 'DejaVu Sans Mono',monospace\">"
        f"{escape(rendered.text)}</pre></body></html>"
    )
    page = open_page(browser, text_html, 800, "light")
    try:
        page.screenshot(path=str(ARTIFACTS / "digest-text.png"), full_page=True)
    finally:
        page.close()
    for name in ("digest-light.png", "digest-text.png"):
        shot = ARTIFACTS / name
        assert shot.stat().st_size < 300_000
        if os.environ.get("MAILER_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(shot, DOCS / name)
