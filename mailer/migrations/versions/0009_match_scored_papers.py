"""Matches keep how many papers their scores' statistics had counted.

A digest composed against statistics of the same count takes the recorded
scores and terms as they are instead of weighing every match again; rows
recorded before (NULL) are weighed again, as before.

Revision ID: 0009_match_scored_papers
Revises: 0008_pending_matches_index
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_match_scored_papers"
down_revision: str | None = "0008_pending_matches_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("matches", sa.Column("scored_papers", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("matches") as batch:
        batch.drop_column("scored_papers")
