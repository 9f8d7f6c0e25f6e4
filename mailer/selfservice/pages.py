"""The pages and notices, from the Jinja2 templates in ``templates/web``.

HTML is autoescaped: whatever a reader typed (names, queries, subscription
names) is shown as text, never markup. The notices' text templates are
not escaped (they are plain text) and show nothing a stranger typed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import jinja2

from mailer.render import default_templates_dir
from mailer.selfservice.forms import DAYS, schedule_parts
from mailer.selfservice.preview import WINDOW_DAYS

PRODUCT = "Paper Digest"


def web_templates_dir() -> Path:
    return default_templates_dir() / "web"


@lru_cache(maxsize=1)
def time_zones() -> tuple[str, ...]:
    """The IANA names offered in the time zone field's list."""
    return tuple(sorted(z for z in available_timezones() if "/" in z or z == "UTC"))


def schedule_words(schedule: str, timezone: str) -> str:
    """A schedule as a sentence says it: "daily at 08:00 (Europe/London)"."""
    kind, at, day = schedule_parts(schedule)
    if kind == "instant":
        return "as soon as papers match"
    if kind == "daily":
        return f"daily at {at} ({timezone})"
    return f"weekly on {dict(DAYS)[day]} at {at} ({timezone})"


class Pages:
    """Renders the pages (``*.html``) and notices (``*.txt``)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or web_templates_dir()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.folder),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.globals.update(
            product=PRODUCT, weekdays=DAYS, zones=time_zones(), window_days=WINDOW_DAYS
        )
        self.env.filters["schedule_words"] = schedule_words

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    def static(self, name: str) -> bytes | None:
        """A file of ``static/`` (the stylesheet, the script), None if there is none."""
        if name not in ("site.css", "site.js"):
            return None
        return (self.folder / "static" / name).read_bytes()
