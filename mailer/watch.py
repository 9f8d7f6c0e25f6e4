"""The watch folder's file events: a dump that arrives wakes the daemon at once.

watchfiles (inotify on Linux) reports what changes in the folder; a batch
ends ``STEP_MS`` after its last event (at most ``DEBOUNCE_MS`` after its
first, while a writer keeps writing), and one that touches a name the
scanner reads wakes a pass. The rescan every ``interval_seconds`` stays, for
filesystems that send no events (NFS, SMB) and for a folder that cannot be
watched.

A file that appears in the same batch as a partial name containing its own
disappears (``x.txt.part``, ``.x.txt`` or rsync's ``.x.txt.AbC123`` renamed
to ``x.txt``) was renamed into place, so its writer had finished it: the
scanner reads it at once instead of waiting ``settle_seconds`` for it to
stay unchanged, as it still does for a file written in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

from mailer.pipeline.ingest import ignored

log = logging.getLogger("mailer")

STEP_MS = 50
DEBOUNCE_MS = 1600

Changes = set[tuple[Change, str]]


def wanted(changes: Changes) -> bool:
    """Whether a batch touches a file the scanner would read."""
    return any(not ignored(Path(path).name) for _, path in changes)


def renamed_in(changes: Changes) -> set[Path]:
    """The files of a batch that were renamed into place from a partial name."""
    gone = [Path(p) for change, p in changes if change == Change.deleted and ignored(Path(p).name)]
    arrived = set()
    for change, p in changes:
        path = Path(p)
        if change != Change.added or ignored(path.name):
            continue
        if any(old.parent == path.parent and path.name in old.name for old in gone):
            arrived.add(path)
    return arrived


async def watch_folder(
    directory: Path, on_change: Callable[[set[Path]], None], stop: asyncio.Event
) -> None:
    """Call ``on_change`` with the files renamed into place, for each batch
    of events in ``directory`` that concerns a dump, until ``stop`` is set.
    A folder that cannot be watched is logged and left to the rescan."""
    try:
        async for changes in awatch(
            directory,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=stop,
            recursive=False,
        ):
            if wanted(changes):
                on_change(renamed_in(changes))
    except (OSError, RuntimeError) as exc:
        log.warning(
            "watch folder %s gives no file events (%s); new dumps are found by the rescan "
            "every interval_seconds",
            directory,
            exc,
        )
