"""A ``mailer`` subprocess whose log a test reads while it runs, to wait for
a line (an event) instead of sleeping."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.test_cli import ENV
from tests.waiting import wait_for


class Mailer:
    """``python -m mailer --config CONFIG ARGS`` with its stderr collected line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config), *args],
            cwd=config.parent,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_logged(self, text: str, *, timeout: float = 20) -> None:
        """Wait until a log line contains ``text``; fail, showing the log, if
        it does not come in time or the process exits first."""
        try:
            wait_for(
                lambda: self.logged(text) or self.proc.poll() is not None,
                timeout=timeout,
                what=f"mailer to log {text!r}",
            )
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}; its log so far:\n{self.log}")
        self._reader.join(timeout=0 if self.proc.poll() is None else 5)
        assert self.logged(text), f"mailer exited without logging {text!r}:\n{self.log}"

    def finish(self, timeout: float = 30) -> int:
        """Wait for the exit (killing it after ``timeout``); its exit status."""
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
