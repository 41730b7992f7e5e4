"""The health monitor: probes the store and storage with a small write every second.

Readiness and createTask must not wait for a task to fail before they know that the disk is
full or the database is locked, and they must know at once when it clears (the worker's own
retries only ever mark a part unhealthy; the monitor is what marks it healthy again). A probe
that does not answer within ``PROBE_PATIENCE`` counts as a fault while it goes on waiting:
it is never cancelled, since abandoning a write half-way is worse than waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Awaitable, Callable

from seedbed import errors, faults
from seedbed.storage.base import Storage
from seedbed.store.base import Store

__all__ = ["PROBE_KEY", "HealthMonitor"]

log = logging.getLogger(__name__)

#: the storage key the probe writes and deletes
PROBE_KEY = "health/probe.txt"
#: seconds a probe may take before its part counts as unhealthy
PROBE_PATIENCE = 2.0
#: object storage is probed with a write this often at most while it is healthy: an object
#: store bills each request, and the worker marks it unhealthy at its first failed write anyway
REMOTE_PROBE_SECONDS = 30.0


class HealthMonitor:
    def __init__(
        self,
        *,
        store: Store,
        storage: Storage,
        health: faults.Health,
        interval: float = 1.0,
        min_free_bytes: int = 0,
    ) -> None:
        self.store = store
        self.storage = storage
        self.health = health
        self.interval = interval
        self.min_free_bytes = min_free_bytes
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._remote_probed_at = -float("inf")
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def stop(self) -> None:
        self._stopping.set()

    async def check(self) -> None:
        """Probe each part once (the parts side by side)."""
        await asyncio.gather(
            self._probe("store", self.store.check_writable),
            self._probe("storage", self._check_storage),
        )

    async def _probe(self, part: str, probe: Callable[[], Awaitable[None]]) -> None:
        pending = self._pending.get(part)
        if pending is None or pending.done():
            pending = self._pending[part] = asyncio.ensure_future(probe())
        done, _ = await asyncio.wait({pending}, timeout=PROBE_PATIENCE)
        if not done:
            self.health.fault(part, f"a probe write has waited over {PROBE_PATIENCE:g} s")
            return
        exc = pending.exception()
        if exc is None:
            self.health.ok(part)
        else:
            self.health.fault(part, faults.describe(exc))

    async def _check_storage(self) -> None:
        root = getattr(self.storage, "root", None)  # local files: the free space is known
        if root is not None and self.min_free_bytes:
            free = (await asyncio.to_thread(shutil.disk_usage, root)).free
            if free < self.min_free_bytes:
                raise errors.StorageFull(
                    f"storage is full: {free // 2**20} MB free, below the "
                    f"{self.min_free_bytes // 2**20} MB kept free (storage_min_free_mb)"
                )
        elif root is None:
            now = time.monotonic()
            healthy = self.health.problem("storage") is None
            if healthy and now - self._remote_probed_at < REMOTE_PROBE_SECONDS:
                return
            self._remote_probed_at = now
        try:
            await self.storage.put(PROBE_KEY, b"ok\n", "text/plain")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise errors.StorageFull() from exc
            raise
        await self.storage.delete(PROBE_KEY)
