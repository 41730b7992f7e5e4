"""Domain values: tasks, API keys, flags. Frozen dataclasses, free of any storage detail."""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

__all__ = [
    "BALANCE_MAX",
    "CREDITS_MAX",
    "LIMIT_MAX",
    "ApiKey",
    "ClaimedBy",
    "Flags",
    "KeyLimits",
    "NewKey",
    "NewTask",
    "Outcome",
    "Task",
    "TaskState",
    "TaskView",
    "new_task_id",
]


class TaskState(enum.StrEnum):
    """kie's task states; a task only ever moves forward through them."""

    #: stored, not yet taken by a worker
    WAITING = "waiting"
    #: taken by a worker: fetching inputs, waiting for its engine
    QUEUING = "queuing"
    #: the engine is running it
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.FAIL)

    @property
    def is_open(self) -> bool:
        return not self.is_terminal


OPEN_STATES: tuple[TaskState, ...] = (TaskState.WAITING, TaskState.QUEUING, TaskState.GENERATING)

#: the largest value of a key's limit (counts and seconds alike): past it a limit is no limit,
#: and the stored JSON cannot hold every integer (fuzzing found 10**30 answering 500)
LIMIT_MAX = 1_000_000_000
#: the most credits one key creation or one credit change may carry
CREDITS_MAX = 1_000_000_000_000
#: the largest balance a key may reach (in thousandths, well inside a 64-bit column)
BALANCE_MAX = 1_000_000_000_000_000


def new_task_id() -> str:
    """32 lowercase hex characters from the OS's cryptographic source, like kie's ids."""
    return secrets.token_hex(16)


@dataclass(frozen=True, kw_only=True)
class KeyLimits:
    """Per-key overrides of the deployment's limits; ``None`` means the deployment default.
    Each is at most ``LIMIT_MAX``."""

    create_per_window: int | None = None
    create_window_seconds: float | None = None
    record_per_second: int | None = None
    open_task_cap: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> KeyLimits:
        if not data:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class NewKey:
    id: str
    name: str
    key_hash: str
    credits: Decimal = Decimal(0)
    limits: KeyLimits = field(default_factory=KeyLimits)
    #: webhook HMAC key: callbacks of this key's tasks are signed with it (kie's scheme)
    hmac_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    id: str
    name: str
    key_hash: str
    #: credits available to new tasks (credits held by open tasks are already taken off)
    balance: Decimal
    #: credits held by open tasks
    held: Decimal
    open_tasks: int
    limits: KeyLimits
    created_at: int  # Unix ms
    revoked_at: int | None  # Unix ms
    #: webhook HMAC key: callbacks of this key's tasks are signed with it (kie's scheme)
    hmac_key: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, kw_only=True)
class NewTask:
    """What the API hands the store: a validated request and the credits to hold for it."""

    id: str
    key_id: str
    model: str
    #: kie's double-encoded ``param`` string, exactly as recordInfo will show it
    param: str
    #: the validated input with defaults applied and a resolved seed: what the engine runs
    input: Mapping[str, Any]
    callback_url: str | None
    #: the most this task can cost; held at create, settled at finish
    reserve: Decimal
    #: the base URL the task was created through (result links in its callback)
    origin: str | None = None

    #: the client's ``Idempotency-Key`` header, if it sent one, and a hash of its request:
    #: a repeat within a day answers the first task instead of creating another
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedBy:
    """The worker that takes a task in its very create (``Store.create_task(claimed=...)``):
    the task is stored generating, leased to it, on its first attempt, with no claim."""

    worker_id: str
    lease_seconds: float

    def expires(self, now: int) -> int:
        """When the lease taken at ``now`` (Unix ms) runs out, in Unix ms."""
        return now + round(self.lease_seconds * 1000)


