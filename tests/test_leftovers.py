"""What a run of the test suite leaves behind: nothing in the temporary folder."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A test that starts a mailer process, which shares the run's config cache.
WITH_A_MAILER_PROCESS = "tests/test_cli.py::test_ingest_runs_one_pass_into_a_maildir"


@pytest.mark.slow
def test_a_passing_run_of_the_suite_leaves_nothing_in_the_temporary_folder(
    tmp_path: Path,
) -> None:
    """Neither the config cache its mailer processes share nor its tests'
    folders: only pytest's own folder for the user, empty."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", WITH_A_MAILER_PROCESS],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert list(scratch.rglob("*")) == [scratch / f"pytest-of-{getpass.getuser()}"]
