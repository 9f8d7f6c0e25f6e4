"""This daemon among the daemons on its database: its node id, heartbeat,
leadership, claims and share of the SMTP connections.

Several ``mailer run`` may share one PostgreSQL database. Each is a node
(``[daemon] node_id``, or host:pid) and beats its row of the nodes table
every third of ``[daemon] lease_seconds``. One node at a time leads: it
syncs the subscribers, ingests, matches and composes, so no two digests are
ever composed for a subscriber at once. Leadership is an advisory lock on
the node's own session (``mailer.lock.AdvisorySession``), fenced: it goes
with the session, a node checks it before each leader step and at every
heartbeat, and one that finds it gone stops leader work at once. A follower
tries to take it at every heartbeat, so a new leader follows within the lease.

Every node sends. It claims a few due messages at a time (``Store.claim_due``)
for ``lease_seconds``, renews its claims at every heartbeat, and starts a
send only while its claim has at least a heartbeat's time left and its
session answers: so a message is never sent by two live nodes, and the
claims of a dead or cut-off node run out and pass to the others, repeating
at most the messages it had on the wire. The cluster's ``max_connections``
are advisory locks too, one per SMTP connection, each node taking at most
its share.

A SQLite database has one node (the lock file, ``mailer.lock``), which always
leads and keeps its claims in memory; claims found in the database are those
of a process that died, given back at every pass.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import make_url

from mailer.config import Config
from mailer.errors import LockLostError, MailerError
from mailer.lock import ADVISORY_KEY, AdvisorySession, DatabaseLock, database_lock, lock_lost
from mailer.store import DeliveryRow, NodeBeat, Store

log = logging.getLogger("mailer")

# The leader's advisory lock: the key of the one-mailer lock of earlier
# releases, so an older mailer and a cluster never run on one database together.
LEADER_KEY = ADVISORY_KEY
# SMTP connection slot k of [smtp] max_connections is advisory lock SLOT_KEY + k ("mail" + k).
SLOT_KEY = 0x6D61696C0000


def node_id(config: Config) -> str:
    """This daemon's name: ``[daemon] node_id``, or host:pid."""
    return config.daemon.node_id or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(eq=False)
class Claim:
    """Messages one sender claimed, and until when (time.monotonic) it may
    start sending them: the lease, counted from before the claim was made
    or last renewed, so never later than the database's own end of it."""

    rows: list[DeliveryRow]
    deadline: float
    lost: set[int] = field(default_factory=set)  # rows a renewal found claimed by no one or another
    # Rows cancelled as they were claimed (their recipient unsubscribed), with why.
    cancelled: dict[int, str] = field(default_factory=dict)


