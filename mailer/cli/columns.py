"""Plain text tables for listings that may run to thousands of rows: each
column as wide as its widest line, measured once, nothing wrapped or cut
(rich's Table measures and wraps every cell, seconds for a long listing)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len

GAP = "  "
BLANK = ("", 0)


def _width(text: str) -> int:
    """The cells a line takes: its length when it is printable ASCII (nearly
    every line, checked in C), else as rich measures it."""
    return len(text) if text.isascii() and text.isprintable() else cell_len(text)


def aligned_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` as a header over a rule, then each row; a cell of several
    lines continues below, the row's other cells left blank there."""
    measured = [
        [[(text, _width(text)) for text in cell.splitlines() or [""]] for cell in row]
        for row in rows
    ]
    widths = [_width(c) for c in columns]
    for row in measured:
        for i, lines in enumerate(row):
            for _, width in lines:
                if width > widths[i]:
                    widths[i] = width

    def line(cells: Sequence[tuple[str, int]]) -> str:
        padded = (t + " " * (w - n) for (t, n), w in zip(cells, widths, strict=True))
        return GAP.join(padded).rstrip() + "\n"

    out = [line([(c, _width(c)) for c in columns]), line([("-" * w, w) for w in widths])]
    for row in measured:
        height = max(len(lines) for lines in row)
        for n in range(height):
            out.append(line([lines[n] if n < len(lines) else BLANK for lines in row]))
    return "".join(out)
