"""SIGTERM on a real ``seedbed serve``: nothing is lost, exit 0, the next start finishes the rest.

Also checks the structured logs the process wrote meanwhile (stderr is a file, so JSON).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from proc import SEEDBED, create_key, env, server, server_log, start_server

from conftest import free_port
from receiver import Receiver
from seedbed.outbox import CallbackState
from seedbed.store import open_store
from seedbed.store.base import Store, TaskFilter
from seedbed.tasks import Task, TaskState

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}

pytestmark = pytest.mark.slow

T = TypeVar("T")


def in_store(data_dir: Path, action: Callable[[Store], Awaitable[T]]) -> T:
    """``action(store)`` on the data directory's database (the server has exited)."""

    async def run() -> T:
        store = open_store(f"sqlite:///{(data_dir / 'seedbed.db').resolve()}")
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def tasks_in(data_dir: Path) -> dict[str, Task]:
    found = in_store(data_dir, lambda store: store.list_tasks(TaskFilter(limit=1000)))
    return {task.id: task for task in found}


def create_tasks(url: str, key: str, count: int, task: dict[str, Any] = BODY) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        for _ in range(count):
            body = client.post("/api/v1/jobs/createTask", json=task, headers=headers).json()
            assert body["code"] == 200, body
            ids.append(body["data"]["taskId"])
    return ids


