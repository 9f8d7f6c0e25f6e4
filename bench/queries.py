"""Hostile and largest queries: how long loading them takes.

    PYTHONPATH=. python -m bench.queries

Prints, for queries at and far over the limits of mailer.query, the time
``parse_query`` takes to accept or refuse them (best of 5) and what it says.
Target: any query is accepted or refused within 2 s; those far over a limit
are refused by the linear scan, in well under a millisecond.
"""

from __future__ import annotations

import time

from mailer.errors import QueryError
from mailer.query import MAX_DEPTH, MAX_TERMS, parse_query

CASES = {
    "100,000 terms": " ".join(f"w{i}" for i in range(100_000)),
    "1,999 one-letter terms (3,997 characters)": " ".join(["a"] * 1999),
    "490 nested parentheses": "(" * 490 + "a" + ")" * 490,
    "NOT x 5,000": "NOT " * 5000 + "a",
    "5,000-digit number": "upvotes>=" + "9" * 5000,
    f"{MAX_TERMS} terms joined by OR (largest accepted)": " OR ".join(
        f"word{i}" for i in range(MAX_TERMS)
    ),
    f"{MAX_DEPTH} nested groups (deepest accepted)": "(a " * MAX_DEPTH + "b" + ")" * MAX_DEPTH,
}


def main() -> None:
    for name, query in CASES.items():
        best = float("inf")
        outcome = "accepted"
        for _ in range(5):
            start = time.perf_counter()
            try:
                parse_query(query)
            except QueryError as exc:
                outcome = "refused: " + exc.message.rsplit(": ", 1)[-1]
            best = min(best, time.perf_counter() - start)
        print(f"{name:<45} {best * 1000:9.3f} ms  {outcome}")


if __name__ == "__main__":
    main()
