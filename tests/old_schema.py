"""mailer 0.1.0's tables, frozen: what its ``SQLModel.metadata.create_all`` made.

Plain SQLAlchemy Core on a MetaData of its own, so the models can move on and
the upgrade test still starts from a database as the first release left it
(no alembic_version table). Types as SQLModel rendered them: AutoString is
VARCHAR, UTCDateTime is DATETIME / TIMESTAMP WITH TIME ZONE.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()
TIME = DateTime(timezone=True)

dumps = Table(
    "dumps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", String, nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("size", Integer, nullable=False),
    Column("ingested_at", TIME, nullable=False),
    Column("page_date", Date),
    Column("records", Integer, nullable=False),
    Column("new_papers", Integer, nullable=False),
    Column("seen_papers", Integer, nullable=False),
    Column("warnings", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", String),
)

papers = Table(
    "papers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String, nullable=False, unique=True),
    Column("title", String, nullable=False),
    Column("abstract", String, nullable=False),
    Column("authors", Integer),
    Column("organization", String),
    Column("published", Date),
    Column("upvotes", Integer, nullable=False),
    Column("first_seen_at", TIME, nullable=False, index=True),
    Column("first_dump_id", Integer, ForeignKey("dumps.id")),
    Column("matched", Boolean, nullable=False, index=True),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String, nullable=False, unique=True),
    Column("name", String, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("unsubscribed_at", TIME),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id"), nullable=False, index=True),
    Column("name", String, nullable=False),
    Column("query", String, nullable=False),
    Column("active", Boolean, nullable=False),
    UniqueConstraint("subscriber_id", "name"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id"), nullable=False, index=True),
    Column("recipient", String, nullable=False),
    Column("message_id", String, nullable=False, unique=True),
    Column("subject", String, nullable=False),
    Column("papers", Integer, nullable=False),
    Column("message", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("next_attempt_at", TIME),
    Column("sent_at", TIME),
    Column("last_reply", String),
    Column("deferred_since", TIME),
)

matches = Table(
    "matches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id"), nullable=False, index=True),
    Column("paper_id", Integer, ForeignKey("papers.id"), nullable=False),
    Column("subscriptions", JSON, nullable=False),
    Column("terms", JSON, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("created_at", TIME, nullable=False),
    Column("delivery_id", Integer, ForeignKey("deliveries.id"), index=True),
    UniqueConstraint("subscriber_id", "paper_id"),
)

state = Table(
    "state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String, nullable=False),
    Column("updated_at", TIME, nullable=False),
)
