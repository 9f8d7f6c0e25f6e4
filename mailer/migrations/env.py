"""Alembic's environment for mailer: migrate the connection the caller hands over.

Online only, on a shared connection (``config.attributes["connection"]``), so
the caller's lock and transaction cover the whole upgrade: two mailers
starting at once cannot both create the tables.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import mailer.store  # noqa: F401 - registers the models on SQLModel.metadata, for autogenerate


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
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
