"""Plain text tables for listings that may run to thousands of rows: each
column as wide as its widest line, measured once, nothing wrapped or cut
(rich's Table measures and wraps every cell, seconds for a long listing)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, zip_longest

from rich.cells import cell_len

GAP = "  "


def _width(text: str) -> int:
    """The cells a line takes: its length when it is printable ASCII (nearly
    every line, checked in C), else as rich measures it."""
    return len(text) if text.isascii() and text.isprintable() else cell_len(text)


def aligned_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` as a header over a rule, then each row; a cell of several
    lines continues below, the row's other cells left blank there.

    A column of printable ASCII (nearly every one) is measured and padded by
    ``str`` methods, in C; another line by line, by the cells each takes."""
    # A printable cell has no line break of any kind (splitlines knows eight).
    cells = [[[c] if c.isprintable() else c.splitlines() or [""] for c in row] for row in rows]
    widths: list[int] = []
    plain: list[bool] = []
    by_column = list(zip(*cells, strict=True)) if cells else [()] * len(columns)
    for heading, column in zip(columns, by_column, strict=True):
        lines = [heading, *chain.from_iterable(column)]
        joined = "".join(lines)
        plain.append(joined.isascii() and joined.isprintable())
        widths.append(max(map(len if plain[-1] else _width, lines)))
    layout = GAP.join(f"%-{w}s" if p else "%s" for w, p in zip(widths, plain, strict=True))
    padded = all(plain)

    def line(texts: tuple[str, ...]) -> str:
        if not padded:
            texts = tuple(
                t if p else t + " " * (w - _width(t))
                for t, w, p in zip(texts, widths, plain, strict=True)
            )
        return (layout % texts).rstrip()

    out = [line(tuple(columns)), line(tuple("-" * w for w in widths))]
    for row in cells:
        out.extend(map(line, zip_longest(*row, fillvalue="")))
    return "\n".join(out) + "\n"
