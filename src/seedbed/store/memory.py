"""``MemoryStore``: the ``Store`` protocol over plain dicts, for unit tests.

It ships in the package (like procrastinate's ``InMemoryConnector``) so that tests of the API
and the worker need no database. It is also the executable specification of the semantics:
the contract suite runs the same tests against it and ``SqlStore``, so every rule here (what a
lease guard checks, which ledger rows are written, how money is rounded) must match ``sql.py``.
Each method runs under one ``asyncio.Lock``, standing in for a database transaction.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal

from seedbed.outbox import (
    CallbackAttempt,
    CallbackRecord,
    CallbackState,
    Delivery,
    FileKind,
    StoredFile,
    after_attempt,
)
from seedbed.ratelimit import RateLimiter
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
from seedbed.store.schema import from_milli, to_milli
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

__all__ = ["MemoryStore"]

_QUEUED = (TaskState.WAITING, TaskState.QUEUING)


@dataclass(kw_only=True)
class _Key:
    """A key row; money in milli-credits, as in the SQL table."""

    id: str
    name: str
    key_hash: str
    balance: int
    held: int
    open_tasks: int
    limits: KeyLimits
    created_at: int
    revoked_at: int | None
    hmac_key: str | None = None

    def public(self) -> ApiKey:
        return ApiKey(
            id=self.id,
            name=self.name,
            key_hash=self.key_hash,
            balance=from_milli(self.balance),
            held=from_milli(self.held),
            open_tasks=self.open_tasks,
            limits=self.limits,
            created_at=self.created_at,
            revoked_at=self.revoked_at,
            hmac_key=self.hmac_key,
        )


@dataclass(frozen=True, kw_only=True)
class _Entry:
    key_id: str
    task_id: str | None
    kind: str
    amount: int
    note: str
    time: int


class MemoryStore:
    """Keys, tasks, the credit ledger and flags in process memory; lost on exit."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: dict[str, _Key] = {}
        self._by_hash: dict[str, str] = {}
        self._tasks: dict[str, Task] = {}
        self._seq = 0
        self._ledger: list[_Entry] = []
        #: (key id, Idempotency-Key) -> (task id, request hash)
        self._idempotency: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._maintenance = False
        self._disabled: set[str] = set()
        self._admin_token_hash: str | None = None
        self._finish_listeners: list[FinishListener] = []
        self._callback_lease: Callable[[], float | None] = lambda: None
        self._callbacks: dict[str, CallbackRecord] = {}
        self._attempts: list[CallbackAttempt] = []
        self._files: dict[str, StoredFile] = {}
        self._engines: dict[str, tuple[str, str | None]] = {}
        self._limiter = RateLimiter(clock=clock)
        self._secret: bytes | None = None
        self._exclusive: set[str] = set()

    @property
    def group_commit(self) -> bool:
        return False  # each write is done at once: there is nothing to share

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _record(self, key_id: str, task_id: str | None, kind: str, amount: int, note: str) -> None:
        self._ledger.append(
            _Entry(
                key_id=key_id,
                task_id=task_id,
                kind=kind,
                amount=amount,
                note=note,
                time=self._now(),
            )
        )

    @staticmethod
    def _out(task: Task) -> Task:
        # callers get their own copy of the mutable input, as they would from a database
        return task.evolve(input=copy.deepcopy(task.input))

    def _holds(self, task: Task, worker_id: str) -> bool:
        """The lease guard: this worker owns the lease, it was not released, the task is open."""
        return (
            task.state.is_open
            and task.lease_owner == worker_id
            and task.lease_expires is not None
            and task.lease_expires > 0
        )

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays until the object is dropped."""

    async def ping(self) -> None:
        """Always reachable."""

    async def check_writable(self) -> None:
        """Always writable."""

    # -- keys and credits --------------------------------------------------------------------
    async def create_key(self, new: NewKey) -> ApiKey:
        credits = to_milli(new.credits)
        if credits < 0:
            raise ValueError("a new key's credits cannot be negative")
        async with self._lock:
            if new.id in self._keys or new.key_hash in self._by_hash:
                raise ValueError("a key with this id or hash already exists")
            key = _Key(
                id=new.id,
                name=new.name,
                key_hash=new.key_hash,
                balance=credits,
                held=0,
                open_tasks=0,
                limits=KeyLimits.from_dict(new.limits.as_dict()),
                created_at=self._now(),
                revoked_at=None,
                hmac_key=new.hmac_key,
            )
            self._keys[key.id] = key
            self._by_hash[key.key_hash] = key.id
            if credits > 0:
                self._record(key.id, None, "grant", credits, "key created")
            return key.public()

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        key_id = self._by_hash.get(key_hash)
        return None if key_id is None else self._keys[key_id].public()

    async def keys_by_hash(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        found = ((h, self._by_hash.get(h)) for h in key_hashes)
        return {h: self._keys[key_id].public() for h, key_id in found if key_id is not None}

    async def get_key(self, key_id: str) -> ApiKey | None:
        key = self._keys.get(key_id)
        return None if key is None else key.public()

    async def list_keys(self) -> list[ApiKey]:
        keys = sorted(self._keys.values(), key=lambda k: (k.created_at, k.id))
        return [k.public() for k in keys]

    async def revoke_key(self, key_id: str) -> bool:
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                return False
            if key.revoked_at is None:
                key.revoked_at = self._now()
            return True

    async def add_credits(self, key_id: str, amount: Decimal, note: str = "") -> Decimal:
        milli = to_milli(amount)
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise KeyError(key_id)
            if not 0 <= key.balance + milli <= to_milli(BALANCE_MAX):
                raise ValueError(balance_refusal(milli))
            if milli != 0:
                key.balance += milli
                self._record(key_id, None, "grant" if milli > 0 else "adjust", milli, note)
            return from_milli(key.balance)

    async def ledger(self, key_id: str) -> list[dict[str, object]]:
        return [
            {
                "kind": e.kind,
                "amount": from_milli(e.amount),
                "task_id": e.task_id,
                "note": e.note,
                "time": e.time,
            }
            for e in self._ledger
            if e.key_id == key_id
        ]

    # -- tasks: the API side -----------------------------------------------------------------
    async def create_task(
        self, new: NewTask, *, open_task_cap: int, claimed: ClaimedBy | None = None
    ) -> Task:
        reserve = to_milli(new.reserve)
        if reserve < 0:
            raise ValueError("a task's reserve cannot be negative")
        # the same encoding as the SQL column, so both stores hand back equal inputs
        stored_input = json.loads(json.dumps(dict(new.input), separators=(",", ":")))
        async with self._lock:
            replay = self._replay(new)
            if replay is not None:
                return self._out(replay)
            key = self._keys.get(new.key_id)
            if key is None or key.revoked_at is not None:
                raise CreateRefused("key")
            if key.open_tasks >= open_task_cap:
                raise CreateRefused("open_tasks")
            if key.balance < reserve:
                raise CreateRefused("credits")
            if new.id in self._tasks:
                raise ValueError("a task with this id already exists")
            key.balance -= reserve
            key.held += reserve
            key.open_tasks += 1
            self._seq += 1
            now = self._now()
            task = Task.accepted(
                new,
                seq=self._seq,
                now=now,
                input=stored_input,
                reserved=from_milli(reserve),
                claimed=claimed,
            )
            self._tasks[task.id] = task
            if new.idempotency_key is not None:
                self._idempotency[key.id, new.idempotency_key] = (task.id, new.request_hash)
            self._record(key.id, task.id, "reserve", reserve, "")
            return self._out(task)

    def _replay(self, new: NewTask) -> Task | None:
        """The task an earlier request with ``new``'s idempotency key created, still in force."""
        if new.idempotency_key is None:
            return None
        found = self._idempotency.get((new.key_id, new.idempotency_key))
        if found is None:
            return None
        task = self._tasks[found[0]]
        if task.create_time <= self._now() - IDEMPOTENCY_SECONDS * 1000:
            del self._idempotency[new.key_id, new.idempotency_key]  # expired: free the key
            return None
        if found[1] != new.request_hash:
            raise IdempotencyConflict(new.idempotency_key)
        return task

    async def get_task(self, task_id: str) -> Task | None:
        task = self._tasks.get(task_id)
        return None if task is None else self._out(task)

    async def queue_position(self, task: Task) -> int:
        return sum(1 for t in self._tasks.values() if t.state in _QUEUED and t.seq < task.seq)

    async def poll_task(self, task_id: str) -> TaskView | None:
        task = await self.get_task(task_id)
        if task is None:
            return None
        position = await self.queue_position(task) if task.state in _QUEUED else None
        return TaskView.of(task, position)

    async def changed_tasks(self, task_ids: Sequence[str], *, since: int) -> list[Task]:
        found = (self._tasks.get(task_id) for task_id in task_ids)
        return [self._out(t) for t in found if t is not None and t.update_time >= since]

    async def list_tasks(self, where: TaskFilter) -> list[Task]:
        matches = [
            t
            for t in self._tasks.values()
            if (where.state is None or t.state is where.state)
            and (where.model is None or t.model == where.model)
            and (where.key_id is None or t.key_id == where.key_id)
            and (where.since is None or t.create_time >= where.since)
            and (where.before is None or t.seq < where.before)
        ]
        matches.sort(key=lambda t: t.seq, reverse=True)
        return [self._out(t) for t in matches[: max(0, where.limit)]]

    async def queue_stats(self) -> list[QueueStat]:
        by_model: dict[str, tuple[int, int]] = {}
        for t in self._tasks.values():
            if t.state in _QUEUED:
                depth, oldest = by_model.get(t.model, (0, t.create_time))
                by_model[t.model] = (depth + 1, min(oldest, t.create_time))
        return [
            QueueStat(model=model, depth=depth, oldest_create_time=oldest)
            for model, (depth, oldest) in sorted(by_model.items())
        ]

    async def queue_summary(self, models: Collection[str] | None = None) -> QueueSummary:
        queued = [
            t
            for t in self._tasks.values()
            if t.state in _QUEUED and (models is None or t.model in models)
        ]
        oldest = min(queued, key=lambda t: t.seq).create_time if queued else None
        return QueueSummary(depth=len(queued), oldest_create_time=oldest)

    async def task_stats(self, *, since: int) -> TaskStats:
        stats = TaskStats()
        for t in self._tasks.values():
            if t.state.is_open:
                stats.open_by_state[t.state.value] = stats.open_by_state.get(t.state.value, 0) + 1
            elif t.complete_time is not None and t.complete_time >= since:
                finished = stats.finished_by_state
                finished[t.state.value] = finished.get(t.state.value, 0) + 1
                if t.state is TaskState.FAIL:
                    code = t.fail_code or ""
                    stats.failures_by_code[code] = stats.failures_by_code.get(code, 0) + 1
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
        async with self._lock:
            now = self._now()
            best: Task | None = None
            for t in self._tasks.values():
                claimable = t.state is TaskState.WAITING or (
                    t.state.is_open and t.lease_expires is not None and t.lease_expires < now
                )
                if not claimable or (models is not None and t.model not in models):
                    continue
                if best is None or t.seq < best.seq:
                    best = t
            if best is None:
                return None
            if best.model in start:
                state = TaskState.GENERATING
            elif best.state is TaskState.WAITING:
                state = TaskState.QUEUING
            else:
                state = best.state
            claimed = best.evolve(
                state=state,
                lease_owner=worker_id,
                lease_expires=now + round(lease_seconds * 1000),
                attempts=best.attempts + 1,
                update_time=now,
            )
            self._tasks[claimed.id] = claimed
            return self._out(claimed)

    async def start_generating(self, task_id: str, *, worker_id: str) -> bool:
        async with self._lock:
            task = self._tasks.get(task_id)
            if task is None or not self._holds(task, worker_id):
                return False
            if task.state is not TaskState.GENERATING:
                self._tasks[task_id] = task.evolve(
                    state=TaskState.GENERATING, update_time=self._now()
                )
            return True

    async def heartbeat(
        self, task_ids: Sequence[str], *, worker_id: str, lease_seconds: float
    ) -> set[str]:
        async with self._lock:
            expires = self._now() + round(lease_seconds * 1000)
            held: set[str] = set()
            for task_id in task_ids:
                task = self._tasks.get(task_id)
                if task is not None and self._holds(task, worker_id):
                    self._tasks[task_id] = task.evolve(lease_expires=expires)
                    held.add(task_id)
            return held

    async def set_progress(self, task_id: str, progress: int, *, worker_id: str) -> bool:
        progress = min(100, max(0, progress))
        async with self._lock:
            task = self._tasks.get(task_id)
            if task is None or not self._holds(task, worker_id):
                return False
            if progress > task.progress:
                self._tasks[task_id] = task.evolve(progress=progress, update_time=self._now())
            return True

    async def finish(self, task_id: str, outcome: Outcome, *, worker_id: str | None) -> Task | None:
        if not outcome.state.is_terminal:
            raise ValueError("an outcome must be success or fail")
        success = outcome.state is TaskState.SUCCESS
        async with self._lock:
            task = self._tasks.get(task_id)
            if task is None or not task.state.is_open:
                return None
            if worker_id is not None and not self._holds(task, worker_id):
                return None
            reserved = to_milli(task.reserved)
            charge = min(max(to_milli(outcome.charge), 0), reserved) if success else 0
            now = self._now()
            done = dataclasses.replace(
                task,
                state=outcome.state,
                result_keys=tuple(outcome.result_keys) if success else (),
                fail_code=None if success else outcome.fail_code,
                fail_msg=None if success else outcome.fail_msg,
                complete_time=now,
                update_time=now,
                credits_consumed=from_milli(charge),
                progress=100 if success else task.progress,
                lease_owner=None,
                lease_expires=None,
            )
            self._tasks[task_id] = done
            key = self._keys[task.key_id]
            key.held -= reserved
            key.balance += reserved - charge
            key.open_tasks -= 1
            if success:
                self._record(key.id, task_id, "charge", charge, "")
            if reserved - charge > 0:
                self._record(key.id, task_id, "release", reserved - charge, "")
            delivery = None
            if done.callback_url:
                lease = self._callback_lease()
                self._callbacks[task_id] = CallbackRecord(
                    task_id=task_id,
                    key_id=key.id,
                    url=done.callback_url,
                    state=CallbackState.PENDING,
                    attempts=0,
                    next_attempt_at=now if lease is None else now + round(lease * 1000),
                    last_status=None,
                    last_error=None,
                    created_at=now,
                    updated_at=now,
                )
                if lease is not None:
                    url, hmac_key = done.callback_url, key.hmac_key
                    delivery = Delivery(task_id=task_id, url=url, attempts=0, hmac_key=hmac_key)
            for result_key in done.result_keys:
                self._files[result_key] = StoredFile(
                    key=result_key,
                    kind=FileKind.RESULT,
                    key_id=key.id,
                    task_id=task_id,
                    created_at=now,
                )
        for listener in self._finish_listeners:
            listener(self._out(done), delivery)
        return self._out(done)

    def on_finish(self, listener: FinishListener) -> None:
        self._finish_listeners.append(listener)

    def lease_callbacks(self, lease: Callable[[], float | None]) -> None:
        self._callback_lease = lease

    async def release_leases(self, worker_ids: Collection[str]) -> int:
        owners = set(worker_ids)
        async with self._lock:
            released = 0
            for task in list(self._tasks.values()):
                if (
                    task.state.is_open
                    and task.lease_owner in owners
                    and task.lease_expires is not None
                    and task.lease_expires != 0
                ):
                    self._tasks[task.id] = task.evolve(lease_expires=0)
                    released += 1
            return released

    async def lease_owners(self) -> set[str]:
        return {
            t.lease_owner
            for t in self._tasks.values()
            if t.lease_owner is not None
            and t.state.is_open
            and t.lease_expires is not None
            and t.lease_expires > 0
        }

    # -- webhook keys ------------------------------------------------------------------------
    async def set_task_engine(
        self, task_id: str, engine: str, upstream_task_id: str | None = None
    ) -> None:
        if task_id in self._tasks:  # else never created (the SQL stores' rule)
            self._engines[task_id] = (engine, upstream_task_id)

    async def task_engine(self, task_id: str) -> tuple[str, str | None] | None:
        return self._engines.get(task_id)

    async def set_hmac_key(self, key_id: str, hmac_key: str | None) -> bool:
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                return False
            key.hmac_key = hmac_key
            return True

    async def set_key_limits(self, key_id: str, limits: KeyLimits) -> bool:
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                return False
            key.limits = limits
            return True

    # -- the callback outbox -----------------------------------------------------------------
    async def claim_callbacks(self, *, limit: int, lease_seconds: float) -> list[Delivery]:
        async with self._lock:
            now = self._now()
            due = sorted(
                (
                    c
                    for c in self._callbacks.values()
                    if c.state is CallbackState.PENDING
                    and c.next_attempt_at is not None
                    and c.next_attempt_at <= now
                ),
                key=lambda c: c.next_attempt_at or 0,
            )[: max(limit, 0)]
            lease_until = now + round(lease_seconds * 1000)
            claimed = []
            for record in due:
                self._callbacks[record.task_id] = dataclasses.replace(
                    record, next_attempt_at=lease_until, updated_at=now
                )
                claimed.append(
                    Delivery(
                        task_id=record.task_id,
                        url=record.url,
                        attempts=record.attempts,
                        hmac_key=self._keys[record.key_id].hmac_key,
                    )
                )
            return claimed

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
        async with self._lock:
            now = self._now()
            self._attempts.append(
                CallbackAttempt(
                    task_id=task_id,
                    attempt=attempt,
                    status=status,
                    error=error,
                    duration_ms=duration_ms,
                    at=now,
                )
            )
            record = self._callbacks.get(task_id)
            if record is None or record.state is not CallbackState.PENDING:
                return
            state, next_at = after_attempt(now, delivered, retry_in)
            self._callbacks[task_id] = dataclasses.replace(
                record,
                state=state,
                attempts=attempt,
                next_attempt_at=next_at,
                last_status=status,
                last_error=error,
                updated_at=now,
            )

    async def release_callbacks(self, task_ids: Collection[str]) -> None:
        async with self._lock:
            now = self._now()
            for task_id in task_ids:
                record = self._callbacks.get(task_id)
                if record is not None and record.state is CallbackState.PENDING:
                    self._callbacks[task_id] = dataclasses.replace(record, next_attempt_at=now)

    async def redeliver_callback(self, task_id: str) -> bool:
        async with self._lock:
            record = self._callbacks.get(task_id)
            if record is None:
                return False
            now = self._now()
            self._callbacks[task_id] = dataclasses.replace(
                record,
                state=CallbackState.PENDING,
                attempts=0,
                next_attempt_at=now,
                updated_at=now,
            )
            return True

    async def get_callback(self, task_id: str) -> CallbackRecord | None:
        return self._callbacks.get(task_id)

    async def list_callbacks(
        self, *, state: CallbackState | None = None, limit: int = 100
    ) -> list[CallbackRecord]:
        found = [c for c in self._callbacks.values() if state is None or c.state is state]
        found.sort(key=lambda c: c.task_id)
        found.sort(key=lambda c: c.created_at, reverse=True)
        return found[:limit]

    async def callback_attempts(self, task_id: str) -> list[CallbackAttempt]:
        return [a for a in self._attempts if a.task_id == task_id]

    # -- file records --------------------------------------------------------------------------
    async def record_file(self, file: StoredFile) -> StoredFile:
        async with self._lock:
            stored = dataclasses.replace(file, created_at=self._now(), deleted_at=None)
            self._files[file.key] = stored
            return stored

    async def get_file(self, key: str) -> StoredFile | None:
        return self._files.get(key)

    async def known_files(self, keys: Collection[str]) -> set[str]:
        return {
            key
            for key in keys
            if (found := self._files.get(key)) is not None and found.deleted_at is None
        }

    async def expired_files(self, kind: FileKind, *, before: int, limit: int) -> list[StoredFile]:
        found = [
            f
            for f in self._files.values()
            if f.kind is kind and f.deleted_at is None and f.created_at < before
        ]
        return sorted(found, key=lambda f: f.created_at)[:limit]

    async def mark_files_deleted(
        self, keys: Collection[str], *, before: int | None = None
    ) -> list[str]:
        async with self._lock:
            now = self._now()
            marked = []
            for key in sorted(set(keys)):
                found = self._files.get(key)
                if found is None or found.deleted_at is not None:
                    continue
                if before is not None and found.created_at >= before:
                    continue
                self._files[key] = dataclasses.replace(found, deleted_at=now)
                marked.append(key)
            return marked

    # -- deployment switches -----------------------------------------------------------------
    async def flags(self) -> Flags:
        return Flags(maintenance=self._maintenance, disabled_models=frozenset(self._disabled))

    async def set_maintenance(self, on: bool) -> None:
        async with self._lock:
            self._maintenance = on

    async def announce_admin_change(self, change: str) -> None:
        return None  # one process: its caches are told directly

    async def set_model_enabled(self, model: str, enabled: bool) -> None:
        async with self._lock:
            if enabled:
                self._disabled.discard(model)
            else:
                self._disabled.add(model)

    async def admin_token_hash(self) -> str | None:
        return self._admin_token_hash

    async def set_admin_token_hash(self, token_hash: str | None) -> None:
        async with self._lock:
            self._admin_token_hash = token_hash

    # -- what replicas share ---------------------------------------------------------------
    async def rate_limit_hit(self, bucket: str, *, limit: int, window: float) -> float:
        return self._limiter.hit(bucket, limit, window)

    async def server_secret(self) -> bytes:
        if self._secret is None:
            self._secret = secrets.token_bytes(32)
        return self._secret

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        if name in self._exclusive:
            yield False
            return
        self._exclusive.add(name)
        try:
            yield True
        finally:
            self._exclusive.discard(name)
