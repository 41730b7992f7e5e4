"""Liveness (``/healthz``), readiness (``/readyz``) and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from seedbed import catalogue
from seedbed.api import schemas
from seedbed.api.context import context
from seedbed.api.routing import LeanRoute
from seedbed.engines import Engines
from seedbed.metrics import CONTENT_TYPE_LATEST

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"], route_class=LeanRoute)

_OK = b'{"status":"ok"}'


@router.get("/healthz", responses={200: {"model": schemas.Health, "description": "Up."}})
async def healthz() -> Response:
    """The process is up (no store access: a cheap, constant answer)."""
    return Response(_OK, media_type="application/json")


@router.get(
    "/readyz",
    responses={
        200: {"model": schemas.Readiness, "description": "Ready: every check is ok."},
        503: {"model": schemas.Readiness, "description": "Not ready: a check is not ok."},
    },
)
async def readyz(request: Request) -> Response:
    """Ready for traffic: the store answers and takes writes, storage takes files, the worker
    (where this process runs one) is running, an engine is configured, the queue is below
    ``ready_queue_limit``. 200 when all hold, else 503; the body names each check, and a
    failing one says why."""
    ctx = context(request)
    checks: dict[str, str] = {}
    queued = 0
    try:
        await ctx.store.ping()
        queued = (await ctx.store.queue_summary()).depth
        checks["store"] = "ok"
    except Exception as exc:
        log.warning("readiness: the store is unreachable: %r", exc)
        checks["store"] = "unreachable"
    # Write faults are found by the health monitor's probes (and by the worker as it meets
    # them); a read answering is not enough to take tasks.
    for part in ("store", "storage"):
        problem = ctx.health.problem(part)
        if checks.get(part, "ok") == "ok":
            checks[part] = "ok" if problem is None else problem.reason
    if ctx.settings.worker:
        running = ctx.supervisor.running("worker")
        error = ctx.supervisor.last_error("worker")
        checks["worker"] = "ok" if running else f"not running (last error: {error or 'none'})"
    engines = [engine.name for engine in ctx.engines]
    checks["engines"] = "ok" if engines else "none configured"
    for engine in ctx.engines:
        # relay engines: an upstream that rejects this server's key needs the operator
        readiness = getattr(engine, "readiness", None)
        if callable(readiness):
            checks[f"upstream:{engine.name}"] = str(readiness())
    limit = ctx.settings.ready_queue_limit
    checks["queue"] = "ok" if queued < limit else f"{queued} queued (limit {limit})"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks, "queued": queued}
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text format: this process's counters and the store's queue per engine."""
    ctx = context(request)
    try:
        for engine, models in _models_by_engine(ctx.engines):
            ctx.metrics.set_queue(engine, await ctx.store.queue_summary(models))
    except Exception as exc:  # the counters are still worth serving
        log.warning("metrics: could not read the queue: %r", exc)
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _models_by_engine(engines: Engines) -> list[tuple[str, list[str] | None]]:
    """Each engine's name and the models it runs; None when it runs every model (the usual
    single-engine deployment), which lets the store count the queue on its index alone."""
    out: list[tuple[str, list[str] | None]] = []
    for engine in engines:
        models = [m for m in catalogue.CATALOGUE if engines.for_model(m) is engine]
        out.append((engine.name, None if len(models) == len(catalogue.CATALOGUE) else models))
    return out
