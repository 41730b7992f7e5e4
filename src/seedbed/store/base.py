"""The ``Store`` protocol: every durable operation seedbed performs, named for what it means.

Each method is one atomic step. Implementations: ``memory.MemoryStore`` (tests) and
``sql.SqlStore`` (SQLite by default, PostgreSQL). One contract suite
(``tests/unit/test_store_contract.py``) runs against every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from seedbed.outbox import (
    CallbackAttempt,
    CallbackRecord,
    CallbackState,
    Delivery,
    FileKind,
    StoredFile,
)
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

__all__ = [
    "IDEMPOTENCY_SECONDS",
    "CreateRefused",
    "FinishListener",
    "IdempotencyConflict",
    "QueueStat",
    "QueueSummary",
    "Store",
    "TaskFilter",
    "TaskStats",
    "balance_refusal",
]

#: how long an ``Idempotency-Key`` answers with the task it first created (CONTRACT §3)
IDEMPOTENCY_SECONDS = 24 * 3600

#: told of each committed finish: the task as ended, and its callback if claimed for this
#: process (``Store.on_finish``)
FinishListener = Callable[[Task, Delivery | None], None]


class CreateRefused(Exception):
    """``create_task`` could not hold what the task needs; ``reason`` says which limit."""

    def __init__(self, reason: str) -> None:
        #: "credits" (balance too low), "open_tasks" (cap reached) or "key" (revoked / unknown)
        self.reason = reason
        super().__init__(reason)


def balance_refusal(amount: int) -> str:
    """Why ``add_credits`` refused a change of ``amount`` (any unit) to an existing key."""
    if amount < 0:
        return "the balance cannot go below zero"
    return f"the balance cannot exceed {BALANCE_MAX} credits"


class IdempotencyConflict(Exception):
    """The ``Idempotency-Key`` was used, within its window, for a different request."""


@dataclass(frozen=True, kw_only=True)
class QueueStat:
    """The not-yet-generating tasks of one model: how many, and since when the oldest waits."""

    model: str
    depth: int
    oldest_create_time: int  # Unix ms


@dataclass(frozen=True, kw_only=True)
class QueueSummary:
    """Waiting and queuing tasks of a set of models: how many, and the oldest's creation."""

    depth: int
    oldest_create_time: int | None  # Unix ms; None when the queue is empty


@dataclass(frozen=True, kw_only=True)
class TaskFilter:
    """What ``list_tasks`` selects; every field left None matches all."""

    state: TaskState | None = None
    model: str | None = None
    key_id: str | None = None
    #: created at or after this Unix ms
    since: int | None = None
    #: a page cursor: only tasks whose ``seq`` is below it (the last page's last ``seq``)
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True, kw_only=True)
class TaskStats:
    """An operator's overview (``seedbed stats``)."""

    #: open tasks by state (waiting, queuing, generating)
    open_by_state: dict[str, int] = field(default_factory=dict)
    #: tasks that ended since the window's start, by state (success, fail)
    finished_by_state: dict[str, int] = field(default_factory=dict)
    #: failures since the window's start, by ``failCode``
    failures_by_code: dict[str, int] = field(default_factory=dict)


