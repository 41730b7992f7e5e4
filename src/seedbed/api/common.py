"""kie's common endpoints: ``POST /api/v1/common/download-url`` (CONTRACT §7)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seedbed import errors
from seedbed.api import auth, envelope, openapi, schemas
from seedbed.api.body import parse_json_object, read_body
from seedbed.api.context import context
from seedbed.api.routing import LeanRoute
from seedbed.links import Links

__all__ = ["router"]

router = APIRouter(tags=["common"], route_class=LeanRoute)

_BODY = {
    **openapi.SECURED,
    **openapi.json_body(
        {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string", "format": "uri"}},
        }
    ),
}

#: kie's words for every URL it did not issue (observed traffic)
URL_IS_WRONG = "url is wrong"


@router.post(
    "/api/v1/common/download-url",
    responses=openapi.answers(schemas.DownloadUrlAnswer, 413),
    openapi_extra=_BODY,
)
async def download_url(request: Request) -> Response:
    """A signed link to one of this key's files (a result or an upload), valid 20 minutes."""
    ctx = context(request)
    raw = await read_body(request, ctx.settings.max_body_bytes)
    key = await auth.authenticate(request, ctx)
    body: dict[str, Any] = parse_json_object(raw)
    url = body.get("url")
    if url is None or url == "":
        raise errors.ValidationFailed("url: is required")
    if not isinstance(url, str):
        raise errors.ValidationFailed("url: must be a string")
    base_url = ctx.base_url(request)
    own = Links.parse(url, origin=base_url)
    now = time.time()
    if own is None:
        raise errors.ValidationFailed(URL_IS_WRONG)
    if own.signature is not None or own.expires is not None:
        # a link issued earlier: only while its signature holds
        signed = own.signature is not None and own.expires is not None
        if not signed or not ctx.links.signature_valid(
            own.key, own.expires or 0, own.signature or "", now
        ):
            raise errors.ValidationFailed(URL_IS_WRONG)
    record = await ctx.store.get_file(own.key)
    if record is None or record.deleted_at is not None or record.key_id != key.id:
        raise errors.ValidationFailed(URL_IS_WRONG)
    expires = int(now) + ctx.settings.download_link_seconds
    return envelope.ok(ctx.links.signed_url(base_url, own.key, expires))
