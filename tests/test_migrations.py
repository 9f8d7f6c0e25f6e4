"""Schema migrations, on a SQLite file and on PostgreSQL: a new database is
created by the migrations, one made by mailer 0.1.0 (create_all, no
alembic_version) is upgraded in place with its rows intact, and the models
never drift from what the migrations build."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from mailer import migrate
from mailer.analysis import Stats
from mailer.errors import StoreError
from mailer.papers import Paper
from mailer.store import Store
from tests import old_schema

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
HEAD = migrate.head()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def mailer_log() -> Iterator[list[str]]:
    """What mailer logs, captured on its own logger (the CLI stops it propagating)."""
    logger, handler = logging.getLogger("mailer"), Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A plain engine on the test database, for setting it up and looking inside."""
    e = create_engine(database_url)
    yield e
    e.dispose()


def revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_store(url: str) -> None:
    Store(url).close()


def schema(engine: Engine) -> dict[str, Any]:
    """Everything create_all decides about a table, as reflected, comparable across runs."""
    found = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(set(found.get_table_names()) - {"alembic_version"}):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"].compile(engine.dialect)), c["nullable"])
                for c in found.get_columns(table)
            ],
            "pk": found.get_pk_constraint(table)["constrained_columns"],
            "unique": sorted(
                (u["name"] or "", tuple(u["column_names"]))
                for u in found.get_unique_constraints(table)
            ),
            "fks": sorted(
                (f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"])
                for f in found.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"] or "", tuple(str(c) for c in i["column_names"]), i["unique"])
                for i in found.get_indexes(table)
            ),
        }
    return out


def drop_everything(engine: Engine) -> None:
    with engine.begin() as conn:
        old_schema.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


def fill_old_database(engine: Engine) -> None:
    """The rows mailer 0.1.0 would have written: a dump, its papers, a
    subscriber with a subscription, a sent digest, a match in it and a pending one."""
    old_schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(old_schema.dumps).values(
                path="/d/2026-11-23.txt",
                sha256="a" * 64,
                size=123,
                ingested_at=NOW,
                page_date=NOW.date(),
                records=2,
                new_papers=2,
                seen_papers=0,
                warnings=0,
                status="ingested",
            )
        )
        conn.execute(
            insert(old_schema.papers),
            [
                {
                    "key": f"paper {n}",
                    "title": f"Paper {n}",
                    "abstract": f"Abstract {n}.",
                    "authors": n,
                    "organization": "Acme",
                    "published": NOW.date(),
                    "upvotes": 10 * n,
                    "first_seen_at": NOW,
                    "first_dump_id": 1,
                    "matched": True,
                }
                for n in (1, 2)
            ],
        )
        conn.execute(
            insert(old_schema.subscribers).values(
                email="Ada@Example.org", name="Ada", active=True, created_at=NOW
            )
        )
        conn.execute(
            insert(old_schema.subscriptions).values(
                subscriber_id=1, name="diffusion", query="diffusion", active=True
            )
        )
        conn.execute(
            insert(old_schema.deliveries).values(
                subscriber_id=1,
                recipient="Ada@Example.org",
                message_id="<1@mailer>",
                subject="1 new paper",
                papers=1,
                message=b"Subject: 1 new paper\r\n\r\nbody\xff",
                status="sent",
                attempts=1,
                created_at=NOW,
                sent_at=NOW + timedelta(minutes=1),
                last_reply="250 OK",
            )
        )
        conn.execute(
            insert(old_schema.matches),
            [
                {
                    "subscriber_id": 1,
                    "paper_id": n,
                    "subscriptions": ["diffusion"],
                    "terms": ["diffusion"],
                    "scores": [1.5],
                    "created_at": NOW,
                    "delivery_id": 1 if n == 1 else None,
                }
                for n in (1, 2)
            ],
        )
        conn.execute(insert(old_schema.state).values(key="last_pass", value="ok", updated_at=NOW))


def test_a_fresh_database_is_created_at_head_with_every_models_table(
    database_url: str, engine: Engine, mailer_log: list[str]
) -> None:
    open_store(database_url)
    assert revision(engine) == HEAD
    found = inspect(engine)
    assert set(found.get_table_names()) == set(SQLModel.metadata.tables) | {"alembic_version"}
    for name, table in SQLModel.metadata.tables.items():
        assert {c["name"] for c in found.get_columns(name)} == set(table.columns.keys()), name
    assert mailer_log == [f"database {engine.url} upgraded to revision {HEAD}"]


def test_the_baseline_builds_exactly_what_0_1_0_built(database_url: str, engine: Engine) -> None:
    """Same columns, types, nullability, keys, constraint and index names: a
    database stamped as the baseline really is at the baseline."""
    with engine.connect() as conn:
        config = migrate.alembic_config(conn)
        with conn.begin():
            command.upgrade(config, migrate.BASELINE)
    migrated = schema(engine)
    drop_everything(engine)
    old_schema.metadata.create_all(engine)
    assert schema(engine) == migrated


