"""Readers' marks on papers ("more like this", "not for me") and the
per-reader models trained from them.

``feedback`` keeps every mark as given (the newest per paper counts);
``reader_models`` one model per subscriber with the newest mark it learned
from, so a model is trained again only when marks arrive.

Revision ID: 0007_relevance_feedback
Revises: 0006_cluster_nodes
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_relevance_feedback"
down_revision: str | None = "0006_cluster_nodes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLModel's UTCDateTime: TIMESTAMP WITH TIME ZONE on PostgreSQL, DATETIME on SQLite.
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(["paper_id"], ["papers.id"], name="fk_feedback_paper_id"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name="fk_feedback_subscriber_id"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_subscriber_id", "feedback", ["subscriber_id"], unique=False)
    op.create_table(
        "reader_models",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("trained_on", sa.Integer(), nullable=False),
        sa.Column("positives", sa.Integer(), nullable=False),
        sa.Column("negatives", sa.Integer(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("intercept", sa.Float(), nullable=False),
        sa.Column("cutoff", sa.Float(), nullable=False),
        sa.Column("trained_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name="fk_reader_models_subscriber_id"
        ),
        sa.PrimaryKeyConstraint("subscriber_id", name="pk_reader_models"),
    )


def downgrade() -> None:
    op.drop_table("reader_models")
    op.drop_index("ix_feedback_subscriber_id", table_name="feedback")
    op.drop_table("feedback")
