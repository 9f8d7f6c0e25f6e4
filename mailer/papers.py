"""What a paper is, and when two records are the same paper."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

_NOT_WORD = re.compile(r"[\W_]+")


def paper_key(title: str) -> str:
    """Identity of a paper: its title with case, accents-compatibility forms,
    whitespace and punctuation folded, so the same paper in two dumps is one."""
    folded = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split())


@dataclass(frozen=True, slots=True)
class Paper:
    """One record of a dump, as values; parsing, matching and rendering share it."""

    title: str
    abstract: str
    authors: int | None = None
    organization: str | None = None
    published: date | None = None
    upvotes: int = 0

    @property
    def key(self) -> str:
        return paper_key(self.title)
