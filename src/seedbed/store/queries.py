"""The SQL that ``SqlStore`` runs, built once at import as SQLAlchemy Core constructs.

SQLAlchemy compiles each construct once per dialect and caches it, so a call only binds values.
Bind names carry a ``p_`` prefix because a bind named like a column is reserved in
``UPDATE ... SET``. The row mappers live here too: one place knows both the SQL and its shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Integer,
    Row,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from seedbed.store.schema import api_keys, credit_ledger, flags, from_milli, task_engines, tasks
from seedbed.tasks import OPEN_STATES, ApiKey, KeyLimits, Task, TaskView
from seedbed.tasks import TaskState as S

__all__ = [
    "ADD_CREDITS",
    "ADMIN_TOKEN",
    "BALANCE",
    "CHANGED_TASKS",
    "CLAIM",
    "CREATE_IN_ONE",
    "DELETE_FLAG",
    "DISABLED",
    "FINISH_ANY",
    "FINISH_OWNED",
    "FLAG",
    "FLAGS",
    "FORGET_IDEMPOTENCY",
    "GET_TASK",
    "HEARTBEAT",
    "HOLD",
    "HOLDS",
    "IDEMPOTENT_TASK",
    "INSERT_KEY",
    "INSERT_LEDGER",
    "INSERT_TASK",
    "INSERT_TASK_ENGINE",
    "KEYS_BY_HASH",
    "KEY_BY_HASH",
    "KEY_BY_ID",
    "KEY_STATE",
    "LEASE_OWNERS",
    "LEDGER",
    "LIST_KEYS",
    "MAINTENANCE",
    "NOTIFY",
    "PG_SET_FLAG",
    "PING",
    "POLL_TASK",
    "PROGRESS",
    "QUEUE_DEPTH",
    "QUEUE_OLDEST",
    "QUEUE_POSITION",
    "QUEUE_STATS",
    "QUEUE_SUMMARY",
    "RELEASE_LEASES",
    "REVOKE",
    "SETTLE",
    "SET_LIMITS",
    "SET_TASK_ENGINE",
    "SQLITE_SET_FLAG",
    "START",
    "TASKS_FINISHED_SINCE",
    "TASKS_OPEN",
    "TASK_EXISTS",
    "dumps",
    "key_from_row",
    "ledger_row",
    "list_tasks",
    "task_from_row",
    "view_from_row",
]

_K, _T, _L, _F = api_keys.c, tasks.c, credit_ledger.c, flags.c
_OPEN = [s.value for s in OPEN_STATES]


def _states(*states: str, column: Any = _T.state) -> Any:
    """``state IN ('a', 'b')`` written into the SQL text, so it compiles once and is cached.

    A Python list would become an "expanding" bind that SQLAlchemy re-renders on every call.
    """
    return column.in_([literal_column(f"'{state}'") for state in states])


_IS_OPEN = _states(*_OPEN)
MAINTENANCE = "maintenance"
DISABLED = "model_disabled:"
#: the console's admin token, as its hash (``seedbed admin token``)
ADMIN_TOKEN = "admin_token_hash"
#: the row readiness rewrites to prove the store takes writes (``check_writable``)
PROBE = "health_probe"


#: binds whose type SQLAlchemy cannot infer from a compared column (CASE branches,
#: arithmetic): typed here so that PostgreSQL (asyncpg) gets BIGINT/INTEGER, not unknown
_BIND_TYPES: dict[str, Any] = {
    "now": BigInteger(),
    "expires": BigInteger(),
    "amount": BigInteger(),
    "reserve": BigInteger(),
    "reserved": BigInteger(),
    "charge": BigInteger(),
    "floor": Integer(),
    "progress": Integer(),
    "cap": Integer(),
    "since": BigInteger(),
}


def _p(name: str) -> Any:
    # bind names are prefixed: a bind named like a column is reserved in UPDATE ... SET
    return bindparam(f"p_{name}", type_=_BIND_TYPES.get(name))


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


# -- statements, compiled once per dialect and cached by SQLAlchemy ---------------------------
KEY_BY_HASH = select(api_keys).where(_K.key_hash == _p("key_hash"))
KEYS_BY_HASH = select(api_keys).where(_K.key_hash.in_(bindparam("p_key_hashes", expanding=True)))
KEY_BY_ID = select(api_keys).where(_K.id == _p("key_id"))
LIST_KEYS = select(api_keys).order_by(_K.created_at, _K.id)
INSERT_KEY = insert(api_keys)
SET_LIMITS = update(api_keys).where(_K.id == _p("key_id")).values(limits=_p("limits"))
REVOKE = (
    update(api_keys)
    .where(_K.id == _p("key_id"))
    .values(revoked_at=func.coalesce(_K.revoked_at, _p("now")))
)
ADD_CREDITS = (
    update(api_keys)
    .where(
        _K.id == _p("key_id"),
        _K.balance_milli + _p("amount") >= 0,
        _K.balance_milli + _p("amount") <= _p("max"),
    )
    .values(balance_milli=_K.balance_milli + _p("amount"))
    .returning(_K.balance_milli)
)
BALANCE = select(_K.balance_milli).where(_K.id == _p("key_id"))
INSERT_LEDGER = insert(credit_ledger)
#: which engine runs a task (and its upstream id): update, else insert (portable)
SET_TASK_ENGINE = (
    update(task_engines)
    .where(task_engines.c.task_id == _p("task_id"))
    .values(engine=_p("engine"), upstream_task_id=_p("upstream"), updated_at=_p("now"))
)
INSERT_TASK_ENGINE = insert(task_engines)
TASK_EXISTS = select(literal(1)).where(_T.id == _p("task_id"))
LEDGER = select(credit_ledger).where(_L.key_id == _p("key_id")).order_by(_L.id)

#: the whole admission check in one conditional write: whoever commits first wins the credits
HOLD = (
    update(api_keys)
    .where(
        _K.id == _p("key_id"),
        _K.revoked_at.is_(None),
        _K.balance_milli >= _p("reserve"),
        _K.open_tasks < _p("cap"),
    )
    .values(
        balance_milli=_K.balance_milli - _p("reserve"),
        held_milli=_K.held_milli + _p("reserve"),
        open_tasks=_K.open_tasks + 1,
    )
)
KEY_STATE = select(_K.revoked_at, _K.open_tasks, _K.balance_milli).where(_K.id == _p("key_id"))
INSERT_TASK = insert(tasks).returning(_T.seq)
#: the columns a new task is inserted with (the rest take their defaults or stay null)
_NEW_TASK = (
    "id",
    "model",
    "state",
    "param",
    "input",
    "callback_url",
    "progress",
    "attempts",
    "reserved_milli",
    "consumed_milli",
    "result_keys",
    "create_time",
    "update_time",
    "origin",
    "idempotency_key",
    "request_hash",
)


def _create_in_one() -> Any:
    """PostgreSQL: HOLD, the task and its ledger line as one statement (data-modifying CTEs).

    Run outside a transaction block, the statement is its own transaction: the key's row,
    which every create of that key updates, is locked only while PostgreSQL runs it, not over
    the three round trips to a Python process whose event loop is busy with other requests
    (docs/benchmarks.md, "A fleet on PostgreSQL and S3"). Nothing is inserted when the hold
    matches nothing (no row): the caller reads the reason then. Binds are named ``t_<column>``.
    """
    hold = HOLD.returning(_K.id).cte("hold")
    values = [bindparam(f"t_{name}", type_=tasks.c[name].type) for name in _NEW_TASK]
    task = (
        insert(tasks)
        .from_select(["key_id", *_NEW_TASK], select(hold.c.id, *values))
        .returning(_T.seq)
        .cte("task")
    )
    ledger = insert(credit_ledger).from_select(
        ["key_id", "task_id", "kind", "amount_milli", "note", "created_at"],
        select(
            hold.c.id,
            bindparam("t_id", type_=tasks.c.id.type),
            literal("reserve"),
            _p("reserve"),
            literal(""),
            bindparam("t_create_time", type_=BigInteger()),
        ),
    )
    return select(task.c.seq).add_cte(ledger.cte("ledger"))


CREATE_IN_ONE = _create_in_one()
GET_TASK = select(tasks).where(_T.id == _p("task_id"))
QUEUE_POSITION = (
    select(func.count())
    .select_from(tasks)
    .where(_states(S.WAITING.value, S.QUEUING.value), _T.seq < _p("seq"))
)
_AHEAD = tasks.alias("ahead")
#: what recordInfo shows of a task (``TaskView``) and, only while it waits or queues, how many
#: queued tasks are ahead of it, in one read; CASE leaves the count undone for a task past
#: the queue
POLL_TASK = select(
    _T.id,
    _T.key_id,
    _T.model,
    _T.state,
    _T.param,
    _T.result_keys,
    _T.fail_code,
    _T.fail_msg,
    _T.progress,
    _T.consumed_milli,
    _T.create_time,
    _T.update_time,
    _T.complete_time,
    case(
        (
            _states(S.WAITING.value, S.QUEUING.value),
            select(func.count())
            .select_from(_AHEAD)
            .where(
                _states(S.WAITING.value, S.QUEUING.value, column=_AHEAD.c.state),
                _AHEAD.c.seq < _T.seq,
            )
            .scalar_subquery(),
        ),
        else_=None,
    ).label("queue_position"),
).where(_T.id == _p("task_id"))


IDEMPOTENT_TASK = select(tasks).where(
    _T.key_id == _p("key_id"), _T.idempotency_key == _p("idempotency_key")
)
#: an expired idempotency key is cleared so that the (key, idempotency key) index frees it
FORGET_IDEMPOTENCY = update(tasks).where(_T.seq == _p("seq")).values(idempotency_key=None)


def _changed_tasks(*, for_sqlite: bool) -> Any:
    # SQLite: the ids arrive as one JSON text bind (compiled once, like CLAIM's model list)
    ids = (
        _T.id.in_(select(literal_column("value")).select_from(func.json_each(_p("ids"))))
        if for_sqlite
        else _T.id.in_(bindparam("p_ids", expanding=True))
    )
    return select(tasks).where(ids, _T.update_time >= _p("since"))


#: by dialect is SQLite
CHANGED_TASKS = {sqlite_: _changed_tasks(for_sqlite=sqlite_) for sqlite_ in (True, False)}
#: walks only the (state, seq) index entries of the two queued states
QUEUE_STATS = (
    select(_T.model, func.count().label("depth"), func.min(_T.create_time).label("oldest"))
    .where(_states(S.WAITING.value, S.QUEUING.value))
    .group_by(_T.model)
    .order_by(_T.model)
)
_QUEUED = _states(S.WAITING.value, S.QUEUING.value)
#: the whole queue: counted on the covering (state, seq) index, no row read
QUEUE_DEPTH = select(func.count()).select_from(tasks).where(_QUEUED)
#: the oldest queued task: the smallest seq of each queued state (an index seek each)
QUEUE_OLDEST = (
    select(_T.create_time)
    .where(
        _T.seq.in_(
            union_all(
                *(
                    select(func.min(_T.seq)).where(_T.state == state)
                    for state in (S.WAITING.value, S.QUEUING.value)
                )
            )
        )
    )
    .order_by(_T.seq)
    .limit(1)
)


def _queue_summary(*, for_sqlite: bool) -> Any:
    models = (
        _T.model.in_(select(literal_column("value")).select_from(func.json_each(_p("models"))))
        if for_sqlite
        else _T.model.in_(bindparam("p_models", expanding=True))
    )
    return select(func.count().label("depth"), func.min(_T.create_time).label("oldest")).where(
        _QUEUED, models
    )


#: part of the queue (some models), by dialect is SQLite
QUEUE_SUMMARY = {sqlite_: _queue_summary(for_sqlite=sqlite_) for sqlite_ in (True, False)}
TASKS_OPEN = (
    select(_T.state, func.count().label("n")).where(_IS_OPEN).group_by(_T.state).order_by(_T.state)
)
TASKS_FINISHED_SINCE = (
    select(_T.state, _T.fail_code, func.count().label("n"))
    .where(_states(S.SUCCESS.value, S.FAIL.value), _T.complete_time >= _p("since"))
    .group_by(_T.state, _T.fail_code)
)


def list_tasks(
    *,
    state: str | None,
    model: str | None,
    key_id: str | None,
    since: int | None,
    limit: int,
    before: int | None = None,
) -> Any:
    """The admin listing and the console's gallery; built per call (not a hot path)."""
    stmt = select(tasks)
    if state is not None:
        stmt = stmt.where(_T.state == state)
    if model is not None:
        stmt = stmt.where(_T.model == model)
    if key_id is not None:
        stmt = stmt.where(_T.key_id == key_id)
    if since is not None:
        stmt = stmt.where(_T.create_time >= since)
    if before is not None:
        stmt = stmt.where(_T.seq < before)
    return stmt.order_by(_T.seq.desc()).limit(max(0, limit))


