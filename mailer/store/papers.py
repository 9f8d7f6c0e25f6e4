"""Dumps and papers: what was ingested, each paper once, and the corpus
statistics every score is computed against.

Core statements on the tables throughout: building a SQLModel object per
paper cost more than the database did (bench/ingest.py).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection

from mailer.analysis import Stats
from mailer.papers import Paper, paper_key
from mailer.store.schema import (
    CORPUS,
    DUMPS,
    MATCHES,
    PAPER_COLUMNS,
    PAPERS,
    TERMS,
    DumpRow,
    DumpStatus,
    Transaction,
    paper_from_row,
    paper_values,
    row_objects,
)


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    dump_id: int
    new_papers: int
    seen_papers: int
    # Known papers whose stored abstract was cut short and is now complete.
    completed_abstracts: int = 0


class Papers:
    """Reads and writes of the dumps, papers, corpus and terms tables."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction
        self._stats: Stats | None = None

    def dump_by_hash(self, sha256: str) -> DumpRow | None:
        with self._transaction() as conn:
            found = row_objects(conn, select(DumpRow).where(DUMPS.c.sha256 == sha256))
        return found[0] if found else None

    def record_refused(
        self, *, path: str, sha256: str, size: int, error: str, now: datetime
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                insert(DUMPS).values(
                    path=path,
                    sha256=sha256,
                    size=size,
                    ingested_at=now,
                    status=DumpStatus.REFUSED,
                    error=error,
                    records=0,
                    new_papers=0,
                    seen_papers=0,
                    warnings=0,
                )
            )

    def ingest(
        self,
        *,
        path: str,
        sha256: str,
        size: int,
        page_date: date | None,
        papers: Sequence[Paper],
        warnings: int,
        now: datetime,
        batch: int = 1000,
    ) -> IngestOutcome:
        """Record a dump and its papers in one transaction: a crash leaves
        either all of it or none, so the file is simply read again.

        Per batch, one query finds the keys already known, one executemany
        inserts the rest and one updates the known papers that changed.

        A known paper whose stored abstract is a strict prefix of the new one
        was stored from a dump read while still being written: its abstract
        is completed. If it was already matched, its counts in the corpus
        statistics are restated here, in the same transaction, so they stay
        those of the stored text; its matches stand (it is never matched or
        mailed again).
        """
        unique: dict[str, Paper] = {}
        for paper in papers:
            unique.setdefault(paper_key(paper.title), paper)
        keys = list(unique)
        with self._transaction() as conn:
            inserted = conn.execute(
                insert(DUMPS).values(
                    path=path,
                    sha256=sha256,
                    size=size,
                    ingested_at=now,
                    page_date=page_date,
                    records=len(papers),
                    new_papers=0,
                    seen_papers=0,
                    warnings=warnings,
                    status=DumpStatus.INGESTED if papers else DumpStatus.EMPTY,
                    error=None,
                )
            ).inserted_primary_key
            assert inserted is not None
            dump_id: int = inserted[0]
            new = seen = completed = 0
            for start in range(0, len(keys), batch):
                chunk = keys[start : start + batch]
                known: dict[str, _Known] = {
                    row[0]: _Known(*row[1:])
                    for row in conn.execute(
                        select(PAPERS.c.key, *_KNOWN).where(PAPERS.c.key.in_(chunk))
                    )
                }
                rows: list[dict[str, Any]] = []
                changes: list[dict[str, Any]] = []
                restated = Stats()
                for key in chunk:
                    paper = unique[key]
                    row = known.get(key)
                    if row is None:
                        rows.append(paper_values(key, paper, now, dump_id))
                    elif (change := _refreshed(row, paper)) is not None:
                        changes.append(change)
                        if change["b_abstract"] != row.abstract:
                            completed += 1
                            if row.matched:
                                _restate(restated, row, change["b_abstract"])
                new += len(rows)
                seen += len(chunk) - len(rows)
                if rows:
                    conn.execute(insert(PAPERS), rows)
                if changes:
                    conn.execute(_REFRESH, changes)
                if restated.df or restated.abstract_length:
                    restate_statistics(conn, restated)
                    self._stats = None  # same paper count: the cache would not notice
            conn.execute(
                update(DUMPS).where(DUMPS.c.id == dump_id).values(new_papers=new, seen_papers=seen)
            )
            return IngestOutcome(dump_id, new, seen, completed)

    def unmatched_papers(self, limit: int = 5000, after: int = 0) -> list[tuple[int, Paper]]:
        """(id, paper) of up to ``limit`` papers not yet matched, by id, past ``after``."""
        return self._papers(
            select(PAPERS.c.id, *PAPER_COLUMNS)
            .where(PAPERS.c.matched.is_(False), PAPERS.c.id > after)
            .order_by(PAPERS.c.id)
            .limit(limit)
        )

    def papers_since(self, since: datetime) -> list[tuple[int, Paper]]:
        """(id, paper) of the papers first seen since ``since``, oldest first."""
        return self._papers(
            select(PAPERS.c.id, *PAPER_COLUMNS)
            .where(PAPERS.c.first_seen_at >= since)
            .order_by(PAPERS.c.id)
        )

    def backfill_candidates(self, subscriber_id: int, since: datetime) -> list[tuple[int, Paper]]:
        """Papers first seen since ``since`` that were already matched (so the
        regular pass will not look at them again) but not for this subscriber."""
        done = select(MATCHES.c.paper_id).where(MATCHES.c.subscriber_id == subscriber_id)
        return self._papers(
            select(PAPERS.c.id, *PAPER_COLUMNS)
            .where(
                PAPERS.c.matched.is_(True),
                PAPERS.c.first_seen_at >= since,
                PAPERS.c.id.not_in(done),
            )
            .order_by(PAPERS.c.id)
        )

    def papers_by_keys(self, keys: Collection[str]) -> dict[str, Paper]:
        """The stored papers with these keys (``paper_key`` of a title), by key."""
        found: dict[str, Paper] = {}
        wanted = sorted(keys)
        with self._transaction() as conn:
            for start in range(0, len(wanted), 1000):
                query = select(PAPERS.c.key, *PAPER_COLUMNS).where(
                    PAPERS.c.key.in_(wanted[start : start + 1000])
                )
                for row in conn.execute(query).mappings():
                    found[row["key"]] = paper_from_row(row)
        return found

    def paper(self, paper_id: int) -> Paper | None:
        found = self._papers(select(PAPERS.c.id, *PAPER_COLUMNS).where(PAPERS.c.id == paper_id))
        return found[0][1] if found else None

    def sample(self, n: int, seed: int) -> list[tuple[int, Paper]]:
        """About ``n`` stored papers drawn at random (the same for the same
        seed and papers), without reading the others: ids are drawn from
        1..max(id), and papers are never deleted, so nearly all exist."""
        with self._transaction() as conn:
            top: int | None = conn.execute(select(func.max(PAPERS.c.id))).scalar()
        if not top:
            return []
        ids = random.Random(seed).sample(range(1, top + 1), min(n, top))
        found: list[tuple[int, Paper]] = []
        for start in range(0, len(ids), 1000):
            found += self._papers(
                select(PAPERS.c.id, *PAPER_COLUMNS).where(
                    PAPERS.c.id.in_(ids[start : start + 1000])
                )
            )
        return found

    def titles(self) -> list[str]:
        """Every stored paper's title, to suggest the closest to one not found."""
        with self._transaction() as conn:
            return list(conn.execute(select(PAPERS.c.title).order_by(PAPERS.c.id)).scalars())

    def _papers(self, query: Any) -> list[tuple[int, Paper]]:
        with self._transaction() as conn:
            return [(r["id"], paper_from_row(r)) for r in conn.execute(query).mappings()]

    def stats(self) -> Stats:
        """The corpus statistics every score is computed against. Read again
        only when papers were added since the last read (one small query
        otherwise); callers must not change what they get."""
        with self._transaction() as conn:
            corpus = conn.execute(
                select(CORPUS.c.papers, CORPUS.c.title_tokens, CORPUS.c.abstract_tokens)
            ).first()
            if corpus is None:
                return Stats()
            papers, title_tokens, abstract_tokens = corpus
            cached = self._stats
            if cached is not None and cached.papers == papers:
                return cached
            df: Counter[str] = Counter(dict(conn.execute(select(TERMS.c.term, TERMS.c.df)).all()))
        self._stats = Stats(papers, df, title_tokens, abstract_tokens)
        return self._stats

    def counted(self, added: Stats) -> None:
        """Papers this process just counted (``add_statistics``): extend the
        cached statistics instead of reading every term again. A cache that
        was already behind the database stays behind and is read again."""
        cached = self._stats
        if cached is not None and added.papers:
            self._stats = Stats(
                cached.papers + added.papers,
                cached.df + added.df,
                cached.title_length + added.title_length,
                cached.abstract_length + added.abstract_length,
            )

    def dumps(self) -> list[DumpRow]:
        """Every dump, oldest first, as row objects (``row_objects``)."""
        return self._dumps(select(DumpRow).order_by(DUMPS.c.id))

    def refused_dumps(self) -> list[DumpRow]:
        return self._dumps(
            select(DumpRow).where(DUMPS.c.status == DumpStatus.REFUSED).order_by(DUMPS.c.id)
        )

    def _dumps(self, query: Select[DumpRow]) -> list[DumpRow]:
        with self._transaction() as conn:
            return row_objects(conn, query)

    def dump_counts(self) -> dict[str, int]:
        """Dumps by status: ingested, empty, refused."""
        with self._transaction() as conn:
            rows = conn.execute(select(DUMPS.c.status, func.count()).group_by(DUMPS.c.status))
            return dict(rows.all())

    def count_papers(self) -> int:
        with self._transaction() as conn:
            count: int = conn.execute(select(func.count()).select_from(PAPERS)).scalar_one()
            return count


