"""Several daemons on one database (mailer.cluster): the claims on outbox
rows and the node heartbeats in the store, on SQLite and PostgreSQL; then
three real daemons on one PostgreSQL database, one of them killed or cut
off mid-send, and every digest delivered with no message sent by two live
nodes."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, make_url, text

from mailer.cluster import ClusterNode, Node
from mailer.errors import LockLostError
from mailer.pipeline.send import SEND_CHUNK
from mailer.store import NodeBeat, Outgoing, Store
from tests.conftest import free_port
from tests.process import Mailer
from tests.proxy import TcpProxy
from tests.test_cli import copy_seeds, mailer
from tests.test_faults import config_text
from tests.waiting import wait_for

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


def test_a_lone_node_claims_in_memory_and_its_sent_messages_name_it(store: Store) -> None:
    ids = queued(store, 5)
    node = Node(store, node="lone", lease=LEASE)
    first = node.claim(NOW, 2)
    second = node.claim(NOW, 2)
    assert [r.id for r in first.rows + second.rows] == ids[:4], "its senders never share one"
    assert store.release_claims(None) == 0, "no claim written to the rows"
    node.claim(NOW, 2, sent=[(i, "250") for i in ids[:2]])
    node.settle([(ids[2], "250")], NOW)
    assert store.sent_by_node(NOW - timedelta(hours=1)) == {"lone": 3}


def test_a_step_records_the_sent_claims_the_next_and_cancels_the_unwanted(store: Store) -> None:
    ids = queued(store, 3)
    store.unsubscribe("ada@example.org", NOW)
    claimed = store.settle_and_claim([(ids[0], "250")], NOW, "a", NOW, lease=LEASE, limit=10)
    assert [r.id for r in claimed.rows] == ids[1:]
    assert set(claimed.cancelled) == set(ids[1:])
    assert "unsubscribed" in claimed.cancelled[ids[1]]
    status = {d.id: d.status for d in store.deliveries()}
    assert status == {ids[0]: "sent", ids[1]: "cancelled", ids[2]: "cancelled"}


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


# --- nodes on one PostgreSQL database, in-process -------------------------------------


@pytest.fixture
def pg_store(fresh_postgres: str) -> Iterator[Store]:
    s = Store(fresh_postgres)
    yield s
    s.close()


@pytest.mark.postgres
def test_one_node_leads_and_another_takes_over_when_its_session_is_cut(
    pg_store: Store, fresh_postgres: str
) -> None:
    url = make_url(fresh_postgres)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        first = ClusterNode(pg_store, via_proxy, node="first", lease=LEASE)
        second = ClusterNode(pg_store, fresh_postgres, node="second", lease=LEASE)
        try:
            assert first.join() is True
            assert second.join() is False
            assert second.beat() is False, "a follower with nothing to send has no pass to run"
            first.fence()
            proxy.cut()
            with pytest.raises(LockLostError, match="node first lost its hold on database"):
                first.fence()
            assert not first.leading
            # The server ends the cut session (and frees its locks) once it sees the reset.
            took = []

            def beat() -> bool:
                took.append(second.beat())
                return second.leading

            wait_for(beat, timeout=10, what="the second node to take leadership")
            assert took[-1] is True, "the new leader runs a pass at once"
            proxy.restore()
            assert first.join() is False, "back as a follower"
        finally:
            first.leave()
            second.leave()


@pytest.mark.postgres
def test_nodes_share_the_connections_and_never_open_more_than_allowed(
    pg_store: Store, fresh_postgres: str
) -> None:
    nodes = [ClusterNode(pg_store, fresh_postgres, node=f"n{i}", lease=LEASE) for i in range(3)]
    try:
        for node in nodes:
            node.join()
            node.beat()
        for node in nodes:
            node.beat()  # each now counts three nodes alive
        taken = [node.take_connections(4, 4) for node in nodes]
        assert taken == [2, 2, 0], "at most a share each, and 4 in all"
        nodes[0].give_connections()
        assert nodes[2].take_connections(4, 4) == 2
        assert all(node.alive() for node in nodes)
    finally:
        for node in nodes:
            node.give_connections()
            node.leave()


# --- three daemons on one PostgreSQL database ------------------------------------------

SUBSCRIBERS = 300
CONNECTIONS = 3  # [smtp] max_connections, for the whole cluster
CLUSTER_LEASE = 5.0  # [daemon] lease_seconds
SINK_DELAY = 0.05  # the server takes this long over each message, so a kill lands mid-send


@dataclass(frozen=True)
class Delivery:
    """One message the server accepted, from the node named by its EHLO."""

    message_id: str
    recipient: str
    node: str
    at: float  # time.monotonic() when its DATA began


class RecordingSink:
    """An SMTP server's handler that records which node delivered what, and when."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        at = time.monotonic()
        await asyncio.sleep(SINK_DELAY)
        parsed = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        self.deliveries.append(
            Delivery(str(parsed["Message-ID"]), envelope.rcpt_tos[0], session.host_name or "", at)
        )
        return "250 Message accepted for delivery"

    def by(self, node: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.node == node]


