"""Files -> dumps -> papers: finding complete dump files and storing their papers.

A file is read, hashed and parsed once; a refused one is recorded so it is
not read again, and one whose content is already stored is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailer.dumps import parse_dump
from mailer.errors import DumpError
from mailer.pipeline.report import Clock, PassReport, Stopping
from mailer.store import Store

log = logging.getLogger("mailer")

IGNORED_SUFFIXES = (".tmp", ".part", ".swp", ".crdownload")

# Called after each dump of a pass as (done, total, path), to show progress.
OnDump = Callable[[int, int, Path], None]


class Scanner:
    """Finds dump files that are complete and not yet handled.

    A file is complete once it has not changed for ``settle`` seconds (a file
    renamed into place usually already has). What was handled is remembered
    by size and mtime, so unchanged files are not read again each pass.
    """

    def __init__(
        self, directory: Path, settle: float, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.directory = directory
        self.settle = settle
        self.sleep = sleep
        self._handled: dict[Path, tuple[int, int]] = {}

    def _candidates(self) -> dict[Path, os.stat_result]:
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.error("cannot list watch folder %s: %s", self.directory, exc.strerror)
            return {}
        found = {}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name.endswith("~"):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue
            path = Path(entry.path)
            if self._handled.get(path) != (st.st_size, st.st_mtime_ns):
                found[path] = st
        return found

    def ready(self) -> list[Path]:
        fresh = self._candidates()
        now = time.time()
        youngest = max((st.st_mtime for st in fresh.values()), default=now - self.settle)
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


@dataclass(frozen=True)
class Ingest:
    """The ingest stage: the scanner's ready files into the store."""

    store: Store
    scanner: Scanner
    clock: Clock

    def run(self, report: PassReport, stopping: Stopping, on_dump: OnDump | None = None) -> None:
        paths = self.scanner.ready()
        for done, path in enumerate(paths, 1):
            if stopping():
                return
            self.file(path, report)
            if on_dump is not None:
                on_dump(done, len(paths), path)

    def file(self, path: Path, report: PassReport) -> None:
        """One file: hashed, parsed, stored, and remembered as handled."""
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read %s: %s; will try again", path, exc.strerror)
            return
        digest = hashlib.sha256(data).hexdigest()
        known = self.store.dump_by_hash(digest)
        if known is not None:
            if known.path != str(path):
                log.info("dump=%s same content as %s already ingested; skipped", path, known.path)
            report.known += 1
            self.scanner.handled(path, st.st_size, st.st_mtime_ns)
            return
        now = self.clock()
        try:
            parsed = parse_dump(data, source=str(path), today=now.date())
        except DumpError as exc:
            log.error("dump=%s refused: %s", path, exc.message)
            self.store.record_refused(
                path=str(path), sha256=digest, size=len(data), error=exc.message, now=now
            )
            report.refused += 1
            report.errors.append(str(exc))
            self.scanner.handled(path, st.st_size, st.st_mtime_ns)
            return
        for warning in parsed.warnings:
            log.warning("%s", warning)
        outcome = self.store.ingest(
            path=str(path),
            sha256=digest,
            size=len(data),
            page_date=parsed.page_date,
            papers=parsed.papers,
            warnings=len(parsed.warnings),
            now=now,
        )
        self.scanner.handled(path, st.st_size, st.st_mtime_ns)
        report.dumps += 1
        report.papers_new += outcome.new_papers
        report.papers_seen += outcome.seen_papers
        log.info(
            "dump=%s ingested records=%d new=%d seen=%d warnings=%d",
            path,
            len(parsed.papers),
            outcome.new_papers,
            outcome.seen_papers,
            len(parsed.warnings),
        )
