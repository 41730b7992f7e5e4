"""``LeanRoute``: FastAPI documents the route, the endpoint gets the bare ``Request``.

The kie endpoints parse their own input (kie's check order and messages are not FastAPI's),
so FastAPI's per-request parameter and dependency machinery has nothing to do for them; it
was measured at about 40 % of createTask's time. This route class keeps the route in the
OpenAPI document and calls the endpoint with the request directly (FastAPI's documented
extension point: a custom ``APIRoute.get_route_handler``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["LeanRoute"]


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[..., Any] = self.endpoint
        dep = self.dependant
        declared = (
            dep.path_params,
            dep.query_params,
            dep.header_params,
            dep.cookie_params,
            dep.body_params,
            dep.dependencies,
        )
        if any(declared):
            # An endpoint that declares parameters gets FastAPI's full handling.
            return super().get_route_handler()
        takes_request = self.dependant.request_param_name is not None

        async def handler(request: Request) -> Response:
            result: Response = await (endpoint(request) if takes_request else endpoint())
            return result

        return handler
