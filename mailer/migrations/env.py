"""Alembic's environment for mailer: migrate the connection the caller hands over.

Online only, on a shared connection (``config.attributes["connection"]``), so
the caller's lock and transaction cover the whole upgrade: two mailers
starting at once cannot both create the tables.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

import mailer.store.schema  # noqa: F401 - registers the models on SQLModel.metadata, for autogenerate


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes SQLModel's types as plain SQLAlchemy ones, so a
    revision does not import sqlmodel (and does not change if it does)."""
    if kind != "type":
        return False
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "mailer's migrations run through mailer.migrate.upgrade(), which passes a connection"
        )
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
