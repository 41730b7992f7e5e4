"""The kie Market jobs API: ``createTask`` and ``recordInfo``, and the ``cancelTask`` extension."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seedbed import catalogue, errors, netguard
from seedbed.api import auth, envelope, openapi, schemas
from seedbed.api.body import parse_json_object, read_body
from seedbed.api.context import Context, context
from seedbed.api.routing import LeanRoute
from seedbed.api.views import task_record
from seedbed.catalogue.base import ModelSpec, field_value
from seedbed.links import Links
from seedbed.logs import task_extra
from seedbed.store.base import CreateRefused, IdempotencyConflict
from seedbed.tasks import ClaimedBy, NewTask, Outcome, Task, TaskView, new_task_id
from seedbed.worker import Worker

__all__ = ["CANCELED_FAIL_CODE", "CANCELED_FAIL_MSG", "router"]

log = logging.getLogger(__name__)

#: how a canceled task ends (CONTRACT §9): ``failMsg`` "canceled"; the code says "by request"
CANCELED_FAIL_CODE = "400"
CANCELED_FAIL_MSG = "canceled"
#: longest ``Idempotency-Key`` accepted (the column's width)
MAX_IDEMPOTENCY_KEY = 200

router = APIRouter(tags=["jobs"], route_class=LeanRoute)


@router.post(
    "/api/v1/jobs/createTask",
    responses=openapi.answers(schemas.TaskCreatedAnswer, 413, 429),
    openapi_extra=openapi.CREATE_TASK_BODY,
)
async def create_task(request: Request) -> Response:
    """Accept a generation task; answers its ``taskId`` once it is stored durably."""
    ctx = context(request)
    raw = await read_body(request, ctx.settings.max_body_bytes)
    key = await auth.authenticate(request, ctx)
    idempotency_key = _idempotency_key(request)
    flags = await ctx.flags.get()
    if flags.maintenance:
        raise errors.Maintenance()
    if (problem := ctx.health.problem("storage") or ctx.health.problem("store")) is not None:
        # Accept only what can be finished: a task taken now could not store its result (or
        # would be written to a database that is not there).
        raise errors.StorageFull(
            f"This server cannot store tasks or files right now ({problem.reason}); try again later"
        )
    await auth.limit_create(ctx, key)
    body = parse_json_object(raw)
    spec = catalogue.get(body.get("model"))
    if spec.id in flags.disabled_models:
        raise errors.ModelUnavailable(f"Model {spec.id} is disabled on this server")
    engine = ctx.engines.for_model(spec.id)
    if engine is None:
        raise errors.ModelUnavailable(f"No engine on this server serves {spec.id}")
    if "input" not in body or body["input"] is None:
        raise errors.ValidationFailed("input: is required")
    raw_input = body["input"]
    inp = catalogue.validate_input(spec, raw_input)
    _check_engine_limits(ctx, spec, inp)
    await _check_image_urls(ctx, spec, inp)
    callback_url = await _callback_url(ctx, body.get("callBackUrl"))

    pricing = ctx.pricing(spec)
    reserve = spec.max_price(inp, pricing)
    normalized = inp.model_dump(mode="json")
    if normalized.get("seed") in (None, -1):
        # Store the seed we draw, so a retried attempt renders the same image.
        normalized["seed"] = random.getrandbits(31)
    task_id = new_task_id()
    new = NewTask(
        id=task_id,
        key_id=key.id,
        model=spec.id,
        param=_param(spec.id, raw_input, callback_url),
        input=normalized,
        callback_url=callback_url,
        reserve=reserve,
        # result links in the callback use the address the client reached us at
        origin=ctx.base_url(request) if callback_url else None,
        idempotency_key=idempotency_key,
        # the request as parsed, keys sorted: the same body however its keys were ordered
        request_hash=None
        if idempotency_key is None
        else hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest(),
    )
    cap = key.limits.open_task_cap or ctx.settings.open_task_cap
    # An idle worker in this process, its device free, takes the task in its create: the
    # task is stored generating and leased to it, and its engine starts before the create
    # commits, the commit running beside the device (SQLite's group commit, at the end of
    # this loop turn; docs/architecture.md). Only where the key's cached balance covers the
    # hold: a key out of credits does not start (and at once cancel) a generation with each
    # refused create. Otherwise an idle worker (waiting, with a free slot) claims in this
    # create's own transaction: woken before the create's write, its claim joins it, so the
    # task is generating when its creation commits, one commit and ~2 ms sooner than a
    # wake-up after it (bench/peer_bench.py). Should the claim miss the task, the wake-up
    # below makes the worker look again. A busy worker is only woken.
    worker = ctx.worker if ctx.store.group_commit and idempotency_key is None else None
    covered = key.balance >= reserve
    claimed = worker.take_new(spec.id) if worker is not None and covered else None
    claim_along = claimed is None and ctx.store.group_commit and ctx.wakeup.work()
    try:
        if claimed is None:
            task = await ctx.store.create_task(new, open_task_cap=cap)
        else:
            assert worker is not None
            task = await _create_started(ctx, worker, new, cap, claimed, inp)
    except CreateRefused as exc:
        if exc.reason == "open_tasks":  # the cap, reached by a create racing this one
            ctx.metrics.refused("open_tasks")
        raise _refusal(exc, reserve, key.balance, cap) from exc
    except IdempotencyConflict as exc:
        raise errors.ValidationFailed(
            "Idempotency-Key: already used with a different request body in the last 24 hours"
        ) from exc
    if task.id == task_id:  # not a repeat answered with an earlier task
        if claim_along:
            # The claim's caller was woken first (write_first), and has just scheduled the
            # task's run: let that run hand the job to the device before this answer is
            # written (~0.5 ms of the loop), as the device's time is what the client waits on.
            await asyncio.sleep(0)
        if claimed is None and not (
            claim_along and ctx.worker is not None and ctx.worker.runs(task.id)
        ):
            # Wake the workers (other processes' too) unless this one took the task along:
            # woken for nothing, each would make an empty claim, a write on the database.
            ctx.wakeup.notify()
        ctx.metrics.created(spec.id)
    return envelope.ok({"taskId": task.id, "recordId": task.id})


async def _create_started(
    ctx: Context, worker: Worker, new: NewTask, cap: int, claimed: ClaimedBy, inp: Any
) -> Task:
    """Create ``new`` claimed by ``worker``, which starts it first: its run's first step is
    scheduled before the create's write, whose commit thus runs after the engine has its job."""
    now = int(time.time() * 1000)
    created: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
    as_stored = Task.accepted(
        new, seq=0, now=now, input=new.input, reserved=new.reserve, claimed=claimed
    )
    worker.run_new(as_stored, created, inp)
    try:
        task = await ctx.store.create_task(new, open_task_cap=cap, claimed=claimed)
    except asyncio.CancelledError:
        created.cancel()  # its write, still pending, is dropped with it: nothing stored
        raise
    except BaseException as exc:
        created.set_exception(exc)
        raise
    created.set_result(task)
    return task


