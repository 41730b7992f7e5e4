"""The console's pages and static assets.

Every page (``/``, ``/gallery``, ``/account``, ``/admin``) is the same small HTML shell; its
JavaScript modules draw the page for the path. The assets are plain files in ``static/``
(ES2020 modules and one stylesheet, no build step), served under
``/console/static/<version>/`` where the version is a hash of all of them: a URL's content
never changes, so browsers keep them for a year, and a new release is a new URL. The shell
itself is never cached.

Each page carries a strict Content-Security-Policy (scripts and styles from this origin
only: nothing inline, no ``eval``), no framing, no referrer, no MIME sniffing. The console sets
no cookie: the API key lives in the tab's ``sessionStorage`` and travels as a Bearer header,
so there is nothing for a cross-site request to ride on.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from functools import cache

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CONTENT_SECURITY_POLICY", "PAGES", "SECURITY_HEADERS", "assets", "router"]

router = APIRouter(include_in_schema=False)

#: the paths that answer the console's shell
PAGES = ("/", "/gallery", "/account", "/admin")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}


@dataclass(frozen=True)
class Assets:
    version: str
    files: dict[str, bytes]
    shell: bytes


@cache
def assets() -> Assets:
    """The static files, read once from the installed package."""
    root = importlib.resources.files("seedbed.console") / "static"
    files = {
        item.name: item.read_bytes()
        for item in root.iterdir()
        if item.is_file() and "." + item.name.rsplit(".", 1)[-1] in _TYPES
    }
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    version = digest.hexdigest()[:12]
    shell = files.pop("index.html").replace(b"{{static}}", f"/console/static/{version}".encode())
    return Assets(version=version, files=files, shell=shell)


async def page(request: Request) -> Response:
    return Response(
        assets().shell,
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


for _path in PAGES:
    router.add_api_route(_path, page, methods=["GET"], include_in_schema=False)


@router.get("/console/static/{version}/{name}", include_in_schema=False)
async def static(request: Request) -> Response:
    found = assets()
    name = request.path_params["name"]
    data = found.files.get(name)
    if data is None:
        return Response(b"Not Found", 404, media_type="text/plain")
    fresh = request.path_params["version"] == found.version
    return Response(
        data,
        media_type=_TYPES["." + name.rsplit(".", 1)[-1]],
        headers={
            "X-Content-Type-Options": "nosniff",
            # an old version's URL gets today's file, which must not be kept under it
            "Cache-Control": "public, max-age=31536000, immutable" if fresh else "no-cache",
        },
    )
