"""Corpus statistics in the database; each subscription's matched terms.

BM25 statistics lived in process memory, so a score depended on how long the
daemon had run. They now live in ``corpus`` (one row) and ``terms`` (document
frequency per stem), counted over the papers already matched, as the match
stage keeps them from now on. ``matches.subscription_terms`` keeps each
subscription's terms, so digests weigh them again at compose time; rows
from before stay NULL and their ``terms`` stand for each subscription.

Revision ID: 0002_corpus_statistics
Revises: 0001_baseline
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mailer.analysis import Stats
from mailer.papers import Paper

revision: str = "0002_corpus_statistics"
down_revision: str | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    corpus = op.create_table(
        "corpus",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("papers", sa.Integer(), nullable=False),
        sa.Column("title_tokens", sa.Integer(), nullable=False),
        sa.Column("abstract_tokens", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    terms = op.create_table(
        "terms",
        sa.Column("term", sa.String(), nullable=False),
        sa.Column("df", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("term"),
    )
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subscription_terms", sa.JSON(), nullable=True))
    _count_matched_papers(corpus, terms)


def _count_matched_papers(corpus: sa.Table, terms: sa.Table) -> None:
    """The statistics of the papers a release before this one had matched."""
    papers = sa.table(
        "papers", sa.column("title"), sa.column("abstract"), sa.column("matched", sa.Boolean)
    )
    stats = Stats()
    rows = op.get_bind().execute(
        sa.select(papers.c.title, papers.c.abstract).where(papers.c.matched.is_(True))
    )
    for title, abstract in rows:
        stats.observe_paper(Paper(title, abstract))
    if not stats.papers:
        return
    op.bulk_insert(
        corpus,
        [
            {
                "id": 1,
                "papers": stats.papers,
                "title_tokens": stats.title_length,
                "abstract_tokens": stats.abstract_length,
            }
        ],
    )
    op.bulk_insert(terms, [{"term": t, "df": n} for t, n in sorted(stats.df.items())])


def downgrade() -> None:
    with op.batch_alter_table("matches", schema=None) as batch_op:
        batch_op.drop_column("subscription_terms")
    op.drop_table("terms")
    op.drop_table("corpus")
