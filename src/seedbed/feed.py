"""The live task feed behind ``GET /api/v1/jobs/events``: one poller for all subscribers.

Each open event stream subscribes to one task id. Rather than each stream reading the store on
its own clock, one loop per process reads the changed tasks of *all* subscribed ids in one
indexed query (``Store.changed_tasks``) every ``interval`` and hands each new snapshot to its
subscribers. A thousand idle streams cost one query of a thousand key look-ups a tick.
Changes made in this process (the in-process worker, a cancel) ``poke`` the feed, which then
reads those tasks at once instead of at the next tick; so do changes other processes tell it
of (a ``seedbed worker`` beside the server: a datagram on SQLite, ``NOTIFY`` on PostgreSQL).
The tick is the safety net for a change nobody told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from seedbed.store.base import Store
from seedbed.tasks import Task, TaskState

__all__ = ["Subscription", "TaskFeed", "version"]

log = logging.getLogger(__name__)

_RANK = {
    TaskState.WAITING: 0,
    TaskState.QUEUING: 1,
    TaskState.GENERATING: 2,
    TaskState.SUCCESS: 3,
    TaskState.FAIL: 3,
}


def version(task: Task) -> int:
    """A number that grows with every change a client can see: state first, then progress.

    States never go back and progress never decreases, so it is monotonic; it is the SSE
    event id, which lets a reconnecting client say what it has already seen.
    """
    return _RANK[task.state] * 1000 + task.progress


class Subscription:
    """One stream's view of one task: the latest snapshot and a flag raised when it moves."""

    def __init__(self, task: Task, release: Callable[[Subscription], None]) -> None:
        self.task_id = task.id
        self.latest = task
        self.closed = False
        self.changed = asyncio.Event()
        self._release = release

    def offer(self, task: Task) -> None:
        if version(task) > version(self.latest):
            self.latest = task
            self.changed.set()

    def close(self) -> None:
        """Stop listening (idempotent); the stream ends at its next look."""
        if not self.closed:
            self.closed = True
            self.changed.set()
            self._release(self)


class TaskFeed:
    #: seconds a row's ``update_time`` may lag behind its commit (another process's clock and
    #: commit delay): each poll re-reads that much of the past, and duplicates are dropped
    SKEW_MS = 2000
    #: ids per query (SQLite's bound-parameter and JSON sizes stay small)
    CHUNK = 500

    def __init__(
        self, store: Store, *, interval: float = 0.25, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._subs: dict[str, set[Subscription]] = {}
        self._poked: set[str] = set()
        self._wake = asyncio.Event()
        self._since = 0
        self._closed = False

    @property
    def subscribers(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    def subscribe(self, task: Task) -> Subscription:
        """Follow ``task`` (its current snapshot is the starting point)."""
        sub = Subscription(task, self._release)
        if self._closed:
            sub.close()
            return sub
        self._subs.setdefault(task.id, set()).add(sub)
        return sub

    def _release(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.task_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.task_id]

    def publish(self, task: Task) -> None:
        """A fresh snapshot is known here (e.g. the task this process just canceled)."""
        for sub in list(self._subs.get(task.id, ())):
            sub.offer(task)

    def poke(self, task_id: str) -> None:
        """This process just changed ``task_id``: read it now if anyone follows it."""
        if task_id in self._subs:
            self._poked.add(task_id)
            self._wake.set()

    def close(self) -> None:
        """End every stream (shutdown) and refuse new ones."""
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
        self._wake.set()

    async def run(self) -> None:
        """The poll loop; runs until cancelled or ``close()``."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._poll()
            except Exception:
                log.exception("live events: reading changed tasks failed; retrying")

    async def _poll(self) -> None:
        poked, self._poked = self._poked, set()
        if poked:
            for task in await self._store.changed_tasks(list(poked), since=0):
                self.publish(task)
        if not self._subs:
            return
        started = int(self._clock() * 1000)
        ids = list(self._subs)
        for start in range(0, len(ids), self.CHUNK):
            chunk = ids[start : start + self.CHUNK]
            for task in await self._store.changed_tasks(chunk, since=self._since):
                self.publish(task)
        self._since = started - self.SKEW_MS
