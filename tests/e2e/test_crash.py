"""kill -9 the server mid-work: every accepted task still finishes, charged exactly once."""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from pathlib import Path

import httpx
from proc import create_key, server, start_server, stop

from conftest import free_port, run_async
from seedbed.store import open_store

PRICE = Decimal("6.5")  # seedream/4.5-text-to-image


def _states(client: httpx.Client, key: str, ids: list[str]) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    out = {}
    for task_id in ids:
        body = client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers)
        out[task_id] = body.json()["data"]["state"]
    return out


def test_kill_9_while_queued_and_generating_then_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = create_key(data_dir, credits=100)
    port = free_port()
    # Slow sandbox so tasks are caught mid-generation; a long lease proves the restart does
    # not wait for expiry: the new process sees the old one is dead and takes its tasks back.
    settings = {
        "sandbox_step_seconds": 0.4,
        "lease_seconds": 600,
        "worker_concurrency": 2,
        "record_rate_limit": 10_000,
    }
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key['key']}"}
    body = {"model": "seedream/4.5-text-to-image", "input": {"prompt": "survive"}}

    proc = start_server(data_dir, port, **settings)
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
            ids = []
            for _ in range(6):
                created = client.post("/api/v1/jobs/createTask", json=body, headers=headers).json()
                assert created["code"] == 200, created
                ids.append(created["data"]["taskId"])
            deadline = time.monotonic() + 10
            while "generating" not in _states(client, key["key"], ids).values():
                assert time.monotonic() < deadline, "no task started generating"
                time.sleep(0.05)
            before = _states(client, key["key"], ids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    assert "generating" in before.values()
    assert {"waiting", "queuing"} & set(before.values()), before

    with server(data_dir, port, **settings), httpx.Client(base_url=url, trust_env=False) as client:
        deadline = time.monotonic() + 60
        while True:
            states = _states(client, key["key"], ids)
            if all(s == "success" for s in states.values()):
                break
            assert "fail" not in states.values(), states
            assert time.monotonic() < deadline, states
            time.sleep(0.1)
        for task_id in ids:
            data = client.get(
                "/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers
            ).json()["data"]
            assert data["creditsConsumed"] == float(PRICE)
        balance = client.get("/api/v1/chat/credit", headers=headers).json()["data"]
    assert Decimal(str(balance)) == 100 - 6 * PRICE

    async def ledger() -> list[dict[str, object]]:
        store = open_store(f"sqlite:///{data_dir / 'seedbed.db'}")
        await store.open()
        try:
            return await store.ledger(key["id"])
        finally:
            await store.close()

    charges = [row for row in run_async(ledger()) if row["kind"] == "charge"]
    assert sorted(str(row["task_id"]) for row in charges) == sorted(ids)