def _idempotency_key(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise errors.ValidationFailed(
            f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
        )
    return value


@router.post(
    "/api/v1/jobs/cancelTask",
    responses=openapi.answers(schemas.TaskAnswer, 413),
    openapi_extra={
        **openapi.SECURED,
        **openapi.json_body(
            {"type": "object", "required": ["taskId"], "properties": {"taskId": {"type": "string"}}}
        ),
    },
)
async def cancel_task(request: Request) -> Response:
    """Cancel a task: waiting or queuing ones end at once, a generating one at its engine's
    next step. It ends ``fail`` with ``failMsg`` "canceled" and its credits released. A
    finished task is left as it is. ``data`` is the task's recordInfo record afterwards.
    """
    ctx = context(request)
    raw = await read_body(request, ctx.settings.max_body_bytes)
    key = await auth.authenticate(request, ctx)
    body = parse_json_object(raw)
    task_id = body.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise errors.ValidationFailed("taskId: is required and must be a string")
    task = await ctx.store.get_task(task_id)
    if task is None or task.key_id != key.id:
        raise errors.TaskNotFound()
    if task.state.is_open:
        outcome = Outcome.failure(CANCELED_FAIL_CODE, CANCELED_FAIL_MSG)
        # finish settles the credits (and, with callbacks, writes the outbox row) exactly once,
        # whoever holds the lease; None means the task ended first by itself.
        ended = await ctx.store.finish(task.id, outcome, worker_id=None)
        if ended is not None:
            log.info("task canceled (was %s)", task.state.value, extra=task_extra(task))
            ctx.task_ended(ended)
            if ctx.worker is not None:
                ctx.worker.cancel(task.id)  # the in-process engine stops at its next step
            task = ended
        else:
            task = await ctx.store.get_task(task_id) or task
    return envelope.raw(_record_body(task, ctx.base_url(request), None))


_TASK_ID_PARAM = {
    **openapi.SECURED,
    "parameters": [
        {"name": "taskId", "in": "query", "required": True, "schema": {"type": "string"}}
    ],
}


# The query parameter is read by hand (and documented through openapi_extra): FastAPI's
# parameter machinery is a measurable share of this, the most frequent call.
@router.get(
    "/api/v1/jobs/recordInfo",
    responses=openapi.answers(schemas.TaskAnswer, 429),
    openapi_extra=_TASK_ID_PARAM,
)
async def record_info(request: Request) -> Response:
    """A task's state, progress and results, in kie's recordInfo form."""
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    auth.limit_record(ctx, key)
    task_id = _task_id_param(request)
    if not task_id:
        raise errors.MissingParameter("taskId parameter is required")
    task = await ctx.records.poll(task_id, ctx.store)
    if task is None or task.key_id != key.id:
        raise errors.TaskNotFound()
    base_url = ctx.base_url(request)
    render = partial(_record_body, task, base_url, task.queue_position)
    return envelope.raw(ctx.records.body(task, base_url, render))


def _task_id_param(request: Request) -> str | None:
    """``taskId`` from the query string; the common plain form is read without a full parse
    (Starlette's ``query_params`` costs several microseconds on this, the hottest path)."""
    raw: bytes = request.scope.get("query_string", b"")
    if raw.startswith(b"taskId=") and not any(c in raw for c in b"&%+;"):
        return raw[7:].decode("latin-1")
    return request.query_params.get("taskId")


def _record_body(task: Task | TaskView, base_url: str, position: int | None) -> bytes:
    return envelope.ok_body(task_record(task, base_url=base_url, queue_position=position))


def _param(model: str, raw_input: Any, callback_url: str | None) -> str:
    """kie's double-encoded ``param``: input as a JSON string; keys input, callBackUrl?, model."""
    param: dict[str, Any] = {"input": orjson.dumps(raw_input).decode()}
    if callback_url is not None:
        param["callBackUrl"] = callback_url
    param["model"] = model
    return orjson.dumps(param).decode()


def _check_engine_limits(ctx: Context, spec: ModelSpec, inp: Any) -> None:
    engine = ctx.engines.for_model(spec.id)
    assert engine is not None
    limits = engine.limits
    urls = spec.image_urls(inp)
    if limits.max_input_images is not None and len(urls) > limits.max_input_images:
        field = spec.image_input.field if spec.image_input else "image_urls"
        raise errors.ValidationFailed(
            f"input.{field}: this server's engine for {spec.id} takes at most "
            f"{limits.max_input_images} images"
        )
    wanted = field_value(inp, "max_images", 1) or 1
    if limits.max_outputs is not None and wanted > limits.max_outputs:
        raise errors.ValidationFailed(
            f"input.max_images: this server's engine for {spec.id} returns at most "
            f"{limits.max_outputs} images"
        )


async def _check_image_urls(ctx: Context, spec: ModelSpec, inp: Any) -> None:
    """Refuse now what can be known now (literal private addresses, localhost, own files that
    are gone). This server's own files are read from storage, so their host is not judged."""
    if spec.image_input is None:
        return
    many = spec.image_input.field == "image_urls"
    for index, url in enumerate(spec.image_urls(inp)):
        where = f"input.image_urls[{index}]" if many else f"input.{spec.image_input.field}"
        own = Links.parse(url)
        if own is not None:
            record = await ctx.store.get_file(own.key)
            if record is None or record.deleted_at is not None:
                raise errors.ValidationFailed(
                    f"{where}: no such file on this server (never stored, or deleted by retention)"
                )
            continue
        try:
            netguard.check_url(url, ctx.net_policy)
        except netguard.UrlRefused as exc:
            raise errors.ValidationFailed(f"{where}: {exc.reason}") from exc


async def _callback_url(ctx: Context, value: Any) -> str | None:
    """The callBackUrl, refused when not http(s) or when its host is, or resolves to, a
    refused network (a name that does not resolve yet is kept; delivery checks it again)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise errors.ValidationFailed("callBackUrl: must be a string")
    try:
        await netguard.check_resolved(value, ctx.net_policy, resolver=ctx.resolver)
    except netguard.UrlRefused as exc:
        raise errors.ValidationFailed(f"callBackUrl: {exc.reason}") from exc
    return value


def _refusal(exc: CreateRefused, reserve: Any, balance: Any, cap: int) -> errors.SeedbedError:
    if exc.reason == "open_tasks":
        return errors.RateLimited(
            f"Too many open tasks: this key has {cap} unfinished (limit {cap})", retry_after=1.0
        )
    if exc.reason == "credits":
        return errors.InsufficientCredits(
            f"Credits insufficient: this task needs up to {reserve} credits; "
            f"the balance is {balance}"
        )
    return errors.Unauthorized()