def _claimable_seq(*, by_model: bool, for_sqlite: bool) -> Any:
    """The ``seq`` of the oldest claimable task, as a scalar subquery."""
    if for_sqlite:
        # the model list arrives as one JSON text bind: a fixed SQL string, compiled once
        models = _T.model.in_(
            select(literal_column("value")).select_from(func.json_each(_p("models")))
        )
        # one ordered walk of the (state, seq) index per state, stopping at the first hit, then
        # the smallest of the three: no sort of every waiting task, and completed tasks (the
        # bulk of the table) are never visited. The write lock makes it atomic.
        arms = []
        for state in _OPEN:
            arm = select(_T.seq).where(_T.state == state)
            if state != S.WAITING.value:
                arm = arm.where(_T.lease_expires < _p("now"))
            if by_model:
                arm = arm.where(models)
            arms.append(select(arm.order_by(_T.seq).limit(1).subquery().c.seq))
        candidates = union_all(*arms).subquery()
        return select(func.min(candidates.c.seq)).scalar_subquery()
    # PostgreSQL: lock the candidate; SKIP LOCKED lets concurrent claimers take the next one
    models = _T.model.in_(bindparam("p_models", expanding=True))
    candidate = select(_T.seq).where(
        _IS_OPEN,
        or_(_T.state == S.WAITING.value, _T.lease_expires < _p("now")),
    )
    if by_model:
        candidate = candidate.where(models)
    return candidate.order_by(_T.seq).limit(1).with_for_update(skip_locked=True).scalar_subquery()