class Store(Protocol):
    @property
    def group_commit(self) -> bool:
        """A write joins the transaction of writes still waiting for their commit, which runs
        in a later turn of the event loop (SQLite): started after another before that commit,
        it sees the other's changes and commits with them."""

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""

    async def check_writable(self) -> None:
        """Raise if the store cannot commit a write now (disk full, locked, read-only, its
        file removed): one small write, for readiness."""

    # -- keys and credits ------------------------------------------------------------------
    async def create_key(self, new: NewKey) -> ApiKey: ...

    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    async def keys_by_hash(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        """The keys with these hashes, by hash (a hash with no key is left out): one read."""

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no such key exists."""

    async def add_credits(self, key_id: str, amount: Decimal, note: str = "") -> Decimal:
        """Add (or, negative, remove down to zero at most) credits; return the new balance.

        Raises ``KeyError`` for an unknown key and ``ValueError`` if a removal would make the
        balance negative.
        """

    async def ledger(self, key_id: str) -> list[dict[str, object]]:
        """The key's credit movements, oldest first (kind, amount, task_id, note, time)."""

    # -- tasks: the API side ---------------------------------------------------------------
    async def create_task(
        self, new: NewTask, *, open_task_cap: int, claimed: ClaimedBy | None = None
    ) -> Task:
        """Store a task and hold ``new.reserve`` credits from its key, in one transaction.

        With ``claimed``, the task is stored as that worker's claim would leave it
        (``Task.accepted(claimed=...)``: generating, leased, first attempt); no other worker
        can claim it while the lease holds. An idempotent repeat (below) is answered as ever,
        unclaimed.

        Raises ``CreateRefused("credits")`` if the balance cannot cover the hold and
        ``CreateRefused("open_tasks")`` if the key already has ``open_task_cap`` open tasks.
        The balance never goes negative, whatever the concurrency.

        With ``new.idempotency_key``: if the key's earlier task with that idempotency key was
        created less than ``IDEMPOTENCY_SECONDS`` ago, nothing is created or held and that
        task is returned (its id is not ``new.id``); if its ``request_hash`` differs,
        ``IdempotencyConflict`` is raised. Concurrent repeats create exactly one task.
        """

    async def get_task(self, task_id: str) -> Task | None: ...

    async def changed_tasks(self, task_ids: Sequence[str], *, since: int) -> list[Task]:
        """The tasks among ``task_ids`` whose ``update_time`` is ``since`` (Unix ms) or later.

        One indexed look-up per id: what the live-events feed polls for its subscribers.
        """

    async def list_tasks(self, where: TaskFilter) -> list[Task]:
        """Tasks matching ``where``, newest first, at most ``where.limit``."""

    async def queue_stats(self) -> list[QueueStat]:
        """Waiting and queuing tasks per model (only models with some); reads only their
        index entries, and each one's row (fine for the admin CLI, not for every scrape)."""

    async def queue_summary(self, models: Collection[str] | None = None) -> QueueSummary:
        """Waiting and queuing tasks of ``models`` (None: all), for metrics and readiness.

        With None it counts index entries only (no row is read) and finds the oldest with two
        index seeks: a few milliseconds even with 100,000 tasks queued.
        """

    async def task_stats(self, *, since: int) -> TaskStats:
        """Open tasks by state, and what ended since ``since`` (Unix ms)."""

    async def queue_position(self, task: Task) -> int:
        """How many open, not-yet-generating tasks were created before this one."""

    async def poll_task(self, task_id: str) -> TaskView | None:
        """What recordInfo answers of a task, in one read: its public fields and, while it is
        ``waiting`` or ``queuing``, its :meth:`queue_position` (None once generating or done)."""

    # -- tasks: the worker side ------------------------------------------------------------
    async def claim(
        self,
        *,
        worker_id: str,
        models: Collection[str] | None,
        lease_seconds: float,
        start: Collection[str] = (),
    ) -> Task | None:
        """Atomically take the oldest claimable task for ``models`` (None: any model).

        Claimable: ``waiting``, or ``queuing``/``generating`` whose lease expired. A waiting
        task moves to ``queuing``; a reclaimed one keeps its state (states never go back).
        ``attempts`` is incremented and the lease set to ``worker_id``.

        A task of a model in ``start`` goes straight to ``generating`` instead, as
        :meth:`start_generating` would move it: claim and start in one round trip, for models
        whose engine starts at once (nothing to fetch first; a task fetching its inputs stays
        ``queuing``, where a cancel ends it at once).
        """

    async def start_generating(self, task_id: str, *, worker_id: str) -> bool:
        """Move a held task to ``generating``; False if the lease was lost."""

    async def heartbeat(
        self, task_ids: Sequence[str], *, worker_id: str, lease_seconds: float
    ) -> set[str]:
        """Extend the leases this worker still holds; return the ids it still holds."""

    async def set_progress(self, task_id: str, progress: int, *, worker_id: str) -> bool:
        """Record progress (0..100, never decreasing); False if the lease was lost."""

    async def finish(self, task_id: str, outcome: Outcome, *, worker_id: str | None) -> Task | None:
        """End a task in one transaction: state, results, and the credits settled.

        Success charges ``outcome.charge`` (at most what was held) and releases the rest;
        failure releases everything. ``worker_id`` None ends the task whoever holds it (admin,
        attempt limits). Returns None when the task is unknown, already terminal, or leased to
        another worker: a task is settled exactly once.

        The same transaction writes the task's callback to the outbox (when it has a
        ``callBackUrl``) and a ``StoredFile`` record per result, so every way a task ends gets
        its callback and its files' retention. Listeners (``on_finish``) run after the commit.
        """

    def on_finish(self, listener: FinishListener) -> None:
        """Call ``listener(task, delivery)`` (on the event loop, must not block) after every
        committed ``finish`` of this store object. ``delivery`` is the task's callback when
        that finish claimed it for this process (``lease_callbacks``), to be delivered now;
        otherwise None, and a callback waits in the outbox for any dispatcher's claim."""

    def lease_callbacks(self, lease: Callable[[], float | None]) -> None:
        """Have this store object's finishes claim each finished task's callback for the
        dispatcher of this process (as ``claim_callbacks`` would, one claim less on a
        callback's path): ``lease()``, asked in the finish's transaction, gives the seconds
        to claim it for, or None (no free slot: it is left due for any dispatcher)."""

    async def release_leases(self, worker_ids: Collection[str]) -> int:
        """Expire the leases of workers known to be dead, so their tasks are claimable now."""

    async def lease_owners(self) -> set[str]:
        """Worker ids that currently hold a lease on an open task."""

    # -- engines -------------------------------------------------------------------------------
    async def set_task_engine(
        self, task_id: str, engine: str, upstream_task_id: str | None = None
    ) -> None:
        """Record the engine running a task (and, for a relay, the upstream's id of it)."""

    async def task_engine(self, task_id: str) -> tuple[str, str | None] | None:
        """``(engine, upstream task id)`` recorded for a task, or None."""

    # -- webhook keys ------------------------------------------------------------------------
    async def set_hmac_key(self, key_id: str, hmac_key: str | None) -> bool:
        """Set (or, with None, remove) a key's webhook HMAC key; False for an unknown key."""

    async def set_key_limits(self, key_id: str, limits: KeyLimits) -> bool:
        """Replace a key's own limits (None fields: the deployment's); False for an unknown key."""

    # -- the callback outbox -----------------------------------------------------------------
    async def claim_callbacks(self, *, limit: int, lease_seconds: float) -> list[Delivery]:
        """Take up to ``limit`` due callbacks, oldest due first, for one attempt each.

        A claimed row is not due again for ``lease_seconds``: long enough for the attempt to
        be recorded, short enough that a dispatcher dying mid-attempt only delays it.
        """

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
        """Log attempt number ``attempt`` and move the row on: delivered, due again in
        ``retry_in`` seconds, or (``retry_in`` None) dead. A row no longer pending is left as is.
        """

    async def release_callbacks(self, task_ids: Collection[str]) -> None:
        """Make claimed callbacks due now (a dispatcher stopping before it could try them)."""

    async def redeliver_callback(self, task_id: str) -> bool:
        """Queue a callback again, whatever its state, with a fresh count of attempts."""

    async def get_callback(self, task_id: str) -> CallbackRecord | None: ...

    async def list_callbacks(
        self, *, state: CallbackState | None = None, limit: int = 100
    ) -> list[CallbackRecord]:
        """Outbox rows, newest first, optionally only those in ``state``."""

    async def callback_attempts(self, task_id: str) -> list[CallbackAttempt]:
        """Every attempt logged for a task's callback, oldest first."""

    # -- file records --------------------------------------------------------------------------
    async def record_file(self, file: StoredFile) -> StoredFile:
        """Record a stored file (created now); a record with the same key is replaced."""

    async def get_file(self, key: str) -> StoredFile | None: ...

    async def known_files(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that a record names whose file retention has not deleted."""

    async def expired_files(self, kind: FileKind, *, before: int, limit: int) -> list[StoredFile]:
        """Records of ``kind`` created before ``before`` (Unix ms) whose file still exists."""

    async def mark_files_deleted(
        self, keys: Collection[str], *, before: int | None = None
    ) -> list[str]:
        """Mark files as deleted (their records stay); return the keys marked.

        With ``before`` (Unix ms), only records still created before it are marked: a file
        stored again under the same key since it was found expired is left alone.
        """

    # -- deployment switches ---------------------------------------------------------------
    async def flags(self) -> Flags: ...

    async def set_maintenance(self, on: bool) -> None: ...

    async def set_model_enabled(self, model: str, enabled: bool) -> None: ...

    async def announce_admin_change(self, change: str) -> None:
        """Tell every server on this database that an admin changed a key or a switch
        (``seedbed.admin_changes``): PostgreSQL's ``NOTIFY``; a store whose servers share a
        host (SQLite) or a process (memory) does nothing, they are told otherwise."""

    async def admin_token_hash(self) -> str | None:
        """The hash of the console's admin token made by ``seedbed admin token``, if any."""

    async def set_admin_token_hash(self, token_hash: str | None) -> None:
        """Store (or, with None, remove) the admin token's hash; one token at a time."""

    # -- what the replicas of a deployment share (issue 16) ---------------------------------
    async def rate_limit_hit(self, bucket: str, *, limit: int, window: float) -> float:
        """Count one call against ``bucket``'s ``limit`` calls per ``window`` seconds (GCRA:
        bursts of up to ``limit``, the same rule as ``ratelimit.RateLimiter``); return 0 when
        allowed, else the seconds to wait. One atomic step: every process sharing the store
        shares the budget."""

    async def server_secret(self) -> bytes:
        """The deployment's server secret (32 random bytes), made by the first caller; every
        caller, concurrent or later, of any process gets the same bytes."""

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """``async with store.exclusive(name) as mine:`` — ``mine`` is True for one holder
        at a time among every process sharing the store (False for the others, which do not
        wait). Released on exit, and by the holder's death (PostgreSQL: a session advisory
        lock; SQLite: a file lock beside the database)."""
