"""Liveness: the process is up and answering."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from seedbed.api.routing import LeanRoute

__all__ = ["router"]

router = APIRouter(tags=["health"], route_class=LeanRoute)

_OK = b'{"status":"ok"}'


@router.get("/healthz")
async def healthz() -> Response:
    """The process is up (no store access: a cheap, constant answer)."""
    return Response(_OK, media_type="application/json")
