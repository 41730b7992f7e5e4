"""The key's side of the account: its credit balance."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seedbed.api import auth, envelope, openapi, schemas
from seedbed.api.context import context
from seedbed.api.routing import LeanRoute

__all__ = ["router"]

router = APIRouter(tags=["account"], route_class=LeanRoute)


@router.get(
    "/api/v1/chat/credit",
    responses=openapi.answers(schemas.CreditAnswer),
    openapi_extra=openapi.SECURED,
)
async def credit(request: Request) -> Response:
    """The key's balance: credits available to new tasks (open tasks' holds already deducted).

    Read from the store at each call, never from the key cache: a client that checks its
    balance right after a createTask, or right after a task ended, sees the hold or the charge.
    """
    ctx = context(request)
    key = await auth.authenticate(request, ctx, fresh=True)
    return envelope.ok(envelope.json_number(key.balance))
