"""kill -9 the server while a task is in post-processing (issue 18): after a restart the task
runs again, is charged once, and its result is stored once."""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from proc import create_key, server, start_server, stop

from conftest import free_port

BODY = {"model": "seedream/5-lite-text-to-image", "input": {"prompt": "a lake", "quality": "ultra"}}


def _record(client: httpx.Client, key: str, task_id: str) -> dict[str, Any]:
    body = client.get(
        "/api/v1/jobs/recordInfo",
        params={"taskId": task_id},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    return dict(body["data"])


def test_kill_9_during_post_processing_then_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = create_key(data_dir, credits=100)["key"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The sandbox's steps hold the device slot and report 25, 50, 75, 99; its drawing and
    # encoding are post-processing. A 4K PNG at zlib's level 9 takes seconds: a wide window
    # in which the task is generating at 99 %, its pictures made, nothing stored yet.
    slow = {
        "sandbox_step_seconds": 0.3,  # steps apart by more than progress writes are
        "png_compress_level": 9,
        "lease_seconds": 600,
        "record_rate_limit": 10_000,
    }
    proc = start_server(data_dir, port, **slow)
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
            created = client.post(
                "/api/v1/jobs/createTask", json=BODY, headers={"Authorization": f"Bearer {key}"}
            ).json()
            assert created["code"] == 200, created
            task_id = created["data"]["taskId"]
            deadline = time.monotonic() + 20
            while (record := _record(client, key, task_id))["progress"] < 99:
                assert record["state"] in ("waiting", "queuing", "generating"), record
                assert time.monotonic() < deadline, record
                time.sleep(0.02)
        assert record["state"] == "generating"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    results = data_dir / "files" / "results"
    # nothing stored before the kill: at most the file begun for the result while it was
    # encoded (its name made ahead), still empty
    begun = list(results.iterdir()) if results.exists() else []
    assert len(begun) <= 1 and all(path.stat().st_size == 0 for path in begun), begun

    # restarted (the fast PNG level): the new process takes the dead one's task back at once
    with (
        server(data_dir, port, lease_seconds=600, record_rate_limit=10_000),
        httpx.Client(base_url=url, trust_env=False, timeout=10) as client,
    ):
        deadline = time.monotonic() + 60
        while (record := _record(client, key, task_id))["state"] != "success":
            assert record["state"] != "fail", record
            assert time.monotonic() < deadline, record
            time.sleep(0.1)
        balance = client.get(
            "/api/v1/chat/credit", headers={"Authorization": f"Bearer {key}"}
        ).json()["data"]
    charged = Decimal(str(record["creditsConsumed"]))
    assert charged > 0 and Decimal(str(balance)) == 100 - charged
    # the result is stored once: the attempt after the restart deleted what the dead one began
    (stored,) = results.iterdir()
    assert stored.stat().st_size > 0 and stored.name in str(record["resultJson"])
