"""Everything a request handler needs, built once per app (no module globals)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from seedbed import netguard
from seedbed.catalogue.base import ModelSpec, Pricing
from seedbed.config import Settings
from seedbed.engines import Engines
from seedbed.ratelimit import RateLimiter
from seedbed.storage.local import LocalStorage
from seedbed.store.base import Store
from seedbed.tasks import Flags
from seedbed.wakeup import Wakeup

__all__ = ["Context", "FlagsCache", "context"]


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


@dataclass(kw_only=True)
class Context:
    settings: Settings
    store: Store
    storage: LocalStorage
    engines: Engines
    wakeup: Wakeup
    net_policy: netguard.NetPolicy
    flags: FlagsCache
    limiter: RateLimiter = field(default_factory=RateLimiter)

    def pricing(self, spec: ModelSpec) -> Pricing:
        return spec.pricing.with_overrides(self.settings.prices.get(spec.id))

    def base_url(self, request: Request) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx
