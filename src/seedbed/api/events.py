"""``GET /api/v1/jobs/events?taskId=T``: a task's state and progress as Server-Sent Events.

Each event's ``data`` is the task's recordInfo ``data``; its ``event`` is ``state`` when the
state moved (and for the first event) or ``progress`` when only the progress did; its ``id`` is
``feed.version`` of the snapshot, so a client that reconnects with ``Last-Event-ID`` gets only
what it has not seen. Progress-only events are sent at most every ``PROGRESS_INTERVAL``
(coalesced: the latest wins); state events are never held back. The stream ends after the
terminal event; a reconnect after it answers 204, which tells an ``EventSource`` to stop.
Idle streams get a comment line every ``events_heartbeat_seconds``, so proxies keep them open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from seedbed import errors
from seedbed.api import auth, openapi, schemas
from seedbed.api.context import Context, context
from seedbed.api.routing import LeanRoute
from seedbed.api.views import task_record
from seedbed.feed import Subscription, version
from seedbed.tasks import Task, TaskState

__all__ = ["PROGRESS_INTERVAL", "router"]

router = APIRouter(tags=["jobs"], route_class=LeanRoute)

#: at most two progress events a second per stream
PROGRESS_INTERVAL = 0.5
#: what an EventSource waits before reconnecting, in ms
RETRY_MS = 2000

_PARAMS = {
    **openapi.SECURED,
    "parameters": [
        {"name": "taskId", "in": "query", "required": True, "schema": {"type": "string"}},
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
    ],
}
_ANSWERS = openapi.answers(schemas.ErrorAnswer, 429)
_ANSWERS[200] = {
    "model": schemas.ErrorAnswer,
    "description": "The task's events; a refusal (bad key, no such task) is kie's JSON "
    "envelope instead, with HTTP 200 as kie answers.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_ANSWERS[204] = {"description": "The task had ended and the client saw its last event."}


@router.get("/api/v1/jobs/events", responses=_ANSWERS, openapi_extra=_PARAMS)
async def task_events(request: Request) -> Response:
    """Follow one task live; ends after its terminal event."""
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    auth.limit_record(ctx, key)
    task_id = request.query_params.get("taskId")
    if not task_id:
        raise errors.MissingParameter("taskId parameter is required")
    task = await ctx.store.get_task(task_id)
    if task is None or task.key_id != key.id:
        raise errors.TaskNotFound()
    seen = _last_event_id(request)
    if task.state.is_terminal and version(task) <= seen:
        return Response(status_code=204)  # the client has the end already: stop reconnecting
    subscription = ctx.feed.subscribe(task)
    return StreamingResponse(
        _stream(ctx, subscription, seen, ctx.base_url(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _last_event_id(request: Request) -> int:
    text = request.headers.get("last-event-id", "").strip()
    return int(text) if text.isdecimal() else -1


async def _stream(
    ctx: Context, sub: Subscription, seen: int, base_url: str
) -> AsyncIterator[bytes]:
    heartbeat = ctx.settings.events_heartbeat_seconds
    ctx.metrics.event_streams.inc()
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        sent_state: TaskState | None = None
        progress_sent_at = -float("inf")
        while True:
            task = sub.latest
            if version(task) > seen:
                state_moved = task.state is not sent_state
                wait = progress_sent_at + PROGRESS_INTERVAL - time.monotonic()
                if state_moved or wait <= 0:
                    yield await _event(ctx, task, base_url, "state" if state_moved else "progress")
                    seen, sent_state = version(task), task.state
                    progress_sent_at = time.monotonic()
                    if task.state.is_terminal:
                        return
                    continue
                # Throttled: wait out the interval, unless the state moves meanwhile.
                timeout = wait
            else:
                timeout = heartbeat
            if sub.closed:
                return
            sub.changed.clear()
            if await _wait(sub.changed, timeout):
                continue
            if version(sub.latest) <= seen:
                yield b": keep-alive\n\n"
    finally:
        ctx.metrics.event_streams.dec()
        sub.close()


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
            return True
    return False


async def _event(ctx: Context, task: Task, base_url: str, kind: str) -> bytes:
    position = await ctx.queue_position(task)
    data = orjson.dumps(task_record(task, base_url=base_url, queue_position=position))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (version(task), kind.encode(), data)
