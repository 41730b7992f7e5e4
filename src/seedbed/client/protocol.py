"""Everything ``Client`` and ``AsyncClient`` share that does no I/O.

Requests are built and answers read here, once, so the sync and async clients differ only in
how they send and sleep: the envelope, the error mapping, the retry and polling schedules,
the events-stream parser and the names of downloaded files.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import mimetypes
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx

from seedbed.client.errors import (
    ApiError,
    ResponseError,
    TransportError,
    error_for,
)
from seedbed.client.records import Task, parse_task

__all__ = [
    "DEFAULT_BASE_URL",
    "KIE_BASE_URL",
    "KIE_UPLOAD_URL",
    "NO_RETRY",
    "STREAM_IDLE",
    "Endpoint",
    "PollSchedule",
    "ProgressTracker",
    "RetryPolicy",
    "SseEvent",
    "SseParser",
    "auth_headers",
    "balance",
    "base64_payload",
    "create_body",
    "created_task_id",
    "event_headers",
    "file_name_for",
    "guess_mime",
    "idempotency_key",
    "is_event_stream",
    "is_full_record",
    "join",
    "parse_retry_after",
    "read_source",
    "stream_timeout",
    "task_from_event",
    "transport_error",
    "unwrap",
    "upload_fields",
    "upload_kind",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
KIE_BASE_URL = "https://api.kie.ai"
#: kie serves uploads from another host (reference §5.3)
KIE_UPLOAD_URL = "https://kieai.redpandaai.co"


class Endpoint:
    """The API's paths (CONTRACT §3 to §9)."""

    CREATE = "/api/v1/jobs/createTask"
    RECORD = "/api/v1/jobs/recordInfo"
    CANCEL = "/api/v1/jobs/cancelTask"
    EVENTS = "/api/v1/jobs/events"
    CREDIT = "/api/v1/chat/credit"
    DOWNLOAD_URL = "/api/v1/common/download-url"
    UPLOAD_STREAM = "/api/file-stream-upload"
    UPLOAD_BASE64 = "/api/file-base64-upload"
    UPLOAD_URL = "/api/file-url-upload"


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    Retried: rate limits (429), maintenance (455) and server faults (500, 502, 503, 504), with
    exponential backoff and jitter, or the ``Retry-After`` the server gave; transport failures
    (connection refused, timeouts) a few times only, so that a server that is down is reported
    quickly. Never retried: 401, 402, 422 and the other answers that would not change.
    createTask carries an ``Idempotency-Key``, so a retry after a lost answer creates nothing
    new on a server that honours it.
    """

    #: retries after the first attempt, for answers with a retryable code
    attempts: int = 5
    #: retries after the first attempt, for transport failures
    transport_attempts: int = 2
    initial: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    #: each delay is stretched by up to this fraction, so that clients do not retry in step
    jitter: float = 0.1
    retry_codes: frozenset[int] = frozenset({429, 455, 500, 502, 503, 504})

    def should_retry(self, exc: Exception, attempt: int) -> bool:
        """Whether the ``attempt``-th retry (0-based) may follow ``exc``."""
        if isinstance(exc, ApiError):
            return exc.code in self.retry_codes and attempt < self.attempts
        if isinstance(exc, TransportError):
            return attempt < self.transport_attempts
        return False

    def delay(self, exc: Exception, attempt: int) -> float:
        """Seconds to sleep before the ``attempt``-th retry (0-based)."""
        retry_after = exc.retry_after if isinstance(exc, ApiError) else None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        base = min(self.initial * self.multiplier**attempt, self.max_delay)
        return base * (1 + random.uniform(0, self.jitter))


#: no retries at all (tests of a single answer; callers with their own policy)
NO_RETRY = RetryPolicy(attempts=0, transport_attempts=0)


@dataclass(frozen=True, kw_only=True)
class PollSchedule:
    """How often ``wait`` asks recordInfo when the server has no events stream.

    kie recommends every 2-3 s for the first 30 s, every 5-10 s up to 2 minutes, then every
    15-30 s (reference §3.4). The first polls come sooner (from ``initial``, growing by
    ``multiplier``: 0.1, 0.15, 0.23, ... s) so that a task that takes a second is seen within
    a tenth or two of finishing; that is 10 polls in the first 3 s, within the 10 a second
    kie allows per key, and 2-3 s apart from 5 s on.
    """

    initial: float = 0.1
    multiplier: float = 1.5
    #: (until this many seconds since the wait began, shortest delay, longest delay)
    bands: tuple[tuple[float, float, float], ...] = (
        (30.0, 0.0, 3.0),
        (120.0, 5.0, 10.0),
        (math.inf, 15.0, 30.0),
    )

    def next_delay(self, previous: float | None, elapsed: float) -> float:
        delay = self.initial if previous is None else previous * self.multiplier
        for until, shortest, longest in self.bands:
            if elapsed < until:
                return min(max(delay, shortest), longest)
        return delay


def idempotency_key() -> str:
    """A fresh key for one logical createTask (kept across its retries)."""
    return uuid.uuid4().hex


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def unwrap(response: httpx.Response) -> Any:
    """The ``data`` of a kie envelope; the matching ``ApiError`` for an error ``code``.

    kie answers business errors with HTTP 200 and the real status in ``code``; some answers
    (an unknown route, a rate limit, a body too large) carry a real HTTP status as well. The
    message is ``msg``, or ``message`` as some of kie's documented examples have it.
    """
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        if status != 200:
            reason = response.reason_phrase or "error"
            raise error_for(status, f"HTTP {status} {reason}", http_status=status)
        raise ResponseError(
            f"not a kie answer from {response.request.url} (no JSON envelope)", http_status=status
        )
    code: int = body["code"]
    if code == 200 and body.get("success", True) is not False:
        return body.get("data")
    message = body.get("msg")
    if not isinstance(message, str):
        message = body.get("message") if isinstance(body.get("message"), str) else ""
    raise error_for(code, str(message), http_status=status, retry_after=retry_after)


def transport_error(exc: httpx.HTTPError, url: str) -> TransportError:
    """One line saying why ``url`` gave no answer."""
    origin = _origin(url)
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc) or "connection failed"
        if "refused" in reason.lower() or "errno 111" in reason.lower():
            reason = "connection refused"
        return TransportError(f"cannot reach {origin}: {reason}", url=url)
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{origin} did not answer in time ({type(exc).__name__})", url=url)
    return TransportError(f"{origin}: {type(exc).__name__}: {exc}", url=url)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


# -- the events stream (Server-Sent Events) --------------------------------------------------
@dataclass(frozen=True)
class SseEvent:
    data: str
    event: str = "message"
    id: str | None = None


@dataclass
class SseParser:
    """The SSE wire format, line by line (WHATWG HTML, "event stream interpretation")."""

    last_event_id: str | None = None
    _data: list[str] = field(default_factory=list)
    _event: str = ""

    def feed(self, line: str) -> SseEvent | None:
        """One line without its terminator; an event when a blank line completes one."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent("\n".join(self._data), self._event or "message", self.last_event_id)
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None