@dataclass(frozen=True, kw_only=True)
class Task:
    id: str
    key_id: str
    model: str
    state: TaskState
    param: str
    input: Mapping[str, Any]
    callback_url: str | None
    #: insertion order, used for queue positions and fair claiming
    seq: int
    progress: int
    attempts: int
    reserved: Decimal
    credits_consumed: Decimal
    #: storage keys of the results, in order; URLs are made from them when answering
    result_keys: tuple[str, ...]
    fail_code: str | None
    fail_msg: str | None
    create_time: int  # Unix ms
    update_time: int  # Unix ms
    complete_time: int | None  # Unix ms
    lease_owner: str | None
    lease_expires: int | None  # Unix ms
    #: the base URL the task was created through (result links in its callback)
    origin: str | None = None

    @classmethod
    def accepted(
        cls,
        new: NewTask,
        *,
        seq: int,
        now: int,
        input: Mapping[str, Any],
        reserved: Decimal,
        claimed: ClaimedBy | None = None,
    ) -> Task:
        """The task ``new`` becomes once stored: waiting, nothing done, ``reserved`` held;
        ``claimed``: as that worker's claim would leave it, started at once (generating,
        leased, first attempt)."""
        return cls(
            id=new.id,
            key_id=new.key_id,
            model=new.model,
            state=TaskState.WAITING if claimed is None else TaskState.GENERATING,
            param=new.param,
            input=input,
            callback_url=new.callback_url,
            seq=seq,
            progress=0,
            attempts=0 if claimed is None else 1,
            reserved=reserved,
            credits_consumed=Decimal(0),
            result_keys=(),
            fail_code=None,
            fail_msg=None,
            create_time=now,
            update_time=now,
            complete_time=None,
            lease_owner=None if claimed is None else claimed.worker_id,
            lease_expires=None if claimed is None else claimed.expires(now),
            origin=new.origin,
        )

    @property
    def cost_time(self) -> int | None:
        """Whole seconds from create to completion, as kie reports them."""
        return _cost_time(self.create_time, self.complete_time)

    def evolve(self, **changes: Any) -> Task:
        return dataclasses.replace(self, **changes)


class TaskView(NamedTuple):
    """What recordInfo shows of a task, with the key that owns it and, while the task waits
    or queues, its queue position: what ``Store.poll_task`` reads on the API's hottest path.

    A named tuple of only these fields rather than a ``Task``: through the server, reading the
    whole row and building the 21-field frozen dataclass made a waiting task's recordInfo
    about a fifth dearer (measured against this, in alternating runs).
    """

    id: str
    key_id: str
    model: str
    state: TaskState
    param: str
    result_keys: tuple[str, ...]
    fail_code: str | None
    fail_msg: str | None
    progress: int
    credits_consumed: Decimal
    create_time: int  # Unix ms
    update_time: int  # Unix ms
    complete_time: int | None  # Unix ms
    #: tasks ahead of it while it is waiting or queuing, else None
    queue_position: int | None

    @property
    def cost_time(self) -> int | None:
        """Whole seconds from create to completion, as kie reports them."""
        return _cost_time(self.create_time, self.complete_time)

    @classmethod
    def of(cls, task: Task, queue_position: int | None) -> TaskView:
        return cls(
            id=task.id,
            key_id=task.key_id,
            model=task.model,
            state=task.state,
            param=task.param,
            result_keys=task.result_keys,
            fail_code=task.fail_code,
            fail_msg=task.fail_msg,
            progress=task.progress,
            credits_consumed=task.credits_consumed,
            create_time=task.create_time,
            update_time=task.update_time,
            complete_time=task.complete_time,
            queue_position=queue_position,
        )


def _cost_time(create_time: int, complete_time: int | None) -> int | None:
    if complete_time is None:
        return None
    return max(0, (complete_time - create_time) // 1000)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a task ended: success with results and the price, or a failure with kie's fields."""

    state: TaskState
    result_keys: tuple[str, ...] = ()
    charge: Decimal = Decimal(0)
    fail_code: str | None = None
    fail_msg: str | None = None

    @classmethod
    def success(cls, result_keys: tuple[str, ...], charge: Decimal) -> Outcome:
        return cls(state=TaskState.SUCCESS, result_keys=result_keys, charge=charge)

    @classmethod
    def failure(cls, fail_code: str, fail_msg: str) -> Outcome:
        return cls(state=TaskState.FAIL, fail_code=fail_code, fail_msg=fail_msg)


@dataclass(frozen=True, kw_only=True)
class Flags:
    """Deployment switches that an operator flips on a running server."""

    maintenance: bool = False
    disabled_models: frozenset[str] = frozenset()
