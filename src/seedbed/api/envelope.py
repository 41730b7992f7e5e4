"""kie's answer envelope ``{"code", "msg", "data"}``, serialised once, fast (orjson).

A refusal tells the metrics middleware its kie ``code`` through the ASGI scope (``KIE_CODE``),
which costs less than reading the body back; a success needs no mark, since its code, 200, is
its HTTP status (``metrics.HttpMetrics`` falls back to the status).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from seedbed import errors

__all__ = ["KIE_CODE", "Coded", "error_response", "json_number", "ok", "ok_body", "raw"]

#: the ASGI scope key where an answer leaves its kie code for the metrics middleware
KIE_CODE = "seedbed.kie_code"

_HTTP_STATUS = {404: 404, 405: 405, 413: 413, 429: 429, 500: 500}


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return json_number(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_number(value: Decimal) -> int | float:
    """Credits as JSON numbers: integers stay integers, like kie's ``5916.25`` or ``100``."""
    return int(value) if value == value.to_integral_value() else float(value)


class Coded(Response):
    """A JSON answer whose kie ``code`` differs from its HTTP status (kie's refusals)."""

    media_type = "application/json"

    def __init__(
        self, content: bytes, status_code: int, code: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(content, status_code, headers)
        self.code = code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[KIE_CODE] = self.code
        await super().__call__(scope, receive, send)


def _response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, default=_default),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def ok(data: Any, msg: str = "success") -> Response:
    return _response({"code": 200, "msg": msg, "data": data}, 200)


def ok_body(data: Any) -> bytes:
    """The serialised success envelope, for answers worth keeping (see ``raw``)."""
    return orjson.dumps({"code": 200, "msg": "success", "data": data}, default=_default)


def raw(body: bytes) -> Response:
    """An envelope serialised earlier."""
    return Response(body, status_code=200, media_type="application/json")


def error_response(exc: errors.SeedbedError, headers: Mapping[str, str] | None = None) -> Response:
    """Business errors travel in ``code`` with HTTP 200, as kie does; a few keep a real status.

    ``headers`` go out with the answer (a 405's ``Allow``, RFC 9110 §15.5.6).
    """
    extra = dict(headers) if headers else None
    if isinstance(exc, errors.RateLimited):
        extra = {**(extra or {}), "Retry-After": str(max(1, round(exc.retry_after + 0.499)))}
    status = _HTTP_STATUS.get(exc.code, 200)
    body = orjson.dumps({"code": exc.code, "msg": exc.msg, "data": None})
    return Coded(body, status, exc.code, extra)