class Node:
    """The one node of its database: it always leads. ``lock`` keeps other
    mailers off the database (a SQLite file's lock file); the base has none."""

    shared = False  # whether other nodes may share the database

    def __init__(
        self,
        store: Store,
        *,
        node: str | None = None,
        lease: float = 30.0,
        lock: DatabaseLock | None = None,
    ) -> None:
        self.store = store
        self.id = node or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self.lock = lock or DatabaseLock()
        self.leading = True
        self.live_nodes = 1
        self.started_at = datetime.now(UTC)
        self.lost = ""
        # Called from the heartbeat thread when a pass should run now.
        self.on_wake: Callable[[], None] | None = None
        self._claims: list[Claim] = []
        self._mutex = threading.Lock()
        self._claiming = threading.Lock()  # a lone node's claims, one at a time
        self._beating: threading.Thread | None = None
        self._stop = threading.Event()
        self._complaint = ""

    @property
    def guard(self) -> float:
        """A claim must have this much time left for a send to start: one
        heartbeat, which renews it, so a healthy node is never stopped."""
        return self.lease / 3

    @property
    def role(self) -> str:
        return "leader" if self.leading else "follower"

    # --- each pass -------------------------------------------------------------------

    def join(self) -> bool:
        """At the start of a pass: take the database's lock back if it was
        lost (AlreadyRunningError if another mailer took it), and give back
        every claim, all of them a dead process's. Returns whether this node leads."""
        if not self.lock.held():
            lost = self.lock.lost
            self.lock.reacquire()
            log.warning("regained the lock on database %s (it was lost: %s)", self.lock.name, lost)
        self.store.release_claims(None)
        return True

    def fence(self) -> None:
        """Raise LockLostError unless this node still leads."""
        if not self.leading or not self.alive():
            raise self.lost_error()

    def alive(self) -> bool:
        """Whether this node still holds what it runs on (one check, cheap
        enough before every send)."""
        if self.lock.held():
            return True
        self.lost = self.lock.lost
        return False

    def lost_error(self) -> LockLostError:
        return lock_lost(self.lock)

    # --- sending ---------------------------------------------------------------------

    def take_connections(self, want: int, total: int) -> int:
        """How many SMTP connections this node may open now, up to ``want``
        of the ``total`` allowed; give them back with ``give_connections``."""
        return min(want, total)

    def give_connections(self) -> None:
        """Give back what ``take_connections`` took."""

    def claim(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        sent: Sequence[tuple[int, str]] = (),
        sent_at: datetime | None = None,
    ) -> Claim:
        """Record ``sent`` (delivery id, server reply) as sent at ``sent_at``,
        claim up to ``limit`` due messages for this node and cancel those no
        longer wanted (``Claim.cancelled``), in one transaction; finish with
        ``done``. A node alone on its database keeps its claims in memory (one
        claim at a time, so its senders never take the same message): a claim
        written to a row rewrites the message's bytes with it on SQLite."""
        started = time.monotonic()
        with self._claiming if not self.shared else nullcontext():
            held = self._held() if not self.shared else set()
            claimed = self.store.settle_and_claim(
                sent,
                sent_at or now,
                self.id,
                now,
                lease=self.lease,
                limit=limit,
                exclude=held.union(exclude) if held else exclude,
                in_database=self.shared,
            )
            claim = Claim(claimed.rows, started + self.lease, cancelled=claimed.cancelled)
            if claimed.rows:
                with self._mutex:
                    self._claims.append(claim)
        return claim

    def _held(self) -> set[int]:
        """The messages this node's claims hold."""
        with self._mutex:
            return {r.id for c in self._claims for r in c.rows if r.id is not None}

    def settle(self, sent: Sequence[tuple[int, str]], now: datetime) -> None:
        """Record ``sent`` (delivery id, server reply) as sent at ``now``."""
        self.store.mark_sent_many(sent, now, node=None if self.shared else self.id)

    def may_send(self, claim: Claim, row: DeliveryRow) -> bool:
        """Whether ``row`` may go now: its claim has a heartbeat's time left
        and this node still holds what it runs on."""
        if row.id in claim.lost or time.monotonic() > claim.deadline - self.guard:
            self.lost = f"its claim on message {row.message_id} ran out"
            return False
        return self.alive()

    def done(self, claim: Claim, unsent: Collection[int]) -> None:
        """A sender is finished with ``claim``: the ``unsent`` rows go back."""
        with self._mutex:
            if claim in self._claims:
                self._claims.remove(claim)
        if unsent and self.shared:
            self.store.release_claims(self.id, unsent)

    # --- the heartbeat ----------------------------------------------------------------

    def start(self) -> None:
        """Beat now and then every third of the lease, in a thread, until ``leave``."""
        self._stop.clear()
        self._beating = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
        self._beating.start()

    def _beat_loop(self) -> None:
        period = self.lease / 3
        while True:
            try:
                if self.beat() and self.on_wake is not None:
                    self.on_wake()
            except Exception:
                # A bug must not end the heartbeat: its claims would run out.
                log.exception("node=%s heartbeat failed unexpectedly", self.id)
            if self._stop.wait(period):
                return

    def beat(self) -> bool:
        """One heartbeat: check or take leadership, write this node's row,
        renew its claims. Returns True when a pass should run now (this node
        just became the leader, or, following, sees messages waiting)."""
        started = time.monotonic()
        try:
            wake = self._check_leadership()
            self.live_nodes = self.store.node_beat(
                NodeBeat(self.id, socket.gethostname(), os.getpid(), self.role, self.started_at),
                lease=self.lease,
            )
            self._renew(started)
            if not self.leading:
                wake = wake or self.store.claimable(datetime.now(UTC), limit=1) > 0
        except MailerError as exc:
            self._complain(f"node={self.id} heartbeat failed: {exc.message}")
            return False
        self._complaint = ""
        return wake

    def _check_leadership(self) -> bool:
        """Verify or take leadership; True when this node just took it."""
        return False

    def _renew(self, started: float) -> None:
        with self._mutex:
            live = [c for c in self._claims if c.deadline > started]
        ids = {r.id for c in live for r in c.rows if r.id is not None and r.id not in c.lost}
        if not self.shared:  # claims in memory: no one else could take them
            renewed = ids
        else:
            renewed = self.store.renew_claims(self.id, ids, lease=self.lease) if ids else set()
        for c in live:
            c.lost |= {r.id for r in c.rows if r.id is not None and r.id not in renewed}
            c.deadline = started + self.lease

    def _complain(self, message: str) -> None:
        """Log a failing heartbeat once, not every few seconds while it lasts."""
        if message != self._complaint:
            log.warning("%s", message)
            self._complaint = message

    def leave(self) -> None:
        """Stop beating, give back every claim and lock, and mark this node stopped."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join(timeout=self.lease)
        with suppress(MailerError):
            self.store.release_claims(self.id)
            self.store.node_stopped(self.id)


class ClusterNode(Node):
    """A node of a PostgreSQL database that other nodes may share."""

    shared = True

    def __init__(self, store: Store, url: str, *, node: str | None = None, lease: float) -> None:
        super().__init__(store, node=node, lease=lease)
        self.session = AdvisorySession(url, label=f"mailer node {self.id}", lease=lease)
        self.leading = False
        self._slots: list[int] = []
        self._following = False

    def join(self) -> bool:
        """At the start of a pass: reconnect if the session was lost (StoreError
        while the database is unreachable), lead if no one does, and give
        back this node's claims (left by a pass cut short)."""
        self.session.connect()
        self._check_leadership()
        self.store.release_claims(self.id)
        return self.leading

    def _check_leadership(self) -> bool:
        if self.leading:
            if not self.alive():
                log.error(
                    "node=%s is no longer the leader (%s): stopped leader work", self.id, self.lost
                )
            return False
        self.session.connect()
        if self.session.try_lock(LEADER_KEY):
            self.leading, self._following = True, False
            log.info(
                "node=%s is now the leader: it ingests, matches and composes; every node sends",
                self.id,
            )
            return True
        if not self._following:
            self._following = True
            log.info(
                "node=%s follows the leader (%s): it sends",
                self.id,
                self.session.holder(LEADER_KEY),
            )
        return False

    def alive(self) -> bool:
        keys = [SLOT_KEY + k for k in self._slots] + ([LEADER_KEY] if self.leading else [])
        if not self.session.connected:
            held: set[int] | None = None
        elif not keys:
            held = set() if self.session.held([LEADER_KEY]) is not None else None
        else:
            held = self.session.held(keys)
        if held is None:
            self.lost = f"its session on database {self.session.name} ended: {self.session.lost}"
            self.leading, self._slots, self._following = False, [], False
            return False
        if len(held) < len(keys):
            self.lost = "the server no longer lists its session as holding its locks"
            self.leading = LEADER_KEY in held
            self._slots = [k for k in self._slots if SLOT_KEY + k in held]
            return False
        return True

    def lost_error(self) -> LockLostError:
        return LockLostError(
            f"node {self.id} lost its hold on database {self.session.name} "
            f"({self.lost or 'reason unknown'}): stopped leader work and sending; the next "
            "pass reconnects and leads or follows",
            hint="check the network to the database server",
        )

    def take_connections(self, want: int, total: int) -> int:
        """Take free connection slots of the cluster's ``total``: at most this
        node's share (the total over the nodes alive), so each node sends."""
        share = max(1, math.ceil(total / max(1, self.live_nodes)))
        for k in range(total):
            if len(self._slots) >= min(want, share):
                break
            if self.session.try_lock(SLOT_KEY + k):
                self._slots.append(k)
        return len(self._slots)

    def give_connections(self) -> None:
        slots, self._slots = self._slots, []
        for k in slots:
            self.session.unlock(SLOT_KEY + k)

    def leave(self) -> None:
        super().leave()
        self.session.close()


@contextmanager
def joined(config: Config, store: Store) -> Iterator[Node]:
    """This process as a node of its database, beating, until the block ends.
    SQLite: AlreadyRunningError when another mailer has the database.
    PostgreSQL: StoreError when it cannot be reached."""
    url = config.database.url
    lease = config.daemon.lease_seconds
    name = node_id(config)
    with _lock_for(url) as lock:
        node: Node = (
            Node(store, node=name, lease=lease, lock=lock)
            if lock is not None
            else ClusterNode(store, url, node=name, lease=lease)
        )
        node.join()
        node.start()
        try:
            yield node
        finally:
            node.leave()


@contextmanager
def _lock_for(url: str) -> Iterator[DatabaseLock | None]:
    """SQLite's one-mailer lock; None for PostgreSQL, which nodes share."""
    if make_url(url).get_backend_name() != "postgresql":
        with database_lock(url) as lock:
            yield lock
    else:
        yield None
