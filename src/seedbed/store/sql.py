"""``SqlStore``: the ``Store`` protocol on SQLAlchemy Core, for SQLite and PostgreSQL.

Every operation is written once, as a plain synchronous function of a SQLAlchemy
``Connection`` that runs one short transaction from the prepared statements in ``queries``.
How that function is driven depends on the database:

* **SQLite** (the default deployment): on the stdlib driver, run on the event loop's own
  thread (see ``store.sqlite``: a thread hop costs more than the work). aiosqlite (tried
  first) hops to its thread for every DBAPI call, some ten per transaction: 0.6 ms per read
  and 1.2 to 2.7 ms per write on the reference machine. One writer connection, whose
  transactions start with ``BEGIN IMMEDIATE`` (see ``migrate.install_sqlite_hooks``): that
  file lock is what makes ``create_task``, ``claim`` and ``finish`` atomic across processes.
  One reader connection in autocommit for plain SELECTs, which in WAL mode never wait.
* **PostgreSQL**: the same functions through ``AsyncConnection.run_sync`` on an asyncpg engine
  (greenlet-driven, no threads). ``claim`` locks its candidate with ``FOR UPDATE SKIP LOCKED``
  so concurrent workers take different tasks without waiting for one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import orjson
from sqlalchemy import (
    BigInteger,
    BindParameter,
    Connection,
    String,
    bindparam,
    event,
    make_url,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from seedbed.outbox import (
    CallbackAttempt,
    CallbackRecord,
    CallbackState,
    Delivery,
    FileKind,
    StoredFile,
    after_attempt,
)
from seedbed.pgnotify import ADMIN_CHANGED
from seedbed.private import private_file
from seedbed.store import outbox_queries as oq
from seedbed.store import queries as q
from seedbed.store.base import (
    IDEMPOTENCY_SECONDS,
    CreateRefused,
    FinishListener,
    IdempotencyConflict,
    QueueStat,
    QueueSummary,
    TaskFilter,
    TaskStats,
    balance_refusal,
)
from seedbed.store.migrate import sqlite_path, upgrade
from seedbed.store.schema import callbacks, from_milli, task_engines, to_milli
from seedbed.store.sqlite import SqliteRunner, execute, execute_many
from seedbed.tasks import (
    BALANCE_MAX,
    ApiKey,
    ClaimedBy,
    Flags,
    KeyLimits,
    NewKey,
    NewTask,
    Outcome,
    Task,
    TaskState,
    TaskView,
)

__all__ = ["SqlStore"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class _Runner(Protocol):
    """Runs a synchronous operation on a connection, in a write transaction or a plain read."""

    async def write(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R: ...

    async def write_first(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        """``write``, for a caller a device waits on: woken first where writes share commits."""

    async def read(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R: ...

    async def close(self) -> None: ...

    def data_version(self) -> int | None:
        """A number that changes whenever the database does, if this database has one."""


class _AsyncRunner:
    """An async engine (asyncpg): the sync operations run on it through ``run_sync``."""

    def __init__(self, url: URL) -> None:
        # No pool_pre_ping: SQLAlchemy's for asyncpg is BEGIN, a ping and ROLLBACK, three round
        # trips before every transaction (py-spy and pg_stat_activity under createTask). A
        # connection PostgreSQL closed (a restart) is found without a round trip instead
        # (_drop_closed), and any other dead one fails its statement as a disconnect, which
        # makes SQLAlchemy discard the whole pool. A fixed pool of the same 15 connections
        # at most as before (5 + 10 overflow): overflow connections were closed on their
        # return under load and opened again, a TCP and TLS handshake each.
        self._engine = create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0)
        event.listen(self._engine.sync_engine, "checkout", _drop_closed)
        #: the same pool, statements run outside a transaction block (see ``single``)
        self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")

    async def write(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        async with self._engine.begin() as conn:
            return await conn.run_sync(fn, *args, **kw)

    write_first = write  # each write commits on its own: nobody to wake before

    async def read(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        async with self._engine.connect() as conn:
            return await conn.run_sync(fn, *args, **kw)

    async def single(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kw: P.kwargs
    ) -> R:
        """Run ``fn`` with each statement its own transaction (no BEGIN, no COMMIT round
        trip): for operations that are one statement, whose row locks then last only while
        PostgreSQL runs it."""
        async with self._autocommit.connect() as conn:
            return await conn.run_sync(fn, *args, **kw)

    async def close(self) -> None:
        await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def advisory_lock(self, lock_id: int) -> AsyncIterator[bool]:
        """A session advisory lock on a connection of its own, held while the block runs: it
        dies with this process's session, so a crashed holder never keeps it."""
        async with self._engine.connect() as conn:
            got = bool((await conn.execute(_PG_TRY_LOCK, {"p_lock": lock_id})).scalar_one())
            await conn.commit()  # end the implicit transaction; the session lock stays
            try:
                yield got
            finally:
                if got:
                    try:
                        await conn.execute(_PG_UNLOCK, {"p_lock": lock_id})
                        await conn.commit()
                    except Exception:
                        # The session may be gone (then so is the lock); never pool a
                        # connection that might still hold it.
                        await conn.invalidate()
                        log.warning(
                            "could not release advisory lock %d; connection dropped", lock_id
                        )

    def data_version(self) -> None:
        return None  # PostgreSQL has no cheap equivalent: every poll reads


