"""mailer's Alembic migrations: ``env.py``, the revision template and ``versions/``.

Run only through :func:`mailer.migrate.upgrade`, which builds the Alembic
configuration in code (no ``alembic.ini``) and hands over a locked connection.
"""
