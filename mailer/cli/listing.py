"""What ``mailer subs list`` prints of mailer.subscriber_list's rows: a table, or JSON.

Both ways of answering the command (the typer command in ``subs``, and
``quick`` from a warm configuration cache) print through this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from mailer.cli.columns import aligned_table

COLUMNS = ("subscriber", "origin", "schedule", "time zone", "subscriptions", "unsubscribed")


def listing(rows: Sequence[Mapping[str, object]], source: str, *, as_json: bool) -> str:
    """What ``mailer subs list`` prints: the rows as JSON, or as a table with
    a closing line that says where they came from."""
    if as_json:
        return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    cells: list[tuple[str, ...]] = []
    for row in rows:
        who = f"{row['name']} <{row['email']}>" if row["name"] else str(row["email"])
        subscriptions = cast(Iterable[Mapping[str, object]], row["subscriptions"])
        queries = "\n".join(f"{q['name']}: {q.get('described', q['query'])}" for q in subscriptions)
        gone = str(row["unsubscribed_at"])[:16] if row["unsubscribed"] else "no"
        origin = str(row["origin"])
        if row["status"] not in ("active", "unsubscribed"):
            origin += f" ({row['status']})"
        cells.append(
            (who, origin, str(row["schedule"]), str(row["timezone"]), queries or "-", gone)
        )
    web_rows = sum(1 for r in rows if r["origin"] == "web")
    return (
        aligned_table(COLUMNS, cells)
        + f"{len(rows) - web_rows} subscribers in {source}, {web_rows} signed up on the web pages\n"
    )
