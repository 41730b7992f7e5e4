"""The key's own endpoints the console needs beyond kie's API: its tasks (the gallery), small
renditions of results (thumbnails) and usage by day and model.

All answer in kie's envelope. The task list is authenticated by the Bearer key; a thumbnail,
like ``/files/results/...``, by the unguessable key of the result it is made from (an
``<img>`` cannot send a header).
"""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter
from PIL import Image, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import Response

from seedbed import errors
from seedbed.api import auth, envelope, openapi
from seedbed.api.context import Context, context
from seedbed.api.routing import LeanRoute
from seedbed.api.views import file_url
from seedbed.console import schemas
from seedbed.links import RESULTS
from seedbed.storage.base import StoredFileNotFound
from seedbed.store.base import TaskFilter
from seedbed.tasks import Task, TaskState

__all__ = ["THUMB_PX", "Thumbnails", "router", "thumb_key"]

router = APIRouter(tags=["console"], route_class=LeanRoute)

#: the longest side of a thumbnail
THUMB_PX = 256
#: gallery pages: at most this many tasks per request
MAX_PAGE = 100
#: usage counts at most this many of the key's newest tasks (pages of MAX_PAGE)
USAGE_MAX_TASKS = 20_000
THUMBS = "thumbs/"

_STATES = {state.value: state for state in TaskState}


def _param(name: str, where: str) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": {"type": "string"}}


@router.get(
    "/api/v1/console/tasks",
    responses=openapi.answers(schemas.ConsoleTasksAnswer, 429),
    openapi_extra={
        **openapi.SECURED,
        "parameters": [
            _param("model", "query"),
            {
                "name": "state",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(_STATES)},
            },
            _param("cursor", "query"),
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            },
        ],
    },
)
async def list_tasks(request: Request) -> Response:
    """The key's tasks, newest first, a page at a time (``nextCursor``), optionally of one
    model and one state: the console's gallery."""
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    auth.limit_record(ctx, key)
    query = request.query_params
    state_text = query.get("state") or None
    if state_text is not None and state_text not in _STATES:
        raise errors.ValidationFailed(f"state must be one of {', '.join(_STATES)}")
    cursor = query.get("cursor") or None
    if cursor is not None and not cursor.isdecimal():
        raise errors.ValidationFailed("cursor must be a nextCursor from an earlier page")
    limit_text = query.get("limit") or "30"
    if not limit_text.isdecimal() or not 1 <= int(limit_text) <= MAX_PAGE:
        raise errors.ValidationFailed(f"limit must be a whole number from 1 to {MAX_PAGE}")
    limit = int(limit_text)
    found = await ctx.store.list_tasks(
        TaskFilter(
            key_id=key.id,
            model=query.get("model") or None,
            state=_STATES[state_text] if state_text else None,
            before=int(cursor) if cursor else None,
            limit=limit,
        )
    )
    base = ctx.base_url(request)
    return envelope.ok(
        {
            "tasks": [_task_json(task, base) for task in found],
            "nextCursor": str(found[-1].seq) if len(found) == limit else None,
        }
    )


def _task_json(task: Task, base: str) -> dict[str, Any]:
    success = task.state is TaskState.SUCCESS
    keys = task.result_keys if success else ()
    return {
        "taskId": task.id,
        "model": task.model,
        "state": task.state.value,
        "param": task.param,
        "progress": task.progress,
        "creditsConsumed": envelope.json_number(task.credits_consumed),
        "costTime": task.cost_time,
        "createTime": task.create_time,
        "completeTime": task.complete_time,
        "failCode": task.fail_code,
        "failMsg": task.fail_msg,
        "resultUrls": [file_url(base, key) for key in keys],
        "thumbnailUrls": [f"{base}/api/v1/console/thumbs/{key}" for key in keys],
    }


