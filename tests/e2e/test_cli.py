"""The admin CLI and the separate worker process, driven as an operator would."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from proc import SEEDBED, create_key, env, run_cli, server, stop

from conftest import free_port


def test_keys_create_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    assert run_cli(["init"], tmp_path).returncode == 0
    done = run_cli(["keys", "create", "--name", "alice", "--credits", "12.5"], tmp_path)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("sb-") and len(key) > 40
    listed = run_cli(["keys", "list", "--json"], tmp_path)
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["alice"]
    assert rows[0]["balance"] == "12.5"
    assert key not in listed.stdout  # only hashes are stored


def test_keys_json_credits_revoke_and_switches(tmp_path: Path) -> None:
    created = create_key(tmp_path, credits=5)
    assert set(created) >= {"key", "id", "name", "balance", "limits"}
    added = run_cli(["credits", "add", created["id"], "2.25"], tmp_path)
    assert added.returncode == 0 and added.stdout.strip() == "7.25"
    assert run_cli(["credits", "add", "key_nope", "1"], tmp_path).returncode == 3  # refused
    bad = run_cli(["credits", "add", created["id"], "lots"], tmp_path)
    assert bad.returncode == 2 and "must be a number" in bad.stderr  # usage
    assert run_cli(["keys", "revoke", created["id"]], tmp_path).returncode == 0
    assert run_cli(["maintenance", "on"], tmp_path).returncode == 0
    assert run_cli(["models", "disable", "seedream/4.5-edit"], tmp_path).returncode == 0
    unknown = run_cli(["models", "disable", "seedream/9"], tmp_path)
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr
    models = json.loads(run_cli(["models", "list", "--json"], tmp_path).stdout)
    disabled = [m["id"] for m in models if not m["enabled"]]
    assert disabled == ["seedream/4.5-edit"]


def test_admin_changes_reach_a_running_server_at_once(tmp_path: Path) -> None:
    """The CLI announces each change to the server (a datagram on this host): its cache of
    keys and switches, kept here for an hour, is dropped before the next request."""
    port = free_port()
    key = create_key(tmp_path, credits=100)
    headers = {"Authorization": f"Bearer {key['key']}"}
    body = {"model": "seedream/4.5-text-to-image", "input": {"prompt": "x"}}
    url = f"http://127.0.0.1:{port}"
    with (
        server(tmp_path, port, admin_refresh_seconds=3600),
        httpx.Client(base_url=url, trust_env=False) as client,
    ):

        def code() -> int:
            return int(
                client.post("/api/v1/jobs/createTask", json=body, headers=headers).json()["code"]
            )

        def cli(*args: str) -> None:
            done = run_cli(args, tmp_path)
            assert done.returncode == 0, done.stderr

        assert code() == 200
        cli("maintenance", "on")
        assert code() == 455
        cli("maintenance", "off")
        assert code() == 200
        cli("models", "disable", "seedream/4.5-text-to-image")
        assert code() == 505
        cli("models", "enable", "seedream/4.5-text-to-image")
        assert code() == 200
        cli("keys", "revoke", key["id"])
        assert code() == 401


@contextmanager
def worker_process(data_dir: Path, **settings: Any) -> Iterator[None]:
    """``seedbed worker`` in a subprocess, once it listens for wake-ups."""
    worker = subprocess.Popen(
        [*SEEDBED, "worker", "--data-dir", str(data_dir)],
        env=env(**settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not list((data_dir / "run").glob("*.sock")):
            assert time.monotonic() < deadline, "worker never listened"
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.05)
        yield
    finally:
        stop(worker)


def test_separate_worker_process_is_woken_by_notification(tmp_path: Path) -> None:
    """``serve --no-worker`` + ``seedbed worker``: the worker polls only every 60 s, so a task
    finishing within seconds proves it was woken by the create notification."""
    port = free_port()
    key = create_key(tmp_path, credits=100)
    headers = {"Authorization": f"Bearer {key['key']}"}
    with (
        worker_process(tmp_path, poll_seconds=60),
        server(tmp_path, port, "--no-worker"),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        body = {"model": "bytedance/seedream", "input": {"prompt": "elsewhere"}}
        created = client.post("/api/v1/jobs/createTask", json=body, headers=headers).json()
        task_id = created["data"]["taskId"]
        deadline = time.monotonic() + 10
        while True:
            data = client.get(
                "/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers
            ).json()["data"]
            if data["state"] == "success":
                break
            assert time.monotonic() < deadline, data
            time.sleep(0.05)


def test_a_worker_process_tells_the_servers_live_events_at_once(tmp_path: Path) -> None:
    """SQLite, ``serve --no-worker`` + ``seedbed worker``: the server's feed reads tasks that
    other processes changed only every 30 s here, so events within seconds of each change
    prove the worker process told the server (a datagram with the task's id)."""
    port = free_port()
    key = create_key(tmp_path, credits=100)
    headers = {"Authorization": f"Bearer {key['key']}"}
    with (
        worker_process(tmp_path, sandbox_step_seconds=0.3),
        server(tmp_path, port, "--no-worker", events_poll_seconds=30),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        body = {"model": "bytedance/seedream", "input": {"prompt": "told at once"}}
        created = client.post("/api/v1/jobs/createTask", json=body, headers=headers).json()
        task_id = created["data"]["taskId"]
        started = time.monotonic()
        states: list[str] = []
        with client.stream(
            "GET", "/api/v1/jobs/events", params={"taskId": task_id}, headers=headers, timeout=20
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    states.append(json.loads(line[5:])["state"])
                    if states[-1] in ("success", "fail"):
                        break
        assert states[-1] == "success", states
        assert "generating" in states, states  # each change told, not only the last
        assert time.monotonic() - started < 10, "events waited for the feed's 30 s poll"


def test_tasks_list_get_and_stats(tmp_path: Path) -> None:
    port = free_port()
    key = create_key(tmp_path, credits=100)
    headers = {"Authorization": f"Bearer {key['key']}"}
    body = {"model": "bytedance/seedream", "input": {"prompt": "x", "image_size": "square"}}
    with server(tmp_path, port, "--no-worker"):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            ids = [
                client.post("/api/v1/jobs/createTask", json=body, headers=headers).json()["data"][
                    "taskId"
                ]
                for _ in range(3)
            ]
            client.post("/api/v1/jobs/cancelTask", json={"taskId": ids[0]}, headers=headers)

    listed = run_cli(["tasks", "list", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["taskId"] for r in rows] == ids[::-1]  # newest first
    waiting = json.loads(
        run_cli(["tasks", "list", "--state", "waiting", "--json"], tmp_path).stdout
    )
    assert {r["taskId"] for r in waiting} == set(ids[1:])
    failed = run_cli(
        ["tasks", "list", "--state", "fail", "--key", key["id"], "--since", "1h", "--json"],
        tmp_path,
    )
    assert [r["taskId"] for r in json.loads(failed.stdout)] == [ids[0]]
    other_model = run_cli(["tasks", "list", "--model", "seedream/4.5-edit", "--json"], tmp_path)
    assert json.loads(other_model.stdout) == []
    assert run_cli(["tasks", "list", "--state", "lost"], tmp_path).returncode == 2
    assert run_cli(["tasks", "list", "--since", "yesterday"], tmp_path).returncode == 2
    table = run_cli(["tasks", "list"], tmp_path)
    assert table.returncode == 0 and ids[0] in table.stdout

    got = run_cli(["tasks", "get", ids[0], "--json"], tmp_path)
    shown = json.loads(got.stdout)
    assert shown["state"] == "fail" and shown["failMsg"] == "canceled"
    assert shown["keyId"] == key["id"] and shown["model"] == "bytedance/seedream"
    assert run_cli(["tasks", "get", ids[0]], tmp_path).returncode == 0
    missing = run_cli(["tasks", "get", "0" * 32], tmp_path)
    assert missing.returncode == 3 and "no task" in missing.stderr

    stats = json.loads(run_cli(["stats", "--json"], tmp_path).stdout)
    assert stats["open"] == {"waiting": 2}
    assert stats["queueDepth"] == 2 and stats["queueByModel"] == {"bytedance/seedream": 2}
    assert stats["finished"] == {"fail": 1} and stats["failuresByCode"] == {"400": 1}
    assert stats["throughputPerHour"] == 1.0
    text = run_cli(["stats", "--since", "30m"], tmp_path)
    assert text.returncode == 0 and "queue depth" in text.stdout
