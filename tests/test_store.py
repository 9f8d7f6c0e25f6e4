"""The store, on a SQLite file and on PostgreSQL: ingest once, diff, claim, deliver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, cast, event, func, insert
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from mailer.analysis import Stats
from mailer.errors import StoreError
from mailer.papers import Paper
from mailer.store import MatchRow, NewMatch, Outgoing, PaperRow, Store
from mailer.store.schema import MATCHES, SUBSCRIPTIONS

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
A = Paper("Diffusion Models Beat GANs", "We show diffusion models win.", authors=3, upvotes=2)
B = Paper("Score Matching, Revisited", "Score matching again.", organization="Acme")
C = Paper("Agents That Plan", "Planning agents.")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


def ingest(store: Store, sha: str, papers: list[Paper], now: datetime = NOW) -> tuple[int, int]:
    outcome = store.ingest(
        path=f"/d/{sha}.txt",
        sha256=sha,
        size=1,
        page_date=None,
        papers=papers,
        warnings=0,
        now=now,
    )
    return outcome.new_papers, outcome.seen_papers


def queue(store: Store, sid: int, message_id: str, match_ids: list[int] | None = None) -> int:
    message = Outgoing(sid, "ada@example.org", message_id, "s", b"bytes", match_ids or [])
    (delivery_id,) = store.enqueue_many([message], NOW)
    return delivery_id


def subscribe(store: Store, email: str = "ada@example.org") -> int:
    return store.sync_subscribers([(email, "Ada", [("Diffusion", "diffusion")])], NOW)[email]


def test_papers_from_a_dump_are_new_once(store: Store) -> None:
    assert ingest(store, "h1", [A, B]) == (2, 0)
    assert ingest(store, "h2", [A, B, C]) == (1, 2)
    assert store.count_papers() == 3


def test_same_title_differently_cased_is_the_same_paper(store: Store) -> None:
    ingest(store, "h1", [A])
    shouting = Paper(A.title.upper() + "!", A.abstract)
    assert ingest(store, "h2", [shouting]) == (0, 1)


def test_a_dump_is_found_by_its_content_hash(store: Store) -> None:
    ingest(store, "h1", [A])
    found = store.dump_by_hash("h1")
    assert found is not None
    assert found.records == 1
    assert found.new_papers == 1
    assert store.dump_by_hash("other") is None


def test_ingesting_the_same_hash_twice_is_refused_by_the_database(store: Store) -> None:
    ingest(store, "h1", [A])
    with pytest.raises(StoreError):
        ingest(store, "h1", [B])
    assert store.count_papers() == 1


def test_seen_again_paper_keeps_highest_upvotes(store: Store) -> None:
    ingest(store, "h1", [A])
    ingest(store, "h2", [Paper(A.title, A.abstract, authors=3, upvotes=9)])
    assert store.unmatched_papers()[0][1].upvotes == 9


def test_ingest_in_batches_keeps_first_sighting_and_fills_in_what_was_missing(
    store: Store,
) -> None:
    """Pins every column ingest writes, across batches and repeated titles, so a
    faster ingest path cannot drift from the one it replaced."""
    old = [
        Paper("Alpha", "a1", authors=3, upvotes=5),
        Paper("Beta", "b1"),
        Paper("Gamma", "g1", organization="Acme", upvotes=1),
    ]
    first = store.ingest(
        path="/d/1.txt", sha256="h1", size=10, page_date=date(2026, 11, 20),
        papers=old, warnings=2, now=NOW - timedelta(days=1), batch=2,
    )  # fmt: skip
    again = [
        Paper("ALPHA!", "a2", authors=7, organization="Other", upvotes=2),
        Paper("beta", "b2", authors=4, organization="Org", published=date(2026, 1, 2), upvotes=8),
        Paper("Delta", "d1", published=date(2026, 3, 4), upvotes=1),
        Paper("Delta.", "d2", upvotes=9),
        Paper("Gamma", "g2", organization="Else", published=date(2026, 5, 6), upvotes=0),
    ]
    second = store.ingest(
        path="/d/2.txt", sha256="h2", size=20, page_date=None,
        papers=again, warnings=0, now=NOW, batch=2,
    )  # fmt: skip
    empty = store.ingest(
        path="/d/3.txt", sha256="h3", size=0, page_date=None,
        papers=[], warnings=1, now=NOW, batch=2,
    )  # fmt: skip
    assert (first.new_papers, first.seen_papers) == (3, 0)
    assert (second.new_papers, second.seen_papers) == (1, 3)
    assert (empty.new_papers, empty.seen_papers) == (0, 0)
    fields = attrgetter(
        "id", "path", "size", "page_date", "records", "new_papers", "seen_papers", "warnings",
        "status", "error",
    )  # fmt: skip
    dumps = [fields(d) for d in store.dumps()]
    assert dumps == [
        (first.dump_id, "/d/1.txt", 10, date(2026, 11, 20), 3, 3, 0, 2, "ingested", None),
        (second.dump_id, "/d/2.txt", 20, None, 5, 1, 3, 0, "ingested", None),
        (empty.dump_id, "/d/3.txt", 0, None, 0, 0, 0, 1, "empty", None),
    ]
    with Session(store.engine) as s:
        paper_fields = attrgetter(
            "key", "title", "abstract", "authors", "organization", "published", "upvotes",
        )  # fmt: skip
        rows = [
            (*paper_fields(r), r.first_seen_at.replace(tzinfo=None), r.first_dump_id, r.matched)
            for r in s.exec(select(PaperRow).order_by(col(PaperRow.id)))
        ]
    earlier, now = (NOW - timedelta(days=1)).replace(tzinfo=None), NOW.replace(tzinfo=None)
    assert rows == [
        ("alpha", "Alpha", "a1", 3, "Other", None, 5, earlier, first.dump_id, False),
        ("beta", "Beta", "b1", 4, "Org", date(2026, 1, 2), 8, earlier, first.dump_id, False),
        ("gamma", "Gamma", "g1", None, "Acme", date(2026, 5, 6), 1, earlier, first.dump_id, False),
        ("delta", "Delta", "d1", None, None, date(2026, 3, 4), 1, now, second.dump_id, False),
    ]


def test_refused_dump_is_recorded_with_its_error(store: Store) -> None:
    store.record_refused(path="/d/bin", sha256="bad", size=4, error="not a dump", now=NOW)
    (row,) = store.dumps()
    assert (row.status, row.error) == ("refused", "not a dump")


def match(subscriber_id: int, paper_id: int) -> NewMatch:
    return NewMatch(
        subscriber_id, paper_id, ("Diffusion",), (("diffusion",),), (1.0,), ("diffusion",)
    )


def test_matches_mark_papers_matched(store: Store) -> None:
    sid = subscribe(store)
    ingest(store, "h1", [A, B])
    ids = [pid for pid, _ in store.unmatched_papers()]
    store.record_matches(ids, [match(sid, ids[0])], NOW)
    assert store.unmatched_papers() == []
    (pending,) = store.pending_matches(sid)
    assert pending.paper.title == A.title
    assert pending.subscription_terms == (("diffusion",),)


def stored_matches(store: Store, subscriber_id: int) -> list[tuple[object, ...]]:
    """A subscriber's match rows as stored: JSON columns as their text and
    their JSON type (a string would read back the same through ``cast``)."""
    json_columns = [
        MATCHES.c.subscriptions,
        MATCHES.c.terms,
        MATCHES.c.scores,
        MATCHES.c.subscription_terms,
    ]
    with store.transaction() as conn:
        kind = func.json_typeof if conn.dialect.name == "postgresql" else func.json_type
        query = (
            sa_select(
                MATCHES.c.paper_id,
                MATCHES.c.created_at,
                MATCHES.c.delivery_id,
                *(cast(c, String) for c in json_columns),
                *(kind(c) for c in json_columns),
            )
            .where(MATCHES.c.subscriber_id == subscriber_id)
            .order_by(MATCHES.c.id)
        )
        return [tuple(row) for row in conn.execute(query)]


def test_recorded_matches_are_stored_as_a_core_insert_stores_them(store: Store) -> None:
    recorded, inserted = subscribe(store), subscribe(store, "bob@example.org")
    ingest(store, "h1", [A, B, C])
    ids = [pid for pid, _ in store.unmatched_papers()]
    values = [
        (("Diffusion",), (("diffusion",),), (1.0,), ("diffusion",)),
        (('Café "x"', "Second"), (("café", "b*"), ()), (0.1, 2.5e-20), ("café", "b*")),
        (("Second",), ((),), (3.0,), ()),
    ]
    store.record_matches(
        ids, [NewMatch(recorded, p, *v) for p, v in zip(ids, values, strict=True)], NOW
    )
    with store.transaction() as conn:
        conn.execute(
            insert(MATCHES),
            [
                {
                    "subscriber_id": inserted,
                    "paper_id": p,
                    "subscriptions": list(names),
                    "terms": list(terms),
                    "scores": list(scores),
                    "subscription_terms": [list(t) for t in each],
                    "created_at": NOW,
                }
                for p, (names, each, scores, terms) in zip(ids, values, strict=True)
            ],
        )
    assert stored_matches(store, recorded) == stored_matches(store, inserted)
    assert [m.subscription_terms for m in store.pending_matches(recorded)] == [v[1] for v in values]


def test_a_batch_of_matches_is_stored_subscriber_by_subscriber_in_their_order(
    store: Store,
) -> None:
    ada, bob = subscribe(store), subscribe(store, "bob@example.org")
    ingest(store, "h1", [A, B, C])
    ids = [pid for pid, _ in store.unmatched_papers()]
    store.record_matches(ids, [match(s, p) for p in ids for s in (bob, ada)], NOW)
    with store.transaction() as conn:
        rows = conn.execute(
            sa_select(MATCHES.c.subscriber_id, MATCHES.c.paper_id).order_by(MATCHES.c.id)
        ).all()
    assert [tuple(r) for r in rows] == [(s, p) for s in sorted((ada, bob)) for p in ids]


def test_equal_scores_are_written_as_json_writes_each(store: Store) -> None:
    sid = subscribe(store)
    ingest(store, "h1", [A, B, C])
    ids = [pid for pid, _ in store.unmatched_papers()]
    scores = [(0.0,), (-0.0,), (0.0,)]
    store.record_matches(
        ids,
        [NewMatch(sid, p, ("x",), (("x",),), s, ("x",)) for p, s in zip(ids, scores, strict=True)],
        NOW,
    )
    assert [row[5] for row in stored_matches(store, sid)] == ["[0.0]", "[-0.0]", "[0.0]"]


def test_pending_matches_carry_all_their_terms_and_the_papers_their_scores_counted(
    store: Store,
) -> None:
    sid = subscribe(store)
    ingest(store, "h1", [A, B])
    first, second = (pid for pid, _ in store.unmatched_papers())
    two = NewMatch(sid, first, ("x", "y"), (("b",), ("a",)), (1.0, 2.0), ("a", "b"))
    store.record_matches([first], [two], NOW, scored_papers=42)
    store.add_matches(sid, [NewMatch(sid, second, ("x",), (("c",),), (1.0,), ("c",))], NOW)
    assert [(m.terms, m.scored_papers) for m in store.pending_matches(sid)] == [
        (("a", "b"), 42),
        (("c",), None),
    ]


def test_unclaimed_matches_of_some_readers_are_read_through_the_pending_index(
    tmp_path: Path,
) -> None:
    """Not through every reader's unclaimed matches: SQLite once chose an
    index on delivery_id for this and read the whole backlog per chunk."""
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "FROM matches" in statement:
            statements.append((statement, params))

    try:
        sid = subscribe(store)
        event.listen(store.engine, "before_cursor_execute", seen)
        store.pending_matches_for([sid])
        event.remove(store.engine, "before_cursor_execute", seen)
        (statement, params), *_ = statements
        with store.engine.connect() as conn:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
    finally:
        store.close()
    assert any("USING INDEX ix_matches_pending" in row[-1] for row in plan), plan


def test_enqueue_claims_matches_so_they_are_not_sent_again(store: Store) -> None:
    sid = subscribe(store)
    ingest(store, "h1", [A])
    (pid,) = [pid for pid, _ in store.unmatched_papers()]
    store.record_matches([pid], [match(sid, pid)], NOW)
    match_ids = [m.id for m in store.pending_matches(sid)]
    delivery = queue(store, sid, "<1@x>", match_ids)
    assert store.pending_matches(sid) == []
    assert [d.id for d in store.due_deliveries(NOW)] == [delivery]
    with pytest.raises(StoreError, match="already claimed"):
        queue(store, sid, "<2@x>", match_ids)
    assert len(store.deliveries()) == 1


def test_enqueue_many_returns_the_ids_in_order_and_each_message_claims_its_matches(
    store: Store,
) -> None:
    sid = subscribe(store)
    ingest(store, "h1", [A, B])
    ids = [pid for pid, _ in store.unmatched_papers()]
    store.record_matches(ids, [match(sid, pid) for pid in ids], NOW)
    first, second = [m.id for m in store.pending_matches(sid)]
    messages = [
        Outgoing(sid, "ada@example.org", f"<{n}@x>", "s", b"bytes", claims)
        for n, claims in (("z", [second]), ("a", [first]), ("m", []))
    ]
    queued = store.enqueue_many(messages, NOW)
    by_id = {d.id: d.message_id for d in store.deliveries()}
    assert [by_id[i] for i in queued] == ["<z@x>", "<a@x>", "<m@x>"]
    assert [d.papers for d in store.deliveries()] == [1, 1, 0]
    with store.session() as session:
        claimed = {m.id: m.delivery_id for m in session.exec(select(MatchRow))}
    assert claimed == {second: queued[0], first: queued[1]}


def test_sent_delivery_is_no_longer_due(store: Store) -> None:
    sid = subscribe(store)
    did = queue(store, sid, "<1@x>")
    store.mark_sent(did, reply="250 ok", now=NOW)
    assert store.due_deliveries(NOW + timedelta(days=1)) == []
    (row,) = store.deliveries()
    assert (row.status, row.attempts, row.last_reply) == ("sent", 1, "250 ok")


def test_failed_attempt_waits_until_retry_time(store: Store) -> None:
    sid = subscribe(store)
    did = queue(store, sid, "<1@x>")
    later = NOW + timedelta(minutes=5)
    store.mark_attempt_failed(did, reply="451 later", permanent=False, retry_at=later)
    assert store.due_deliveries(NOW) == []
    assert [d.id for d in store.due_deliveries(later)] == [did]


def test_permanent_failure_is_never_due_again(store: Store) -> None:
    sid = subscribe(store)
    did = queue(store, sid, "<1@x>")
    store.mark_attempt_failed(did, reply="550 no such user", permanent=True, retry_at=None)
    assert store.due_deliveries(NOW + timedelta(days=9)) == []
    assert store.deliveries()[0].status == "failed"


def test_removed_subscriber_is_inactive_and_returns_with_history(store: Store) -> None:
    sid = subscribe(store)
    store.sync_subscribers([], NOW)
    assert store.active_subscriber_ids() == {}
    assert subscribe(store) == sid


def stored_subscriptions(store: Store) -> dict[str, tuple[str, bool]]:
    with store.transaction() as conn:
        rows = conn.execute(
            sa_select(SUBSCRIPTIONS.c.name, SUBSCRIPTIONS.c.query, SUBSCRIPTIONS.c.active)
        ).all()
    return {name: (query, bool(active)) for name, query, active in rows}


def test_subscriptions_follow_the_config_when_their_number_stays_the_same(store: Store) -> None:
    email = "ada@example.org"
    store.sync_subscribers([(email, "Ada", [("X", "x"), ("Y", "y")])], NOW)
    store.sync_subscribers([(email, "Ada", [("X", "x2"), ("Z", "z")])], NOW)
    assert stored_subscriptions(store) == {"X": ("x2", True), "Y": ("y", False), "Z": ("z", True)}
    store.sync_subscribers([(email, "Ada", [("X", "x2"), ("Y", "y"), ("Z", "z")])], NOW)
    assert stored_subscriptions(store) == {"X": ("x2", True), "Y": ("y", True), "Z": ("z", True)}


def test_a_resync_of_the_same_config_changes_nothing(store: Store) -> None:
    subscribers = [("ada@example.org", "Ada", [("X", "x")]), ("bob@example.org", "Bob", [])]
    first = store.sync_subscribers(subscribers, NOW)
    before = stored_subscriptions(store)
    assert store.sync_subscribers(subscribers, NOW + timedelta(days=1)) == first
    assert stored_subscriptions(store) == before
    assert store.active_subscriber_ids() == first


def test_a_renamed_subscriber_keeps_their_id_and_takes_the_new_spelling(store: Store) -> None:
    sid = subscribe(store)
    store.sync_subscribers([("Ada@Example.org", "Ada L.", [("Diffusion", "diffusion")])], NOW)
    assert store.active_subscriber_ids() == {"Ada@Example.org": sid}


def test_papers_since_returns_only_recent_ones(store: Store) -> None:
    ingest(store, "h1", [A], now=NOW - timedelta(days=10))
    ingest(store, "h2", [B], now=NOW)
    assert [p.title for _, p in store.papers_since(NOW - timedelta(days=7))] == [B.title]


def test_unusable_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not usable"):
        Store("nosuchdb://x")


# --- corpus statistics ---------------------------------------------------------------


def observed(*papers: Paper) -> Stats:
    stats = Stats()
    for paper in papers:
        stats.observe_paper(paper)
    return stats


def count(store: Store, *papers: Paper) -> None:
    """Mark the unmatched papers matched, counting ``papers`` as the match stage does."""
    ids = [pid for pid, _ in store.unmatched_papers()]
    store.record_matches(ids, [], NOW, observed(*papers))


def test_matched_papers_are_counted_with_their_matches(store: Store) -> None:
    ingest(store, "h1", [A, B])
    assert store.stats() == Stats()
    count(store, A, B)
    assert store.stats() == observed(A, B)


def test_statistics_add_up_over_batches(store: Store) -> None:
    ingest(store, "h1", [A])
    count(store, A)
    ingest(store, "h2", [A, B, C])
    count(store, B, C)
    assert store.stats() == observed(A, B, C)


def test_statistics_survive_a_restart(database_url: str) -> None:
    first = Store(database_url)
    ingest(first, "h1", [A, B])
    count(first, A, B)
    first.close()
    again = Store(database_url)
    assert again.stats() == observed(A, B)
    again.close()


def test_cached_statistics_follow_what_another_process_counted(database_url: str) -> None:
    daemon, other = Store(database_url), Store(database_url)
    ingest(daemon, "h1", [A])
    count(daemon, A)
    assert daemon.stats() is daemon.stats()
    ingest(other, "h2", [B])
    count(other, B)
    assert daemon.stats() == observed(A, B)
    daemon.close()
    other.close()


def test_an_empty_store_has_empty_statistics(store: Store) -> None:
    assert store.stats() == Stats()