@router.get(
    "/api/v1/console/usage",
    responses=openapi.answers(schemas.UsageAnswer, 429),
    openapi_extra={
        **openapi.SECURED,
        "parameters": [
            {
                "name": "days",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 366},
            }
        ],
    },
)
async def usage(request: Request) -> Response:
    """Tasks and credits of the key by UTC day and model, over the last ``days`` (30)."""
    ctx = context(request)
    key = await auth.authenticate(request, ctx)
    auth.limit_record(ctx, key)
    days_text = request.query_params.get("days") or "30"
    if not days_text.isdecimal() or not 1 <= int(days_text) <= 366:
        raise errors.ValidationFailed("days must be a whole number from 1 to 366")
    days = int(days_text)
    since = int((time.time() - days * 86400) * 1000)
    rows: dict[tuple[str, str], list[Any]] = {}
    before: int | None = None
    counted = 0
    truncated = False
    # Pages of the key's newest tasks: the store's own order and cursor, no new query.
    while True:
        page = await ctx.store.list_tasks(
            TaskFilter(key_id=key.id, since=since, before=before, limit=MAX_PAGE)
        )
        for task in page:
            day = datetime.fromtimestamp(task.create_time / 1000, tz=UTC).strftime("%Y-%m-%d")
            row = rows.setdefault((day, task.model), [0, 0, Decimal(0)])
            row[0] += 1
            row[1] += task.state is TaskState.SUCCESS
            row[2] += task.credits_consumed
        counted += len(page)
        if len(page) < MAX_PAGE:
            break
        if counted >= USAGE_MAX_TASKS:
            truncated = True
            break
        before = page[-1].seq
    return envelope.ok(
        {
            "days": days,
            "rows": [
                {
                    "day": day,
                    "model": model,
                    "tasks": n,
                    "succeeded": ok,
                    "credits": envelope.json_number(credits),
                }
                for (day, model), (n, ok, credits) in sorted(rows.items())
            ],
            "truncated": truncated,
        }
    )


def thumb_key(result_key: str) -> str:
    """Where a result's thumbnail is stored: ``thumbs/<the result's name>.webp``."""
    name = result_key[len(RESULTS) :].rsplit(".", 1)[0]
    return f"{THUMBS}{name}.webp"


class Thumbnails:
    """Makes each thumbnail once: stored under ``thumbs/``, read back afterwards; concurrent
    requests for the same one wait for the same rendition."""

    def __init__(self) -> None:
        self._making: dict[str, asyncio.Future[bytes]] = {}

    async def get(self, ctx: Context, result_key: str) -> bytes | None:
        key = thumb_key(result_key)
        try:
            return await ctx.storage.read(key)
        except StoredFileNotFound:
            pass
        pending = self._making.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._making[key] = future
        try:
            try:
                original = await ctx.storage.read(result_key)
            except StoredFileNotFound:
                future.cancel()
                return None
            data = await asyncio.to_thread(_render, original)
            await ctx.storage.put(key, data, "image/webp")
            future.set_result(data)
            return data
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters get it, nobody is warned of it
            raise
        finally:
            del self._making[key]


def _render(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a fraction of the size
        small = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
        small.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "WEBP", quality=80, method=4)
        return out.getvalue()


@router.get(
    "/api/v1/console/thumbs/{key:path}",
    responses={
        200: {
            "description": f"A WebP rendition of a result, at most {THUMB_PX} px a side, made "
            "once and kept under thumbs/ in storage.",
            "content": {"image/webp": {"schema": {"type": "string", "format": "binary"}}},
        },
        404: {"description": "No such result (or it was deleted by retention)."},
    },
    openapi_extra={"parameters": [_param("key", "path")]},
)
async def thumbnail(request: Request) -> Response:
    """A small rendition of a result, for galleries: the result's own key is the credential,
    as for ``/files/results/...``."""
    ctx = context(request)
    key: str = request.path_params["key"]
    if not key.startswith(RESULTS) or "/" in key[len(RESULTS) :] or ".." in key:
        return _not_found()
    record = await ctx.store.get_file(key)
    if record is None or record.deleted_at is not None:
        return _not_found()
    thumbs: Thumbnails = _thumbnails(request)
    try:
        data = await thumbs.get(ctx, key)
    except (OSError, UnidentifiedImageError):
        data = None
    if data is None:
        return _not_found()
    return Response(
        data,
        media_type="image/webp",
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _thumbnails(request: Request) -> Thumbnails:
    found: Thumbnails = request.app.state.console.thumbnails
    return found


def _not_found() -> Response:
    return Response(
        b'{"code":404,"msg":"Not Found","data":null}', 404, media_type="application/json"
    )
