"""Subscribers found by a Unicode-casefolded key, not SQL lower().

SQLite's ``lower()`` folds ASCII only, so ``ann@ÉCOLE.example`` was never
found as ``ann@école.example``: an unsubscribe said it worked and did
nothing. ``subscribers.email_key`` holds ``mailer.addresses.address_key``
of the address (local part casefolded, domain in lower-case IDNA form),
filled here for the rows already stored; every lookup goes through it.

Revision ID: 0003_subscriber_email_key
Revises: 0002_corpus_statistics
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mailer.addresses import address_key

revision: str = "0003_subscriber_email_key"
down_revision: str | None = "0002_corpus_statistics"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_key", sa.String(), nullable=True))
    subscribers = sa.table(
        "subscribers", sa.column("id", sa.Integer), sa.column("email"), sa.column("email_key")
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(subscribers.c.id, subscribers.c.email)).all()
    if rows:
        bind.execute(
            sa.update(subscribers)
            .where(subscribers.c.id == sa.bindparam("b_id"))
            .values(email_key=sa.bindparam("b_key")),
            [{"b_id": i, "b_key": address_key(email)} for i, email in rows],
        )
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.alter_column("email_key", existing_type=sa.String(), nullable=False)
        batch_op.create_index("ix_subscribers_email_key", ["email_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_index("ix_subscribers_email_key")
        batch_op.drop_column("email_key")
