"""Where a hit's matched terms occur in a title or abstract, for digests
and ``mailer subs try`` to highlight."""

from __future__ import annotations

from collections.abc import Sequence

from mailer.analysis import stem, tokenize


def highlight_spans(text: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of ``text`` where the matched ``terms`` occur: a word
    highlights its stemming variants, ``=word`` only itself, ``pre*`` words
    starting with it, a phrase each run of its words; ``org:`` terms are not
    in the title or abstract."""
    found = tokenize(text)
    words = [w for w, _, _ in found]
    stemmed: list[str] | None = None
    spans: list[tuple[int, int]] = []
    for term in terms:
        if term.startswith("org:"):
            continue
        exact = term.startswith("=")
        body = term[1:] if exact else term
        if body.endswith("*"):
            prefix = body[:-1]
            spans.extend((s, e) for w, s, e in found if prefix and w.startswith(prefix))
            continue
        parts = [p for p in body.split(" ") if p]
        if not parts:
            continue
        if exact:
            seq = words
        else:
            if stemmed is None:
                stemmed = [stem(w) for w in words]
            seq = stemmed
            parts = [stem(p) for p in parts]
        n = len(parts)
        for i in range(len(seq) - n + 1):
            if seq[i : i + n] == parts:
                spans.append((found[i][1], found[i + n - 1][2]))
    return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
