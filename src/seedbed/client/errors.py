"""The client's exceptions: one per kie ``code``, each carrying ``code`` and ``msg``.

::

    ClientError                         anything this client raises
    ├── ApiError                        the server answered with a kie error ``code``
    │   ├── BadRequest              400 a required parameter is missing (uploads: bad field)
    │   ├── Unauthorized            401 no key, unknown key, revoked key
    │   ├── InsufficientCredits     402 the balance cannot cover the task
    │   ├── NotFound                404 unknown route (or, on kie, "Task not found")
    │   ├── UpstreamTimeout         408 kie: the upstream had no result for 10 minutes
    │   ├── PayloadTooLarge         413 request body over the server's limit
    │   ├── ValidationError         422 unknown model, bad field, bad URL
    │   │   └── TaskNotFound        422 unknown or foreign taskId ("recordInfo is null")
    │   ├── RateLimited             429 request rate or open-task cap (``retry_after``)
    │   ├── UsageLimitExceeded      433 kie: a sub-key's usage limit
    │   ├── Maintenance             455 no new tasks accepted for now
    │   ├── ServerError             500 (and any other 5xx without a code of its own)
    │   ├── GenerationFailed        501
    │   └── ModelUnavailable        505 model disabled or not served here
    ├── TaskFailed                      a task ended ``fail`` (``fail_code``, ``fail_msg``)
    ├── WaitTimeout                     ``wait`` gave up before the task ended
    ├── TransportError                  the server could not be reached or did not answer
    └── ResponseError                   an answer that is not kie's envelope

These are the client's own classes, apart from ``seedbed.errors`` (which the server raises and
turns into answers): a program may run both, and a client error must never reach the server's
error handler as if the server had raised it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seedbed.client.records import Task

__all__ = [
    "ApiError",
    "BadRequest",
    "ClientError",
    "ConfigError",
    "GenerationFailed",
    "InsufficientCredits",
    "Maintenance",
    "ModelUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ResponseError",
    "ServerError",
    "TaskFailed",
    "TaskNotFound",
    "TransportError",
    "Unauthorized",
    "UpstreamTimeout",
    "UsageLimitExceeded",
    "ValidationError",
    "WaitTimeout",
    "error_for",
]


class ClientError(Exception):
    """Root of everything ``seedbed.client`` raises."""


class ConfigError(ClientError, ValueError):
    """The client's configuration is unusable: a config file that is missing (when named),
    unreadable, or holds a key the client does not know (a typo would otherwise be a 401)."""


class ApiError(ClientError):
    """The server answered with a kie error ``code`` and ``msg``."""

    code: int = 0

    def __init__(
        self,
        msg: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.msg = msg
        #: the HTTP status the answer came with (kie sends most errors with 200)
        self.http_status = http_status
        #: seconds the server asked to wait (``Retry-After``), if it said
        self.retry_after = retry_after
        super().__init__(f"{self.code}: {msg}" if msg else str(self.code))


class BadRequest(ApiError):
    code = 400


class Unauthorized(ApiError):
    code = 401


class InsufficientCredits(ApiError):
    code = 402


class NotFound(ApiError):
    code = 404


class UpstreamTimeout(ApiError):
    code = 408


class PayloadTooLarge(ApiError):
    code = 413


class ValidationError(ApiError):
    """422: also raised before sending, when the client's own check of ``input`` fails."""

    code = 422


class TaskNotFound(ValidationError):
    """422 "recordInfo is null": the taskId is unknown or belongs to another key."""


class RateLimited(ApiError):
    code = 429


class UsageLimitExceeded(ApiError):
    code = 433


class Maintenance(ApiError):
    code = 455


class ServerError(ApiError):
    code = 500


class GenerationFailed(ApiError):
    code = 501


class ModelUnavailable(ApiError):
    code = 505


_BY_CODE: dict[int, type[ApiError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        InsufficientCredits,
        NotFound,
        UpstreamTimeout,
        PayloadTooLarge,
        ValidationError,
        RateLimited,
        UsageLimitExceeded,
        Maintenance,
        ServerError,
        GenerationFailed,
        ModelUnavailable,
    )
}

#: how kie (and seedbed) say that a taskId is unknown
_TASK_NOT_FOUND_MSG = "recordInfo is null"


def error_for(
    code: int, msg: str, *, http_status: int | None = None, retry_after: float | None = None
) -> ApiError:
    """The exception for a kie error ``code`` (an unlisted 5xx is a ``ServerError``)."""
    if code == 422 and msg.strip() == _TASK_NOT_FOUND_MSG:
        cls: type[ApiError] = TaskNotFound
    elif code in _BY_CODE:
        cls = _BY_CODE[code]
    elif 500 <= code < 600:
        cls = ServerError
    else:
        cls = ApiError
    return cls(msg, code=code, http_status=http_status, retry_after=retry_after)


class TaskFailed(ClientError):
    """The task ended ``fail``; ``fail_code`` and ``fail_msg`` are what recordInfo showed."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.task_id = task.task_id
        self.fail_code = task.fail_code
        self.fail_msg = task.fail_msg
        super().__init__(f"task {task.task_id} failed ({task.fail_code}): {task.fail_msg}")


class WaitTimeout(ClientError):
    """``wait`` ran out of time; ``last`` is the last state seen (the task may still finish)."""

    def __init__(self, task_id: str, timeout: float, last: Task | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.last = last
        state = last.state.value if last is not None else "unknown"
        super().__init__(f"task {task_id} not finished after {timeout:g} s (state {state})")


class TransportError(ClientError):
    """No answer: connection refused, DNS failure, timeout, broken connection."""

    def __init__(self, msg: str, *, url: str) -> None:
        self.url = url
        super().__init__(msg)


class ResponseError(ClientError):
    """The server answered something that is not kie's envelope (a proxy's HTML page, say)."""

    def __init__(self, msg: str, *, http_status: int) -> None:
        self.http_status = http_status
        super().__init__(msg)
