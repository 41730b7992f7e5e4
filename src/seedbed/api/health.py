"""Liveness (``/healthz``), readiness (``/readyz``) and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seedbed.api.context import context
from seedbed.api.routing import LeanRoute
from seedbed.metrics import CONTENT_TYPE_LATEST

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"], route_class=LeanRoute)

_OK = b'{"status":"ok"}'


@router.get("/healthz")
async def healthz() -> Response:
    """The process is up (no store access: a cheap, constant answer)."""
    return Response(_OK, media_type="application/json")


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready for traffic: the store answers, an engine is configured, the queue is below
    ``ready_queue_limit``. 200 when all hold, else 503; the body names each check."""
    ctx = context(request)
    checks: dict[str, str] = {}
    queued = 0
    try:
        await ctx.store.ping()
        queued = sum(stat.depth for stat in await ctx.store.queue_stats())
        checks["store"] = "ok"
    except Exception as exc:
        log.warning("readiness: the store is unreachable: %r", exc)
        checks["store"] = "unreachable"
    engines = [engine.name for engine in ctx.engines]
    checks["engines"] = "ok" if engines else "none configured"
    limit = ctx.settings.ready_queue_limit
    checks["queue"] = "ok" if queued < limit else f"{queued} queued (limit {limit})"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks, "queued": queued}
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format: this process's counters and the store's queue per engine."""
    ctx = context(request)
    names = [engine.name for engine in ctx.engines]

    def engine_of(model: str) -> str | None:
        engine = ctx.engines.for_model(model)
        return None if engine is None else engine.name

    try:
        ctx.metrics.set_queue(await ctx.store.queue_stats(), engine_of, names)
    except Exception as exc:  # the counters are still worth serving
        log.warning("metrics: could not read the queue: %r", exc)
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