def wait_generating(url: str, key: str, ids: list[str], count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        while time.monotonic() < deadline:
            states = {
                task_id: client.get(
                    "/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers
                ).json()["data"]["state"]
                for task_id in ids
            }
            generating = [t for t, s in states.items() if s == "generating"]
            if len(generating) >= count:
                return generating
            time.sleep(0.05)
    raise AssertionError("tasks did not start generating")


def terminate(proc: subprocess.Popen[bytes]) -> tuple[int, float, list[dict[str, Any]]]:
    """SIGTERM; returns (exit code, seconds to exit, JSON log lines)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    lines = [line for line in server_log(proc).splitlines() if line.strip()]
    if proc.stderr:  # a worker started here with a pipe: read whole above, now done with
        proc.stderr.close()
    return proc.returncode, elapsed, [json.loads(line) for line in lines]


@dataclass
class Stopped:
    """What ``sigterm_while_generating`` saw."""

    ids: list[str]
    running: list[str]
    code: int
    elapsed: float
    logs: list[dict[str, Any]]
    exited: float  # time.time() once the process had exited


def sigterm_while_generating(
    data_dir: Path,
    port: int,
    key: str,
    settings: dict[str, Any],
    count: int,
    generating: int,
    task: dict[str, Any] = BODY,
) -> Stopped:
    """``seedbed serve``; ``count`` tasks; SIGTERM once ``generating`` of them run."""
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data_dir, port, **settings)
    try:
        ids = create_tasks(url, key, count, task)
        running = wait_generating(url, key, ids, generating)
        code, elapsed, logs = terminate(proc)
        return Stopped(ids, running, code, elapsed, logs, time.time())
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_lets_generating_tasks_finish_and_keeps_the_queue(tmp_path: Path) -> None:
    port = free_port()
    key = create_key(tmp_path)
    settings = {
        "sandbox_steps": 4,
        "sandbox_step_seconds": 0.4,
        "worker_concurrency": 2,
        "shutdown_grace_seconds": 8,
    }
    stopped = sigterm_while_generating(tmp_path, port, key["key"], settings, 5, 2)
    ids, running, logs = stopped.ids, stopped.running, stopped.logs
    assert stopped.code == 0
    assert stopped.elapsed < 8  # within the grace period (the two tasks needed about 1.6 s)
    after = tasks_in(tmp_path)
    assert len(after) == 5
    assert {after[t].state for t in running} == {TaskState.SUCCESS}
    rest = [t for t in ids if t not in running]
    assert {after[t].state for t in rest} == {TaskState.WAITING}  # none claimed after SIGTERM

    # structured logs: JSON lines; every line about a task names it and its key; no secrets
    about_tasks = [line for line in logs if "taskId" in line]
    assert {line["taskId"] for line in about_tasks} >= set(running)
    assert all(line["keyId"] == key["id"] for line in about_tasks)
    assert any(line["msg"].startswith("task finished: success") for line in about_tasks)
    assert all(key["key"] not in json.dumps(line) for line in logs)

    with server(tmp_path, port, **{**settings, "sandbox_step_seconds": 0}):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = {task.state for task in tasks_in(tmp_path).values()}
            if states == {TaskState.SUCCESS}:
                break
            time.sleep(0.1)
    assert {task.state for task in tasks_in(tmp_path).values()} == {TaskState.SUCCESS}


def test_sigterm_past_the_grace_period_hands_running_tasks_back(tmp_path: Path) -> None:
    port = free_port()
    key = create_key(tmp_path)
    settings = {
        "sandbox_steps": 10,
        "sandbox_step_seconds": 2,
        "worker_concurrency": 2,
        "shutdown_grace_seconds": 0.5,
    }
    stopped = sigterm_while_generating(tmp_path, port, key["key"], settings, 3, 2)
    running = stopped.running
    assert stopped.code == 0
    assert stopped.elapsed < 8  # grace 0.5 s, then the engines stop at once (a task needs 20 s)
    after = tasks_in(tmp_path)
    for task_id in running:
        task = after[task_id]
        # still open, its lease released: claimable at once, not after the lease would expire
        assert task.state is TaskState.GENERATING and task.lease_expires == 0
        assert task.credits_consumed == 0 and task.fail_code is None

    with server(tmp_path, port, **{**settings, "sandbox_step_seconds": 0}):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if {task.state for task in tasks_in(tmp_path).values()} == {TaskState.SUCCESS}:
                break
            time.sleep(0.1)
    final = tasks_in(tmp_path)
    assert {task.state for task in final.values()} == {TaskState.SUCCESS}
    assert all(final[t].attempts == 2 for t in running)


def test_sigterm_on_a_separate_worker_hands_its_task_back(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = create_key(tmp_path)
    settings = {"sandbox_steps": 10, "sandbox_step_seconds": 2, "shutdown_grace_seconds": 0.5}
    worker = subprocess.Popen(
        [*SEEDBED, "worker", "--data-dir", str(tmp_path)],
        env=env(**settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with server(tmp_path, port, "--no-worker"):
            (task_id,) = create_tasks(url, key["key"], 1)
            wait_generating(url, key["key"], [task_id], 1)
            code, elapsed, logs = terminate(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 0 and elapsed < 8  # grace 0.5 s; the task alone would need 20 s
    task = tasks_in(tmp_path)[task_id]
    assert task.state is TaskState.GENERATING and task.lease_expires == 0
    assert any("handed 1 running task(s) back" in line["msg"] for line in logs)


def test_sigterm_delivers_the_callback_of_a_task_that_ends_in_the_grace_period(
    tmp_path: Path,
) -> None:
    """The task ends during the drain and its (slow) receiver answers after the worker has
    stopped: the dispatcher's flush waits for it, so it is delivered before exit 0, not cut
    off and left for the next start."""
    receiver = Receiver([200], delay=1.5)
    key = create_key(tmp_path)
    settings = {"sandbox_steps": 4, "sandbox_step_seconds": 0.4, "shutdown_grace_seconds": 8}
    task = {**BODY, "callBackUrl": receiver.url}
    try:
        stopped = sigterm_while_generating(tmp_path, free_port(), key["key"], settings, 1, 1, task)
    finally:
        receiver.close()
    assert stopped.code == 0 and stopped.elapsed < 8
    (task_id,) = stopped.ids
    (hit,) = receiver.hits
    assert hit.json["code"] == 200 and hit.json["data"]["taskId"] == task_id
    assert hit.at + receiver.delay <= stopped.exited
    record = in_store(tmp_path, lambda store: store.get_callback(task_id))
    assert record is not None and record.state is CallbackState.DELIVERED and record.attempts == 1
    assert any(line["msg"].startswith("callback for task") for line in stopped.logs)