def _claim(*, by_model: bool, for_sqlite: bool) -> Any:
    # the models whose tasks start at once (claim and start in one round trip), bound like
    # the model list: one JSON text on SQLite, an expanding list on PostgreSQL
    starts = _T.model.in_(
        select(literal_column("value")).select_from(func.json_each(_p("start")))
        if for_sqlite
        else bindparam("p_start", expanding=True)
    )
    return (
        update(tasks)
        .where(_T.seq == _claimable_seq(by_model=by_model, for_sqlite=for_sqlite))
        .values(
            state=case(
                (starts, S.GENERATING.value),
                (_T.state == S.WAITING.value, S.QUEUING.value),
                else_=_T.state,
            ),
            lease_owner=_p("worker"),
            lease_expires=_p("expires"),
            attempts=_T.attempts + 1,
            update_time=_p("now"),
        )
        .returning(tasks)
    )


#: claim statements by (dialect is SQLite, filtered by model)
CLAIM = {
    (sqlite_, by_model): _claim(by_model=by_model, for_sqlite=sqlite_)
    for sqlite_ in (True, False)
    for by_model in (True, False)
}

#: the lease guard shared by the worker-side writes (a released lease has ``lease_expires`` 0)
_LEASE_HELD = (_T.lease_owner == _p("worker"), _T.lease_expires > 0, _IS_OPEN)
START = (
    update(tasks)
    .where(_T.id == _p("task_id"), *_LEASE_HELD)
    .values(
        state=S.GENERATING.value,
        update_time=case((_T.state == S.QUEUING.value, _p("now")), else_=_T.update_time),
    )
)
HEARTBEAT = (
    update(tasks)
    .where(_T.id.in_(bindparam("p_ids", expanding=True)), *_LEASE_HELD)
    .values(lease_expires=_p("expires"))
    .returning(_T.id)
)
PROGRESS = (
    update(tasks)
    .where(_T.id == _p("task_id"), _T.progress < _p("progress"), *_LEASE_HELD)
    .values(progress=_p("progress"), update_time=_p("now"))
)
HOLDS = select(_T.id).where(_T.id == _p("task_id"), *_LEASE_HELD)


