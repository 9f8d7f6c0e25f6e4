"""Several daemons on one database (mailer.cluster): the claims on outbox
rows and the node heartbeats in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mailer.store import NodeBeat, Outgoing, Store

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
LEASE = 60.0
RAN_OUT = -1.0  # a lease that ended a second ago: the claim of a node that died


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


def queued(store: Store, count: int) -> list[int]:
    email = "ada@example.org"
    sid = store.sync_subscribers([(email, "Ada", [("D", "diffusion")])], NOW)[email]
    return store.enqueue_many(
        [Outgoing(sid, email, f"<{n}@x>", "s", b"bytes", []) for n in range(count)], NOW
    )


def claim(store: Store, node: str, limit: int = 100, lease: float = LEASE) -> list[int]:
    return [r.id for r in store.claim_due(node, NOW, lease=lease, limit=limit) if r.id]


def test_a_claimed_message_is_not_claimed_again_while_its_claim_lasts(store: Store) -> None:
    ids = queued(store, 3)
    assert claim(store, "a", limit=2) == ids[:2]
    assert claim(store, "b") == ids[2:]
    assert claim(store, "a") == []
    assert store.claimable(NOW, limit=10) == 0
    rows = {r.id: r for r in store.deliveries()}
    assert [rows[i].claimed_by for i in ids] == ["a", "a", "b"]


def test_a_claim_that_ran_out_is_taken_over_by_another_node(store: Store) -> None:
    ids = queued(store, 2)
    assert claim(store, "dead", lease=RAN_OUT) == ids
    assert store.claimable(NOW, limit=10) == 2
    assert claim(store, "alive") == ids
    assert {r.claimed_by for r in store.deliveries()} == {"alive"}


def test_messages_not_due_or_excluded_are_not_claimed(store: Store) -> None:
    first, second = queued(store, 2)
    store.mark_attempt_failed(
        first, reply="451", permanent=False, retry_at=NOW + timedelta(minutes=5)
    )
    assert store.claim_due("a", NOW, lease=LEASE, limit=10, exclude={second}) == []
    assert claim(store, "a") == [second]


def test_nodes_claiming_at_once_get_disjoint_messages(store: Store) -> None:
    ids = queued(store, 40)
    nodes = [f"node{n}" for n in range(4)]
    got: dict[str, list[int]] = {}
    start = threading.Barrier(len(nodes))

    def take(node: str) -> None:
        start.wait()
        mine: list[int] = []
        while batch := claim(store, node, limit=3):
            mine += batch
        got[node] = mine

    threads = [threading.Thread(target=take, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    taken = [i for mine in got.values() for i in mine]
    assert sorted(taken) == ids, "every message claimed by exactly one node"


def test_renewing_extends_only_the_nodes_own_claims_that_still_last(store: Store) -> None:
    mine, theirs, lapsed = queued(store, 3)
    assert claim(store, "a", limit=1) == [mine]
    assert claim(store, "b", limit=1) == [theirs]
    assert claim(store, "a", limit=1, lease=RAN_OUT) == [lapsed]
    assert store.renew_claims("a", [mine, theirs, lapsed], lease=LEASE) == {mine}
    assert claim(store, "c") == [lapsed], "a claim that ran out stays out"


def test_released_claims_can_be_claimed_again_and_release_spares_other_nodes(
    store: Store,
) -> None:
    ids = queued(store, 3)
    claim(store, "a", limit=2)
    claim(store, "b")
    assert store.release_claims("a", [ids[0]]) == 1
    assert claim(store, "c") == [ids[0]]
    assert store.release_claims("a") == 1
    assert store.release_claims(None) == 2
    assert store.claimable(NOW, limit=10) == 3


def test_a_sent_message_keeps_the_node_that_sent_it(store: Store) -> None:
    first, second, third = queued(store, 3)
    claim(store, "a", limit=2)
    claim(store, "b")
    store.mark_sent_many([(first, "250"), (second, "250")], NOW)
    store.mark_sent(third, reply="250", now=NOW)
    assert store.sent_by_node(NOW - timedelta(hours=1)) == {"a": 2, "b": 1}
    assert store.sent_by_node(NOW + timedelta(seconds=1)) == {}
    assert store.release_claims(None) == 0, "a sent message holds no claim"


def beat(store: Store, node: str, role: str = "follower", lease: float = LEASE) -> int:
    return store.node_beat(NodeBeat(node, "host", 1, role, NOW), lease=lease)


def test_heartbeats_count_the_nodes_alive_and_not_the_stopped_or_silent(store: Store) -> None:
    assert beat(store, "a", "leader") == 1
    assert beat(store, "b") == 2
    assert beat(store, "c") == 3
    store.node_stopped("c")
    assert beat(store, "a", "leader") == 2
    assert beat(store, "a", "leader", lease=0.0) == 1, "only itself beat within no time"
    rows, now = store.node_rows()
    assert [(r.id, r.role) for r in rows] == [("a", "leader"), ("b", "follower"), ("c", "stopped")]
    assert all(abs((now - r.heartbeat_at).total_seconds()) < 60 for r in rows)


def test_send_slots_are_spaced_by_the_interval_whoever_takes_them(store: Store) -> None:
    waits = [store.take_send_slot(10.0) for _ in range(3)]
    assert waits[0] == pytest.approx(0.0, abs=1.0)
    assert waits[1] == pytest.approx(10.0, abs=1.0)
    assert waits[2] == pytest.approx(20.0, abs=1.0)
