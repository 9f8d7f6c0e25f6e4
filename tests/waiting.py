"""Waiting for an event, with a deadline, instead of sleeping a fixed time.

A fixed sleep either wastes time or, on a slow machine, ends before the event
and lets a test pass without testing anything; these poll for the event itself
and fail, naming it, when it does not happen in time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

POLL_SECONDS = 0.02


def wait_for(predicate: Callable[[], object], *, timeout: float = 20, what: str) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def passes(folder: Path) -> int:
    """Passes the daemon has completed, from the heartbeat it writes after each
    (``mailer.heartbeat`` in the config's folder); 0 before the first."""
    try:
        count = json.loads((folder / "mailer.heartbeat").read_text(encoding="utf-8"))["passes"]
    except (OSError, ValueError, KeyError):
        return 0
    assert isinstance(count, int)
    return count


def wait_for_fresh_passes(folder: Path, count: int = 1, *, timeout: float = 20) -> None:
    """Wait until the daemon has completed ``count`` passes that began after
    this call: the pass under way now may have started before it, so it does
    not count."""
    target = passes(folder) + 1 + count
    wait_for(
        lambda: passes(folder) >= target,
        timeout=timeout,
        what=f"the daemon to complete {count} more pass(es)",
    )
