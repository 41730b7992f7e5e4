"""Results and uploads, served from local storage at their unguessable keys.

A link from ``download-url`` carries ``expires`` and ``signature``: such a link is served only
while its signature holds (403 after), and as an attachment.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from seedbed.api.context import context
from seedbed.storage.base import StoredFileNotFound

__all__ = ["router"]

router = APIRouter(tags=["files"])

_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}


@router.get("/files/{key:path}", include_in_schema=False)
async def get_file(request: Request, key: str) -> Response:
    ctx = context(request)
    try:
        path = ctx.storage.path(key)
    except StoredFileNotFound:
        return _answer(404, "Not Found")
    query = request.query_params
    signed = "signature" in query or "expires" in query
    if signed:
        expires = query.get("expires", "")
        valid = expires.isdigit() and ctx.links.signature_valid(
            key, int(expires), query.get("signature", ""), time.time()
        )
        if not valid:
            return _answer(403, "Link expired or invalid")
    if not path.is_file():
        return _answer(404, "Not Found")
    media_type = _TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    headers = {
        # Keys never change content, so clients and proxies may cache them for good; an
        # upload overwritten under the same name is the exception, so uploads revalidate.
        "Cache-Control": "private, max-age=31536000, immutable"
        if key.startswith("results/")
        else "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if signed:
        headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
    return FileResponse(path, media_type=media_type, headers=headers)


def _answer(status: int, msg: str) -> Response:
    body = f'{{"code":{status},"msg":"{msg}","data":null}}'.encode()
    return Response(body, status, media_type="application/json")
