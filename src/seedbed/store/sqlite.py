"""SQLite on the event loop: the runner, group commit, checkpoints, and one-shot statements.

Each store operation is one short transaction on a local file, tens of microseconds; handing it
to a thread costs more than running it (profiled: under load the loop thread holds the GIL, so
a pool thread waits up to the 5 ms switch interval for it). So SQLite runs on the loop's own
thread, and this module makes that safe and fast:

* writes never wait for the file lock on the loop (another process holding it makes them retry
  asynchronously), and writes of one loop turn share a transaction (group commit);
* checkpoints run in a background thread, never inside a request;
* the hot statements run straight on the sqlite3 connection, compiled once by SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar, cast

from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.pool import NullPool

from seedbed.store import outbox_queries as oq
from seedbed.store import queries as q
from seedbed.store.migrate import SQLITE_BUSY_TIMEOUT_MS, WAL_LIMIT_BYTES, install_sqlite_hooks

__all__ = ["SqliteRunner", "execute", "execute_many"]

#: longest a batch of writes holds off for a WAL restart waiting for the write lock; past it
#: they go ahead (the restart then waits its turn like any other writer)
RESTART_YIELD_S = 0.05

P = ParamSpec("P")
R = TypeVar("R")


class SqliteRunner:
    """Stdlib sqlite3 on the event loop's own thread: one writer and one reader connection.

    Each operation is one short transaction on a local file, tens of microseconds; handing it
    to a thread costs more than running it (the loop thread holds the GIL under load, so a pool
    thread waits up to the 5 ms switch interval for it). Writes never wait for the file lock on
    the loop: the writer's ``busy_timeout`` is 0, and when another *process* holds the lock,
    ``BEGIN IMMEDIATE`` fails at once and the operation is retried after an async back-off.
    Checkpoints run in a background thread, so a commit on the loop never pays for one.
    """

    def __init__(self, url: URL) -> None:
        # The loop that opened the store, which is the one thread its connections may be used
        # from. Kept, because asyncio.get_running_loop() makes a getpid() system call on every
        # call (CPython 3.11's check against a fork), twice per createTask otherwise (strace).
        self._loop = asyncio.get_running_loop()
        self._writer_engine = create_engine(url, poolclass=NullPool)
        install_sqlite_hooks(self._writer_engine, begin="BEGIN IMMEDIATE", busy_timeout_ms=0)
        self._reader_engine = create_engine(url, poolclass=NullPool, skip_autocommit_rollback=True)
        install_sqlite_hooks(self._reader_engine, begin=None)
        self._writer = self._writer_engine.connect()
        self._reader = self._reader_engine.connect()
        reader_dbapi = self._reader.connection.driver_connection
        assert reader_dbapi is not None
        self._reader_dbapi: sqlite3.Connection = reader_dbapi
        self._snapshot = False
        #: ``PRAGMA data_version`` in this turn's snapshot, once asked for
        self._data_version: int | None = None
        self._checkpointer = _Checkpointer(url)
        #: writes waiting for their commit: operation, its caller's future, ``write_first``
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any], bool]] = []
        self._flush: asyncio.Handle | None = None

    async def write(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        """Run ``fn`` in a write transaction; answers only once that transaction committed.

        Group commit: writes that arrive in the same turn of the event loop (many requests
        land at once under load) share one ``BEGIN IMMEDIATE`` ... ``COMMIT``, each in its own
        savepoint so that one failing operation undoes only itself.
        """
        result: R = await self._enqueue(partial(fn, self._writer, *args, **kw), first=False)
        return result

    async def write_first(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        """``write``, whose caller is woken before the others of its transaction once it
        commits: a device waits on it (a claim), where a request's answer can wait the
        fraction of a millisecond that starting the device takes."""
        result: R = await self._enqueue(partial(fn, self._writer, *args, **kw), first=True)
        return result

    def _enqueue(self, op: Callable[[], Any], *, first: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((op, future, first))
        if self._flush is None:
            self._flush = self._loop.call_soon(self._commit_pending, time.monotonic(), 0.001)
        return future

    def _commit_pending(self, since: float, delay: float) -> None:
        self._flush = None
        if self._checkpointer.restart_pending and time.monotonic() - since < RESTART_YIELD_S:
            # The checkpointer waits for the write lock to start the WAL over: leave it free
            # (its busy handler looks again within a few ms) rather than win it every time.
            self._commit_later(since, delay)
            return
        pending = [entry for entry in self._pending if not entry[1].cancelled()]
        self._pending = []
        batch = [(op, future) for op, future, _first in pending]
        if not batch:
            return
        try:
            outcomes = self._run_batch(batch)
        except OperationalError as exc:
            if _is_busy(exc) and time.monotonic() - since < SQLITE_BUSY_TIMEOUT_MS / 1000:
                # Another process holds the write lock: try again soon, without blocking.
                self._pending[:0] = pending
                self._commit_later(since, delay)
                return
            outcomes = [exc] * len(batch)
        except Exception as exc:  # the commit itself failed: nothing of the batch is stored
            outcomes = [exc] * len(batch)
        # Reads from here on must see what was just committed.
        self._end_snapshot()
        done = list(zip(pending, outcomes, strict=True))
        if any(first for _op, _future, first in pending):
            done.sort(key=lambda entry: not entry[0][2])  # callers of write_first are woken first
        for (_op, future, _first), outcome in done:
            if future.cancelled():
                continue
            if isinstance(outcome, _Failed):
                future.set_exception(outcome.error)
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _commit_later(self, since: float, delay: float) -> None:
        """Try the pending writes again after ``delay``, backing off up to 5 ms."""
        self._flush = self._loop.call_later(
            delay, self._commit_pending, since, min(delay * 2, 0.005)
        )

    def _run_batch(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> list[Any]:
        if len(batch) == 1:
            # Alone: no savepoint needed, an error rolls the whole transaction back.
            try:
                with self._writer.begin():
                    return [batch[0][0]()]
            except OperationalError as exc:
                if _is_busy(exc):
                    raise
                return [_Failed(exc)]
            except Exception as exc:
                return [_Failed(exc)]
        outcomes: list[Any] = []
        with self._writer.begin():
            # Savepoints by hand: SQLAlchemy's begin_nested() compiles a clause every time,
            # which cost more than the operations themselves (profiled).
            dbapi = self._writer.connection.driver_connection
            assert dbapi is not None
            for op, _future in batch:
                dbapi.execute("SAVEPOINT op")
                try:
                    outcomes.append(op())
                except Exception as exc:
                    dbapi.execute("ROLLBACK TO op")
                    outcomes.append(_Failed(exc))
                dbapi.execute("RELEASE op")
        return outcomes

    async def read(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        """Run ``fn`` on the reader, in the read snapshot of this turn of the event loop.

        Every read of one turn shares one read transaction: starting and ending one takes two
        ``fcntl`` calls on the WAL index, more than a read by primary key costs (measured). The
        snapshot ends when the turn does and after every commit of this process, so a read
        never misses a write this process made before it, nor one another process committed
        before the request reading it arrived (requests are taken off their sockets before
        the turn's callbacks run).
        """
        self._begin_snapshot()
        return fn(self._reader, *args, **kw)

    def data_version(self) -> int:
        """A number that differs from the one given before whenever the database changed in
        between, by a commit of this process or of any other: what was read under one number
        may be kept while it stays. Taken in this turn's read snapshot, so it holds for every
        read of the turn (one ``PRAGMA`` per turn, well under a microsecond of SQLite).
        """
        if self._data_version is None:
            self._begin_snapshot()
            row = self._reader_dbapi.execute("PRAGMA data_version").fetchone()
            self._data_version = int(row[0])
        return self._data_version

    def _begin_snapshot(self) -> None:
        if not self._snapshot:
            self._reader_dbapi.execute("BEGIN")
            self._snapshot = True
            self._loop.call_soon(self._end_snapshot)

    def _end_snapshot(self) -> None:
        if self._snapshot:
            self._snapshot = False
            self._data_version = None
            if self._reader_dbapi.in_transaction:
                self._reader_dbapi.execute("COMMIT")

    async def close(self) -> None:
        self._end_snapshot()  # so that the turn's scheduled end finds nothing left to do
        self._checkpointer.stop()
        self._writer.close()
        self._reader.close()
        self._writer_engine.dispose()
        self._reader_engine.dispose()


class _Failed(NamedTuple):
    """An operation of a batch that raised; its own savepoint was rolled back."""

    error: Exception


def _is_busy(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


class _Checkpointer:
    """Moves the WAL into the database file from a background thread, every second.

    ``PASSIVE`` never blocks readers or writers; the loop's connections have automatic
    checkpoints turned off (``install_sqlite_hooks``), so none happens inside a request.
    Under a steady stream of writes a passive checkpoint never catches up with the end of the
    WAL (new frames land while it copies), so SQLite never starts the log afresh and the file
    would grow for ever. Once the log is past ``WAL_LIMIT``, the passive pass is followed at
    once by a ``RESTART``: that one holds writers off (they retry asynchronously) until the
    next writer can start the log from the beginning, but after the passive pass it has only
    the last few frames left to copy, so the pause is short. (A ``TRUNCATE`` on its own copied
    the whole backlog while writers waited: createTask's p99 rose from 16 to 49 ms.) The
    file keeps its size and is reused, so it stays near ``WAL_LIMIT``.

    The restart must first win the write lock, and SQLite's busy handler looks for it only
    every 25 to 100 ms after its first tries; a busy event loop takes the lock again within
    microseconds of each commit, so the restart could wait hundreds of milliseconds (measured:
    up to 360 ms) while the log grew by tens of megabytes, all of which it then copied with
    writers held off. So while ``restart_pending`` is set this process's writers hold off
    (``RESTART_YIELD_S`` at most) and the restart gets the lock within a few milliseconds.
    """

    INTERVAL = 1.0  # seconds
    # Each start-over holds writers off for a moment (an fsync, 15 to 40 ms here, now and then
    # far more on a busy disk), so it should be rare: at 64 MB, every 3 s or so under a
    # sustained 4,000 creates a second (about 20 MB of WAL a second), not several a second.
    WAL_LIMIT = WAL_LIMIT_BYTES

    def __init__(self, url: URL) -> None:
        #: a RESTART waits for the write lock: this process's writers hold off meanwhile
        #: (read on the event loop; a bool is set and read atomically under the GIL)
        self.restart_pending = False
        self._engine = create_engine(url, poolclass=NullPool)
        install_sqlite_hooks(self._engine, begin=None)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="seedbed-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        with self._engine.connect() as conn:
            dbapi = conn.connection.driver_connection
            assert dbapi is not None
            page_size = int(dbapi.execute("PRAGMA page_size").fetchall()[0][0])
            while not self._stop.wait(self.INTERVAL):
                try:
                    # (busy, frames in the log, frames copied); -1s when not in WAL mode
                    _busy, log_frames, _done = dbapi.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchall()[0]
                    if log_frames * page_size > self.WAL_LIMIT:
                        self.restart_pending = True
                        try:
                            dbapi.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                        finally:
                            self.restart_pending = False
                except sqlite3.OperationalError:
                    pass  # busy: the next round will do it

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._engine.dispose()


class _RawResult:
    """The part of SQLAlchemy's ``CursorResult`` the store uses, over a bare sqlite3 cursor."""

    __slots__ = ("_cursor", "_row")

    def __init__(self, cursor: sqlite3.Cursor, row: type[tuple[Any, ...]] | None) -> None:
        self._cursor = cursor
        self._row = row

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def _make(self, values: Any) -> Any:
        return values if self._row is None else self._row._make(values)  # type: ignore[attr-defined]

    # Each reader closes the cursor: an unfinished SELECT keeps its read snapshot open, and
    # that pins the WAL (no checkpoint can pass it, the file grows without bound).
    def first(self) -> Any:
        values = self._cursor.fetchone()
        self._cursor.close()
        return None if values is None else self._make(values)

    def all(self) -> list[Any]:
        return [self._make(values) for values in self._cursor.fetchall()]

    def scalar_one(self) -> Any:
        values = self._cursor.fetchone()
        self._cursor.close()
        if values is None:
            raise LookupError("no row")
        return values[0]

    def scalars(self) -> list[Any]:
        return [values[0] for values in self._cursor.fetchall()]


class _Compiled(NamedTuple):
    sql: str
    #: the caller's parameters → the statement's positional arguments
    bind: Callable[[dict[str, Any]], Sequence[Any]]


#: SQLite: the statements of ``queries`` and ``outbox_queries`` (module constants, and the
#: values of their dicts of variants such as ``CLAIM``, so their ids are stable), compiled
#: once; anything else built at run time takes SQLAlchemy's ordinary path
_SQLITE_COMPILED: dict[tuple[int, tuple[str, ...]], _Compiled | None] = {}
_CONSTANTS = frozenset(
    id(statement)
    for module in (q, oq)
    for name, value in vars(module).items()
    if name.isupper()
    for statement in (value.values() if isinstance(value, dict) else (value,))
)
_ROW_TYPES: dict[tuple[str, ...], type[tuple[Any, ...]]] = {}
#: a statement's result row type, by its SQL (a statement's columns never change)
_ROW_BY_SQL: dict[str, type[tuple[Any, ...]]] = {}


def execute(conn: Connection, stmt: Any, params: dict[str, Any]) -> Any:
    """``conn.execute(stmt, params)``, run straight on the sqlite3 connection when possible.

    SQLAlchemy's execution and result machinery costs more than the SQLite work for these
    one-row statements (profiled: about two thirds of recordInfo's store time). The SQL is
    still SQLAlchemy's, compiled once; statements it must re-render per call (expanding IN
    lists) and other dialects take the ordinary path.
    """
    compiled = _compiled(conn, stmt, tuple(params))
    if compiled is None:
        return conn.execute(stmt, params)
    args = compiled.bind(params)
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    try:
        cursor = dbapi.execute(compiled.sql, args)
    except sqlite3.Error as exc:
        raise _translated(conn, compiled.sql, args, exc) from exc
    if cursor.description is None:
        return _RawResult(cursor, None)
    row = _ROW_BY_SQL.get(compiled.sql)
    if row is None:
        row = _ROW_BY_SQL[compiled.sql] = _row_type(
            tuple(column[0] for column in cursor.description)
        )
    return _RawResult(cursor, row)


def execute_many(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> None:
    """``conn.execute(stmt, rows)`` (one statement, many rows: an ``executemany``) on the same
    fast path as :func:`execute` where that has one; every row has the same keys."""
    compiled = _compiled(conn, stmt, tuple(rows[0])) if rows else None
    if compiled is None or any(tuple(row) != tuple(rows[0]) for row in rows):
        conn.execute(stmt, list(rows))
        return
    args = [compiled.bind(row) for row in rows]
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    try:
        dbapi.executemany(compiled.sql, args)
    except sqlite3.Error as exc:
        raise _translated(conn, compiled.sql, args, exc) from exc


def _compiled(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> _Compiled | None:
    """``stmt`` compiled for SQLite with these parameter names, once; None: SQLAlchemy's
    ordinary path (another dialect, a statement built at run time, or one it must re-render)."""
    if conn.dialect.name != "sqlite" or id(stmt) not in _CONSTANTS:
        return None
    # An INSERT's SQL depends on which columns are given, so the key names are in the key.
    cache_key = (id(stmt), keys)
    try:
        return _SQLITE_COMPILED[cache_key]
    except KeyError:
        compiled = _SQLITE_COMPILED[cache_key] = _compile_sqlite(conn, stmt, keys)
        return compiled


def _translated(conn: Connection, sql: str, args: Any, exc: sqlite3.Error) -> StatementError:
    """The same exception types SQLAlchemy would raise (IntegrityError, OperationalError)."""
    return DBAPIError.instance(sql, args, exc, sqlite3.Error, dialect=conn.dialect)


def _row_type(columns: tuple[str, ...]) -> type[tuple[Any, ...]]:
    """A named tuple per column list: rows keep ``row.name`` access, like SQLAlchemy's."""
    found = _ROW_TYPES.get(columns)
    if found is None:
        found = _ROW_TYPES[columns] = namedtuple("Row", columns, rename=True)
    return found


def _binder(
    names: tuple[str | None, ...],
    constants: tuple[Any, ...],
    processors: tuple[Callable[[Any], Any] | None, ...],
) -> Callable[[dict[str, Any]], Sequence[Any]]:
    """The fastest way to lay out one statement's arguments (this runs on every call)."""
    if not names:
        return lambda _params: ()
    if None not in names and not any(processors):
        # Every argument is a parameter taken as it is: one C-level itemgetter call.
        getter = itemgetter(*cast(tuple[str, ...], names))
        if len(names) == 1:
            return lambda params: (getter(params),)
        return cast(Callable[[dict[str, Any]], Sequence[Any]], getter)
    plan = tuple(zip(names, constants, processors, strict=True))

    def bind(params: dict[str, Any]) -> list[Any]:
        args = []
        for name, constant, processor in plan:
            value = constant if name is None else params[name]
            args.append(value if processor is None else processor(value))
        return args

    return bind


def _compile_sqlite(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> _Compiled | None:
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
    sql = str(compiled)
    if "POSTCOMPILE" in sql or compiled.positiontup is None:
        return None
    processors = compiled._bind_processors or {}
    names: list[str | None] = []
    constants: list[Any] = []
    for name in compiled.positiontup:
        bind = compiled.binds.get(name)
        given = name in keys or (bind is not None and bind.key in keys)
        if not given and (bind is None or bind.required):
            return None  # let SQLAlchemy report the missing parameter
        names.append((name if name in keys else bind.key) if given else None)
        constants.append(None if given or bind is None else bind.effective_value)
    return _Compiled(
        sql,
        _binder(
            tuple(names),
            tuple(constants),
            tuple(processors.get(name) for name in compiled.positiontup),
        ),
    )
