"""The daemons sharing a database (mailer.cluster): their heartbeats, and
the moment the next message may go, shared so a send rate holds for all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, or_, select, update

from mailer.store.schema import NODES, SEND_RATE, NodeRow, Transaction, db_time, row_objects

# ``mailer status`` lists a node until it has been stopped this long (every
# ``mailer ingest`` is a node for its pass), or silent this long (it died).
FORGET_STOPPED = timedelta(minutes=10)
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """What a node says about itself at each heartbeat."""

    id: str
    host: str
    pid: int
    role: str
    started_at: datetime


class Nodes:
    """Reads and writes of the nodes and send_rate tables."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def beat(self, node: NodeBeat, *, lease: float) -> int:
        """Record ``node``'s heartbeat and role; returns how many nodes are
        alive (a heartbeat within ``lease`` seconds, not stopped), itself included."""
        with self._transaction() as conn:
            now = db_time(conn)
            changed = conn.execute(
                update(NODES)
                .where(NODES.c.id == node.id)
                .values(
                    host=node.host,
                    pid=node.pid,
                    role=node.role,
                    started_at=node.started_at,
                    heartbeat_at=now,
                )
            )
            if changed.rowcount == 0:
                conn.execute(
                    insert(NODES).values(
                        id=node.id,
                        host=node.host,
                        pid=node.pid,
                        role=node.role,
                        started_at=node.started_at,
                        heartbeat_at=now,
                    )
                )
            conn.execute(
                delete(NODES).where(
                    or_(
                        NODES.c.heartbeat_at < db_time(conn, -FORGET_AFTER.total_seconds()),
                        and_(
                            NODES.c.role == "stopped",
                            NODES.c.heartbeat_at < db_time(conn, -FORGET_STOPPED.total_seconds()),
                        ),
                    )
                )
            )
            alive = select(NODES.c.id).where(
                NODES.c.heartbeat_at > db_time(conn, -lease), NODES.c.role != "stopped"
            )
            return max(1, len(conn.execute(alive).all()))

    def stopped(self, node_id: str) -> None:
        """Mark a node that stopped cleanly, so no one waits for it."""
        with self._transaction() as conn:
            conn.execute(
                update(NODES)
                .where(NODES.c.id == node_id)
                .values(role="stopped", heartbeat_at=db_time(conn))
            )

    def nodes(self) -> tuple[list[NodeRow], datetime]:
        """The nodes not yet forgotten, oldest first, with the database's time
        now (heartbeats are by its clock)."""
        with self._transaction() as conn:
            now: datetime = conn.execute(select(db_time(conn))).scalar_one()
            rows = row_objects(conn, select(NodeRow).order_by(NODES.c.started_at, NODES.c.id))
        return rows, now

    def take_send_slot(self, interval: float) -> float:
        """Reserve the next moment a message may go, ``interval`` seconds after
        the one reserved before (by any node); returns the seconds to wait for it."""
        with self._transaction() as conn:
            found = conn.execute(
                select(SEND_RATE.c.next_at, db_time(conn))
                .where(SEND_RATE.c.id == 1)
                .with_for_update()
            ).first()
            if found is None:
                now: datetime = conn.execute(select(db_time(conn))).scalar_one()
                conn.execute(
                    insert(SEND_RATE).values(id=1, next_at=now + timedelta(seconds=interval))
                )
                return 0.0
            next_at: datetime = found[0]
            now = found[1]
            slot = max(next_at, now)
            conn.execute(
                update(SEND_RATE)
                .where(SEND_RATE.c.id == 1)
                .values(next_at=slot + timedelta(seconds=interval))
            )
            wait: float = (slot - now).total_seconds()
            return wait