def task_from_event(event: SseEvent) -> Task | None:
    """The task record an events-stream message carries (bare or in an envelope), if any."""
    try:
        payload = json.loads(event.data)
    except ValueError:
        return None
    if (
        isinstance(payload, dict)
        and "taskId" not in payload
        and isinstance(payload.get("data"), dict)
    ):
        payload = payload["data"]
    if not isinstance(payload, dict) or "taskId" not in payload:
        return None
    try:
        return parse_task(payload)
    except ResponseError:
        return None


def is_full_record(task: Task) -> bool:
    """Whether an event carried the whole record (else ``wait`` asks recordInfo for it)."""
    return "resultJson" in task.raw and "param" in task.raw


def balance(data: Any) -> Decimal:
    """credit's ``data``: a number (kie's balances have decimals: ``5916.25``)."""
    if isinstance(data, bool) or not isinstance(data, int | float | str):
        raise ResponseError(f"the balance is not a number: {data!r}", http_status=200)
    try:
        return Decimal(str(data))
    except ArithmeticError:
        raise ResponseError(f"the balance is not a number: {data!r}", http_status=200) from None


def is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith(
        "text/event-stream"
    )


# -- files ------------------------------------------------------------------------------------
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
_KNOWN_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def file_name_for(task_id: str, index: int, url: str, content_type: str | None) -> str:
    """``<taskId>_<n><ext>``: the extension from the URL's path, else from the content type."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    if suffix not in _KNOWN_SUFFIXES:
        kind = (content_type or "").split(";")[0].strip().lower()
        suffix = _EXTENSIONS.get(kind) or mimetypes.guess_extension(kind) or ".bin"
    return f"{task_id}_{index}{suffix}"


def guess_mime(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def base64_payload(data: str | bytes) -> str:
    """``base64Data``: bytes are encoded; text (plain or a ``data:`` URI) is sent as it is."""
    if isinstance(data, bytes):
        return base64.b64encode(data).decode("ascii")
    return data


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def join(base: str, path: str) -> str:
    return base.rstrip("/") + path


def upload_fields(upload_path: str, file_name: str | None) -> dict[str, str]:
    fields = {"uploadPath": upload_path.strip("/")}
    if file_name:
        fields["fileName"] = file_name
    return fields


def read_source(source: str | Path | bytes) -> tuple[bytes, str]:
    """A local file's bytes and name (or bytes as given, named ``upload``)."""
    if isinstance(source, bytes):
        return source, "upload"
    path = Path(source)
    return path.read_bytes(), path.name


