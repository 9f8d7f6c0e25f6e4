"""Files -> dumps -> papers: finding complete dump files and storing their papers.

A file is read (``load_dump``), hashed and parsed once per version (size and
mtime); a refused one is recorded so it is not read again, and one whose
content is already stored is skipped. A file that changes is read again: its
new records are stored and abstracts stored cut short are completed.

A file that cannot be read (permissions) is tried again every pass but
reported once per version; one that is not a regular file (a FIFO) is
skipped until it changes. Both are kept in the store's state
(``UNREADABLE_DUMPS``) for ``mailer status``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mailer.collector import give_back_memory
from mailer.dumpfiles import (
    DEFAULT_MAX_DUMP_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    NotAFileError,
    OversizeDumpError,
    UnreadableDumpError,
    changed_since,
    opened_dump,
)
from mailer.dumps import parse_dump
from mailer.errors import DumpError
from mailer.pipeline.report import Clock, PassReport, Stopping, gc_paused
from mailer.store import Store

log = logging.getLogger("mailer")

IGNORED_SUFFIXES = (".tmp", ".part", ".swp", ".crdownload")

# State key: the watch folder's files that could not be read, as JSON
# [{"path", "reason", "since"}], rewritten when that list changes.
UNREADABLE_DUMPS = "unreadable_dumps"

# Called after each dump of a pass as (done, total, path), to show progress.
OnDump = Callable[[int, int, Path], None]


def ignored(name: str) -> bool:
    """Names never read: hidden files and partial ones (``.part``, ``.tmp``,
    ...), which writers rename into place once complete."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name.endswith("~")