def _finish(*, owned: bool) -> Any:
    where = [_T.id == _p("task_id"), _IS_OPEN]
    if owned:
        where += [_T.lease_owner == _p("worker"), _T.lease_expires > 0]
    return (
        update(tasks)
        .where(*where)
        .values(
            state=_p("state"),
            result_keys=_p("result_keys"),
            fail_code=_p("fail_code"),
            fail_msg=_p("fail_msg"),
            complete_time=_p("now"),
            update_time=_p("now"),
            # min(charge, reserved) and max(progress, floor), spelt portably
            consumed_milli=case(
                (_T.reserved_milli < _p("charge"), _T.reserved_milli), else_=_p("charge")
            ),
            progress=case((_T.progress < _p("floor"), _p("floor")), else_=_T.progress),
            lease_owner=None,
            lease_expires=None,
        )
        .returning(tasks)
    )


FINISH_ANY = _finish(owned=False)
FINISH_OWNED = _finish(owned=True)
SETTLE = (
    update(api_keys)
    .where(_K.id == _p("key_id"))
    .values(
        held_milli=_K.held_milli - _p("reserved"),
        balance_milli=_K.balance_milli + _p("reserved") - _p("charge"),
        open_tasks=_K.open_tasks - 1,
    )
    .returning(_K.hmac_key)  # a callback the finish claims is signed with it
)
RELEASE_LEASES = (
    update(tasks)
    .where(
        _T.lease_owner.in_(bindparam("p_workers", expanding=True)),
        _IS_OPEN,
        _T.lease_expires != 0,
    )
    .values(lease_expires=0)
)
LEASE_OWNERS = (
    select(_T.lease_owner)
    .distinct()
    .where(_IS_OPEN, _T.lease_owner.is_not(None), _T.lease_expires > 0)
)
FLAGS = select(_F.name, _F.value)
FLAG = select(_F.value).where(_F.name == _p("name"))
DELETE_FLAG = delete(flags).where(_F.name == _p("name"))
SQLITE_SET_FLAG = sqlite.insert(flags).on_conflict_do_update(
    index_elements=[_F.name], set_={"value": sqlite.insert(flags).excluded.value}
)
PG_SET_FLAG = postgresql.insert(flags).on_conflict_do_update(
    index_elements=[_F.name], set_={"value": postgresql.insert(flags).excluded.value}
)
PING = select(literal(1))
#: PostgreSQL only: a notification to the servers' LISTEN connections, sent at commit
NOTIFY = select(func.pg_notify(_p("channel"), _p("payload")))


