"""The operator's JSON API behind the console's admin page: ``/api/v1/admin/...``.

Authenticated by the admin token (``Authorization: Bearer <token>``; see ``tokens``), never
by an API key. Each action calls the same ``Store`` method as the matching ``seedbed``
command (keys create/revoke, credits add, maintenance, models enable/disable, callbacks
redeliver), so the CLI and the console do one thing one way. Failed attempts are limited per
client address (``GUARD_FAILURES`` per ``GUARD_WINDOW`` s): past that, every request from the
address is answered 429 until the window has passed, the right token included.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seedbed import admin_changes, catalogue, errors, keys
from seedbed.admin_views import callback_json, key_json
from seedbed.api import envelope, openapi
from seedbed.api.body import parse_json_object, read_body
from seedbed.api.context import Context, context
from seedbed.api.routing import LeanRoute
from seedbed.console import schemas, tokens
from seedbed.console.stats import QueueSampler
from seedbed.outbox import CallbackState
from seedbed.store.base import TaskFilter
from seedbed.tasks import CREDITS_MAX, LIMIT_MAX, KeyLimits, NewKey, TaskState

__all__ = ["ADMIN_SCHEME", "AdminGuard", "router"]

router = APIRouter(tags=["admin"], route_class=LeanRoute)

ADMIN_SCHEME = "AdminToken"
GUARD_FAILURES = 10
GUARD_WINDOW = 60.0
#: an admin request's body is a few fields
MAX_BODY = 16 * 1024

_SECURED: dict[str, Any] = {"security": [{ADMIN_SCHEME: []}]}


class AdminGuard:
    """Failed admin-token attempts per client address, over a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: it may)."""
        seen = self._failures.get(client)
        if not seen:
            return 0.0
        now = self._clock()
        while seen and seen[0] <= now - GUARD_WINDOW:
            seen.popleft()
        if len(seen) < GUARD_FAILURES:
            return 0.0
        return seen[0] + GUARD_WINDOW - now

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(self._clock())


def _state(request: Request) -> tuple[AdminGuard, QueueSampler]:
    console = request.app.state.console
    return console.guard, console.sampler


async def _authorize(request: Request) -> Context:
    ctx = context(request)
    guard, _ = _state(request)
    client = request.client.host if request.client else "?"
    wait = guard.blocked_for(client)
    if wait > 0:
        raise errors.RateLimited("Too many wrong admin tokens; try again later", retry_after=wait)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    stored = await ctx.store.admin_token_hash()
    good = scheme.lower() == "bearer" and tokens.matches(
        token, setting=ctx.settings.admin_token, stored_hash=stored
    )
    if not good:
        guard.failed(client)
        raise errors.Unauthorized("You need an admin token for this (see docs/console.md)")
    return ctx


async def _json(request: Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request, MAX_BODY))


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        }
    }


# -- overview and workers --------------------------------------------------------------------
@router.get(
    "/api/v1/admin/overview",
    responses=openapi.answers(schemas.OverviewAnswer, 429),
    openapi_extra=_SECURED,
)
async def overview(request: Request) -> Response:
    """Queue depth per model, tasks ended in the last hour, and the samples behind the
    depth and throughput charts (one per ``interval`` seconds, this process's)."""
    ctx = await _authorize(request)
    _, sampler = _state(request)
    stats = await ctx.store.task_stats(since=int((time.time() - 3600) * 1000))
    queue = await ctx.store.queue_stats()
    flags = await ctx.store.flags()
    return envelope.ok(
        {
            "queue": [
                {"model": q.model, "depth": q.depth, "oldestCreateTime": q.oldest_create_time}
                for q in queue
            ],
            "openByState": stats.open_by_state,
            "finishedLastHour": stats.finished_by_state,
            "failuresLastHour": stats.failures_by_code,
            "maintenance": flags.maintenance,
            "sampleSeconds": sampler.interval,
            "samples": [
                {
                    "time": s.time,
                    "depth": s.depth,
                    "finishedPerMinute": round(s.finished_per_minute, 2),
                }
                for s in sampler.samples
            ],
        }
    )


@router.get(
    "/api/v1/admin/workers",
    responses=openapi.answers(schemas.WorkersAnswer, 429),
    openapi_extra=_SECURED,
)
async def workers(request: Request) -> Response:
    """Workers that hold a lease now (any process), their current tasks, and this server's
    own worker and engines."""
    ctx = await _authorize(request)
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for state in (TaskState.GENERATING, TaskState.QUEUING):
        for task in await ctx.store.list_tasks(TaskFilter(state=state, limit=500)):
            if task.lease_owner and (task.lease_expires or 0) > time.time() * 1000:
                by_owner.setdefault(task.lease_owner, []).append(
                    {
                        "taskId": task.id,
                        "model": task.model,
                        "state": task.state.value,
                        "progress": task.progress,
                        "engine": (await ctx.store.task_engine(task.id) or (None,))[0],
                    }
                )
    own = ctx.worker.worker_id if ctx.worker is not None else None
    if own is not None:
        by_owner.setdefault(own, [])
    problems = ctx.health.problems()
    engines = [
        {
            "name": engine.name,
            "kind": type(engine).__name__,
            "models": sorted(m for m in catalogue.CATALOGUE if engine.serves(m)),
        }
        for engine in ctx.engines
    ]
    return envelope.ok(
        {
            "workers": [
                {
                    "id": owner,
                    "inThisProcess": owner == own,
                    "state": ("down: " + problems["worker"].reason)
                    if owner == own and "worker" in problems
                    else ("busy" if tasks else "idle"),
                    "tasks": tasks,
                }
                for owner, tasks in sorted(by_owner.items())
            ],
            "engines": engines,
        }
    )


# -- keys ------------------------------------------------------------------------------------
_LIMIT_PROPS: dict[str, Any] = {
    "createPerWindow": {"type": ["integer", "null"], "minimum": 1, "maximum": LIMIT_MAX},
    "createWindowSeconds": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "maximum": LIMIT_MAX,
    },
    "recordPerSecond": {"type": ["integer", "null"], "minimum": 1, "maximum": LIMIT_MAX},
    "openTaskCap": {"type": ["integer", "null"], "minimum": 1, "maximum": LIMIT_MAX},
}
_LIMIT_FIELDS = {
    "createPerWindow": ("create_per_window", int),
    "createWindowSeconds": ("create_window_seconds", float),
    "recordPerSecond": ("record_per_second", int),
    "openTaskCap": ("open_task_cap", int),
}


