"""A client of the kie Market jobs API, for seedbed and for kie.ai itself.

::

    from seedbed.client import Client

    with Client("sb-...", base_url="http://127.0.0.1:8000") as client:
        done = client.generate(
            "seedream/4.5-text-to-image",
            {"prompt": "a red fox in the snow", "aspect_ratio": "16:9"},
            out="images",
        )
        print(done.files)

``Client.for_kie(key)`` talks to kie.ai (its API host and its separate upload host). Every
call's errors are ``seedbed.client.errors`` classes, one per kie ``code``. Importing this
package does not import the server (no FastAPI, no SQLAlchemy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seedbed.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    ConfigError,
    GenerationFailed,
    InsufficientCredits,
    Maintenance,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ResponseError,
    ServerError,
    TaskFailed,
    TaskNotFound,
    TransportError,
    Unauthorized,
    UpstreamTimeout,
    UsageLimitExceeded,
    ValidationError,
    WaitTimeout,
)
from seedbed.client.inputs import INPUT_MODELS, MODELS, prepare_input
from seedbed.client.protocol import (
    DEFAULT_BASE_URL,
    KIE_BASE_URL,
    KIE_UPLOAD_URL,
    NO_RETRY,
    PollSchedule,
    RetryPolicy,
)
from seedbed.client.records import Task, TaskState, UploadedFile
from seedbed.client.sync import Client, Generation, ProgressCallback

if TYPE_CHECKING:
    from seedbed.client.aio import AsyncClient

__all__ = [
    "DEFAULT_BASE_URL",
    "INPUT_MODELS",
    "KIE_BASE_URL",
    "KIE_UPLOAD_URL",
    "MODELS",
    "NO_RETRY",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "ConfigError",
    "Generation",
    "GenerationFailed",
    "InsufficientCredits",
    "Maintenance",
    "ModelUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "PollSchedule",
    "ProgressCallback",
    "RateLimited",
    "ResponseError",
    "RetryPolicy",
    "ServerError",
    "Task",
    "TaskFailed",
    "TaskNotFound",
    "TaskState",
    "TransportError",
    "Unauthorized",
    "UploadedFile",
    "UpstreamTimeout",
    "UsageLimitExceeded",
    "ValidationError",
    "WaitTimeout",
    "prepare_input",
]


def __getattr__(name: str) -> Any:
    # AsyncClient is imported on first use: asyncio is a noticeable share of a CLI's start.
    if name == "AsyncClient":
        from seedbed.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
