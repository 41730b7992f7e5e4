"""What the API answers, as typed values: a task's record and an uploaded file.

Parsing is tolerant in the ways kie's documentation and its real traffic differ (reference
§3.3): ``failCode``/``failMsg`` may be ``null`` or ``""``; ``resultJson`` is ``""`` until
success; ``param`` is a JSON string whose ``input`` is itself a JSON string (double-encoded),
or, in some documented examples, an object; fields added later (``updateTime``,
``creditsConsumed``, seedbed's ``progress`` and ``queuePosition``) may be absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from seedbed.client.errors import ResponseError
from seedbed.tasks import TaskState

__all__ = ["Task", "TaskState", "UploadedFile", "parse_task", "parse_upload"]


@dataclass(frozen=True, kw_only=True)
class Task:
    """recordInfo's ``data`` (also a callback's ``data``, and each events-stream message)."""

    task_id: str
    model: str
    state: TaskState
    #: the create request as the server stores it: a JSON string (see ``request``)
    param: str = ""
    #: ``""`` until success, then a JSON string ``{"resultUrls": [...]}``
    result_json: str = ""
    #: a numeric string such as ``"500"`` once failed; ``None`` otherwise
    fail_code: str | None = None
    fail_msg: str | None = None
    #: whole seconds from create to completion, once finished
    cost_time: int | None = None
    create_time: int | None = None
    complete_time: int | None = None
    update_time: int | None = None
    credits_consumed: Decimal | None = None
    #: seedbed's extension: 0 to 100
    progress: int | None = None
    #: seedbed's extension: tasks ahead of this one while waiting or queuing
    queue_position: int | None = None
    #: the ``data`` object exactly as received
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def result_urls(self) -> list[str]:
        """The result image URLs (empty until success)."""
        if not self.result_json:
            return []
        try:
            result = json.loads(self.result_json)
        except ValueError:
            return []
        urls = result.get("resultUrls") if isinstance(result, dict) else None
        return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []

    @property
    def request(self) -> dict[str, Any]:
        """``param`` decoded (``model``, ``callBackUrl`` if given, ``input``), ``input`` too."""
        try:
            decoded = json.loads(self.param) if self.param else {}
        except ValueError:
            return {}
        if not isinstance(decoded, dict):
            return {}
        inner = decoded.get("input")
        if isinstance(inner, str):
            try:
                decoded["input"] = json.loads(inner)
            except ValueError:
                pass
        return decoded

    @property
    def input(self) -> dict[str, Any]:
        """The ``input`` the task was created with."""
        inner = self.request.get("input")
        return inner if isinstance(inner, dict) else {}


def _text(value: Any) -> str | None:
    """kie's "no value": ``null`` in real traffic, ``""`` in the docs."""
    if value is None or value == "":
        return None
    return str(value)


def _int(value: Any) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        return None


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


def parse_task(data: Any) -> Task:
    """A recordInfo ``data`` object as a ``Task``; ``ResponseError`` when it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("taskId"), str):
        raise ResponseError("the answer has no task record (data.taskId missing)", http_status=200)
    try:
        state = TaskState(str(data.get("state")))
    except ValueError:
        raise ResponseError(f"unknown task state {data.get('state')!r}", http_status=200) from None
    param = data.get("param")
    if isinstance(param, dict):
        param = json.dumps(param)
    result_json = data.get("resultJson")
    if isinstance(result_json, dict):
        result_json = json.dumps(result_json)
    return Task(
        task_id=data["taskId"],
        model=str(data.get("model") or ""),
        state=state,
        param=param if isinstance(param, str) else "",
        result_json=result_json if isinstance(result_json, str) else "",
        fail_code=_text(data.get("failCode")),
        fail_msg=_text(data.get("failMsg")),
        cost_time=_int(data.get("costTime")),
        create_time=_int(data.get("createTime")),
        complete_time=_int(data.get("completeTime")),
        update_time=_int(data.get("updateTime")),
        credits_consumed=_decimal(data.get("creditsConsumed", data.get("consumeCredits"))),
        progress=_int(data.get("progress")),
        queue_position=_int(data.get("queuePosition")),
        raw=data,
    )


@dataclass(frozen=True, kw_only=True)
class UploadedFile:
    """An upload's answer: ``download_url`` is what to put in ``image_urls``."""

    file_name: str
    file_path: str
    download_url: str
    file_size: int | None = None
    mime_type: str | None = None
    uploaded_at: str | None = None


def parse_upload(data: Any) -> UploadedFile:
    """An upload answer's ``data`` as an ``UploadedFile``."""
    if not isinstance(data, dict) or not isinstance(data.get("downloadUrl"), str):
        raise ResponseError("the upload answer has no data.downloadUrl", http_status=200)
    return UploadedFile(
        file_name=str(data.get("fileName") or ""),
        file_path=str(data.get("filePath") or ""),
        download_url=data["downloadUrl"],
        file_size=_int(data.get("fileSize")),
        mime_type=_text(data.get("mimeType")),
        uploaded_at=_text(data.get("uploadedAt")),
    )
