"""``Authorization: Bearer <key>`` → the key's record, or 401."""

from __future__ import annotations

from starlette.requests import Request

from seedbed import errors, keys
from seedbed.api.context import Context
from seedbed.tasks import ApiKey

__all__ = ["authenticate", "limit_create", "limit_record"]


async def authenticate(request: Request, ctx: Context, *, fresh: bool = False) -> ApiKey:
    """The calling key; ``fresh`` reads it from the store, not the cache (answers that show
    its balance)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.Unauthorized()
    key = await ctx.keys.get(keys.hash_key(token), fresh=fresh)
    if key is None or key.revoked:
        raise errors.Unauthorized()
    return key


async def limit_create(ctx: Context, key: ApiKey) -> None:
    """createTask's per-key rate limit and open-task cap (429 with Retry-After); each refusal
    is counted in ``seedbed_rate_limited_total{limit}``.

    With a shared store (PostgreSQL) the rate is counted there, one budget for every replica;
    the cap checked here is a cached early answer, the store's hold enforces it atomically."""
    settings = ctx.settings
    per_window = key.limits.create_per_window or settings.create_rate_limit
    window = key.limits.create_window_seconds or settings.create_rate_window
    bucket = f"create:{key.id}"
    if ctx.shared_limiter is not None:
        wait = await ctx.shared_limiter.hit(bucket, per_window, window)
    else:
        wait = ctx.limiter.hit(bucket, per_window, window)
    if wait > 0:
        ctx.metrics.refused("create_rate")
        raise errors.RateLimited(
            f"Rate limit exceeded: {per_window} createTask calls per {window:g} s",
            retry_after=wait,
        )
    cap = key.limits.open_task_cap or settings.open_task_cap
    if key.open_tasks >= cap:
        ctx.metrics.refused("open_tasks")
        raise errors.RateLimited(
            f"Too many open tasks: this key has {key.open_tasks} unfinished (limit {cap})",
            retry_after=1.0,
        )


def limit_record(ctx: Context, key: ApiKey) -> None:
    per_second = key.limits.record_per_second or ctx.settings.record_rate_limit
    wait = ctx.limiter.hit(f"record:{key.id}", per_second, 1.0)
    if wait > 0:
        ctx.metrics.refused("record_rate")
        raise errors.RateLimited(
            f"Rate limit exceeded: {per_second} recordInfo calls per second", retry_after=wait
        )