#: connections to PostgreSQL per process (the most the pool held before: 5 + 10 overflow)
POOL_SIZE = 15
#: key hashes per read in ``keys_by_hash``: well under every driver's limit on binds
KEYS_PER_READ = 500


def _drop_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection whose socket PostgreSQL closed (a restart, a terminated backend) is
    replaced before use: the pool tries another on ``DisconnectionError``."""
    raw = getattr(dbapi_connection, "_connection", None)
    if raw is not None and raw.is_closed():
        raise DisconnectionError("the connection was closed by the server")


_PG_TRY_LOCK = text("SELECT pg_try_advisory_lock(:p_lock)")
_PG_UNLOCK = text("SELECT pg_advisory_unlock(:p_lock)")

#: the GCRA step of ``rate_limit_hit`` as one upsert: SET sees the old row in both databases,
#: and the row lock orders concurrent hits, so RETURNING reports this statement's own verdict
_RATE_HIT = """
INSERT INTO rate_limits (bucket, tat, last_ok) VALUES (:p_bucket, :p_now + :p_interval, 1)
ON CONFLICT (bucket) DO UPDATE SET
    last_ok = CASE WHEN {max}(rate_limits.tat, :p_now) - :p_now <= :p_slack THEN 1 ELSE 0 END,
    tat = CASE WHEN {max}(rate_limits.tat, :p_now) - :p_now <= :p_slack
          THEN {max}(rate_limits.tat, :p_now) + :p_interval ELSE rate_limits.tat END
RETURNING tat, last_ok
"""
_RATE_BINDS: list[BindParameter[Any]] = [
    bindparam("p_bucket", type_=String()),
    *(bindparam(f"p_{n}", type_=BigInteger()) for n in ("now", "interval", "slack")),
]
_RATE_HIT_SQL = {
    "postgresql": text(_RATE_HIT.format(max="GREATEST")).bindparams(*_RATE_BINDS),
    "sqlite": text(_RATE_HIT.format(max="max")).bindparams(*_RATE_BINDS),
}
#: the flag row that holds the server secret (64 hex characters)
_SECRET_FLAG = "server_secret"
#: both databases: PostgreSQL's and SQLite's (3.24+) upsert syntax agree here
_SECRET_INSERT = text(
    "INSERT INTO flags (name, value) VALUES (:p_name, :p_value) ON CONFLICT DO NOTHING"
)


def _lock_id(name: str) -> int:
    """A stable signed 64-bit advisory-lock id for ``name``."""
    digest = hashlib.sha256(f"seedbed:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _normalise_url(url: str) -> URL:
    """SQLite on the stdlib driver whatever was named; PostgreSQL on asyncpg unless named."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite")
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    return parsed


def _one(conn: Connection, stmt: Any, params: dict[str, Any]) -> Any:
    return execute(conn, stmt, params).first()


def _all(conn: Connection, stmt: Any, params: dict[str, Any]) -> list[Any]:
    return list(execute(conn, stmt, params).all())


class _PollCache:
    """``poll_task``'s answers, kept while the database is unchanged (its data version).

    Clients poll their open tasks over and over, and between two changes anywhere in the
    database every poll would read the same row and count the same queue: through the server
    that read was about a quarter of a waiting task's recordInfo. Any commit, by this process
    or another, empties the cache at the next turn of the event loop that asks, so an answer
    is never older than the read it replaces would have been.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._version: int | None = None
        self._views: dict[str, TaskView] = {}

    def get(self, version: int, task_id: str) -> TaskView | None:
        if version != self._version:
            self._views.clear()
            self._version = version
            return None
        return self._views.get(task_id)

    def put(self, view: TaskView) -> None:
        if len(self._views) >= self.MAX_ENTRIES:
            del self._views[next(iter(self._views))]  # the oldest
        self._views[view.id] = view


class SqlStore:
    """The durable store. ``open()`` migrates the schema and connects; ``close()`` disposes.

    Accepts ``sqlite:///path``, ``sqlite+aiosqlite:///path`` (same thing: see the module doc)
    and ``postgresql+asyncpg://...``. Atomicity and durability: each method commits before it
    returns. On SQLite with ``synchronous=NORMAL`` in WAL mode a crash of any process loses
    nothing committed; only an OS crash or power loss can lose the last transactions.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._url = _normalise_url(url)
        self._clock = clock
        self._dialect = self._url.get_backend_name()
        if self._dialect == "sqlite" and sqlite_path(self._url) is None:
            raise ValueError("SqlStore needs a SQLite file; use memory:// for a throwaway store")
        self._runner: _Runner | None = None
        #: (device, inode) of the SQLite file when opened: a removed file is noticed
        self._file_id: tuple[int, int] | None = None
        self._polls = _PollCache()
        self._finish_listeners: list[FinishListener] = []
        #: the callback lease of this process's dispatcher (``lease_callbacks``)
        self._callback_lease: Callable[[], float | None] = lambda: None

    @property
    def group_commit(self) -> bool:
        return self._dialect == "sqlite"  # SqliteRunner.write; PostgreSQL commits each apart

    def _now(self) -> int:
        return int(self._clock() * 1000)

    @property
    def _db(self) -> _Runner:
        if self._runner is None:
            raise RuntimeError("SqlStore is not open")
        return self._runner

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self._runner is not None:
            return
        path = sqlite_path(self._url) if self._dialect == "sqlite" else None
        if path is not None:
            # Created 0600 before SQLite makes it (its -wal and -shm files copy the mode):
            # the database holds webhook keys, for no other user of the machine.
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file_id = _file_id(private_file(path))
        await asyncio.to_thread(upgrade, self._url.render_as_string(hide_password=False))
        if self._dialect == "sqlite":
            self._runner = SqliteRunner(self._url)
        else:
            self._runner = _AsyncRunner(self._url)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        self._polls = _PollCache()  # a new connection numbers its data versions anew
        if runner is not None:
            await runner.close()

    async def ping(self) -> None:
        await self._db.read(_one, q.PING, {})

    async def check_writable(self) -> None:
        path = sqlite_path(self._url) if self._dialect == "sqlite" else None
        if path is not None:
            try:
                now_id = _file_id(path)
            except FileNotFoundError:
                now_id = None
            if now_id != self._file_id:
                # SQLite goes on writing to the open, unlinked file: everything written from
                # now on would be lost at the next start. Say so rather than accept work.
                raise OSError(errno.ENOENT, "the database file was removed or replaced", str(path))
        await self._db.write(self._set_flag, q.PROBE, str(self._now()))

    # -- keys and credits --------------------------------------------------------------------
    async def create_key(self, new: NewKey) -> ApiKey:
        credits = to_milli(new.credits)
        if credits < 0:
            raise ValueError("a new key's credits cannot be negative")
        try:
            return await self._db.write(self._create_key, new, credits)
        except IntegrityError as exc:
            raise ValueError("a key with this id or hash already exists") from exc

    def _create_key(self, conn: Connection, new: NewKey, credits: int) -> ApiKey:
        now = self._now()
        values = {
            "id": new.id,
            "name": new.name,
            "key_hash": new.key_hash,
            "balance_milli": credits,
            "held_milli": 0,
            "open_tasks": 0,
            "limits": q.dumps(new.limits.as_dict()),
            "created_at": now,
            "revoked_at": None,
            "hmac_key": new.hmac_key,
        }
        execute(conn, q.INSERT_KEY, values)
        if credits > 0:
            execute(
                conn,
                q.INSERT_LEDGER,
                q.ledger_row(new.id, None, "grant", credits, "key created", now),
            )
        return ApiKey(
            id=new.id,
            name=new.name,
            key_hash=new.key_hash,
            balance=from_milli(credits),
            held=Decimal(0),
            open_tasks=0,
            limits=KeyLimits.from_dict(new.limits.as_dict()),
            created_at=now,
            revoked_at=None,
            hmac_key=new.hmac_key,
        )

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._db.read(_one, q.KEY_BY_HASH, {"p_key_hash": key_hash})
        return None if row is None else q.key_from_row(row)

    async def keys_by_hash(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        wanted = list(dict.fromkeys(key_hashes))
        found: dict[str, ApiKey] = {}
        for at in range(0, len(wanted), KEYS_PER_READ):
            params = {"p_key_hashes": wanted[at : at + KEYS_PER_READ]}
            for row in await self._db.read(_all, q.KEYS_BY_HASH, params):
                found[row.key_hash] = q.key_from_row(row)
        return found

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._db.read(_one, q.KEY_BY_ID, {"p_key_id": key_id})
        return None if row is None else q.key_from_row(row)

    async def list_keys(self) -> list[ApiKey]:
        return [q.key_from_row(row) for row in await self._db.read(_all, q.LIST_KEYS, {})]

    async def revoke_key(self, key_id: str) -> bool:
        return await self._db.write(self._revoke_key, key_id)

    def _revoke_key(self, conn: Connection, key_id: str) -> bool:
        params = {"p_key_id": key_id, "p_now": self._now()}
        return bool(execute(conn, q.REVOKE, params).rowcount > 0)

    async def add_credits(self, key_id: str, amount: Decimal, note: str = "") -> Decimal:
        return await self._db.write(self._add_credits, key_id, to_milli(amount), note)

    def _add_credits(self, conn: Connection, key_id: str, milli: int, note: str) -> Decimal:
        params = {"p_key_id": key_id, "p_amount": milli, "p_max": to_milli(BALANCE_MAX)}
        row = execute(conn, q.ADD_CREDITS, params).first()
        if row is None:
            if execute(conn, q.BALANCE, {"p_key_id": key_id}).first() is None:
                raise KeyError(key_id)
            raise ValueError(balance_refusal(milli))
        if milli != 0:
            kind = "grant" if milli > 0 else "adjust"
            execute(
                conn, q.INSERT_LEDGER, q.ledger_row(key_id, None, kind, milli, note, self._now())
            )
        return from_milli(row.balance_milli)

    async def ledger(self, key_id: str) -> list[dict[str, object]]:
        rows = await self._db.read(_all, q.LEDGER, {"p_key_id": key_id})
        return [
            {
                "kind": row.kind,
                "amount": from_milli(row.amount_milli),
                "task_id": row.task_id,
                "note": row.note,
                "time": row.created_at,
            }
            for row in rows
        ]

    # -- tasks: the API side -----------------------------------------------------------------
    async def create_task(
        self, new: NewTask, *, open_task_cap: int, claimed: ClaimedBy | None = None
    ) -> Task:
        reserve = to_milli(new.reserve)
        if reserve < 0:
            raise ValueError("a task's reserve cannot be negative")
        input_json = q.dumps(dict(new.input))
        db = self._db
        try:
            if isinstance(db, _AsyncRunner) and new.idempotency_key is None and claimed is None:
                return await db.single(self._create_in_one, new, reserve, input_json, open_task_cap)
            return await db.write(
                self._create_task, new, reserve, input_json, open_task_cap, claimed
            )
        except IntegrityError as exc:
            if new.idempotency_key is not None:
                # A concurrent repeat committed first (PostgreSQL): answer with its task.
                replay = await self._db.write(self._replay, new)
                if replay is not None:
                    return replay
            raise ValueError("a task with this id already exists") from exc

    def _replay(self, conn: Connection, new: NewTask) -> Task | None:
        """The task an earlier request with ``new``'s idempotency key created, still in force."""
        params = {"p_key_id": new.key_id, "p_idempotency_key": new.idempotency_key}
        row = execute(conn, q.IDEMPOTENT_TASK, params).first()
        if row is None:
            return None
        if row.create_time <= self._now() - IDEMPOTENCY_SECONDS * 1000:
            execute(conn, q.FORGET_IDEMPOTENCY, {"p_seq": row.seq})  # expired: free the key
            return None
        # CHAR(64): PostgreSQL pads a shorter value with blanks (a hash never ends in one)
        stored = row.request_hash.rstrip(" ") if row.request_hash is not None else None
        if stored != new.request_hash:
            raise IdempotencyConflict(new.idempotency_key)
        return q.task_from_row(row)

    def _create_task(
        self,
        conn: Connection,
        new: NewTask,
        reserve: int,
        input_json: str,
        cap: int,
        claimed: ClaimedBy | None = None,
    ) -> Task:
        if new.idempotency_key is not None and (replay := self._replay(conn, new)) is not None:
            return replay
        refused = _hold(conn, {"p_key_id": new.key_id, "p_reserve": reserve, "p_cap": cap})
        if refused is not None:
            raise CreateRefused(refused)
        now = self._now()
        values = {"key_id": new.key_id, **_new_task_values(new, reserve, input_json, now)}
        if claimed is not None:  # as Task.accepted(claimed=...) has it
            values.update(
                state=TaskState.GENERATING.value,
                attempts=1,
                lease_owner=claimed.worker_id,
                lease_expires=claimed.expires(now),
            )
        seq = execute(conn, q.INSERT_TASK, values).scalar_one()
        execute(
            conn, q.INSERT_LEDGER, q.ledger_row(new.key_id, new.id, "reserve", reserve, "", now)
        )
        input_ = orjson.loads(input_json)
        return Task.accepted(
            new, seq=seq, now=now, input=input_, reserved=from_milli(reserve), claimed=claimed
        )

    def _create_in_one(
        self, conn: Connection, new: NewTask, reserve: int, input_json: str, cap: int
    ) -> Task:
        """PostgreSQL without an idempotency key: the create as one statement, its own
        transaction (``q.CREATE_IN_ONE``). When it inserts nothing, the hold was refused (or a
        racing finish made room since: tried again, as ``_hold`` does)."""
        hold = {"p_key_id": new.key_id, "p_reserve": reserve, "p_cap": cap}
        for _ in range(3):
            now = self._now()
            values = {
                f"t_{k}": v for k, v in _new_task_values(new, reserve, input_json, now).items()
            }
            seq = execute(conn, q.CREATE_IN_ONE, {**hold, **values}).scalar()
            if seq is not None:
                return Task.accepted(
                    new,
                    seq=seq,
                    now=now,
                    input=orjson.loads(input_json),
                    reserved=from_milli(reserve),
                )
            row = execute(conn, q.KEY_STATE, {"p_key_id": new.key_id}).first()
            if row is None or row.revoked_at is not None:
                raise CreateRefused("key")
            if row.open_tasks >= cap:
                raise CreateRefused("open_tasks")
            if row.balance_milli < reserve:
                raise CreateRefused("credits")
        raise CreateRefused("credits")

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._db.read(_one, q.GET_TASK, {"p_task_id": task_id})
        return None if row is None else q.task_from_row(row)

    async def queue_position(self, task: Task) -> int:
        row = await self._db.read(_one, q.QUEUE_POSITION, {"p_seq": task.seq})
        return 0 if row is None else int(row[0])

    async def poll_task(self, task_id: str) -> TaskView | None:
        version = self._db.data_version()
        if version is not None:
            found = self._polls.get(version, task_id)
            if found is not None:
                return found
        row = await self._db.read(_one, q.POLL_TASK, {"p_task_id": task_id})
        if row is None:
            return None
        view = q.view_from_row(row)
        if version is not None:
            self._polls.put(view)
        return view

    async def changed_tasks(self, task_ids: Sequence[str], *, since: int) -> list[Task]:
        if not task_ids:
            return []
        sqlite = self._dialect == "sqlite"
        ids = q.dumps(list(task_ids)) if sqlite else list(task_ids)
        rows = await self._db.read(_all, q.CHANGED_TASKS[sqlite], {"p_ids": ids, "p_since": since})
        return [q.task_from_row(row) for row in rows]

    async def list_tasks(self, where: TaskFilter) -> list[Task]:
        stmt = q.list_tasks(
            state=None if where.state is None else where.state.value,
            model=where.model,
            key_id=where.key_id,
            since=where.since,
            limit=where.limit,
            before=where.before,
        )
        return [q.task_from_row(row) for row in await self._db.read(_all, stmt, {})]

    async def queue_stats(self) -> list[QueueStat]:
        rows = await self._db.read(_all, q.QUEUE_STATS, {})
        return [
            QueueStat(model=row.model, depth=int(row.depth), oldest_create_time=int(row.oldest))
            for row in rows
        ]

    async def queue_summary(self, models: Collection[str] | None = None) -> QueueSummary:
        if models is None:
            depth = (await self._db.read(_one, q.QUEUE_DEPTH, {}))[0]
            oldest = await self._db.read(_one, q.QUEUE_OLDEST, {})
            return QueueSummary(
                depth=int(depth), oldest_create_time=None if oldest is None else int(oldest[0])
            )
        sqlite = self._dialect == "sqlite"
        params = {"p_models": q.dumps(list(models)) if sqlite else list(models)}
        row = await self._db.read(_one, q.QUEUE_SUMMARY[sqlite], params)
        return QueueSummary(
            depth=int(row.depth), oldest_create_time=None if row.oldest is None else int(row.oldest)
        )

    async def task_stats(self, *, since: int) -> TaskStats:
        stats = TaskStats()
        for row in await self._db.read(_all, q.TASKS_OPEN, {}):
            stats.open_by_state[row.state] = int(row.n)
        for row in await self._db.read(_all, q.TASKS_FINISHED_SINCE, {"p_since": since}):
            finished = stats.finished_by_state
            finished[row.state] = finished.get(row.state, 0) + int(row.n)
            if row.state == TaskState.FAIL.value:
                code = row.fail_code or ""
                stats.failures_by_code[code] = stats.failures_by_code.get(code, 0) + int(row.n)
        return stats

    # -- tasks: the worker side --------------------------------------------------------------
    async def claim(
        self,
        *,
        worker_id: str,
        models: Collection[str] | None,
        lease_seconds: float,
        start: Collection[str] = (),
    ) -> Task | None:
        if models is not None and not models:
            return None
        model_list = None if models is None else list(models)
        db = self._db
        return await db.write_first(self._claim, worker_id, model_list, lease_seconds, list(start))

    def _claim(
        self,
        conn: Connection,
        worker_id: str,
        models: list[str] | None,
        lease_seconds: float,
        start: list[str],
    ) -> Task | None:
        now = self._now()
        params: dict[str, Any] = {
            "p_now": now,
            "p_worker": worker_id,
            "p_expires": now + round(lease_seconds * 1000),
        }
        sqlite = self._dialect == "sqlite"
        params["p_start"] = q.dumps(start) if sqlite else start
        if models is not None:
            params["p_models"] = q.dumps(models) if sqlite else models
        stmt = q.CLAIM[sqlite, models is not None]
        row = execute(conn, stmt, params).first()
        return None if row is None else q.task_from_row(row)

    async def start_generating(self, task_id: str, *, worker_id: str) -> bool:
        return await self._db.write(self._guarded, q.START, task_id, worker_id)

    def _guarded(self, conn: Connection, stmt: Any, task_id: str, worker_id: str) -> bool:
        params = {"p_task_id": task_id, "p_worker": worker_id, "p_now": self._now()}
        return bool(execute(conn, stmt, params).rowcount > 0)

    async def heartbeat(
        self, task_ids: Sequence[str], *, worker_id: str, lease_seconds: float
    ) -> set[str]:
        if not task_ids:
            return set()
        return await self._db.write(self._heartbeat, list(set(task_ids)), worker_id, lease_seconds)

    def _heartbeat(
        self, conn: Connection, task_ids: list[str], worker_id: str, lease_seconds: float
    ) -> set[str]:
        params = {
            "p_ids": task_ids,
            "p_worker": worker_id,
            "p_expires": self._now() + round(lease_seconds * 1000),
        }
        return set(execute(conn, q.HEARTBEAT, params).scalars())

    async def set_progress(self, task_id: str, progress: int, *, worker_id: str) -> bool:
        progress = min(100, max(0, progress))
        return await self._db.write(self._set_progress, task_id, progress, worker_id)

    def _set_progress(self, conn: Connection, task_id: str, progress: int, worker_id: str) -> bool:
        guard = {"p_task_id": task_id, "p_worker": worker_id}
        params = {**guard, "p_progress": progress, "p_now": self._now()}
        if execute(conn, q.PROGRESS, params).rowcount > 0:
            return True
        # nothing written: either the progress did not grow or the lease is gone
        return execute(conn, q.HOLDS, guard).first() is not None

    async def finish(self, task_id: str, outcome: Outcome, *, worker_id: str | None) -> Task | None:
        if not outcome.state.is_terminal:
            raise ValueError("an outcome must be success or fail")
        success = outcome.state is TaskState.SUCCESS
        params: dict[str, Any] = {
            "p_task_id": task_id,
            "p_state": outcome.state.value,
            "p_result_keys": q.dumps(list(outcome.result_keys) if success else []),
            "p_fail_code": None if success else outcome.fail_code,
            "p_fail_msg": None if success else outcome.fail_msg,
            "p_charge": max(to_milli(outcome.charge), 0) if success else 0,
            "p_floor": 100 if success else 0,
        }
        if worker_id is not None:
            params["p_worker"] = worker_id
        finished = await self._db.write(self._finish, params, success)
        if finished is None:
            return None
        done, delivery = finished
        for listener in self._finish_listeners:
            listener(done, delivery)
        return done

    def on_finish(self, listener: FinishListener) -> None:
        self._finish_listeners.append(listener)

    def lease_callbacks(self, lease: Callable[[], float | None]) -> None:
        self._callback_lease = lease

    def _finish(
        self, conn: Connection, params: dict[str, Any], success: bool
    ) -> tuple[Task, Delivery | None] | None:
        now = params["p_now"] = self._now()
        stmt = q.FINISH_OWNED if "p_worker" in params else q.FINISH_ANY
        row = execute(conn, stmt, params).first()
        if row is None:
            return None
        # settle exactly once: only the transaction that closed the task gets here
        key_id, task_id = row.key_id, row.id
        reserved, charge = row.reserved_milli, row.consumed_milli
        settle = {"p_key_id": key_id, "p_reserved": reserved, "p_charge": charge}
        hmac_key = execute(conn, q.SETTLE, settle).scalar_one()
        entries = []
        if success:
            entries.append(q.ledger_row(key_id, task_id, "charge", charge, "", now))
        if reserved > charge:
            entries.append(q.ledger_row(key_id, task_id, "release", reserved - charge, "", now))
        if entries:
            execute_many(conn, q.INSERT_LEDGER, entries)
        task = q.task_from_row(row)
        delivery = None
        if task.callback_url:
            # the outbox row commits with the terminal state: no finished task loses its callback
            lease = self._callback_lease()
            due = now if lease is None else now + round(lease * 1000)
            outbox = oq.callback_row(task_id, key_id, task.callback_url, now, due)
            execute(conn, oq.INSERT_CALLBACK, outbox)
            if lease is not None:
                url = task.callback_url
                delivery = Delivery(task_id=task_id, url=url, attempts=0, hmac_key=hmac_key)
        if success and task.result_keys:
            # an upsert: a record must never be the reason a task cannot be settled
            execute_many(
                conn,
                self._upsert_file,
                [oq.file_row(_result_file(task, key), now) for key in task.result_keys],
            )
        return task, delivery

    async def release_leases(self, worker_ids: Collection[str]) -> int:
        if not worker_ids:
            return 0
        return await self._db.write(_release_leases, list(set(worker_ids)))

    async def lease_owners(self) -> set[str]:
        return {row.lease_owner for row in await self._db.read(_all, q.LEASE_OWNERS, {})}

    # -- webhook keys ------------------------------------------------------------------------
    async def set_task_engine(
        self, task_id: str, engine: str, upstream_task_id: str | None = None
    ) -> None:
        await self._db.write(self._set_task_engine, task_id, engine, upstream_task_id)

    def _set_task_engine(
        self, conn: Connection, task_id: str, engine: str, upstream_task_id: str | None
    ) -> None:
        # update, else insert: portable, and one transaction holds the row for its task
        now = self._now()
        params = {"p_task_id": task_id, "p_engine": engine, "p_upstream": upstream_task_id}
        if execute(conn, q.SET_TASK_ENGINE, {**params, "p_now": now}).rowcount == 0:
            if execute(conn, q.TASK_EXISTS, {"p_task_id": task_id}).first() is None:
                return  # never created: its create was refused after its worker began
            row = {"engine": engine, "upstream_task_id": upstream_task_id, "updated_at": now}
            execute(conn, q.INSERT_TASK_ENGINE, {"task_id": task_id, **row})

    async def task_engine(self, task_id: str) -> tuple[str, str | None] | None:
        return await self._db.read(self._task_engine, task_id)

    @staticmethod
    def _task_engine(conn: Connection, task_id: str) -> tuple[str, str | None] | None:
        table = task_engines
        row = conn.execute(
            table.select()
            .with_only_columns(table.c.engine, table.c.upstream_task_id)
            .where(table.c.task_id == task_id)
        ).first()
        return None if row is None else (row.engine, row.upstream_task_id)

    async def set_hmac_key(self, key_id: str, hmac_key: str | None) -> bool:
        params = {"p_key_id": key_id, "p_hmac_key": hmac_key}
        return await self._db.write(self._rowcount, oq.SET_HMAC_KEY, params) > 0

    async def set_key_limits(self, key_id: str, limits: KeyLimits) -> bool:
        params = {"p_key_id": key_id, "p_limits": q.dumps(limits.as_dict())}
        return await self._db.write(self._rowcount, q.SET_LIMITS, params) > 0

    @staticmethod
    def _rowcount(conn: Connection, stmt: Any, params: dict[str, Any]) -> int:
        return int(conn.execute(stmt, params).rowcount)

    # -- the callback outbox -----------------------------------------------------------------
    async def claim_callbacks(self, *, limit: int, lease_seconds: float) -> list[Delivery]:
        if limit <= 0:
            return []
        return await self._db.write(self._claim_callbacks, limit, lease_seconds)

    def _claim_callbacks(
        self, conn: Connection, limit: int, lease_seconds: float
    ) -> list[Delivery]:
        now = self._now()
        lease_until = now + round(lease_seconds * 1000)
        if self._dialect == "sqlite":
            params = {"p_now": now, "p_limit": limit, "p_lease_until": lease_until}
            rows = execute(conn, oq.SQLITE_CLAIM_CALLBACKS, params).all()
        else:
            due = conn.execute(oq.DUE_CALLBACKS, {"p_now": now, "p_limit": limit})
            ids = list(due.scalars())
            if not ids:
                return []
            lease = {"p_ids": ids, "p_now": now, "p_lease_until": lease_until}
            conn.execute(oq.CLAIM_CALLBACKS, lease)
            rows = conn.execute(oq.DELIVERIES, {"p_ids": ids}).all()
        return [
            Delivery(task_id=r.task_id, url=r.url, attempts=r.attempts, hmac_key=r.hmac_key)
            for r in rows
        ]

    async def record_callback_attempt(
        self,
        task_id: str,
        *,
        attempt: int,
        status: int | None,
        error: str | None,
        duration_ms: int,
        delivered: bool,
        retry_in: float | None,
    ) -> None:
        await self._db.write(
            self._record_attempt, task_id, attempt, status, error, duration_ms, delivered, retry_in
        )

    def _record_attempt(
        self,
        conn: Connection,
        task_id: str,
        attempt: int,
        status: int | None,
        error: str | None,
        duration_ms: int,
        delivered: bool,
        retry_in: float | None,
    ) -> None:
        now = self._now()
        state, next_at = after_attempt(now, delivered, retry_in)
        execute(
            conn,
            oq.INSERT_ATTEMPT,
            {
                "task_id": task_id,
                "attempt": attempt,
                "status": status,
                "error": error,
                "duration_ms": duration_ms,
                "at": now,
            },
        )
        execute(
            conn,
            oq.RECORD_ATTEMPT,
            {
                "p_task_id": task_id,
                "p_state": state.value,
                "p_attempt": attempt,
                "p_next": next_at,
                "p_status": status,
                "p_error": error,
                "p_now": now,
            },
        )

    async def release_callbacks(self, task_ids: Collection[str]) -> None:
        if task_ids:
            params = {"p_ids": list(set(task_ids)), "p_now": self._now()}
            await self._db.write(self._rowcount, oq.RELEASE_CALLBACKS, params)

    async def redeliver_callback(self, task_id: str) -> bool:
        params = {"p_task_id": task_id, "p_now": self._now()}
        return await self._db.write(self._rowcount, oq.REDELIVER, params) > 0

    async def get_callback(self, task_id: str) -> CallbackRecord | None:
        row = await self._db.read(_one, oq.CALLBACK, {"p_task_id": task_id})
        return None if row is None else oq.callback_from_row(row)

    async def list_callbacks(
        self, *, state: CallbackState | None = None, limit: int = 100
    ) -> list[CallbackRecord]:
        stmt = oq.LIST_CALLBACKS.limit(limit)
        if state is not None:
            stmt = stmt.where(callbacks.c.state == state.value)
        return [oq.callback_from_row(r) for r in await self._db.read(_all, stmt, {})]

    async def callback_attempts(self, task_id: str) -> list[CallbackAttempt]:
        rows = await self._db.read(_all, oq.ATTEMPTS, {"p_task_id": task_id})
        return [oq.attempt_from_row(r) for r in rows]

    # -- file records --------------------------------------------------------------------------
    async def record_file(self, file: StoredFile) -> StoredFile:
        return await self._db.write(self._record_file, file)

    def _record_file(self, conn: Connection, file: StoredFile) -> StoredFile:
        now = self._now()
        conn.execute(self._upsert_file, oq.file_row(file, now))
        return dataclasses.replace(file, created_at=now, deleted_at=None)

    @property
    def _upsert_file(self) -> Any:
        return oq.PG_UPSERT_FILE if self._dialect == "postgresql" else oq.SQLITE_UPSERT_FILE

    async def get_file(self, key: str) -> StoredFile | None:
        row = await self._db.read(_one, oq.GET_FILE, {"p_key": key})
        return None if row is None else oq.file_from_row(row)

    async def expired_files(self, kind: FileKind, *, before: int, limit: int) -> list[StoredFile]:
        params = {"p_kind": kind.value, "p_before": before, "p_limit": limit}
        return [oq.file_from_row(r) for r in await self._db.read(_all, oq.EXPIRED_FILES, params)]

    async def known_files(self, keys: Collection[str]) -> set[str]:
        if not keys:
            return set()
        rows = await self._db.read(_all, oq.KNOWN_FILES, {"p_keys": sorted(set(keys))})
        return {row.key for row in rows}

    async def mark_files_deleted(
        self, keys: Collection[str], *, before: int | None = None
    ) -> list[str]:
        if not keys:
            return []
        params = {
            "p_keys": sorted(set(keys)),
            "p_now": self._now(),
            # no bound: any record (2**62 ms is far beyond any clock)
            "p_before": (1 << 62) if before is None else before,
        }
        return sorted(await self._db.write(self._scalars, oq.MARK_FILES_DELETED, params))

    @staticmethod
    def _scalars(conn: Connection, stmt: Any, params: dict[str, Any]) -> list[Any]:
        return list(conn.execute(stmt, params).scalars())

    # -- deployment switches -----------------------------------------------------------------
    async def flags(self) -> Flags:
        values = {row.name: row.value for row in await self._db.read(_all, q.FLAGS, {})}
        return Flags(
            maintenance=values.get(q.MAINTENANCE) == "1",
            disabled_models=frozenset(
                name[len(q.DISABLED) :] for name in values if name.startswith(q.DISABLED)
            ),
        )

    async def set_maintenance(self, on: bool) -> None:
        await self._db.write(self._set_flag, q.MAINTENANCE, "1" if on else "0")

    async def set_model_enabled(self, model: str, enabled: bool) -> None:
        await self._db.write(self._set_flag, q.DISABLED + model, None if enabled else "1")

    async def announce_admin_change(self, change: str) -> None:
        if self._dialect == "postgresql":  # on SQLite the servers share a host: datagrams
            params = {"p_channel": ADMIN_CHANGED, "p_payload": change}
            await self._db.write(_one, q.NOTIFY, params)

    async def admin_token_hash(self) -> str | None:
        row = await self._db.read(_one, q.FLAG, {"p_name": q.ADMIN_TOKEN})
        return None if row is None else str(row[0])

    async def set_admin_token_hash(self, token_hash: str | None) -> None:
        await self._db.write(self._set_flag, q.ADMIN_TOKEN, token_hash)

    # -- what replicas share ---------------------------------------------------------------
    async def rate_limit_hit(self, bucket: str, *, limit: int, window: float) -> float:
        if limit <= 0:
            return window
        window_us = round(window * 1_000_000)
        interval = max(1, window_us // limit)
        now, slack = round(self._clock() * 1_000_000), window_us - interval
        params = {"p_bucket": bucket, "p_now": now, "p_interval": interval, "p_slack": slack}
        db = self._db
        # one statement: on PostgreSQL its own transaction (the bucket's row locked only
        # while the server runs it; see _AsyncRunner.single)
        run = db.single if isinstance(db, _AsyncRunner) else db.write
        tat, ok = await run(self._rate_hit, params)
        if ok:
            return 0.0
        return max(tat - now - slack, 1) / 1_000_000

    def _rate_hit(self, conn: Connection, params: dict[str, Any]) -> tuple[int, bool]:
        row = conn.execute(_RATE_HIT_SQL[self._dialect], params).one()
        return int(row.tat), bool(row.last_ok)

    async def server_secret(self) -> bytes:
        value = await self._db.write(self._server_secret, secrets.token_hex(32))
        return bytes.fromhex(value)

    def _server_secret(self, conn: Connection, candidate: str) -> str:
        # Insert-if-absent, then read: a concurrent first start waits on the row and reads
        # the winner's secret (a new statement sees the committed row under read committed).
        params = {"p_name": _SECRET_FLAG, "p_value": candidate}
        conn.execute(_SECRET_INSERT, params)
        row = conn.execute(q.FLAG, {"p_name": _SECRET_FLAG}).one()
        return str(row[0])

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        db = self._db
        if isinstance(db, _AsyncRunner):
            async with db.advisory_lock(_lock_id(name)) as got:
                yield got
            return
        path = sqlite_path(self._url)
        assert path is not None
        fd = _file_lock(path.with_name(f"{path.name}.{name}.lock"))
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)

    def _set_flag(self, conn: Connection, name: str, value: str | None) -> None:
        """Upsert (or, with None, delete) one flag row."""
        if value is None:
            execute(conn, q.DELETE_FLAG, {"p_name": name})
        else:
            upsert = q.PG_SET_FLAG if self._dialect == "postgresql" else q.SQLITE_SET_FLAG
            execute(conn, upsert, {"name": name, "value": value})


def _hold(conn: Connection, hold: dict[str, Any]) -> str | None:
    """Hold the credits and a task slot; None on success, else the refusal reason.

    One conditional UPDATE is the whole admission check, so whoever commits first wins and the
    balance never goes negative. When it matches nothing, the reason is read in the same
    transaction (contract order: key, open-task cap, credits). On SQLite the write lock makes
    that read agree with the failed update; under PostgreSQL's read committed a racing finish
    may have made room since, and then the hold is simply tried again.
    """
    for _ in range(3):
        if execute(conn, q.HOLD, hold).rowcount == 1:
            return None
        row = execute(conn, q.KEY_STATE, {"p_key_id": hold["p_key_id"]}).first()
        if row is None or row.revoked_at is not None:
            return "key"
        if row.open_tasks >= hold["p_cap"]:
            return "open_tasks"
        if row.balance_milli < hold["p_reserve"]:
            return "credits"
    return "credits"


def _new_task_values(new: NewTask, reserve: int, input_json: str, now: int) -> dict[str, Any]:
    """A new task's row, but its key (``q.INSERT_TASK`` and ``q.CREATE_IN_ONE`` both)."""
    return {
        "id": new.id,
        "model": new.model,
        "state": TaskState.WAITING.value,
        "param": new.param,
        "input": input_json,
        "callback_url": new.callback_url,
        "progress": 0,
        "attempts": 0,
        "reserved_milli": reserve,
        "consumed_milli": 0,
        "result_keys": "[]",
        "create_time": now,
        "update_time": now,
        "origin": new.origin,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
    }


def _result_file(task: Task, key: str) -> StoredFile:
    return StoredFile(key=key, kind=FileKind.RESULT, key_id=task.key_id, task_id=task.id)


def _release_leases(conn: Connection, worker_ids: list[str]) -> int:
    return int(execute(conn, q.RELEASE_LEASES, {"p_workers": worker_ids}).rowcount)


def _file_id(path: Path) -> tuple[int, int]:
    info = path.stat()
    return (info.st_dev, info.st_ino)


def _file_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created), or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
