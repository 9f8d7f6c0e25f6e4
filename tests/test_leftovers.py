"""What a run of the test suite leaves behind: nothing in the temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A test that starts a mailer process, which shares the run's config cache.
WITH_A_MAILER_PROCESS = "tests/test_cli.py::test_ingest_runs_one_pass_into_a_maildir"


@pytest.mark.slow
def test_a_run_of_the_suite_removes_the_config_cache_its_mailer_processes_share(
    tmp_path: Path,
) -> None:
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
    assert [p.name for p in scratch.iterdir() if p.name.startswith("mailer-")] == []