def test_a_database_made_by_0_1_0_is_upgraded_in_place_with_every_row(
    database_url: str, engine: Engine, mailer_log: list[str]
) -> None:
    fill_old_database(engine)
    assert revision(engine) is None

    store = Store(database_url)
    try:
        assert revision(engine) == HEAD
        assert mailer_log == [f"database {engine.url} upgraded to revision {HEAD}"]
        assert store.count_papers() == 2
        [dump] = store.dumps()
        assert (dump.sha256, dump.records, dump.status) == ("a" * 64, 2, "ingested")
        [delivery] = store.deliveries()
        assert delivery.message == b"Subject: 1 new paper\r\n\r\nbody\xff"
        assert (delivery.status, delivery.recipient, delivery.sent_at) == (
            "sent",
            "Ada@Example.org",
            NOW + timedelta(minutes=1),
        )
        ada = store.subscriber_states()["ada@example.org"]
        assert (ada.id, ada.active, ada.pending, ada.last_digest_at) == (1, True, 1, NOW)
        [pending] = store.pending_matches(1)
        assert (pending.paper.title, pending.subscription_terms, pending.scores) == (
            "Paper 2",
            (("diffusion",),),
            (1.5,),
        )
        expected = Stats()
        for n in (1, 2):
            expected.observe_paper(Paper(f"Paper {n}", f"Abstract {n}."))
        assert store.stats() == expected
        state = store.get_state("last_pass")
        assert state is not None
        assert state.value == "ok"
        # The sequences and constraints still work: new rows follow the old ones.
        outcome = store.ingest(
            path="/d/next.txt",
            sha256="b" * 64,
            size=1,
            page_date=None,
            papers=[],
            warnings=0,
            now=NOW,
        )
        assert outcome.dump_id == 2
        with pytest.raises(StoreError):
            store.record_refused(path="/d/again", sha256="a" * 64, size=1, error="x", now=NOW)
    finally:
        store.close()


def test_opening_an_upgraded_database_again_migrates_nothing(
    database_url: str, engine: Engine, mailer_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(database_url)
    mailer_log.clear()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("no migration should run on a database at head")

    monkeypatch.setattr(command, "upgrade", refuse)
    monkeypatch.setattr(command, "stamp", refuse)
    open_store(database_url)
    assert revision(engine) == HEAD
    assert mailer_log == []


def test_a_database_from_a_newer_mailer_is_refused_naming_its_revision(
    database_url: str, engine: Engine
) -> None:
    open_store(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999_from_the_future'"))
    with pytest.raises(StoreError, match=r"newer mailer \(revision 0999_from_the_future\)") as err:
        open_store(database_url)
    assert "upgrade mailer" in str(err.value)
    assert revision(engine) == "0999_from_the_future"


def test_a_database_with_only_some_of_mailers_tables_is_refused(
    database_url: str, engine: Engine
) -> None:
    old_schema.dumps.create(engine)
    with pytest.raises(StoreError, match="has some of mailer's tables but not") as err:
        open_store(database_url)
    assert "papers" in str(err.value)
    assert revision(engine) is None


def test_mailers_starting_together_migrate_once(database_url: str, engine: Engine) -> None:
    """Each opens its own engine; the lock makes the losers wait and find head."""
    barrier, errors = threading.Barrier(4), []

    def start() -> None:
        barrier.wait()
        try:
            open_store(database_url)
        except Exception as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert revision(engine) == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.parametrize("made_by", ["migrations", "0.1.0"])
def test_the_models_match_what_the_migrations_build(
    database_url: str, engine: Engine, made_by: str
) -> None:
    """Catches a model change shipped without a revision in mailer/migrations/versions/."""
    if made_by == "0.1.0":
        fill_old_database(engine)
    open_store(database_url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert differences == []


def test_sqlite_foreign_keys_are_enforced_again_after_migrating(tmp_path: Path) -> None:
    """Migrating turns them off (SQLite's ALTER procedure); the pooled connection
    the store goes on to use must have them back on."""
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()


def test_a_new_revision_follows_the_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "MIGRATIONS", copy)
    made = migrate.new_revision("Add corpus statistics!")
    number = int(HEAD.split("_", 1)[0]) + 1
    assert made == copy / "versions" / f"{number:04d}_add_corpus_statistics.py"
    script = ScriptDirectory.from_config(migrate.alembic_config())
    new = script.get_revision(f"{number:04d}_add_corpus_statistics")
    assert new is not None
    assert new.down_revision == HEAD
    assert script.get_current_head() == new.revision


def test_an_autogenerated_revision_of_unchanged_models_has_no_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "MIGRATIONS", copy)
    made = migrate.new_revision("nothing yet", autogenerate=True)
    body = made.read_text()
    assert f"down_revision: str | None = {HEAD!r}" in body
    assert "op." not in body.split("def upgrade", 1)[1]


def test_0003_fills_the_email_key_of_every_stored_subscriber(
    database_url: str, engine: Engine
) -> None:
    """Rows stored before the key existed are found by it, however spelt."""
    with engine.connect() as conn:
        config = migrate.alembic_config(conn)
        with conn.begin():
            command.upgrade(config, "0002_corpus_statistics")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers (email, name, active, created_at) "
                "VALUES (:email, '', :active, :now)"
            ),
            [
                {"email": email, "active": True, "now": NOW}
                for email in ("ann@ÉCOLE.example", "Ülrich@Example.org", "not an address")
            ],
        )
    store = Store(database_url)
    try:
        with engine.connect() as conn:
            keys = conn.execute(text("SELECT email, email_key FROM subscribers ORDER BY id")).all()
        assert [tuple(k) for k in keys] == [
            ("ann@ÉCOLE.example", "ann@xn--cole-9oa.example"),
            ("Ülrich@Example.org", "ülrich@example.org"),
            ("not an address", "not an address"),
        ]
        assert store.unsubscribe("ann@école.example", NOW)
        assert store.unsubscribed_at("ANN@ÉCOLE.EXAMPLE") == NOW
    finally:
        store.close()
