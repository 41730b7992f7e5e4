"""Results and uploads, served from local storage at their unguessable keys.

A link from ``download-url`` carries ``expires`` and ``signature``: such a link is served only
while its signature holds (403 after), and as an attachment.

Uploads may be any file, so nothing they hold may run in a browser as this server's page: an
upload's type is sniffed from its first bytes at each request (``seedbed.sniff``, the same
function that named its ``mimeType``; never the name), and only passive types (images, audio,
video, plain text, JSON) are served as themselves. Anything else (HTML, SVG, XML, PDF, unknown
bytes) goes as an ``application/octet-stream`` attachment. Every answer also carries
``X-Content-Type-Options: nosniff`` (no browser guesses HTML into a text file) and a sandboxing
``Content-Security-Policy`` (were a page rendered anyway, it runs nothing and loads nothing).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from seedbed.api.context import context
from seedbed.links import RESULTS
from seedbed.sniff import HEAD_BYTES, OCTET_STREAM, sniff
from seedbed.storage.base import StoredFileNotFound
from seedbed.storage.s3 import S3Storage

__all__ = ["CONTENT_SECURITY_POLICY", "router"]

router = APIRouter(tags=["files"])

#: what GitHub sends with its raw files: no scripts, no loads, a unique origin
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"

#: results are seedbed's own renders: their extension is their type
_RESULT_TYPES = {
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
    if isinstance(ctx.storage, S3Storage):
        # object storage: redirected to the store or streamed (api/objects.py)
        from seedbed.api.objects import get_object

        return await get_object(request, ctx, ctx.storage, key)
    try:
        # refuses, without touching the disk, any key that could not have been stored:
        # over-long names, '..', control characters (404, as for any other unknown name)
        path = ctx.storage.path(key)
    except StoredFileNotFound:
        return _answer(404, "Not Found")
    link = ctx.links.check_query(key, request.query_params, time.time())
    if link is False:
        return _answer(403, "Link expired or invalid")
    signed = link is True
    attachment = signed
    try:
        if key.startswith(RESULTS):
            if not path.is_file():
                return _answer(404, "Not Found")
            media_type = _RESULT_TYPES.get(path.suffix.lstrip("."), OCTET_STREAM)
        else:
            # a few kB from a local file: cheaper on the loop than a thread hop
            with path.open("rb") as handle:  # a folder or a missing file raises
                head = handle.read(HEAD_BYTES + 1)
            found = sniff(head)
            media_type = found.content_type
            attachment = attachment or not found.passive
    except OSError:
        return _answer(404, "Not Found")
    headers = {
        # Keys never change content, so clients and proxies may cache them for good; an
        # upload overwritten under the same name is the exception, so uploads revalidate.
        "Cache-Control": "private, max-age=31536000, immutable"
        if key.startswith(RESULTS)
        else "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
    return FileResponse(
        path,
        media_type=media_type,
        headers=headers,
        # Starlette writes the name RFC 6266's way (filename*=utf-8''... where it must)
        filename=path.name if attachment else None,
    )


def _answer(status: int, msg: str) -> Response:
    body = f'{{"code":{status},"msg":"{msg}","data":null}}'.encode()
    return Response(body, status, media_type="application/json")