class Scanner:
    """Finds dump files that are complete and not yet handled.

    A file is complete once it has not changed for ``settle`` seconds (a file
    renamed into place usually already has), or at once when the watcher saw
    it renamed into place (``arrived``). What was handled is remembered
    by size and mtime, so unchanged files are not read again each pass.
    Anything but a folder is a candidate: whether it is a regular file is
    checked on the opened file (``load_dump``), where a swap cannot slip in.
    """

    def __init__(
        self, directory: Path, settle: float, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.directory = directory
        self.settle = settle
        self.sleep = sleep
        self._handled: dict[Path, tuple[int, int]] = {}
        # Files that could not be read: the version reported, why, and since when.
        self._unreadable: dict[Path, tuple[tuple[int, int], str, datetime]] = {}
        # What the store's UNREADABLE_DUMPS holds; None until first written.
        self.recorded: list[dict[str, str]] | None = None
        # Files seen renamed into place, complete, by version (mailer.watch).
        self._arrived: dict[Path, tuple[int, int]] = {}

    def _candidates(self) -> dict[Path, os.stat_result]:
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.error("cannot list watch folder %s: %s", self.directory, exc.strerror)
            return {}
        found = {}
        listed = {Path(entry.path) for entry in entries}
        for gone in self._unreadable.keys() - listed:
            del self._unreadable[gone]
        for entry in entries:
            if ignored(entry.name):
                continue
            try:
                if entry.is_dir():
                    continue
                st = entry.stat()
            except OSError:
                continue
            path = Path(entry.path)
            if self._handled.get(path) != (st.st_size, st.st_mtime_ns):
                found[path] = st
        return found

    def arrived(self, paths: Iterable[Path]) -> None:
        """Files renamed into place just now: complete, read without settling."""
        for path in paths:
            with suppress(OSError):
                st = path.stat()
                self._arrived[path] = (st.st_size, st.st_mtime_ns)

    def ready(self) -> list[Path]:
        fresh = self._candidates()
        now = time.time()
        settling = [
            st for p, st in fresh.items() if self._arrived.get(p) != (st.st_size, st.st_mtime_ns)
        ]
        youngest = max((st.st_mtime for st in settling), default=now - self.settle)
        wait = youngest + self.settle - now
        if wait > 0:
            self.sleep(min(wait, self.settle))
            settled = self._candidates()
            fresh = {
                p: st
                for p, st in settled.items()
                if p in fresh
                and (st.st_size, st.st_mtime_ns) == (fresh[p].st_size, fresh[p].st_mtime_ns)
            }
        return sorted(fresh)

    def handled(self, path: Path, size: int, mtime_ns: int) -> None:
        self._handled[path] = (size, mtime_ns)
        self._unreadable.pop(path, None)
        self._arrived.pop(path, None)

    def unreadable(self, path: Path, reason: str, now: datetime, *, retry: bool) -> bool:
        """Remember a file that could not be read; True when it is news (not
        yet reported in this version). With ``retry`` it is read again every
        pass (permissions may be fixed without changing it); without, only
        once it changes."""
        try:
            st = path.stat()
            version = (st.st_size, st.st_mtime_ns)
        except OSError:
            version = (-1, -1)
        before = self._unreadable.get(path)
        news = before is None or before[0] != version or before[1] != reason
        since = now if news or before is None else before[2]
        self._unreadable[path] = (version, reason, since)
        if not retry:
            self._handled[path] = version
        return news

    def unreadable_files(self) -> list[dict[str, str]]:
        """The files that could not be read, for ``mailer status``."""
        return [
            {"path": str(path), "reason": reason, "since": since.isoformat(timespec="seconds")}
            for path, (_, reason, since) in sorted(self._unreadable.items())
        ]


@dataclass(frozen=True)
class Ingest:
    """The ingest stage: the scanner's ready files into the store."""

    store: Store
    scanner: Scanner
    clock: Clock
    max_dump_bytes: int = DEFAULT_MAX_DUMP_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def run(self, report: PassReport, stopping: Stopping, on_dump: OnDump | None = None) -> None:
        with report.timed("scan_parse"):
            paths = self.scanner.ready()
        for done, path in enumerate(paths, 1):
            if stopping():
                return
            with gc_paused():
                self.file(path, report)
            give_back_memory()
            if on_dump is not None:
                on_dump(done, len(paths), path)
        unreadable = self.scanner.unreadable_files()
        if unreadable != self.scanner.recorded:
            self.store.set_state(UNREADABLE_DUMPS, json.dumps(unreadable), self.clock())
            self.scanner.recorded = unreadable

    def file(self, path: Path, report: PassReport) -> None:
        """One file: read, hashed, parsed, stored, and remembered as handled.
        Hashed first, then parsed from the same open file line by line, so a
        large dump is never held whole beside its records."""
        with ExitStack() as opened:
            try:
                with report.timed("scan_parse"):
                    loaded, stream = opened.enter_context(
                        opened_dump(
                            path, max_bytes=self.max_dump_bytes, max_line_bytes=self.max_line_bytes
                        )
                    )
            except (UnreadableDumpError, NotAFileError) as exc:
                retry = isinstance(exc, UnreadableDumpError)
                reason = exc.message.removeprefix(f"{path}: ")
                if self.scanner.unreadable(path, reason, self.clock(), retry=retry):
                    again = "tried again every pass" if retry else "skipped until it changes"
                    log.warning("dump=%s %s; %s", path, reason, again)
                return
            except OversizeDumpError as exc:
                if not self._known(path, exc.sha256, exc.size, exc.mtime_ns, report):
                    self._refuse(path, exc.sha256, exc.size, exc.mtime_ns, exc, report)
                return
            digest, size, mtime_ns = loaded.sha256, loaded.size, loaded.mtime_ns
            if self._known(path, digest, size, mtime_ns, report):
                return
            now = self.clock()
            try:
                with report.timed("scan_parse"):
                    parsed = parse_dump(stream, source=str(path), today=now.date())
            except DumpError as exc:
                self._refuse(path, digest, size, mtime_ns, exc, report)
                return
            except OSError as exc:
                log.warning("dump=%s cannot read dump: %s; tried again every pass", path, exc)
                return
            if changed_since(stream, loaded):
                log.warning("dump=%s changed while it was read; read again next pass", path)
                return
        for warning in parsed.warnings:
            log.warning("%s", warning)
        with report.timed("store"):
            outcome = self.store.ingest(
                path=str(path),
                sha256=digest,
                size=size,
                page_date=parsed.page_date,
                papers=parsed.papers,
                warnings=len(parsed.warnings),
                now=now,
            )
        self.scanner.handled(path, size, mtime_ns)
        report.dumps += 1
        report.papers_new += outcome.new_papers
        report.papers_seen += outcome.seen_papers
        log.info(
            "dump=%s ingested records=%d new=%d seen=%d completed=%d warnings=%d",
            path,
            len(parsed.papers),
            outcome.new_papers,
            outcome.seen_papers,
            outcome.completed_abstracts,
            len(parsed.warnings),
        )

    def _known(self, path: Path, digest: str, size: int, mtime_ns: int, report: PassReport) -> bool:
        """Whether this content was stored (or refused) before, under any name."""
        known = self.store.dump_by_hash(digest)
        if known is None:
            return False
        if known.path != str(path):
            log.info("dump=%s same content as %s already ingested; skipped", path, known.path)
        report.known += 1
        self.scanner.handled(path, size, mtime_ns)
        return True

    def _refuse(
        self, path: Path, digest: str, size: int, mtime_ns: int, exc: DumpError, report: PassReport
    ) -> None:
        log.error("dump=%s refused: %s", path, exc.message)
        self.store.record_refused(
            path=str(path), sha256=digest, size=size, error=exc.message, now=self.clock()
        )
        report.refused += 1
        report.errors.append(str(exc))
        self.scanner.handled(path, size, mtime_ns)