# -- rows → domain values ------------------------------------------------------------------
def key_from_row(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        key_hash=row.key_hash,
        balance=from_milli(row.balance_milli),
        held=from_milli(row.held_milli),
        open_tasks=row.open_tasks,
        limits=KeyLimits.from_dict(orjson.loads(row.limits)),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        hmac_key=row.hmac_key,
    )


def task_from_row(row: Row[Any]) -> Task:
    return Task(
        id=row.id,
        key_id=row.key_id,
        model=row.model,
        state=S(row.state),
        param=row.param,
        input=orjson.loads(row.input),
        callback_url=row.callback_url,
        seq=row.seq,
        progress=row.progress,
        attempts=row.attempts,
        reserved=from_milli(row.reserved_milli),
        credits_consumed=from_milli(row.consumed_milli),
        result_keys=tuple(orjson.loads(row.result_keys)),
        fail_code=row.fail_code,
        fail_msg=row.fail_msg,
        create_time=row.create_time,
        update_time=row.update_time,
        complete_time=row.complete_time,
        lease_owner=row.lease_owner,
        lease_expires=row.lease_expires,
        origin=row.origin,
    )


def view_from_row(row: Row[Any]) -> TaskView:
    """A ``POLL_TASK`` row → the view."""
    position = row.queue_position
    return TaskView(
        row.id,
        row.key_id,
        row.model,
        S(row.state),
        row.param,
        tuple(orjson.loads(row.result_keys)),
        row.fail_code,
        row.fail_msg,
        row.progress,
        from_milli(row.consumed_milli),
        row.create_time,
        row.update_time,
        row.complete_time,
        None if position is None else int(position),
    )


def ledger_row(
    key_id: str, task_id: str | None, kind: str, amount: int, note: str, now: int
) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "task_id": task_id,
        "kind": kind,
        "amount_milli": amount,
        "note": note,
        "created_at": now,
    }
