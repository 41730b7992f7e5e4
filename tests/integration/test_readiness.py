"""``/readyz`` tells the truth: not ready, naming why, while the worker is not running or the
store or storage cannot take writes; ready again once they can."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import make_settings, serve_in_thread


def _wait_ready(client: httpx.Client, status: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/readyz")
        if answer.status_code == status or time.monotonic() > deadline:
            assert answer.status_code == status, answer.text
            return dict(answer.json())
        time.sleep(0.05)


def test_ready_names_every_check(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, health_check_seconds=0.1)
    with serve_in_thread(settings) as live:
        body = _wait_ready(live.client, 200)
        assert body["checks"] == {
            "store": "ok",
            "storage": "ok",
            "worker": "ok",
            "engines": "ok",
            "queue": "ok",
        }


def test_not_ready_while_the_worker_is_not_running(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, health_check_seconds=0.1)
    with serve_in_thread(settings) as live:
        _wait_ready(live.client, 200)
        ctx = live.app.state.ctx
        # the worker loop ends (as a loop that died would, between its restarts)
        loop = ctx.supervisor.task("worker").get_loop()
        future = asyncio.run_coroutine_threadsafe(ctx.supervisor.stop("worker"), loop)
        future.result(10)
        body = _wait_ready(live.client, 503)
        assert body["checks"]["worker"].startswith("not running"), body


def test_not_ready_while_storage_is_below_its_free_space_floor(tmp_path: Path) -> None:
    # a floor no disk reaches: storage counts as full, and createTask says so
    settings = make_settings(tmp_path, health_check_seconds=0.1, storage_min_free_mb=2**40)
    with serve_in_thread(settings) as live:
        body = _wait_ready(live.client, 503)
        assert "storage is full" in body["checks"]["storage"], body
        key, _ = live.add_key()
        answer = live.create(key, {"model": "seedream/4.5-text-to-image", "input": {"prompt": "x"}})
        assert answer["code"] == 500 and "storage is full" in answer["msg"], answer
