"""Everything a request handler needs, built once per app (no module globals)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from seedbed import admin_changes, netguard
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

__all__ = ["Context", "FlagsCache", "KeyCache", "Records", "context", "refresh_caches"]

log = logging.getLogger(__name__)


#: a cached key, or the flags, asked for within this many seconds is re-read ahead of its expiry
#: (``refresh_caches``); one not asked for since then ages out and is read when next asked for.
#: A client calling at least this often never waits for its key; one calling less often pays
#: one read per call, and the refresh reads a key at most 2 x this / admin_refresh_seconds
#: times per use (batched with the other keys), not for as long as the server runs.
REFRESH_WHILE_USED_S = 10.0


class FlagsCache:
    """Maintenance and model switches, re-read from the store at most every ``ttl`` seconds.

    Operators flip them with the CLI or the console; the change is announced to every server
    (``admin_changes``), which drops what it holds at once, and a server that missed the
    message still sees the change within ``ttl``. Requests do not pay a query each: while they
    use the flags, ``refresh_caches`` re-reads them before they expire.
    """

    def __init__(self, store: Store, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._value = Flags()
        self._read_at = -float("inf")
        self._used_at = -float("inf")
        #: bumped by ``invalidate``: a refresh that read before it does not keep its value
        self._generation = 0
        self._lock = asyncio.Lock()

    async def get(self) -> Flags:
        now = self._used_at = time.monotonic()
        if now - self._read_at < self._ttl:
            return self._value
        async with self._lock:
            started, generation = time.monotonic(), self._generation
            if started - self._read_at >= self._ttl:
                self._value = await self._store.flags()
                if generation == self._generation:  # else changed meanwhile: read again
                    self._read_at = started
        return self._value

    async def refresh(self) -> None:
        """Re-read the flags if a request asked for them lately."""
        started, generation = time.monotonic(), self._generation
        if started - self._used_at >= REFRESH_WHILE_USED_S:
            return
        value = await self._store.flags()
        if generation == self._generation and started > self._read_at:
            self._value, self._read_at = value, started

    def invalidate(self) -> None:
        self._read_at = -float("inf")
        self._generation += 1


@dataclass(slots=True)
class _KeyEntry:
    read_at: float
    key: ApiKey | None
    used_at: float


class KeyCache:
    """Key records by hash, kept ``ttl`` seconds: the hot paths skip a query per request.

    A key revoked or limited is forgotten when the change is announced (``admin_changes``),
    and refused from the next request on; a server that missed the message refuses it within
    ``ttl`` (the ``admin_refresh_seconds`` setting). The
    cached ``open_tasks`` and ``balance`` only serve early answers and messages: the store's
    own conditional update is what enforces credits and the open-task cap, exactly. An answer
    that *shows* the balance reads the key with ``fresh=True``: a hold taken or a charge made a
    moment ago, by this process or another, must show at once.

    While a key is in use, ``refresh_caches`` re-reads it before it expires, in one read for
    all of them: a request then finds it young. The read it spares a request is the first of
    its turn after the database changed, 0.6 ms on an idle server (bench/trace_one_task.py),
    paid every ``ttl`` by a client that calls less often than that.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, store: Store, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._entries: dict[str, _KeyEntry] = {}
        #: bumped by ``forget`` and ``clear``: a read begun before does not keep its value
        self._generation = 0

    async def get(self, key_hash: str, *, fresh: bool = False) -> ApiKey | None:
        """The key with this hash (``None``: no such key); ``fresh`` reads the store even
        when a cached record is young, and keeps what it read."""
        now = time.monotonic()
        entry = self._entries.get(key_hash)
        if entry is not None:
            entry.used_at = now
            if not fresh and now - entry.read_at < self._ttl:
                return entry.key
        generation = self._generation
        key = await self._store.key_by_hash(key_hash)
        # a key changed while this read is not kept: what it read may be the old record
        if self._ttl > 0 and generation == self._generation:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = _KeyEntry(now, key, now)
        return key

    async def refresh(self) -> None:
        """Re-read the keys asked for lately (never the hashes of no key: a stranger's
        guesses are not re-read), in one read; entries read since it began are kept."""
        started, generation = time.monotonic(), self._generation
        live = [
            key_hash
            for key_hash, entry in self._entries.items()
            if entry.key is not None and started - entry.used_at < REFRESH_WHILE_USED_S
        ]
        if not live:
            return
        found = await self._store.keys_by_hash(live)
        if generation != self._generation:
            return  # a key changed while this read: what it read may be the old record
        for key_hash in live:
            entry = self._entries.get(key_hash)
            if entry is not None and entry.read_at < started:
                entry.read_at, entry.key = started, found.get(key_hash)

    def forget(self, key_id: str) -> None:
        """Drop the key's cached record (an admin changed it): it is read at its next use."""
        self._generation += 1
        self._entries = {
            key_hash: entry
            for key_hash, entry in self._entries.items()
            if entry.key is None or entry.key.id != key_id
        }

    def clear(self) -> None:
        """Drop every cached record (changes may have been missed)."""
        self._generation += 1
        self._entries = {}


async def refresh_caches(keys: KeyCache, flags: FlagsCache, period: float) -> None:
    """Every ``period`` seconds (half of ``admin_refresh_seconds``), re-read the keys and flags
    in use, so that requests find them young and do not wait for the store. A failed read is
    left to the requests, which read (and answer the store's fault) on their own."""
    while True:
        await asyncio.sleep(period)
        for cache in (keys, flags):
            try:
                await cache.refresh()
            except Exception as exc:
                log.debug("refreshing the %s cache failed: %r", type(cache).__name__, exc)


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
    #: tells the server processes here which key or switch an admin changed (SQLite)
    admin_channel: Wakeup = field(default_factory=Wakeup)
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

    async def admin_changed(self, change: str) -> None:
        """An admin just changed a key or a switch through this process (``admin_changes``):
        drop it here, and tell the other servers."""
        admin_changes.apply(change, self.keys, self.flags)
        await admin_changes.announce(self.store, self.admin_channel, change)

    def admin_changed_elsewhere(self, message: bytes) -> None:
        """Another process announced an admin change (a datagram here)."""
        admin_changes.apply(message.decode(errors="replace"), self.keys, self.flags)

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
