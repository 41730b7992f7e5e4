"""How a task is shown to clients: recordInfo's ``data`` and the callback's body, one place."""

from __future__ import annotations

from typing import Any

import orjson

from seedbed.api.envelope import json_number
from seedbed.tasks import Task, TaskState, TaskView

__all__ = [
    "CALLBACK_FAILURE_MSG",
    "CALLBACK_SUCCESS_MSG",
    "callback_body",
    "file_url",
    "task_fields",
    "task_record",
]

#: kie's callback ``msg`` strings, exactly (kie-api-reference §4.1)
CALLBACK_SUCCESS_MSG = "Playground task completed successfully."
CALLBACK_FAILURE_MSG = "Playground task failed."


def file_url(base_url: str, key: str) -> str:
    return f"{base_url}/files/{key}"


def task_fields(task: Task | TaskView, *, base_url: str) -> dict[str, Any]:
    """The fields recordInfo and callbacks share, in the order kie's real traffic has them."""
    result_json = ""
    if task.state is TaskState.SUCCESS:
        urls = [file_url(base_url, key) for key in task.result_keys]
        result_json = orjson.dumps({"resultUrls": urls}).decode()
    return {
        "taskId": task.id,
        "model": task.model,
        "state": task.state.value,
        "param": task.param,
        "resultJson": result_json,
        "failCode": task.fail_code,
        "failMsg": task.fail_msg,
        "costTime": task.cost_time,
        "completeTime": task.complete_time,
        "createTime": task.create_time,
        "updateTime": task.update_time,
        "creditsConsumed": json_number(task.credits_consumed),
    }


def task_record(
    task: Task | TaskView, *, base_url: str, queue_position: int | None
) -> dict[str, Any]:
    """recordInfo ``data`` in the form kie's real traffic has (CONTRACT §4)."""
    record = task_fields(task, base_url=base_url)
    record["progress"] = task.progress
    record["queuePosition"] = queue_position
    return record


def callback_body(task: Task, *, base_url: str) -> bytes:
    """The JSON a finished task's ``callBackUrl`` receives (CONTRACT §5): the same values
    recordInfo gives, in kie's callback envelope; the same bytes on every attempt."""
    if not task.state.is_terminal:
        raise ValueError("only a finished task has a callback")
    success = task.state is TaskState.SUCCESS
    return orjson.dumps(
        {
            "code": 200 if success else 501,
            "msg": CALLBACK_SUCCESS_MSG if success else CALLBACK_FAILURE_MSG,
            "data": task_fields(task, base_url=base_url),
        }
    )
