"""Alembic environment for seedbed's packaged migrations.

Normally run through ``seedbed.store.migrate.upgrade``, which opens the connection, takes the
migration lock and passes the connection in ``config.attributes["connection"]``. Run from the
``alembic`` command line (with ``sqlalchemy.url`` set), it opens its own connection with the
same SQLite settings and one ``BEGIN IMMEDIATE`` transaction around the whole run.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

from seedbed.store.migrate import install_sqlite_hooks
from seedbed.store.schema import metadata

__all__: list[str] = []

config = context.config


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite can only change most table shapes by copying the table; batch mode does that
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Emit the SQL script (``alembic upgrade head --sql``) instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or call seedbed.store.migrate.upgrade(url)")
    engine = create_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        install_sqlite_hooks(engine, begin="BEGIN IMMEDIATE")
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
