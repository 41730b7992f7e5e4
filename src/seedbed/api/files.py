"""Result files, served from local storage at their unguessable keys."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from seedbed.api.context import context
from seedbed.storage.base import StoredFileNotFound

__all__ = ["router"]

router = APIRouter(tags=["files"])

_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(request: Request, key: str) -> Response:
    ctx = context(request)
    try:
        path = ctx.storage.path(key)
    except StoredFileNotFound:
        return _not_found()
    if not path.is_file():
        return _not_found()
    media_type = _TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    # Keys never change content, so clients and proxies may cache them for good.
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )


def _not_found() -> Response:
    return Response(
        b'{"code":404,"msg":"Not Found","data":null}', 404, media_type="application/json"
    )
