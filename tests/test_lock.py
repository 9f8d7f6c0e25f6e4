"""The locks under the daemons: SQLite's one-mailer lock file is a fence on
every send, not only a check at start, and a PostgreSQL advisory lock goes
with its session when the network is cut, and is refused while another
session holds it. (Several daemons on one PostgreSQL database, one of them
cut off mid-send, are tested in test_cluster.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import make_url

from mailer.errors import AlreadyRunningError
from mailer.lock import database_lock
from tests.proxy import TcpProxy


@pytest.mark.parametrize("how", ["removed", "taken over"])
def test_a_sqlite_lock_file_removed_or_taken_over_is_no_longer_held(
    tmp_path: Path, how: str
) -> None:
    database = tmp_path / "mailer.db"
    with database_lock(f"sqlite:///{database}") as lock:
        assert lock.held()
        lock_file = tmp_path / "mailer.db.lock"
        lock_file.unlink()
        if how == "taken over":
            lock_file.write_text(f"{os.getpid() + 1}\n", encoding="ascii")
        assert not lock.held()
        assert "mailer.db.lock" in lock.lost
        if how == "removed":
            lock.reacquire()
            assert lock.held()


def test_a_postgresql_lock_taken_back_after_a_cut_refuses_when_another_holds_it(
    fresh_postgres: str,
) -> None:
    url = make_url(fresh_postgres)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(host="127.0.0.1", port=proxy.port)
        with database_lock(via_proxy.render_as_string(hide_password=False)) as lock:
            assert lock.held()
            proxy.cut()
            assert not lock.held()
            assert "connection" in lock.lost
            proxy.restore()
            with (
                database_lock(fresh_postgres),
                pytest.raises(AlreadyRunningError, match="in use by another mailer"),
            ):
                lock.reacquire()
            lock.reacquire()
            assert lock.held()
