"""Several daemons on one PostgreSQL database: nodes, claims, a shared send rate.

``nodes`` holds each daemon's heartbeat (mailer.cluster); ``deliveries``
gains the claim a node takes before sending a message (``claimed_by``,
``claimed_until``), so two nodes never send it at once and a dead node's
messages pass to the others when the claim runs out; ``send_rate`` holds
the moment the next message may go, so ``[smtp] rate_per_minute`` holds for
all nodes together. Its one row is made here.

Revision ID: 0006_cluster_nodes
Revises: 0005_self_service
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006_cluster_nodes"
down_revision: str | None = "0005_self_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLModel's UTCDateTime: TIMESTAMP WITH TIME ZONE on PostgreSQL, DATETIME on SQLite.
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("heartbeat_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    send_rate = op.create_table(
        "send_rate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("next_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    assert send_rate is not None
    op.bulk_insert(send_rate, [{"id": 1, "next_at": datetime(2000, 1, 1, tzinfo=UTC)}])
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("claimed_until", TIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("claimed_by")
    op.drop_table("send_rate")
    op.drop_table("nodes")
