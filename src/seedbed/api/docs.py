"""``/docs`` (Swagger UI) and ``/redoc`` with their assets served from the package.

FastAPI's own pages load Swagger UI, ReDoc, a favicon and Google Fonts from CDNs, so on a
machine without internet they are blank. These pages are FastAPI's, pointed at copies shipped
in ``docs_assets/`` (swagger-ui-dist, Apache-2.0; redoc, MIT: versions and licences in
``docs/dependencies.md``) and served under ``/docs-assets/<seedbed version>/``. The version in
the path lets browsers keep the files for good and still get new ones after an upgrade.

Each file is read once, on its first request, and kept with its gzip form; nothing here runs
on the API's hot routes.
"""

from __future__ import annotations

import gzip
from importlib import resources

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from seedbed import __version__

__all__ = ["ASSETS_PREFIX", "router"]

#: where the assets are served; the version makes each URL's content fixed
ASSETS_PREFIX = f"/docs-assets/{__version__}"

_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
#: below this, gzip saves less than it costs (the favicon)
_GZIP_MIN_BYTES = 1024

router = APIRouter(include_in_schema=False)

_cache: dict[str, tuple[bytes, bytes | None]] = {}


def _asset(name: str) -> tuple[bytes, bytes | None]:
    """The file's bytes and their gzip form (None where not worth it), read once."""
    cached = _cache.get(name)
    if cached is None:
        content = resources.files("seedbed.api").joinpath("docs_assets", name).read_bytes()
        packed = gzip.compress(content, 6) if len(content) >= _GZIP_MIN_BYTES else None
        cached = _cache[name] = (content, packed)
    return cached


def _openapi_url(request: Request) -> str:
    # root_path: behind a proxy that mounts seedbed under a prefix, the page asks the right URL
    root: str = request.scope.get("root_path", "")
    url: str = request.app.openapi_url
    return root + url


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PREFIX}/favicon.png",
        swagger_ui_parameters={
            # the online validator badge would fetch from validator.swagger.io
            "validatorUrl": None,
            # the bearer key survives a reload of the page
            "persistAuthorization": True,
        },
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_PREFIX}/favicon.png",
        with_google_fonts=False,
    )


@router.get(ASSETS_PREFIX + "/{name}")
async def asset(request: Request, name: str) -> Response:
    media_type = _TYPES.get(name)
    if media_type is None:  # only the files listed: never a path into the package
        raise HTTPException(404)
    content, packed = _asset(name)
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    if packed is not None and "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        content = packed
    return Response(content, media_type=media_type, headers=headers)
