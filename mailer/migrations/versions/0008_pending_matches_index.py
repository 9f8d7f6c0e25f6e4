"""Unclaimed matches get a partial index of their own; the two plain
indexes on matches go.

``ix_matches_delivery_id`` served only "delivery_id IS NULL": SQLite took
it for composing's read of a chunk of readers' unclaimed matches and so
read every reader's, chunk after chunk, and every claim moved an entry in
it. ``ix_matches_subscriber_id`` repeated the first column of the unique
(subscriber_id, paper_id) index. ``ix_matches_pending`` holds each
unclaimed match by reader, and a claim takes its entry out.

Revision ID: 0008_pending_matches_index
Revises: 0007_relevance_feedback
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_pending_matches_index"
down_revision: str | None = "0007_relevance_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("delivery_id IS NULL")


def upgrade() -> None:
    op.drop_index("ix_matches_delivery_id", table_name="matches")
    op.drop_index("ix_matches_subscriber_id", table_name="matches")
    op.create_index(
        "ix_matches_pending",
        "matches",
        ["subscriber_id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_matches_pending", table_name="matches")
    op.create_index("ix_matches_subscriber_id", "matches", ["subscriber_id"])
    op.create_index("ix_matches_delivery_id", "matches", ["delivery_id"])
