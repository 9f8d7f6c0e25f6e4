"""Bounces read from the bounce mailbox, and the suppression list.

``bounces`` keeps every bounce that named one of our messages, hard or soft,
with its RFC 3463 status, so soft ones can be counted within a window;
``suppressions`` keeps the addresses that get nothing until lifted (a lifted
row stays, with ``lifted_at``, so only later bounces count again). Both are
new and empty: nothing to fill from a database made before.

Revision ID: 0004_bounces_suppressions
Revises: 0003_subscriber_email_key
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_bounces_suppressions"
down_revision: str | None = "0003_subscriber_email_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLModel's UTCDateTime: TIMESTAMP WITH TIME ZONE on PostgreSQL, DATETIME on SQLite.
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("address_key", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("since", TIME, nullable=False),
        sa.Column("lifted_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address_key", name="uq_suppressions_address_key"),
    )
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("address_key", sa.String(), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], name="fk_bounces_delivery_id"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bounces_address_key", "bounces", ["address_key"], unique=False)
    op.create_index("ix_bounces_delivery_id", "bounces", ["delivery_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_bounces_delivery_id", table_name="bounces")
    op.drop_index("ix_bounces_address_key", table_name="bounces")
    op.drop_table("bounces")
    op.drop_table("suppressions")
