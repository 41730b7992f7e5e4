"""Schema migrations and the SQLite connection settings that every engine shares.

``upgrade(url)`` runs ``alembic upgrade head`` from the migrations shipped inside the package
(``seedbed.store:migrations``), so a wheel install needs no ``alembic.ini``. It is blocking;
``SqlStore.open`` calls it through ``asyncio.to_thread``.

Several processes may open the same database at once (``seedbed serve`` and a few workers).
The whole check-version-then-migrate step therefore runs in one write transaction that is taken
up front: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on PostgreSQL. The
second process waits, then finds the schema at head and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "SCRIPT_LOCATION",
    "alembic_config",
    "install_sqlite_hooks",
    "sqlite_path",
    "upgrade",
]

log = logging.getLogger(__name__)

#: where alembic finds ``env.py`` and ``versions/``: a package resource, so it works installed
SCRIPT_LOCATION = "seedbed.store:migrations"

#: any constant: PostgreSQL sessions migrating the same database queue on this advisory lock
_PG_MIGRATION_LOCK = 0x5EEDBED

#: milliseconds a writer waits for another process's write lock before SQLITE_BUSY
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: how long the WAL may grow before the checkpointer starts it over (``store.sqlite``), and the
#: size a longer one is trimmed back to afterwards
WAL_LIMIT_BYTES = 64 * 1024 * 1024

_ASYNC_DRIVERS = {"aiosqlite", "asyncpg", "psycopg_async"}


def install_sqlite_hooks(
    engine: Engine, *, begin: str | None, busy_timeout_ms: int | None = None
) -> None:
    """Configure every new SQLite DBAPI connection of ``engine``; optionally own BEGIN.

    WAL lets readers run beside the one writer; ``synchronous=NORMAL`` in WAL mode loses
    nothing when a *process* crashes (committed transactions are in the WAL file), only an OS
    crash or power loss can lose the last few commits. ``busy_timeout`` comes first so that
    switching to WAL waits for a concurrent opener instead of failing.

    With ``begin`` (e.g. ``"BEGIN IMMEDIATE"``) the driver's own transaction handling is turned
    off (``isolation_level = None``) and SQLAlchemy's ``begin`` event emits ``begin`` instead:
    the standard recipe from SQLAlchemy's SQLite docs ("Transactions with SQLite and the sqlite3
    driver"). ``BEGIN IMMEDIATE`` takes the write lock at the start, so a transaction that reads
    then writes waits in the busy handler rather than failing with SQLITE_BUSY on the upgrade.
    Without ``begin`` the connection is left in autocommit, which suits single SELECTs.

    Automatic checkpoints are off: ``SqlStore`` checkpoints from a background thread instead,
    so that no commit on the event loop pays for one.
    """
    timeout = SQLITE_BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute(f"PRAGMA busy_timeout={timeout}")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            # After a checkpoint lets the WAL start over, trim the file back to this size.
            cursor.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    if begin is not None:
        statement = begin

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Straight on the driver: SQLAlchemy's statement execution machinery cost more
            # than the BEGIN itself, once per write transaction (profiled).
            dbapi = conn.connection.driver_connection
            assert dbapi is not None
            try:
                dbapi.execute(statement)
            except sqlite3.Error as exc:
                # As SQLAlchemy would raise it: callers tell "busy" by OperationalError.
                raise DBAPIError.instance(
                    statement, (), exc, sqlite3.Error, dialect=conn.dialect
                ) from exc


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL once; retried, since two first openers can race for it.

    Changing the journal mode needs an exclusive lock, and SQLite answers "database is locked"
    at once (without its busy handler) when another connection is changing it at that moment.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database)


def alembic_config() -> Config:
    """An alembic ``Config`` pointing at the packaged migrations; no ``alembic.ini`` needed."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema; a no-op when it is already there.

    ``url`` is normally synchronous (``sqlite:///path``, ``postgresql+psycopg://...``). An async
    URL (``+aiosqlite``, ``+asyncpg``) works too: it is migrated on a private event loop, so a
    PostgreSQL deployment needs only asyncpg. Call it from a thread, not from a running loop.
    """
    parsed = make_url(url)
    if parsed.get_dialect().name == "sqlite":
        path = sqlite_path(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_driver_name() in _ASYNC_DRIVERS:
        asyncio.run(_upgrade_async(parsed))
        return
    engine = create_engine(parsed, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        install_sqlite_hooks(engine, begin="BEGIN IMMEDIATE")
    try:
        with engine.begin() as conn:
            _run_in_transaction(conn)
    finally:
        engine.dispose()


async def _upgrade_async(url: URL) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        install_sqlite_hooks(engine.sync_engine, begin="BEGIN IMMEDIATE")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_in_transaction)
    finally:
        await engine.dispose()


def _run_in_transaction(conn: Connection) -> None:
    """Run alembic on ``conn``, already inside the (write-locked) migration transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    config = alembic_config()
    # env.py runs on this connection; alembic sees an outer transaction and leaves it alone
    config.attributes["connection"] = conn
    before = _revision(conn)
    command.upgrade(config, "head")
    after = _revision(conn)
    if after != before:
        # alembic's own lines are quiet below debug (logs.configure_logging); this says it all
        log.info("database schema upgraded from %s to %s", before or "empty", after)


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()
