"""What readers told us about papers (the feedback links' marks) and the
per-reader models trained from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from mailer.addresses import address_key
from mailer.papers import Paper
from mailer.store.schema import (
    FEEDBACK,
    PAPER_COLUMNS,
    PAPERS,
    READER_MODELS,
    SUBSCRIBERS,
    MarkKind,
    Transaction,
    paper_from_row,
    utc,
)


class MarkOutcome(StrEnum):
    """What became of a mark sent from a feedback link."""

    RECORDED = "recorded"
    UNCHANGED = "unchanged"  # the paper already had this mark (a replayed POST)
    NO_SUBSCRIBER = "no subscriber"
    NO_PAPER = "no paper"


@dataclass(frozen=True, slots=True)
class Mark:
    """A reader's standing mark on a paper (the newest they gave it)."""

    id: int
    paper_id: int
    paper: Paper
    kind: MarkKind
    at: datetime


@dataclass(frozen=True, slots=True)
class ReaderModel:
    """A reader's stored model: its weights by feature, and what it learned from."""

    subscriber_id: int
    trained_on: int
    positives: int
    negatives: int
    weights: dict[str, float]
    intercept: float
    cutoff: float
    trained_at: datetime


class Feedback:
    """Reads and writes of the feedback and reader_models tables."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    def record(self, email: str, paper_id: int, kind: MarkKind, now: datetime) -> MarkOutcome:
        """Record a reader's mark on a paper; a mark the paper already has
        from them is not recorded again, so a replayed POST changes nothing."""
        with self._transaction() as conn:
            subscriber_id = _subscriber_id(conn, email)
            if subscriber_id is None:
                return MarkOutcome.NO_SUBSCRIBER
            known = conn.execute(select(PAPERS.c.id).where(PAPERS.c.id == paper_id)).first()
            if known is None:
                return MarkOutcome.NO_PAPER
            last = conn.execute(
                select(FEEDBACK.c.kind)
                .where(FEEDBACK.c.subscriber_id == subscriber_id, FEEDBACK.c.paper_id == paper_id)
                .order_by(FEEDBACK.c.id.desc())
                .limit(1)
            ).scalar()
            if last == kind:
                return MarkOutcome.UNCHANGED
            conn.execute(
                insert(FEEDBACK).values(
                    subscriber_id=subscriber_id, paper_id=paper_id, kind=kind, created_at=now
                )
            )
            return MarkOutcome.RECORDED

    def subscriber_id(self, email: str) -> int | None:
        with self._transaction() as conn:
            return _subscriber_id(conn, email)

    def marks(self, subscriber_ids: Sequence[int]) -> dict[int, list[Mark]]:
        """Each subscriber's standing marks (the newest per paper), newest first."""
        found: dict[int, dict[int, Mark]] = {i: {} for i in subscriber_ids}
        with self._transaction() as conn:
            for start in range(0, len(subscriber_ids), 500):
                rows = conn.execute(
                    select(
                        FEEDBACK.c.id,
                        FEEDBACK.c.subscriber_id,
                        FEEDBACK.c.paper_id,
                        FEEDBACK.c.kind,
                        FEEDBACK.c.created_at,
                        *PAPER_COLUMNS,
                    )
                    .join(PAPERS, PAPERS.c.id == FEEDBACK.c.paper_id)
                    .where(FEEDBACK.c.subscriber_id.in_(subscriber_ids[start : start + 500]))
                    .order_by(FEEDBACK.c.id)
                ).mappings()
                for row in rows:
                    found[row["subscriber_id"]][row["paper_id"]] = Mark(
                        row["id"],
                        row["paper_id"],
                        paper_from_row(row),
                        MarkKind(row["kind"]),
                        utc(row["created_at"]),
                    )
        return {i: sorted(m.values(), key=lambda m: -m.id) for i, m in found.items()}

    def newest_marks(self) -> dict[int, int]:
        """Subscriber id -> the id of their newest mark, for those with marks."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(FEEDBACK.c.subscriber_id, func.max(FEEDBACK.c.id)).group_by(
                    FEEDBACK.c.subscriber_id
                )
            )
            return dict(rows.all())

    def model_versions(self) -> dict[int, int]:
        """Subscriber id -> the newest mark their stored model learned from."""
        with self._transaction() as conn:
            rows = conn.execute(select(READER_MODELS.c.subscriber_id, READER_MODELS.c.trained_on))
            return dict(rows.all())

    def models(self, subscriber_ids: Sequence[int] | None = None) -> dict[int, ReaderModel]:
        """Stored models by subscriber id (all, or these subscribers')."""
        query = select(READER_MODELS)
        found: dict[int, ReaderModel] = {}
        with self._transaction() as conn:
            if subscriber_ids is None:
                batches = [query]
            else:
                ids = list(subscriber_ids)
                batches = [
                    query.where(READER_MODELS.c.subscriber_id.in_(ids[at : at + 500]))
                    for at in range(0, len(ids), 500)
                ]
            for batch in batches:
                for row in conn.execute(batch).mappings():
                    found[row["subscriber_id"]] = ReaderModel(
                        row["subscriber_id"],
                        row["trained_on"],
                        row["positives"],
                        row["negatives"],
                        dict(row["weights"]),
                        row["intercept"],
                        row["cutoff"],
                        utc(row["trained_at"]),
                    )
        return found

    def save_model(self, model: ReaderModel) -> None:
        """Store a subscriber's model in place of the one they had."""
        with self._transaction() as conn:
            conn.execute(
                delete(READER_MODELS).where(READER_MODELS.c.subscriber_id == model.subscriber_id)
            )
            conn.execute(
                insert(READER_MODELS).values(
                    subscriber_id=model.subscriber_id,
                    trained_on=model.trained_on,
                    positives=model.positives,
                    negatives=model.negatives,
                    weights=model.weights,
                    intercept=model.intercept,
                    cutoff=model.cutoff,
                    trained_at=model.trained_at,
                )
            )

    def delete_model(self, subscriber_id: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                delete(READER_MODELS).where(READER_MODELS.c.subscriber_id == subscriber_id)
            )


def _subscriber_id(conn: Connection, email: str) -> int | None:
    found: int | None = conn.execute(
        select(SUBSCRIBERS.c.id)
        .where(SUBSCRIBERS.c.email_key == address_key(email))
        .order_by(SUBSCRIBERS.c.id)
        .limit(1)
    ).scalar()
    return found