def _limits(data: Any) -> KeyLimits:
    if data is None:
        return KeyLimits()
    if not isinstance(data, dict):
        raise errors.ValidationFailed("limits must be an object")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _LIMIT_FIELDS:
            raise errors.ValidationFailed(f"limits: unknown field {name!r}")
        field, kind = _LIMIT_FIELDS[name]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise errors.ValidationFailed(f"limits.{name} must be a positive number or null")
        if value > LIMIT_MAX:
            raise errors.ValidationFailed(f"limits.{name} must be at most {LIMIT_MAX}")
        if kind is int and value != int(value):
            raise errors.ValidationFailed(f"limits.{name} must be a whole number")
        values[field] = kind(value)
    return KeyLimits(**values)


def _amount(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise errors.ValidationFailed(f"{name} must be a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise errors.ValidationFailed(f"{name} must be a number") from exc
    if not amount.is_finite():
        raise errors.ValidationFailed(f"{name} must be a finite number")
    if abs(amount) > CREDITS_MAX:
        # balances are stored in thousandths in a 64-bit integer; "1e400" answered 500
        raise errors.ValidationFailed(f"{name} must be at most {CREDITS_MAX} credits")
    return amount


@router.get(
    "/api/v1/admin/keys",
    responses=openapi.answers(schemas.AdminKeysAnswer, 429),
    openapi_extra=_SECURED,
)
async def list_keys(request: Request) -> Response:
    """Every key, with balance, holds, limits; never the key itself."""
    ctx = await _authorize(request)
    return envelope.ok([key_json(k) for k in await ctx.store.list_keys()])


@router.post(
    "/api/v1/admin/keys",
    responses=openapi.answers(schemas.AdminKeyCreatedAnswer, 429),
    openapi_extra={
        **_SECURED,
        **_body(
            {
                "name": {"type": "string", "minLength": 1},
                "credits": {"type": ["number", "string"]},
                "limits": {"type": "object", "properties": _LIMIT_PROPS},
            },
            ["name"],
        ),
    },
)
async def create_key(request: Request) -> Response:
    """Create a key (``seedbed keys create``); ``key`` is in this answer only."""
    ctx = await _authorize(request)
    data = await _json(request)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise errors.ValidationFailed("name is required")
    credits = _amount(data.get("credits", 0), "credits")
    if credits < 0:
        raise errors.ValidationFailed("credits must not be negative")
    plain = keys.new_key()
    new = NewKey(
        id=keys.new_key_id(),
        name=name.strip(),
        key_hash=keys.hash_key(plain),
        credits=credits,
        limits=_limits(data.get("limits")),
    )
    created = await ctx.store.create_key(new)
    return envelope.ok({"key": plain, **key_json(created)})


@router.post(
    "/api/v1/admin/keys/{keyId}/revoke",
    responses=openapi.answers(schemas.DoneAnswer, 429),
    openapi_extra={**_SECURED, "parameters": [_path_param("keyId")]},
)
async def revoke_key(request: Request) -> Response:
    """Revoke a key (``seedbed keys revoke``): refused from the next request on."""
    ctx = await _authorize(request)
    key_id = request.path_params["keyId"]
    if not await ctx.store.revoke_key(key_id):
        raise errors.ValidationFailed(f"no key {key_id}")
    await ctx.admin_changed(admin_changes.key_changed(key_id))  # refused from the next request
    return envelope.ok({"id": key_id, "revoked": True})


@router.post(
    "/api/v1/admin/keys/{keyId}/credits",
    responses=openapi.answers(schemas.DoneAnswer, 429),
    openapi_extra={
        **_SECURED,
        "parameters": [_path_param("keyId")],
        **_body({"amount": {"type": ["number", "string"]}, "note": {"type": "string"}}, ["amount"]),
    },
)
async def add_credits(request: Request) -> Response:
    """Add credits, or remove them with a negative amount (``seedbed credits add``)."""
    ctx = await _authorize(request)
    key_id = request.path_params["keyId"]
    data = await _json(request)
    amount = _amount(data.get("amount"), "amount")
    note = data.get("note", "")
    if not isinstance(note, str):
        raise errors.ValidationFailed("note must be a string")
    try:
        balance = await ctx.store.add_credits(key_id, amount, note or "console")
    except KeyError as exc:
        raise errors.ValidationFailed(f"no key {key_id}") from exc
    except ValueError as exc:
        raise errors.ValidationFailed(str(exc)) from exc
    await ctx.admin_changed(admin_changes.key_changed(key_id))  # its refusals show the balance
    return envelope.ok({"id": key_id, "balance": str(balance)})


@router.put(
    "/api/v1/admin/keys/{keyId}/limits",
    responses=openapi.answers(schemas.DoneAnswer, 429),
    openapi_extra={
        **_SECURED,
        "parameters": [_path_param("keyId")],
        **_body(_LIMIT_PROPS, []),
    },
)
async def set_limits(request: Request) -> Response:
    """Replace a key's own limits; a field left out or null follows the deployment's."""
    ctx = await _authorize(request)
    key_id = request.path_params["keyId"]
    limits = _limits(await _json(request))
    if not await ctx.store.set_key_limits(key_id, limits):
        raise errors.ValidationFailed(f"no key {key_id}")
    await ctx.admin_changed(admin_changes.key_changed(key_id))
    return envelope.ok({"id": key_id, "limits": limits.as_dict()})


# -- switches --------------------------------------------------------------------------------
async def _switches(ctx: Context) -> dict[str, Any]:
    flags = await ctx.store.flags()
    return {
        "maintenance": flags.maintenance,
        "models": [
            {
                "id": spec.id,
                "title": spec.title,
                "enabled": spec.id not in flags.disabled_models,
                "served": ctx.engines.serves(spec.id),
            }
            for spec in catalogue.CATALOGUE.values()
        ],
    }


@router.get(
    "/api/v1/admin/switches",
    responses=openapi.answers(schemas.SwitchesAnswer, 429),
    openapi_extra=_SECURED,
)
async def switches(request: Request) -> Response:
    """Maintenance and each model's switch."""
    return envelope.ok(await _switches(await _authorize(request)))


@router.put(
    "/api/v1/admin/maintenance",
    responses=openapi.answers(schemas.SwitchesAnswer, 429),
    openapi_extra={**_SECURED, **_body({"on": {"type": "boolean"}}, ["on"])},
)
async def set_maintenance(request: Request) -> Response:
    """Maintenance on (createTask answers 455) or off (``seedbed maintenance``)."""
    ctx = await _authorize(request)
    on = (await _json(request)).get("on")
    if not isinstance(on, bool):
        raise errors.ValidationFailed("on must be true or false")
    await ctx.store.set_maintenance(on)
    await ctx.admin_changed(admin_changes.FLAGS)  # every server sees it from the next request
    return envelope.ok(await _switches(ctx))


@router.put(
    "/api/v1/admin/models",
    responses=openapi.answers(schemas.SwitchesAnswer, 429),
    openapi_extra={
        **_SECURED,
        **_body(
            {"model": {"type": "string"}, "enabled": {"type": "boolean"}}, ["model", "enabled"]
        ),
    },
)
async def set_model(request: Request) -> Response:
    """Enable or disable a model (``seedbed models enable|disable``); disabled: 505."""
    ctx = await _authorize(request)
    data = await _json(request)
    model, enabled = data.get("model"), data.get("enabled")
    if not isinstance(model, str) or model not in catalogue.CATALOGUE:
        raise errors.ValidationFailed(f"unknown model {model!r}")
    if not isinstance(enabled, bool):
        raise errors.ValidationFailed("enabled must be true or false")
    await ctx.store.set_model_enabled(model, enabled)
    await ctx.admin_changed(admin_changes.FLAGS)
    return envelope.ok(await _switches(ctx))


# -- callbacks -------------------------------------------------------------------------------
_CALLBACK_STATES = {state.value: state for state in CallbackState}


@router.get(
    "/api/v1/admin/callbacks",
    responses=openapi.answers(schemas.CallbacksAnswer, 429),
    openapi_extra={
        **_SECURED,
        "parameters": [
            {
                "name": "state",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(_CALLBACK_STATES)},
            }
        ],
    },
)
async def list_callbacks(request: Request) -> Response:
    """The callback outbox, newest first (100 rows); ``state=dead`` for dead letters."""
    ctx = await _authorize(request)
    state_text = request.query_params.get("state") or None
    if state_text is not None and state_text not in _CALLBACK_STATES:
        raise errors.ValidationFailed(f"state must be one of {', '.join(_CALLBACK_STATES)}")
    state = _CALLBACK_STATES[state_text] if state_text else None
    rows = await ctx.store.list_callbacks(state=state, limit=100)
    return envelope.ok([callback_json(row) for row in rows])


@router.post(
    "/api/v1/admin/callbacks/{taskId}/redeliver",
    responses=openapi.answers(schemas.DoneAnswer, 429),
    openapi_extra={**_SECURED, "parameters": [_path_param("taskId")]},
)
async def redeliver(request: Request) -> Response:
    """Queue a task's callback again with a fresh count of attempts
    (``seedbed callbacks redeliver``)."""
    ctx = await _authorize(request)
    task_id = request.path_params["taskId"]
    if not await ctx.store.redeliver_callback(task_id):
        raise errors.ValidationFailed(f"no callback for task {task_id}")
    ctx.callback_wakeup.notify()
    return envelope.ok({"taskId": task_id, "queued": True})
