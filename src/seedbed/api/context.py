"""Everything a request handler needs, built once per app (no module globals)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from seedbed import netguard
from seedbed.catalogue.base import ModelSpec, Pricing
from seedbed.config import Settings
from seedbed.engines import Engines
from seedbed.faults import Health
from seedbed.feed import TaskFeed
from seedbed.links import Links
from seedbed.metrics import Metrics
from seedbed.pgnotify import PgNotifier
from seedbed.ratelimit import RateLimiter, SharedRateLimiter
from seedbed.storage.local import LocalStorage
from seedbed.storage.s3 import S3Storage
from seedbed.store.base import Store
from seedbed.supervise import Supervisor
from seedbed.tasks import ApiKey, Flags, Task, TaskState, TaskView
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker

__all__ = ["Context", "FlagsCache", "KeyCache", "Records", "context"]


class FlagsCache:
    """Maintenance and model switches, re-read from the store at most every ``ttl`` seconds.

    Operators flip them with the CLI on the database; a running server sees the change within
    ``ttl`` without a restart, and requests do not pay a query each.
    """

    def __init__(self, store: Store, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._value = Flags()
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> Flags:
        if time.monotonic() - self._read_at < self._ttl:
            return self._value
        async with self._lock:
            if time.monotonic() - self._read_at >= self._ttl:
                self._value = await self._store.flags()
                self._read_at = time.monotonic()
        return self._value

    def invalidate(self) -> None:
        self._read_at = -float("inf")


class KeyCache:
    """Key records by hash, kept ``ttl`` seconds: the hot paths skip a query per request.

    A revoked key is refused within ``ttl`` (the ``admin_refresh_seconds`` setting). The
    cached ``open_tasks`` and ``balance`` only serve early answers and messages: the store's
    own conditional update is what enforces credits and the open-task cap, exactly. An answer
    that *shows* the balance reads the key with ``fresh=True``: a hold taken or a charge made a
    moment ago, by this process or another, must show at once.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, store: Store, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}

    async def get(self, key_hash: str, *, fresh: bool = False) -> ApiKey | None:
        """The key with this hash (``None``: no such key); ``fresh`` reads the store even
        when a cached record is young, and keeps what it read."""
        now = time.monotonic()
        if not fresh:
            hit = self._entries.get(key_hash)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
        key = await self._store.key_by_hash(key_hash)
        if self._ttl > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (now, key)
        return key

    def forget(self, key_id: str) -> None:
        """Drop the key's cached record (this process changed it): it is read at its next use."""
        self._entries = {
            key_hash: entry
            for key_hash, entry in self._entries.items()
            if entry[1] is None or entry[1].id != key_id
        }


class Records:
    """recordInfo's reads and answers, kept while they hold.

    A finished task never changes, so it is read only once (clients poll until done, then
    often once more, and their callbacks' receivers too). Each answer is serialised once per
    view of the task: the store hands out the same view object while the task, and the queue
    ahead of it, are unchanged (see ``SqlStore.poll_task``), and a finished task's for good.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._finished: OrderedDict[str, TaskView] = OrderedDict()
        #: answers already serialised, by (task id, base URL of its result links), with the
        #: view each was rendered from
        self._bodies: OrderedDict[tuple[str, str], tuple[TaskView, bytes]] = OrderedDict()

    def body(self, task: TaskView, base_url: str, render: Callable[[], bytes]) -> bytes:
        """The recordInfo answer for this view of the task, rendered once."""
        key = (task.id, base_url)
        found = self._bodies.get(key)
        if found is not None and found[0] is task:
            return found[1]
        body = render()
        self._bodies[key] = (task, body)
        if found is None and len(self._bodies) > self.MAX_ENTRIES:
            self._bodies.popitem(last=False)
        return body

    async def poll(self, task_id: str, store: Store) -> TaskView | None:
        """The task as :meth:`Store.poll_task` gives it; a finished task is read only once."""
        found = self._finished.get(task_id)
        if found is not None:
            return found
        found = await store.poll_task(task_id)
        if found is not None and found.state.is_terminal:
            self._finished[task_id] = found
            if len(self._finished) > self.MAX_ENTRIES:
                self._finished.popitem(last=False)
        return found


@dataclass(kw_only=True)
class Context:
    settings: Settings
    store: Store
    storage: LocalStorage | S3Storage
    engines: Engines
    wakeup: Wakeup
    net_policy: netguard.NetPolicy
    flags: FlagsCache
    keys: KeyCache
    #: signs download links and names upload folders (from the server secret)
    links: Links
    feed: TaskFeed
    limiter: RateLimiter = field(default_factory=RateLimiter)
    #: createTask's rate limit counted in the store, shared by replicas (PostgreSQL)
    shared_limiter: SharedRateLimiter | None = None
    #: the database's notifications (PostgreSQL): wake-ups from other hosts
    notifier: PgNotifier | None = None
    records: Records = field(default_factory=Records)
    #: wakes the callback dispatcher (this process's, and those of other processes here)
    callback_wakeup: Wakeup = field(default_factory=Wakeup)
    #: tells the server processes here which task changed (SQLite: their live events)
    task_changes: Wakeup = field(default_factory=Wakeup)
    #: how user URLs' host names are resolved (tests put a stub here)
    resolver: netguard.Resolver = netguard.default_resolver
    metrics: Metrics = field(default_factory=Metrics)
    #: the worker running in this process, if any (cancels reach it directly)
    worker: Worker | None = None
    #: what is unhealthy now (store, storage): readiness and createTask read it
    health: Health = field(default_factory=Health)
    #: the process's background loops, restarted when they die
    supervisor: Supervisor = field(default_factory=Supervisor)
    #: called once when the process is told to stop (SIGTERM), before connections drain
    shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)

    def begin_shutdown(self) -> None:
        """Stop taking work: no new claims, live-event streams end (so connections close)."""
        hooks, self.shutdown_hooks = self.shutdown_hooks, []
        for hook in hooks:
            hook()

    def task_ended(self, task: Task) -> None:
        """A task was just ended in this process: count it and tell its live-event streams,
        and those of the other server processes here."""
        self.metrics.finished(task)
        self.feed.publish(task)
        self.task_changes.notify(task.id.encode())

    def task_changed(self, task_id: str) -> None:
        """This process just wrote a change to a task (state, progress): tell the live-event
        streams here and in the other server processes here."""
        self.feed.poke(task_id)
        self.task_changes.notify(task_id.encode())

    async def queue_position(self, task: Task) -> int | None:
        """Tasks ahead of ``task`` while it waits or queues; None once it is running or done
        (recordInfo's and the events stream's ``queuePosition``)."""
        if task.state in (TaskState.WAITING, TaskState.QUEUING):
            return await self.store.queue_position(task)
        return None

    def pricing(self, spec: ModelSpec) -> Pricing:
        return spec.pricing.with_overrides(self.settings.prices.get(spec.id))

    def base_url(self, request: Request) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        # Built from the scope directly: Request.base_url re-parses the whole URL each call.
        scheme = request.scope.get("scheme", "http")
        host = request.headers.get("host")
        if host is None:
            server = request.scope.get("server") or ("127.0.0.1", self.settings.port)
            host = f"{server[0]}:{server[1]}"
        return f"{scheme}://{host}{request.scope.get('root_path', '')}".rstrip("/")


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx
