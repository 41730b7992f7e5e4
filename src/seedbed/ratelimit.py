"""Per-key request rate limits (GCRA: a token bucket kept as one timestamp per key).

Limits are kept in this process's memory: with several server processes each enforces the
limit on its own share of traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


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