def add_statistics(conn: Connection, added: Stats) -> None:
    """Add newly matched papers' counts to the stored corpus statistics, in
    the caller's transaction: with the matched flags, so each paper is
    counted exactly once.

    Plain SQL: ``INSERT ... ON CONFLICT ... DO UPDATE`` reads the same on
    SQLite and PostgreSQL, but Core only has it per dialect."""
    if not added.papers:
        return
    conn.execute(
        text(
            "INSERT INTO corpus (id, papers, title_tokens, abstract_tokens) "
            "VALUES (1, :papers, :title, :abstract) ON CONFLICT (id) DO UPDATE SET "
            "papers = corpus.papers + excluded.papers, "
            "title_tokens = corpus.title_tokens + excluded.title_tokens, "
            "abstract_tokens = corpus.abstract_tokens + excluded.abstract_tokens"
        ),
        {"papers": added.papers, "title": added.title_length, "abstract": added.abstract_length},
    )
    conn.execute(
        text(
            "INSERT INTO terms (term, df) VALUES (:term, :df) "
            "ON CONFLICT (term) DO UPDATE SET df = terms.df + excluded.df"
        ),
        [{"term": term, "df": df} for term, df in sorted(added.df.items())],
    )


class _Known(NamedTuple):
    """What ingest reads of a known paper (``_KNOWN``, in order)."""

    id: int
    title: str
    abstract: str
    authors: int | None
    organization: str | None
    published: date | None
    upvotes: int
    matched: bool