@pytest.fixture
def sink() -> Iterator[tuple[RecordingSink, int]]:
    handler, port = RecordingSink(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


class Cluster:
    """Daemons (``mailer run`` processes) on one database and one watch folder,
    each with a folder of its own and its node id as its EHLO name."""

    def __init__(self, tmp_path: Path, smtp_port: int, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.smtp_port = smtp_port
        self.database_url = database_url
        self.dumps = tmp_path / "dumps"
        self.dumps.mkdir()
        self.nodes: dict[str, Mailer] = {}
        self.subscribers = [
            (f"reader{i:03d}@example.org", "instant", "UTC") for i in range(SUBSCRIBERS)
        ]

    def start(self, node: str, database_url: str | None = None) -> Mailer:
        folder = self.tmp_path / node
        folder.mkdir()
        (folder / "dumps").symlink_to(self.dumps)
        extra = (
            f'local_hostname = "{node}"\n'
            f'[daemon]\nnode_id = "{node}"\nlease_seconds = {CLUSTER_LEASE}\n'
        )
        body = config_text(folder, self.smtp_port, subscribers=self.subscribers, interval=0.5)
        body = body.replace(
            f'url = "sqlite:///{folder / "mailer.db"}"',
            f'url = "{database_url or self.database_url}"',
        )
        body = body.replace("max_connections = 2", f"max_connections = {CONNECTIONS}")
        body = body.replace(
            'sender = "Paper Digest <digest@example.org>"\n',
            'sender = "Paper Digest <digest@example.org>"\n' + extra,
        )
        config = folder / "config.toml"
        config.write_text(body, encoding="utf-8")
        daemon = self.nodes[node] = Mailer(config, "run")
        return daemon

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every daemon still running; their exit statuses."""
        running = {n: m for n, m in self.nodes.items() if m.proc.poll() is None}
        for daemon in running.values():
            daemon.proc.send_signal(signal.SIGTERM)
        return {n: m.finish() for n, m in running.items()}

    def kill_all(self) -> None:
        for daemon in self.nodes.values():
            daemon.kill()

    def outbox(self) -> dict[str, tuple[str, str | None]]:
        """Message-ID -> (status, the node that claimed it last), from the database."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT message_id, status, claimed_by FROM deliveries")
                ).all()
        finally:
            engine.dispose()
        return {mid: (status, node) for mid, status, node in rows}


def wait_for_sends(sink: RecordingSink, node: str, count: int, after: int = 0) -> None:
    """Wait until ``node`` has delivered ``count`` messages beyond the first ``after``."""
    wait_for(
        lambda: len(sink.by(node)) >= after + count,
        timeout=120,
        what=f"{count} more messages from {node}",
    )


def check_deliveries(cluster: Cluster, sink: RecordingSink, gone: set[str]) -> None:
    """What three daemons must guarantee together, whatever happened to the ``gone`` ones."""
    outbox = cluster.outbox()
    assert len(outbox) == SUBSCRIBERS, "one digest per subscriber, composed once"
    assert {status for status, _ in outbox.values()} == {"sent"}
    delivered: dict[str, list[Delivery]] = defaultdict(list)
    for d in sink.deliveries:
        delivered[d.message_id].append(d)
    assert delivered.keys() == outbox.keys(), "every digest delivered"
    assert {d.recipient for d in sink.deliveries} == {e for e, _, _ in cluster.subscribers}
    repeated = {mid: ds for mid, ds in delivered.items() if len(ds) > 1}
    for ds in repeated.values():
        # A repeat comes only from a node that died (or was cut off) with the
        # message sent but not yet recorded: the same Message-ID, sent again
        # after its claim ran out. Two live claims never send one message.
        assert [d.node for d in ds[:-1]] == [d.node for d in ds[:-1] if d.node in gone], ds
        assert ds[-1].node not in gone or len({d.node for d in ds}) == 1, ds
    # The window: what each gone node had on the wire or sent unrecorded.
    assert len(repeated) <= SEND_CHUNK * CONNECTIONS * len(gone)
    for mid, (_, node) in outbox.items():
        assert node == delivered[mid][-1].node, "recorded under the claim that sent it last"


