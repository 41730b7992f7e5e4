"""Shapes of the console's and the admin API's answers, for the OpenAPI document only
(as ``api/schemas.py``: the routes build their JSON by hand)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from seedbed.api.schemas import _CODE, _MSG

__all__ = [
    "AdminKeyCreatedAnswer",
    "AdminKeysAnswer",
    "CallbacksAnswer",
    "ConsoleTasksAnswer",
    "DoneAnswer",
    "OverviewAnswer",
    "SwitchesAnswer",
    "UsageAnswer",
    "WorkersAnswer",
]

State = Literal["waiting", "queuing", "generating", "success", "fail"]


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True)


class ConsoleTask(_Doc):
    taskId: str
    model: str
    state: State
    param: str = Field(description="the createTask request as a JSON string (kie's param)")
    progress: int
    creditsConsumed: float
    costTime: int | None
    createTime: int
    completeTime: int | None
    failCode: str | None
    failMsg: str | None
    resultUrls: list[str] = Field(description="full-size results, on success")
    thumbnailUrls: list[str] = Field(description="small renditions (GET .../thumbs/...)")


class ConsoleTasks(_Doc):
    tasks: list[ConsoleTask]
    nextCursor: str | None = Field(description="pass as cursor for the next page; null: last")


class ConsoleTasksAnswer(_Doc):
    """The key's tasks, newest first."""

    code: int = _CODE
    msg: str = _MSG
    data: ConsoleTasks | None


class UsageRow(_Doc):
    day: str = Field(description="UTC day, YYYY-MM-DD")
    model: str
    tasks: int
    succeeded: int
    credits: float


class Usage(_Doc):
    days: int
    rows: list[UsageRow]
    truncated: bool = Field(description="true when only the newest tasks were counted")


class UsageAnswer(_Doc):
    """Tasks and credits by UTC day and model."""

    code: int = _CODE
    msg: str = _MSG
    data: Usage | None


class DoneAnswer(_Doc):
    """An admin action's answer."""

    code: int = _CODE
    msg: str = _MSG
    data: dict[str, Any] | None


class OverviewAnswer(_Doc):
    """Queue depth per model, what ended in the last hour, and the samples behind the charts."""

    code: int = _CODE
    msg: str = _MSG
    data: dict[str, Any] | None


class WorkersAnswer(_Doc):
    """Workers holding leases, this process's engines, and their current tasks."""

    code: int = _CODE
    msg: str = _MSG
    data: dict[str, Any] | None


class AdminKeysAnswer(_Doc):
    """Every key (never the key itself)."""

    code: int = _CODE
    msg: str = _MSG
    data: list[dict[str, Any]] | None


class AdminKeyCreatedAnswer(_Doc):
    """The new key: ``key`` is shown only in this answer."""

    code: int = _CODE
    msg: str = _MSG
    data: dict[str, Any] | None


class SwitchesAnswer(_Doc):
    """Maintenance and each model's switch."""

    code: int = _CODE
    msg: str = _MSG
    data: dict[str, Any] | None


class CallbacksAnswer(_Doc):
    """Outbox rows, newest first."""

    code: int = _CODE
    msg: str = _MSG
    data: list[dict[str, Any]] | None
