"""Per-key request rate limits (GCRA: a token bucket kept as one timestamp per key).

``RateLimiter`` keeps them in this process's memory: the embedded deployment (one process on
SQLite), and recordInfo's per-second limit everywhere (see docs/deploy.md: it is the hottest
path, and a shared count would add a database write to every poll). ``SharedRateLimiter``
keeps the same state in the store (``Store.rate_limit_hit``, one upsert): createTask's limit on
PostgreSQL, where every API replica must count against one budget per key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seedbed.store.base import Store

__all__ = ["RateLimiter", "SharedRateLimiter"]


class RateLimiter:
    """Allows ``limit`` calls per ``window`` seconds, in bursts of up to ``limit``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> theoretical arrival time of the next call
        self._tat: dict[str, float] = {}

    def hit(self, key: str, limit: int, window: float) -> float:
        """Count one call; return 0 if allowed, else the seconds to wait before retrying."""
        if limit <= 0:
            return window
        now = self._clock()
        interval = window / limit
        tat = max(self._tat.get(key, now), now)
        wait = tat - now - (window - interval)
        if wait > 0:
            return wait
        self._tat[key] = tat + interval
        if len(self._tat) > 100_000:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        # Keys whose bucket has refilled carry no state worth keeping.
        for key in [k for k, t in self._tat.items() if t <= now]:
            del self._tat[key]


class SharedRateLimiter:
    """The same rule as ``RateLimiter``, counted in the store: one budget for all replicas."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def hit(self, key: str, limit: int, window: float) -> float:
        """Count one call; return 0 if allowed, else the seconds to wait before retrying."""
        return await self._store.rate_limit_hit(key, limit=limit, window=window)