_KNOWN = (PAPERS.c.id, *PAPER_COLUMNS, PAPERS.c.matched)
# A known paper's abstract and counters, set by id; bind names differ from
# the columns because SQLAlchemy reserves those for the SET clause.
_REFRESH = (
    update(PAPERS)
    .where(PAPERS.c.id == bindparam("b_id"))
    .values(
        abstract=bindparam("b_abstract"),
        upvotes=bindparam("b_upvotes"),
        authors=bindparam("b_authors"),
        organization=bindparam("b_organization"),
        published=bindparam("b_published"),
    )
)


def _refreshed(row: _Known, paper: Paper) -> dict[str, Any] | None:
    """A paper seen again keeps its identity; its counters move on, and an
    abstract stored cut short (a strict prefix of this one) is completed.
    The new values for `_REFRESH`, or None when nothing changed."""
    abstract = row.abstract
    if len(paper.abstract) > len(abstract) and paper.abstract.startswith(abstract):
        abstract = paper.abstract
    upvotes = max(row.upvotes, paper.upvotes)
    authors = row.authors if row.authors is not None else paper.authors
    organization = row.organization or paper.organization
    published = row.published or paper.published
    values = (abstract, authors, organization, published, upvotes)
    if values == (row.abstract, row.authors, row.organization, row.published, row.upvotes):
        return None
    return {
        "b_id": row.id,
        "b_abstract": abstract,
        "b_upvotes": upvotes,
        "b_authors": authors,
        "b_organization": organization,
        "b_published": published,
    }


def _restate(into: Stats, row: _Known, abstract: str) -> None:
    """Add to ``into`` how a counted paper's statistics change when its
    abstract becomes ``abstract``: stems gained +1, stems lost -1 (a word
    cut mid-way stems differently), and the change in abstract length."""
    before, after = Stats(), Stats()
    before.observe_paper(Paper(row.title, row.abstract))
    after.observe_paper(Paper(row.title, abstract))
    for term in after.df.keys() - before.df.keys():
        into.df[term] += 1
    for term in before.df.keys() - after.df.keys():
        into.df[term] -= 1
    into.abstract_length += after.abstract_length - before.abstract_length


def restate_statistics(conn: Connection, change: Stats) -> None:
    """Apply ``_restate``'s changes to the stored statistics, in the caller's
    transaction; the number of papers counted stays the same."""
    conn.execute(
        update(CORPUS)
        .where(CORPUS.c.id == 1)
        .values(abstract_tokens=CORPUS.c.abstract_tokens + change.abstract_length)
    )
    deltas = [{"term": term, "df": df} for term, df in sorted(change.df.items()) if df]
    if deltas:
        conn.execute(
            text(
                "INSERT INTO terms (term, df) VALUES (:term, :df) "
                "ON CONFLICT (term) DO UPDATE SET df = terms.df + excluded.df"
            ),
            deltas,
        )
