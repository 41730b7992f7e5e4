"""How a task is shown to clients: recordInfo's ``data`` (and, later, callbacks' ``data``)."""

from __future__ import annotations

from typing import Any

import orjson

from seedbed.api.envelope import json_number
from seedbed.tasks import Task, TaskState

__all__ = ["file_url", "task_record"]


def file_url(base_url: str, key: str) -> str:
    return f"{base_url}/files/{key}"


def task_record(task: Task, *, base_url: str, queue_position: int | None) -> dict[str, Any]:
    """recordInfo ``data`` in the form kie's real traffic has (CONTRACT §4)."""
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
        "progress": task.progress,
        "queuePosition": queue_position,
    }
