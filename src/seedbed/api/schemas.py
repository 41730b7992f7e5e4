"""The shapes of seedbed's answers, for the OpenAPI document only.

The routes build their JSON by hand (orjson, answers kept in memory: see ``api/jobs.py``), so
nothing here validates or serialises a request or an answer at run time. These models exist
so that ``/openapi.json`` says what each endpoint answers; the tests check real answers
against the document, so the two cannot drift apart unnoticed.

kie answers business errors with HTTP 200 and the error in ``code`` (``data`` null), so every
envelope's ``data`` may be null and ``code`` is any kie code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CreditAnswer",
    "DownloadUrlAnswer",
    "ErrorAnswer",
    "Health",
    "InputImages",
    "ModelInfo",
    "ModelsAnswer",
    "Prices",
    "Readiness",
    "ReadinessChecks",
    "TaskAnswer",
    "TaskCreated",
    "TaskCreatedAnswer",
    "TaskRecord",
    "UploadAnswer",
    "UploadedFile",
]

_CODE = Field(
    description="200 on success; otherwise kie's error code: 400 missing parameter, 401 bad "
    "key, 402 credits insufficient, 413 body too large, 422 validation failed or no such task, "
    "429 rate limited, 455 maintenance, 500 server error, 505 model unavailable"
)
_MSG = Field(description='"success", or what went wrong')


class _Doc(BaseModel):
    # documentation only: no instance is ever built on a request
    model_config = ConfigDict(frozen=True)


class ErrorAnswer(_Doc):
    """A refusal: kie's envelope with ``data`` null."""

    code: int = _CODE
    msg: str = _MSG
    data: None = None


class TaskCreated(_Doc):
    taskId: str = Field(description="32 hex characters; poll it with recordInfo")
    recordId: str = Field(description="the same as taskId (kie sends both)")


class TaskCreatedAnswer(_Doc):
    """createTask's answer."""

    code: int = _CODE
    msg: str = _MSG
    data: TaskCreated | None


class TaskRecord(_Doc):
    """A task as recordInfo shows it (CONTRACT §4)."""

    taskId: str
    model: str
    state: Literal["waiting", "queuing", "generating", "success", "fail"]
    param: str = Field(description="the createTask request as a JSON string")
    resultJson: str = Field(description='on success a JSON string {"resultUrls": [...]}, else ""')
    failCode: str | None
    failMsg: str | None
    costTime: int | None = Field(description="whole seconds from create to completion")
    completeTime: int | None = Field(description="Unix milliseconds")
    createTime: int = Field(description="Unix milliseconds")
    updateTime: int = Field(description="Unix milliseconds")
    creditsConsumed: float
    progress: int = Field(description="extension: 0 to 100")
    queuePosition: int | None = Field(
        description="extension: tasks ahead while waiting or queuing, else null"
    )


class TaskAnswer(_Doc):
    """recordInfo's (and cancelTask's) answer."""

    code: int = _CODE
    msg: str = _MSG
    data: TaskRecord | None


class CreditAnswer(_Doc):
    """The key's balance."""

    code: int = _CODE
    msg: str = _MSG
    data: float | None = Field(description="credits available to new tasks")


class DownloadUrlAnswer(_Doc):
    """A signed link, valid 20 minutes."""

    code: int = _CODE
    msg: str = _MSG
    data: str | None


class Prices(_Doc):
    perOutput: dict[str, float] = Field(description="credits per output image, by size tier")
    perExtraInputImage: float
    unit: Literal["image", "layer"]


class InputImages(_Doc):
    field: str
    maxItems: int
    maxBytes: int
    formats: list[str]


class ModelInfo(_Doc):
    id: str
    title: str
    family: str
    capability: Literal["text-to-image", "edit", "layer-decomposition"]
    enabled: bool
    engine: str | None
    served: bool = Field(description="enabled and run by one of this server's engines")
    prices: Prices
    inputImages: InputImages | None
    inputSchema: dict[str, Any] = Field(description="the JSON Schema of createTask's input")


class ModelsAnswer(_Doc):
    """The catalogue."""

    code: int = _CODE
    msg: str = _MSG
    data: list[ModelInfo] | None


class UploadedFile(_Doc):
    success: bool
    fileName: str
    filePath: str
    downloadUrl: str = Field(description="put it in a task's image_urls")
    fileSize: int
    mimeType: str
    uploadedAt: str = Field(description="ISO 8601, UTC")


class UploadAnswer(_Doc):
    """The upload API's own envelope: ``success`` beside ``code``; no ``data`` on a refusal."""

    success: bool
    code: int = _CODE
    msg: str = _MSG
    data: UploadedFile | None = None


class Health(_Doc):
    status: Literal["ok"]


class ReadinessChecks(_Doc):
    store: str = Field(description='"ok" or "unreachable"')
    engines: str = Field(description='"ok" or "none configured"')
    queue: str = Field(description='"ok" or "<n> queued (limit <m>)"')


class Readiness(_Doc):
    status: Literal["ready", "not ready"]
    checks: ReadinessChecks
    queued: int