@pytest.mark.postgres
@pytest.mark.slow
def test_three_daemons_deliver_every_digest_when_the_leader_and_then_a_sender_are_killed(
    tmp_path: Path, fresh_postgres: str, sink: tuple[RecordingSink, int]
) -> None:
    server, port = sink
    cluster = Cluster(tmp_path, port, fresh_postgres)
    try:
        first = cluster.start("node-a")
        first.wait_logged("node=node-a is now the leader")
        for name in ("node-b", "node-c"):
            cluster.start(name).wait_logged(f"node={name} follows the leader")
        copy_seeds(cluster.dumps)

        wait_for_sends(server, "node-a", 20)
        first.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        others = {n: cluster.nodes[n] for n in ("node-b", "node-c")}
        wait_for(
            lambda: any(m.logged("is now the leader") for m in others.values()),
            timeout=CLUSTER_LEASE,
            what="a new leader within lease_seconds",
        )
        assert time.monotonic() - killed_at <= CLUSTER_LEASE
        leader = next(n for n, m in others.items() if m.logged("is now the leader"))
        sender = next(n for n in others if n != leader)
        wait_for_sends(server, sender, 10, after=len(server.by(sender)))
        cluster.nodes[sender].proc.send_signal(signal.SIGKILL)

        wait_for(
            lambda: (
                {d.message_id for d in server.deliveries} >= cluster.outbox().keys()
                and len(cluster.outbox()) == SUBSCRIBERS
            ),
            timeout=180,
            what="every digest delivered by the survivor",
        )
        status = mailer(
            "--config", str(tmp_path / leader / "config.toml"), "status", "--json", cwd=tmp_path
        )
        codes = cluster.stop_all()
    finally:
        cluster.kill_all()
    assert codes == {leader: 0}, cluster.nodes[leader].log
    check_deliveries(cluster, server, gone={"node-a", sender})
    assert status.returncode == 0, status.stderr
    nodes = {n["id"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes.keys() == {"node-a", "node-b", "node-c"}
    assert (nodes[leader]["role"], nodes[leader]["alive"]) == ("leader", True)
    assert sum(n["sent_last_hour"] for n in nodes.values()) == SUBSCRIBERS


@pytest.mark.postgres
@pytest.mark.slow
def test_a_leader_cut_off_from_postgresql_stops_sending_and_rejoins_when_the_network_returns(
    tmp_path: Path, fresh_postgres: str, sink: tuple[RecordingSink, int]
) -> None:
    server, port = sink
    url = make_url(fresh_postgres)
    cluster = Cluster(tmp_path, port, fresh_postgres)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(host="127.0.0.1", port=proxy.port)
        try:
            first = cluster.start("node-a", via_proxy.render_as_string(hide_password=False))
            first.wait_logged("node=node-a is now the leader")
            for name in ("node-b", "node-c"):
                cluster.start(name).wait_logged(f"node={name} follows the leader")
            copy_seeds(cluster.dumps)

            wait_for_sends(server, "node-a", 20)
            proxy.cut()
            cut_at = time.monotonic()
            others = [cluster.nodes[n] for n in ("node-b", "node-c")]
            wait_for(
                lambda: any(m.logged("is now the leader") for m in others),
                timeout=CLUSTER_LEASE,
                what="a new leader within lease_seconds",
            )
            first.wait_logged("node node-a lost its hold on database")
            wait_for(
                lambda: (
                    {d.message_id for d in server.deliveries} >= cluster.outbox().keys()
                    and len(cluster.outbox()) == SUBSCRIBERS
                ),
                timeout=180,
                what="every digest delivered by the other two",
            )
            proxy.restore()
            wait_for(
                lambda: sum("node=node-a follows the leader" in line for line in first.lines) == 1,
                timeout=60,
                what="the cut-off node to rejoin as a follower",
            )
            codes = cluster.stop_all()
        finally:
            cluster.kill_all()
    assert codes == {"node-a": 0, "node-b": 0, "node-c": 0}, first.log
    after_cut = [d for d in server.by("node-a") if d.at > cut_at]
    assert len(after_cut) <= CONNECTIONS, "at most the sends already on the wire at the cut"
    check_deliveries(cluster, server, gone={"node-a"})
