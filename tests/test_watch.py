"""The watch folder's file events (mailer.watch): a dump renamed into the
folder is mailed at once, not at the next rescan, and one renamed from its
partial name is read without waiting for it to settle."""

from __future__ import annotations

import signal
from pathlib import Path

from watchfiles import Change

from mailer.watch import renamed_in, wanted
from tests.conftest import SmtpServer
from tests.process import Mailer
from tests.test_cli import copy_seeds
from tests.test_faults import write_config
from tests.waiting import passes, wait_for

FOLDER = Path("/dumps")


def batch(*changes: tuple[Change, str]) -> set[tuple[Change, str]]:
    return {(change, str(FOLDER / name)) for change, name in changes}


def test_a_file_that_replaces_its_partial_name_was_renamed_into_place() -> None:
    changes = batch(
        (Change.deleted, "a.txt.part"),
        (Change.added, "a.txt"),
        (Change.deleted, ".b.txt.Xy12ab"),  # rsync's temporary name
        (Change.added, "b.txt"),
        (Change.added, "c.txt"),  # written in place: must settle
        (Change.deleted, "d.txt.tmp"),  # deleted, never renamed
    )
    assert renamed_in(changes) == {FOLDER / "a.txt", FOLDER / "b.txt"}


def test_only_changes_to_names_the_scanner_reads_wake_a_pass() -> None:
    assert not wanted(batch((Change.added, "a.txt.part"), (Change.modified, ".hidden")))
    assert wanted(batch((Change.added, "a.txt.part"), (Change.added, "a.txt")))


def test_a_dump_renamed_into_the_folder_is_mailed_without_waiting_for_the_rescan_or_settling(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # A rescan an hour away, and files read only once unchanged for an hour,
    # unless they were renamed into place: only file events can explain a digest.
    config = write_config(tmp_path, smtp_server.port, interval=3600, settle=3600)
    daemon = Mailer(config, "run")
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        copy_seeds(tmp_path / "dumps")
        wait_for(
            lambda: len(smtp_server.messages) >= 3,
            timeout=30,
            what="the digests of the dumps renamed into the folder",
        )
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.finish()
    finally:
        daemon.kill()
    assert code == 0, daemon.log
    assert {m.recipients[0] for m in smtp_server.messages} == {
        "ada@example.org",
        "grace@example.org",
        "alan@example.org",
    }
