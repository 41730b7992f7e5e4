"""A stand-in for ByteDance's Ark images API, written from the documented API (reference §1.11).

``POST /api/v3/images/generations`` with ``Authorization: Bearer <key>``: ``model``,
``prompt``, ``size`` (``"WxH"``), ``seed``, ``image`` (a URL or ``data:`` URL, or a list),
``sequential_image_generation`` with ``sequential_image_generation_options.max_images``,
``guidance_scale``, ``watermark``, ``response_format`` (``url`` or ``b64_json``). The answer is
``{model, created, data: [{url | b64_json, size}], usage}``; errors are
``{"error": {"code", "message"}}`` with a 4xx/5xx status. Images are plain colour fields of the
asked size; ``url`` results are served by the stand-in itself under ``/results/``.

Tests steer it through ``Script``: canned answers served first (``queue``), a latency, how many
images a group generation returns, a size or body override. ``seen`` keeps every request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KEY = "ark-test-key-6f1d2c0b9e8a7f65"

#: Ark's model ids (§1.11) and the total-pixel range each accepts for ``WxH``
MODELS: dict[str, tuple[int, int]] = {
    "seedream-3-0-t2i-250415": (512 * 512, 2048 * 2048),
    "seedream-4-0-250828": (1280 * 720, 4096 * 4096),
    "seedream-4-5-251128": (3_686_400, 16_777_216),
    "seedream-5-0-260128": (3_686_400, 10_404_496),
}

#: the content-refusal codes of §1.11 / the issue; a prompt containing the key triggers it
REFUSALS = {
    "FORBIDDEN-TEXT": "InputTextSensitiveContentDetected",
    "FORBIDDEN-OUTPUT": "OutputImageSensitiveContentDetected",
}


@dataclass
class Canned:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Script:
    #: answers served before any real generation, first in first out
    queue: list[Canned] = field(default_factory=list)
    #: seconds before answering a generation
    latency: float = 0.0
    #: a group generation returns this many images (default: max_images)
    group_images: int | None = None
    #: return images of this size instead of the asked one
    size: tuple[int, int] | None = None
    #: replace the images' bytes (not an image, a bomb, a huge file)
    image_bytes: bytes | None = None
    #: return this many images whatever was asked
    force_images: int | None = None


@dataclass
class Seen:
    path: str
    authorization: str
    body: dict[str, Any]


def canned_json(status: int, body: Any, headers: dict[str, str] | None = None) -> Canned:
    import json

    return Canned(status, json.dumps(body).encode(), headers or {})


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Canned:
    return canned_json(status, {"error": {"code": code, "message": message}}, headers)


def image_png(width: int, height: int, colour: tuple[int, int, int] = (200, 90, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def image_jpeg(width: int, height: int, colour: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "JPEG", quality=80)
    return buf.getvalue()


class ArkStandIn:
    def __init__(self) -> None:
        self.script = Script()
        self.seen: list[Seen] = []
        self.results: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/api/v3/images/generations", self._generate, methods=["POST"]),
                Route("/results/{name}", self._result, methods=["GET"]),
            ]
        )
        self.url = ""

    def generations(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/api/v3/images/generations"]

    async def _generate(self, request: Request) -> Response:
        raw = await request.body()
        try:
            import json

            body = json.loads(raw)
        except ValueError:
            body = {}
        auth = request.headers.get("authorization", "")
        with self._lock:
            self.seen.append(Seen(request.url.path, auth, body))
            canned = self.script.queue.pop(0) if self.script.queue else None
        if auth != f"Bearer {KEY}":
            return _error(401, "AuthenticationError", "The API key in the request is invalid.")
        if canned is not None:
            return Response(canned.body, canned.status, canned.headers, "application/json")
        if self.script.latency:
            await asyncio.sleep(self.script.latency)
        return await asyncio.to_thread(self._answer, body)

    def _answer(self, body: dict[str, Any]) -> Response:
        model = body.get("model")
        if model not in MODELS:
            return _error(404, "InvalidEndpointOrModel.NotFound", f"model {model} not found")
        prompt = str(body.get("prompt") or "")
        for trigger, code in REFUSALS.items():
            if trigger in prompt:
                return _error(
                    400,
                    code,
                    "The request failed because the input text may contain sensitive information.",
                )
        try:
            width, height = (int(v) for v in str(body.get("size", "")).split("x"))
        except ValueError:
            return _error(400, "InvalidParameter", "size must be WxH")
        low, high = MODELS[model]
        if not low <= width * height <= high:
            return _error(400, "InvalidParameter", f"size {width}x{height} out of range")
        count = 1
        if body.get("sequential_image_generation") == "auto":
            options = body.get("sequential_image_generation_options") or {}
            count = int(options.get("max_images", 15))
            if self.script.group_images is not None:
                count = min(count, self.script.group_images)
        if self.script.force_images is not None:
            count = self.script.force_images
        out_w, out_h = self.script.size or (width, height)
        data = []
        for i in range(count):
            blob = self.script.image_bytes
            if blob is None:
                blob = image_jpeg(out_w, out_h, (i * 40 % 255, 120, 200))
            if body.get("response_format") == "b64_json":
                data.append(
                    {"b64_json": base64.b64encode(blob).decode(), "size": f"{out_w}x{out_h}"}
                )
            else:
                name = secrets.token_hex(8) + ".jpeg"
                with self._lock:
                    self.results[name] = blob
                data.append({"url": f"{self.url}/results/{name}", "size": f"{out_w}x{out_h}"})
        return JSONResponse(
            {
                "model": model,
                "created": int(time.time()),
                "data": data,
                "usage": {
                    "generated_images": count,
                    "output_tokens": count * out_w * out_h // 256,
                    "total_tokens": count * out_w * out_h // 256,
                },
            }
        )

    async def _result(self, request: Request) -> Response:
        blob = self.results.get(request.path_params["name"])
        if blob is None:
            return Response(b"not found", 404)
        return Response(blob, 200, media_type="image/jpeg")


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status)


@contextlib.contextmanager
def serve_ark() -> Iterator[ArkStandIn]:
    """The stand-in on a loopback port in a background thread."""
    standin = ArkStandIn()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    standin.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(standin.app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the Ark stand-in did not start")
        time.sleep(0.01)
    try:
        yield standin
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


Factory = Callable[[], bytes]
