"""Readers sign up and manage their own subscriptions on web pages.

``subscribers.origin`` says who owns a subscriber: ``config`` (config.toml,
mirrored by the sync at the start of a pass, as before: every row stored so
far) or ``web`` (the reader's own pages; the sync never touches those).
``web_subscribers`` holds what a web subscriber chose besides the
subscriptions: schedule, time zone, ``max_papers``, a pause, and the state
of their double opt-in. ``deliveries.kind`` tells digests from the notices
the pages mail (confirmations, manage links): every row stored so far is a
digest.

Revision ID: 0005_self_service
Revises: 0004_bounces_suppressions
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_self_service"
down_revision: str | None = "0004_bounces_suppressions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLModel's UTCDateTime: TIMESTAMP WITH TIME ZONE on PostgreSQL, DATETIME on SQLite.
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("origin", sa.String(length=16), server_default="config", nullable=False)
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="digest", nullable=False)
        )
    op.create_table(
        "web_subscribers",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("schedule", sa.String(length=64), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("max_papers", sa.Integer(), nullable=True),
        sa.Column("paused_until", sa.Date(), nullable=True),
        sa.Column("confirmed_at", TIME, nullable=True),
        sa.Column("confirm_nonce", sa.String(length=64), nullable=True),
        sa.Column("signed_up_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name="fk_web_subscribers_subscriber_id"
        ),
        sa.PrimaryKeyConstraint("subscriber_id"),
    )


def downgrade() -> None:
    op.drop_table("web_subscribers")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("kind")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("origin")
