"""A stand-in for kie.ai: an ASGI app answering with real kie bodies (``kie_recorded``).

It plays both of kie's hosts (the API and the upload host): under ``httpx.ASGITransport``
every host reaches this app, so a client can be pointed at ``https://api.kie.ai`` and
``https://kieai.redpandaai.co`` unchanged while nothing leaves the process; ``requests`` keeps
what arrived (host, path, headers, body) for the tests to check.

``extensions=True`` adds what seedbed has beyond kie, in the shape CONTRACT §9 gives it:
``cancelTask`` and the events stream (Server-Sent Events carrying the recordInfo ``data``).
Without it those routes are unknown, answered with a real HTTP 404 as kie does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import kie_recorded as rec

KEY = "kie-test-key"
T2I_ID = "f400b7ea65483c2f983d61fdaeeceea8"
I2I_ID = "ce18826cf06d8aaca05c28048f3dae6f"
DOCUMENTED_ID = "task_12345678"
FAILED_ID = "bd8f0e58d58a6cb69e5c6a55170398da"
#: kie's JSON content type in the recordings
KIE_JSON = "application/json;charset=UTF-8"


def png(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 90)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Seen:
    method: str
    host: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class KieStandIn:
    extensions: bool = False
    #: answers served, in order, before the normal ones: (status, body, headers)
    script: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    #: polls of a task before its recorded success is shown
    polls_before_success: int = 2
    #: the events stream drops after its first event on the first connection
    drop_events_once: bool = False
    #: events carry only taskId, state and progress (not the whole record)
    partial_events: bool = False
    #: result URLs point at this app's /r/ route instead of kie's file host (for clients that
    #: reach it over real loopback HTTP, where kie's host must never be contacted)
    local_results: bool = False
    _polls: dict[str, int] = field(default_factory=dict)
    _canceled: set[str] = field(default_factory=set)

    def app(self) -> Starlette:
        routes = [
            Route("/api/v1/jobs/createTask", self.create_task, methods=["POST"]),
            Route("/api/v1/jobs/recordInfo", self.record_info),
            Route("/api/v1/chat/credit", self.credit),
            Route("/api/v1/common/download-url", self.download_url, methods=["POST"]),
            Route("/api/file-stream-upload", self.upload_stream, methods=["POST"]),
            Route("/api/file-base64-upload", self.upload_base64, methods=["POST"]),
            Route("/api/file-url-upload", self.upload_url, methods=["POST"]),
            Route("/r/{name}", self.result_file),
        ]
        if self.extensions:
            routes += [
                Route("/api/v1/jobs/cancelTask", self.cancel_task, methods=["POST"]),
                Route("/api/v1/jobs/events", self.events),
            ]
        routes.append(Route("/{path:path}", self.unknown, methods=["GET", "POST"]))
        return Starlette(routes=routes)

    # -- plumbing --------------------------------------------------------------------------
    async def _seen(self, request: Request) -> Response | None:
        body = await request.body()
        self.requests.append(
            Seen(
                method=request.method,
                host=request.headers.get("host", ""),
                path=request.url.path,
                query=request.url.query,
                headers=dict(request.headers),
                body=body,
            )
        )
        if self.script:
            status, text, headers = self.script.pop(0)
            return Response(text, status, headers=headers, media_type=KIE_JSON)
        return None

    @staticmethod
    def _json(text: str) -> Response:
        return Response(text, 200, media_type=KIE_JSON)

    @staticmethod
    def _authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {KEY}"

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    # -- the jobs API ----------------------------------------------------------------------
    async def create_task(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        if not self._authorized(request):
            return self._json(rec.UNAUTHORIZED)
        body = json.loads(self.requests[-1].body)
        if "image_urls" in body.get("input", {}):
            return self._json(rec.CREATE_I2I)
        return self._json(rec.CREATE_T2I)

    def _record(self, task_id: str) -> str | None:
        polls = self._polls.get(task_id, 0)
        self._polls[task_id] = polls + 1
        done = polls >= self.polls_before_success
        if task_id == T2I_ID:
            if task_id in self._canceled:
                return _canceled(rec.RECORD_T2I_GENERATING)
            return rec.RECORD_T2I_SUCCESS if done else rec.RECORD_T2I_GENERATING
        if task_id == I2I_ID:
            return rec.RECORD_I2I_SUCCESS if done else rec.RECORD_I2I_GENERATING
        if task_id == DOCUMENTED_ID:
            return rec.RECORD_DOCUMENTED
        if task_id == FAILED_ID:
            return json.dumps(
                {"code": 200, "msg": "success", "data": json.loads(rec.CALLBACK_FAIL)["data"]}
            )
        return None

    async def record_info(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        if not self._authorized(request):
            return self._json(rec.UNAUTHORIZED)
        task_id = request.query_params.get("taskId")
        if not task_id:
            return self._json(rec.MISSING_TASK_ID)
        found = self._record(task_id)
        if found is not None and self.local_results:
            here = str(request.base_url).rstrip("/")
            found = found.replace("https://tempfile.aiquickdraw.com", here)
        return self._json(found if found is not None else rec.RECORD_NULL)

    async def credit(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        if not self._authorized(request):
            return self._json(rec.UNAUTHORIZED)
        return self._json(rec.CREDIT)

    async def download_url(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        url = json.loads(self.requests[-1].body).get("url", "")
        if url.startswith("https://tempfile.aiquickdraw.com/"):
            signed = url + "?token=signed-for-20-minutes"
            return self._json(json.dumps({"code": 200, "msg": "success", "data": signed}))
        return self._json(rec.DOWNLOAD_URL_WRONG)

    async def result_file(self, request: Request) -> Response:
        await self._seen(request)
        return Response(png(), 200, media_type="image/png")

    # -- uploads (kie's other host) --------------------------------------------------------
    async def upload_stream(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        form = await _form(request, self.requests[-1].body)
        if not form.get("uploadPath"):
            return Response(rec.UPLOAD_MISSING_PATH, 200, media_type="application/json")
        return Response(rec.UPLOAD_STREAM, 200, media_type="application/json")

    async def upload_base64(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        body = json.loads(self.requests[-1].body)
        if not body.get("uploadPath"):
            return Response(rec.UPLOAD_MISSING_PATH, 200, media_type="application/json")
        return Response(rec.UPLOAD_BASE64, 200, media_type="application/json")

    async def upload_url(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        answer = json.loads(rec.UPLOAD_BASE64)
        answer["data"]["fileName"] = "from-url.png"
        return Response(json.dumps(answer), 200, media_type="application/json")

    async def unknown(self, request: Request) -> Response:
        """kie answers an unknown route with a real HTTP 404 (reference §6.1)."""
        await self._seen(request)
        return Response('{"code":404,"msg":"Not Found","data":null}', 404, media_type=KIE_JSON)

    # -- seedbed's extensions (CONTRACT §9) ------------------------------------------------
    async def cancel_task(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        task_id = json.loads(self.requests[-1].body).get("taskId")
        if task_id != T2I_ID:
            return self._json(rec.RECORD_NULL)
        self._canceled.add(task_id)
        return self._json(_canceled(rec.RECORD_T2I_GENERATING))

    async def events(self, request: Request) -> Response:
        if (early := await self._seen(request)) is not None:
            return early
        task_id = request.query_params.get("taskId")
        if task_id != T2I_ID:
            return self._json(rec.RECORD_NULL)
        after = int(request.headers.get("last-event-id", "0"))
        drop = self.drop_events_once and after == 0
        self.drop_events_once = False
        stream = _event_stream(after, drop, self.partial_events)
        return StreamingResponse(stream, media_type="text/event-stream")


def _canceled(record: str) -> str:
    answer = json.loads(record)
    answer["data"].update(state="fail", failCode="400", failMsg="canceled", costTime=1)
    return json.dumps(answer)


def _with_progress(record: str, progress: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record)["data"]
    data["progress"] = progress
    return data


async def _event_stream(after: int, drop: bool, partial: bool) -> AsyncIterator[bytes]:
    """Events 1..3: generating 30 %, generating 70 %, success; a heartbeat comment first."""
    events = [
        _with_progress(rec.RECORD_T2I_GENERATING, 30),
        _with_progress(rec.RECORD_T2I_GENERATING, 70),
        _with_progress(rec.RECORD_T2I_SUCCESS, 100),
    ]
    yield b": heartbeat\n\n"
    for number, data in enumerate(events, start=1):
        if number <= after:
            continue
        if partial:
            data = {k: data[k] for k in ("taskId", "state", "progress")}
        payload = json.dumps(data)
        yield f"id: {number}\nevent: state\ndata: {payload}\n\n".encode()
        await asyncio.sleep(0)
        if drop:
            return


async def _form(request: Request, body: bytes) -> dict[str, str]:
    """The text fields of a multipart body already read by ``_seen``."""
    fields: dict[str, str] = {}
    boundary = request.headers.get("content-type", "").partition("boundary=")[2].encode()
    for part in body.split(b"--" + boundary):
        head, _, value = part.partition(b"\r\n\r\n")
        if b'name="' in head and b"filename=" not in head:
            name = head.split(b'name="')[1].split(b'"')[0].decode()
            fields[name] = value.rstrip(b"\r\n").decode()
    return fields


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server on 127.0.0.1 (for the sync client); yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("stand-in did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
