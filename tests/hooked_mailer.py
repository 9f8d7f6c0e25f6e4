"""``python -m tests.hooked_mailer ARGS``: the mailer CLI with markers for tests.

A test cannot see inside a daemon it runs as a subprocess, so instead of
sleeping "long enough" for the daemon to reach a point, it starts the daemon
through this module and waits for the marker file the point creates, in the
folder named by MAILER_TEST_MARKERS:

- ``inserting-dump``: the ingest transaction is about to write the dump's row
  (the first write of an ingest; with SQLite's write lock held elsewhere the
  process blocks right there).
- ``settling``: the watch-folder scanner saw a file younger than
  ``settle_seconds`` and starts waiting for it to settle.

Internal: these hook the store's SQL and mailer.ingest.Scanner.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from mailer.cli import main
from mailer.pipeline import ingest

MARKERS = Path(os.environ["MAILER_TEST_MARKERS"])


def mark(name: str) -> None:
    (MARKERS / name).touch()


def _before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    if statement.lstrip().upper().startswith("INSERT INTO DUMPS"):
        mark("inserting-dump")


def _settling(seconds: float) -> None:
    mark("settling")
    time.sleep(seconds)


_scanner_init = ingest.Scanner.__init__


def _hooked_scanner_init(
    self: ingest.Scanner, directory: Path, settle: float, sleep: object = None
) -> None:
    _scanner_init(self, directory, settle, _settling)


if __name__ == "__main__":
    event.listen(Engine, "before_cursor_execute", _before_execute)
    setattr(ingest.Scanner, "__init__", _hooked_scanner_init)  # noqa: B010 - a method, patched
    main()