def create_body(model: str, input: dict[str, Any], callback_url: str | None) -> dict[str, Any]:
    """createTask's body: ``{"model", "callBackUrl"?, "input"}``."""
    body: dict[str, Any] = {"model": model, "input": input}
    if callback_url:
        body["callBackUrl"] = callback_url
    return body


def created_task_id(data: Any) -> str:
    """The ``taskId`` of createTask's ``data``."""
    if not isinstance(data, dict) or not isinstance(data.get("taskId"), str):
        raise ResponseError("createTask answered without data.taskId", http_status=200)
    return str(data["taskId"])


def upload_kind(source: str | Path | bytes) -> str:
    """Which upload endpoint ``source`` goes to: ``url``, ``base64`` or ``file``."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        return "url"
    if isinstance(source, str) and source.startswith("data:"):
        return "base64"
    if isinstance(source, str) and not Path(source).is_file():
        raise ValueError(
            f"{source[:80]!r} is not a URL, a data: URI or a file; "
            "for plain base64 text call upload_base64"
        )
    return "file"


def event_headers(api_key: str | None, last_event_id: str | None) -> dict[str, str]:
    """Headers of an events-stream request, resuming after ``last_event_id`` when known."""
    headers = {**auth_headers(api_key), "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


#: an events stream silent this long (no event, no heartbeat) is reconnected
STREAM_IDLE = 30.0


def stream_timeout(remaining: float) -> httpx.Timeout:
    return httpx.Timeout(max(0.001, min(STREAM_IDLE, remaining)))


class ProgressTracker:
    """Calls ``on_progress`` when a task's state, progress or queue position changes."""

    def __init__(self, on_progress: Callable[[Task], None] | None) -> None:
        self._on_progress = on_progress
        self.last: Task | None = None

    def seen(self, task: Task) -> None:
        previous, self.last = self.last, task
        if self._on_progress is None:
            return
        if previous is None or _progress_of(previous) != _progress_of(task):
            self._on_progress(task)


def _progress_of(task: Task) -> tuple[Any, ...]:
    return (task.state, task.progress, task.queue_position)
