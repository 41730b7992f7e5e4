"""seedbed's exceptions: one root, each carrying the kie ``code`` it answers with.

::

    SeedbedError                    500  unexpected fault (message never shows internals)
    ├── MissingParameter            400  a required query parameter is absent
    ├── Unauthorized                401  no key, unknown key, revoked key
    ├── InsufficientCredits         402  the balance cannot cover the task's price
    ├── BodyTooLarge                413  request body over the configured limit
    ├── ValidationFailed            422  unknown model, bad field, bad JSON
    │   └── TaskNotFound            422  unknown or foreign taskId ("recordInfo is null")
    ├── RateLimited                 429  request rate or open-task cap (carries Retry-After)
    ├── Maintenance                 455  maintenance mode: no new tasks
    ├── StorageFull                 500  the server cannot store files now (disk full, read-only)
    └── ModelUnavailable            505  model disabled or not served by any engine

Task failures (``failCode`` on a task, not an HTTP answer) are separate: ``TaskFailure`` and
its subclasses are raised inside the worker and recorded on the task.
"""

from __future__ import annotations

__all__ = [
    "BodyTooLarge",
    "EngineFailure",
    "InputImageError",
    "InsufficientCredits",
    "Maintenance",
    "MissingParameter",
    "ModelUnavailable",
    "RateLimited",
    "SeedbedError",
    "StorageFull",
    "TaskFailure",
    "TaskNotFound",
    "Unauthorized",
    "ValidationFailed",
]


class SeedbedError(Exception):
    """Server Error"""

    code: int = 500

    def __init__(self, msg: str | None = None) -> None:
        self.msg = msg if msg is not None else (type(self).__doc__ or "error").strip()
        super().__init__(self.msg)


class MissingParameter(SeedbedError):
    """A required parameter is missing"""

    code = 400


class Unauthorized(SeedbedError):
    """You do not have access permissions"""

    code = 401


class InsufficientCredits(SeedbedError):
    """Credits insufficient"""

    code = 402


class BodyTooLarge(SeedbedError):
    """Request body too large"""

    code = 413


class ValidationFailed(SeedbedError):
    """Validation failed"""

    code = 422


class TaskNotFound(ValidationFailed):
    """recordInfo is null"""


class RateLimited(SeedbedError):
    """Rate limit exceeded"""

    code = 429

    def __init__(self, msg: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class Maintenance(SeedbedError):
    """The service is under maintenance; no new tasks are accepted"""

    code = 455


class StorageFull(SeedbedError):
    """Storage is full: the server cannot store files right now; try again later"""

    code = 500


class ModelUnavailable(SeedbedError):
    """This model is not available on this server"""

    code = 505


class TaskFailure(Exception):
    """A task ended ``fail``: ``fail_code`` and ``fail_msg`` are what recordInfo shows."""

    fail_code: str = "500"

    def __init__(self, fail_msg: str) -> None:
        self.fail_msg = fail_msg
        super().__init__(fail_msg)


class InputImageError(TaskFailure):
    """An input image could not be fetched, was refused, or is not an acceptable image."""

    fail_code = "400"


class EngineFailure(TaskFailure):
    """The engine raised while generating."""

    fail_code = "501"
