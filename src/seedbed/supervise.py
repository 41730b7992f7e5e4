"""Keep a process's background loops alive: a loop that dies is logged and started again.

Each loop (the worker, the callback dispatcher, the retention sweeper, the live-events feed,
the health monitor) already survives the faults it expects. The supervisor is the net under
them: whatever escapes a loop is logged with its traceback, counted, and the loop restarts
after a backoff that grows while it keeps dying (0.5 s doubling to 10 s) and resets once it
has run for a minute. ``running(name)`` is what readiness asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
#: a loop that ran this long before dying starts again with the first backoff
STABLE_SECONDS = 60.0


@dataclass
class _Loop:
    name: str
    factory: Callable[[], Awaitable[None]]
    on_crash: Callable[[], Awaitable[None]] | None = None
    task: asyncio.Task[None] | None = None
    running: bool = False
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    def __init__(self, on_restart: Callable[[str], None] | None = None) -> None:
        self._loops: dict[str, _Loop] = {}
        self._on_restart = on_restart
        self._stopping = False

    def start(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        on_crash: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as ``name`` until it returns or ``stop``; restart it when it raises.

        ``on_crash`` runs after a crash, before the restart (e.g. hand back claimed tasks).
        """
        loop = _Loop(name, factory, on_crash)
        self._loops[name] = loop
        loop.task = asyncio.create_task(self._keep(loop), name=f"supervised-{name}")
        return loop.task

    def running(self, name: str) -> bool:
        loop = self._loops.get(name)
        return loop is not None and loop.running

    def last_error(self, name: str) -> str | None:
        loop = self._loops.get(name)
        return None if loop is None else loop.last_error

    def task(self, name: str) -> asyncio.Task[None] | None:
        loop = self._loops.get(name)
        return None if loop is None else loop.task

    async def stop(self, name: str, *, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` for the loop to return by itself, then cancel it."""
        loop = self._loops.get(name)
        if loop is None or loop.task is None:
            return
        task = loop.task
        if timeout:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop_all(self) -> None:
        self._stopping = True
        for name in list(self._loops):
            await self.stop(name)

    async def _keep(self, loop: _Loop) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping:
            started = time.monotonic()
            loop.running = True
            try:
                await loop.factory()
                return  # a loop that returns has finished its work (a stop, a burst)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                loop.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("%s died; restarting it in %.1f s", loop.name, backoff)
            finally:
                loop.running = False
            loop.restarts += 1
            if self._on_restart is not None:
                self._on_restart(loop.name)
            if loop.on_crash is not None:
                try:
                    await loop.on_crash()
                except Exception:
                    log.exception("%s: clean-up after the crash failed", loop.name)
            if time.monotonic() - started > STABLE_SECONDS:
                backoff = FIRST_BACKOFF
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(MAX_BACKOFF, backoff * 2)
            log.warning("%s restarted (restart %d)", loop.name, loop.restarts)
