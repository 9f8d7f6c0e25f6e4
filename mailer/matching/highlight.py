"""Where a hit's matched terms occur in a title or abstract, for digests
and ``mailer subs try`` to highlight."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from mailer.analysis import stem, stems, tokenize

Span = tuple[int, int]
_WORD = re.compile("[a-z0-9]+")
_WORD_TAIL = re.compile("[a-z0-9]*")
_NEXT_WORD = re.compile("[^a-z0-9]*([a-z0-9]+)")  # of lower-cased ASCII text


def highlight_spans(text: str, terms: Sequence[str]) -> list[Span]:
    """Character spans of ``text`` where the matched ``terms`` occur: a word
    highlights its stemming variants, ``=word`` only itself, ``pre*`` words
    starting with it, a phrase each run of its words; ``org:`` terms are not
    in the title or abstract.

    Digests highlight every paper they show, so ASCII text (nearly all) is
    searched for each single-word term's candidates with a regular
    expression instead of being tokenised and stemmed whole; phrases and
    other text take ``spans_by_tokens``, which gives the same spans."""
    if not text.isascii():
        return _merge(spans_by_tokens(text, terms))
    low = text.lower()  # ASCII: the same positions
    spans: list[Span] = []
    rest: list[str] = []
    for term in terms:
        found = _ascii_spans(low, term)
        if found is None:
            rest.append(term)
        else:
            spans += found
    if rest:
        spans += spans_by_tokens(text, rest)
    return _merge(spans)


def _ascii_spans(low: str, term: str) -> list[Span] | None:
    """Spans of one term in lower-cased ASCII text, or None for a stem too
    short to narrow the search. A word's Snowball stem removes letters
    from its end and changes at most the last one, or two in its exceptions
    (dying: die), so every word with stem ``key`` starts with ``key[:-2]``:
    those words are the candidates, each checked."""
    if term.startswith("org:"):
        return []
    exact = term.startswith("=")
    body = term[1:] if exact else term
    if body.endswith("*"):
        prefix = body[:-1]
        if not _WORD.fullmatch(prefix):
            return []  # no word of ASCII text (runs of [a-z0-9], lower-cased) starts so
        return list(_words_from(low, prefix))
    parts = [p for p in body.split(" ") if p]
    if not parts:
        return []
    keys = parts if exact else [stem(p) for p in parts]
    if not all(_WORD.fullmatch(k) for k in keys):
        return []  # no word of ASCII text is, or stems to, anything else
    first = keys[0]
    if exact:
        candidates = [(a, b) for a, b in _words_from(low, first) if b - a == len(first)]
    elif len(first) < 3:
        return None
    else:
        candidates = [(a, b) for a, b in _words_from(low, first[:-2]) if stem(low[a:b]) == first]
    if len(keys) == 1:
        return candidates
    spans = []
    for start, end in candidates:
        phrase_end = _phrase_end(low, end, keys[1:], exact)
        if phrase_end is not None:
            spans.append((start, phrase_end))
    return spans


def _words_from(low: str, start: str) -> Iterator[Span]:
    """The words (runs of [a-z0-9]) of lower-cased ASCII text that begin with
    ``start``: found with str.find, much quicker than a regular expression
    that tries every position."""
    at = low.find(start)
    while at >= 0:
        if at == 0 or not _is_word_char(low[at - 1]):
            end = _WORD_TAIL.match(low, at + len(start))
            assert end is not None  # [a-z0-9]* matches anywhere
            yield at, end.end()
        at = low.find(start, at + 1)


def _is_word_char(c: str) -> bool:
    return c.isalnum()  # ASCII text: [a-z0-9] once lower-cased


def _phrase_end(low: str, at: int, keys: list[str], exact: bool) -> int | None:
    """Where the rest of a phrase ends if the words from ``at`` on are ``keys``."""
    for key in keys:
        m = _NEXT_WORD.match(low, at)
        if m is None:
            return None
        word = m.group(1)
        if (word if exact else stem(word)) != key:
            return None
        at = m.end()
    return at


def spans_by_tokens(text: str, terms: Sequence[str]) -> list[Span]:
    """The spans of ``terms`` in ``text``, found by tokenising it whole
    (unmerged): the reference that the ASCII search must agree with."""
    found = tokenize(text)
    words = [w for w, _, _ in found]
    stemmed: list[str] | None = None
    spans: list[Span] = []
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
                stemmed = stems(words)
            seq = stemmed
            parts = [stem(p) for p in parts]
        n = len(parts)
        for i in _occurrences(seq, parts[0]):
            if n == 1 or seq[i : i + n] == parts:
                spans.append((found[i][1], found[i + n - 1][2]))
    return spans


def _occurrences(seq: list[str], key: str) -> Iterator[int]:
    """Where ``key`` is in ``seq``: list.index scans in C."""
    at = -1
    try:
        while True:
            at = seq.index(key, at + 1)
            yield at
    except ValueError:
        return


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
