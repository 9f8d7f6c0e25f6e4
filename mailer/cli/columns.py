"""Plain text tables for listings that may run to thousands of rows: each
column as wide as its widest line, measured once, nothing wrapped or cut
(rich's Table measures and wraps every cell, seconds for a long listing)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len

GAP = "  "


def aligned_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` as a header over a rule, then each row; a cell of several
    lines continues below, the row's other cells left blank there."""
    split = [[cell.splitlines() or [""] for cell in row] for row in rows]
    widths = [cell_len(c) for c in columns]
    for row in split:
        for i, lines in enumerate(row):
            for text in lines:
                width = cell_len(text)
                if width > widths[i]:
                    widths[i] = width

    def line(cells: Sequence[str]) -> str:
        padded = (c + " " * (w - cell_len(c)) for c, w in zip(cells, widths, strict=True))
        return GAP.join(padded).rstrip() + "\n"

    out = [line(columns), line(["-" * w for w in widths])]
    for row in split:
        height = max(len(lines) for lines in row)
        for n in range(height):
            out.append(line([lines[n] if n < len(lines) else "" for lines in row]))
    return "".join(out)
