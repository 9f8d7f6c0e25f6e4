"""``mailer subs list``'s reads (mailer.store.listing): the driver alone reads
what the Store reads, and leaves to the Store any database it should not read."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from mailer import migrate
from mailer.errors import StoreError
from mailer.store import Origin, Profile, Store
from mailer.store.listing import Listing, read_only, stored_listing
from tests.test_cli import mailer
from tests.test_migrations import fill_old_database, revision

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
BOB = Profile(
    "bob@example.org",
    "Bob",
    "daily 08:00",
    "Europe/London",
    20,
    (("Agents", "agents"), ("RL", "reinforcement learning")),
)


def sign_up(store: Store, profile: Profile, confirm: bool = True) -> int:
    made = store.web.sign_up(profile, NOW, f"nonce-{profile.email}")
    if confirm:
        assert store.web.confirm(made.subscriber_id, f"nonce-{profile.email}", NOW) == "confirmed"
    return made.subscriber_id


@pytest.fixture
def filled(database_url: str) -> str:
    """Config subscribers, one unsubscribed, and web ones in every state."""
    store = Store(database_url)
    try:
        store.sync_subscribers(
            [
                ("Ada@Example.org", "Ada", [("LLM", "llm")]),
                ("grace@example.org", "", [("A", "agents"), ("B", "bandits")]),
            ],
            NOW,
        )
        store.unsubscribe("grace@example.org", NOW + timedelta(hours=1, microseconds=7))
        sign_up(store, BOB)
        paused = sign_up(store, replace(BOB, email="dan@example.org", subscriptions=()))
        store.web.pause(paused, date(2026, 12, 1), NOW)
        sign_up(store, replace(BOB, email="carol@example.org", max_papers=None), confirm=False)
        removed = sign_up(store, replace(BOB, email="eve@example.org"))
        store.web.remove(removed, NOW)
        sign_up(store, replace(BOB, email="fay@example.org"))
        store.unsubscribe("fay@example.org", NOW + timedelta(days=2))
    finally:
        store.close()
    return database_url


def test_the_driver_alone_reads_what_the_store_reads(filled: str) -> None:
    quick = read_only(filled)
    store = Store(filled)
    try:
        assert quick is not None
        assert quick == store.listing()
    finally:
        store.close()
    assert quick.unsubscribed == {
        "grace@example.org": NOW + timedelta(hours=1, microseconds=7),
        "fay@example.org": NOW + timedelta(days=2),
    }
    assert [(w.email, w.status) for w in quick.web] == [
        ("bob@example.org", "active"),
        ("dan@example.org", "paused"),
        ("carol@example.org", "pending"),
        ("eve@example.org", "removed"),
        ("fay@example.org", "unsubscribed"),
    ]
    assert quick.web[0].subscriptions == BOB.subscriptions
    assert quick.web[0].created_at.tzinfo is UTC
    assert quick.web[1].paused_until == date(2026, 12, 1)


def test_the_listing_says_what_the_stores_other_reads_say(filled: str) -> None:
    store = Store(filled)
    try:
        listing = store.listing()
        states = store.subscriber_states()
        assert listing.unsubscribed == {
            key: state.unsubscribed_at for key, state in states.items() if state.unsubscribed_at
        }
        web_ids = [state.id for state in states.values() if state.origin == Origin.WEB]
        assert [w.id for w in listing.web] == web_ids
        assert listing.web == [store.web.get(w.id) for w in listing.web]
        assert listing.web == store.web.listing()
    finally:
        store.close()


def test_a_database_at_an_older_revision_is_left_to_the_store_which_migrates_it(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        fill_old_database(engine)
        assert read_only(database_url) is None
        assert stored_listing(database_url) == Listing()
        assert revision(engine) == migrate.head()
    finally:
        engine.dispose()


def test_a_database_from_a_newer_mailer_is_left_to_the_store_which_refuses_it(
    filled: str,
) -> None:
    engine = create_engine(filled)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    finally:
        engine.dispose()
    assert read_only(filled) is None
    with pytest.raises(StoreError, match="migrated by a newer mailer"):
        stored_listing(filled)


def test_a_damaged_file_is_left_to_the_store_which_names_it(tmp_path: Path) -> None:
    damaged = tmp_path / "mailer.db"
    damaged.write_bytes(b"not a database\n" * 512)
    url = f"sqlite:///{damaged}"
    assert read_only(url) is None
    with pytest.raises(StoreError, match="is damaged or not a SQLite database"):
        stored_listing(url)


def test_reading_with_the_driver_leaves_the_sqlite_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "mailer.db"
    Store(f"sqlite:///{path}").close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_only(f"sqlite:///{path}") == Listing()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///mailer.db?timeout=5",
        "sqlite:///a%20b.db",
        "postgresql://postgres@127.0.0.1/test",  # psycopg2, SQLAlchemy's default driver
    ],
)
def test_urls_the_driver_path_does_not_read_are_left_to_the_store(url: str) -> None:
    assert read_only(url) is None


def test_subs_list_migrates_a_database_at_an_older_revision_then_lists(tmp_path: Path) -> None:
    database = tmp_path / "mailer.db"
    engine = create_engine(f"sqlite:///{database}")
    try:
        fill_old_database(engine)
    finally:
        engine.dispose()
    config = tmp_path / "config.toml"
    config.write_text(
        '[[subscribers]]\nemail = "ada@example.org"\n'
        '[[subscribers.subscriptions]]\nname = "diffusion"\nquery = "diffusion"\n',
        encoding="utf-8",
    )
    done = mailer("--config", str(config), "subs", "list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ada@example.org" in done.stdout
    assert "1 subscribers in" in done.stdout
    engine = create_engine(f"sqlite:///{database}")
    try:
        assert revision(engine) == migrate.head()
    finally:
        engine.dispose()
