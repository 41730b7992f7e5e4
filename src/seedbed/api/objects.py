"""``GET /files/<key>`` when files live in object storage (``storage_url = s3://...``).

Result URLs stay this server's (``/files/results/...``), so any replica answers for any file and
a deployment can move its storage without breaking links. How the bytes reach the client:

* a plain GET of a result (seedbed's own render, stored with its type) is answered with a
  ``307`` to a presigned URL of the store, valid ``s3_presign_seconds`` (``s3_serve =
  "redirect"``, the default): the bytes never pass through the API process;
* otherwise the object is streamed through this server, with the headers ``api/files.py`` sends
  for local files: uploads (their type is sniffed from their first bytes, as for local files,
  and only passive types are served inline), links from ``download-url`` (an attachment), and
  every file with ``s3_serve = "stream"`` (for clients that cannot reach the store).

A presigned URL cannot carry ``Content-Disposition`` or the sandboxing headers, which is why
only results, and only plain GETs, are redirected.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from seedbed.api.context import Context
from seedbed.api.files import _RESULT_TYPES, CONTENT_SECURITY_POLICY, _answer
from seedbed.links import RESULTS
from seedbed.sniff import HEAD_BYTES, OCTET_STREAM, sniff
from seedbed.storage.base import StoredFileNotFound
from seedbed.storage.local import is_valid_key
from seedbed.storage.s3 import S3Storage

__all__ = ["get_object"]


async def get_object(request: Request, ctx: Context, storage: S3Storage, key: str) -> Response:
    if not is_valid_key(key):
        return _answer(404, "Not Found")
    link = ctx.links.check_query(key, request.query_params, time.time())
    if link is False:
        return _answer(403, "Link expired or invalid")
    signed = link is True
    result = key.startswith(RESULTS)
    if result and not signed and ctx.settings.s3_serve == "redirect":
        url = await storage.presigned_url(key, ctx.settings.s3_presign_seconds)
        # the target expires: the redirect itself must not be kept
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    try:
        opened = await storage.open(key)
    except StoredFileNotFound:
        return _answer(404, "Not Found")
    chunks = opened.chunks
    attachment = signed
    if result:
        media_type = _RESULT_TYPES.get(key.rsplit(".", 1)[-1], OCTET_STREAM)
    else:
        # an upload: its type from its first bytes, never its name or the stored type
        head, chunks = await _peek(chunks, HEAD_BYTES + 1)
        found = sniff(head)
        media_type = found.content_type
        attachment = attachment or not found.passive
    headers = {
        # as for local files (api/files.py): results never change, uploads revalidate
        "Cache-Control": "private, max-age=31536000, immutable" if result else "private, no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Content-Length": str(opened.size),
    }
    if attachment:
        headers["Content-Disposition"] = _attachment(key.rsplit("/", 1)[-1])
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


async def _peek(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first ``size`` bytes (fewer if the object is shorter), and all the bytes again."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break

    async def again() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in chunks:
            yield chunk

    return head[:size], again()


def _attachment(name: str) -> str:
    # RFC 6266 as Starlette's FileResponse writes it: filename*=utf-8''... where it must
    quoted = quote(name)
    if quoted != name:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{name}"'
