"""Callbacks as an operator runs them: server restarts, a separate worker, the CLI."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from proc import SEEDBED, env, run_cli, server, start_server, stop

from conftest import free_port
from receiver import Receiver


def _key_with_hmac(data_dir: Path) -> dict[str, Any]:
    assert run_cli(["init"], data_dir).returncode == 0
    done = run_cli(
        ["keys", "create", "--name", "hooks", "--credits", "100", "--hmac", "--json"], data_dir
    )
    assert done.returncode == 0, done.stderr
    created = dict(json.loads(done.stdout))
    assert len(created["hmacKey"]) >= 40 and created["key"].startswith("sb-")
    return created


def _callbacks(data_dir: Path, *args: str) -> list[dict[str, Any]]:
    done = run_cli(["callbacks", "list", "--json", *args], data_dir)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _attempts(db: Path, task_id: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT attempts FROM callbacks WHERE task_id = ?", (task_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def _create(port: int, key: str, callback: str) -> str:
    body = {"model": "bytedance/seedream", "callBackUrl": callback, "input": {"prompt": "hook"}}
    answer = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/jobs/createTask",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        trust_env=False,
    ).json()
    assert answer["code"] == 200, answer
    return str(answer["data"]["taskId"])


def test_a_pending_callback_survives_a_server_restart(tmp_path: Path) -> None:
    key = _key_with_hmac(tmp_path)
    receiver = Receiver([None, 200], hmac_key=key["hmacKey"])  # the first attempt hangs
    port = free_port()
    settings = {"callback_retry_delays": "0.2,0.2", "callback_poll_seconds": 0.2}
    try:
        proc = start_server(tmp_path, port, **settings)
        try:
            task_id = _create(port, key["key"], receiver.url)
            receiver.wait_for(1)
        finally:
            stop(proc)  # while the attempt is still in flight
        (row,) = _callbacks(tmp_path)
        assert (row["taskId"], row["state"]) == (task_id, "pending")
        with server(tmp_path, port, **settings):
            hits = receiver.wait_for(2)
        assert hits[1].answered == 200 and hits[1].signature_ok
        assert hits[0].body == hits[1].body
        assert hits[1].json["data"]["taskId"] == task_id
        (row,) = _callbacks(tmp_path)
        assert row["state"] == "delivered" and row["lastStatus"] == 200
    finally:
        receiver.close()


def test_dead_letters_are_listed_and_redelivered_with_a_rotated_key(tmp_path: Path) -> None:
    """``serve --no-worker`` + ``seedbed worker``: the callback poll is 60 s, so callbacks that
    arrive within seconds prove the worker process woke the server's dispatcher."""
    key = _key_with_hmac(tmp_path)
    receiver = Receiver([500], hmac_key=key["hmacKey"])
    port = free_port()
    worker = subprocess.Popen(
        [*SEEDBED, "worker", "--data-dir", str(tmp_path), "--allow-network", "127.0.0.0/8"],
        env=env(poll_seconds=0.2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    settings = {"callback_retry_delays": "0.1", "callback_poll_seconds": 60}
    try:
        with server(tmp_path, port, "--no-worker", **settings):
            task_id = _create(port, key["key"], receiver.url)
            receiver.wait_for(2, timeout=15)
            deadline = time.monotonic() + 10
            while not _callbacks(tmp_path, "--dead"):
                assert time.monotonic() < deadline, _callbacks(tmp_path)
                time.sleep(0.1)
            (dead,) = _callbacks(tmp_path, "--dead")
            assert (dead["taskId"], dead["attempts"], dead["lastStatus"]) == (task_id, 2, 500)

            rotated = run_cli(["keys", "rotate-hmac", key["id"], "--json"], tmp_path)
            assert rotated.returncode == 0, rotated.stderr
            new_key = json.loads(rotated.stdout)["hmacKey"]
            assert new_key != key["hmacKey"]
            receiver.hmac_key, receiver.answers = new_key, [500, 500, 200]
            assert run_cli(["callbacks", "redeliver", task_id], tmp_path).returncode == 0
        # the poll is 60 s: the redelivery is picked up by the next server at start
        with server(tmp_path, port, "--no-worker", **settings):
            hits = receiver.wait_for(3)
        assert hits[2].answered == 200 and hits[2].signature_ok
        assert _callbacks(tmp_path, "--dead") == []
        missing = run_cli(["callbacks", "redeliver", "0" * 32], tmp_path)
        assert missing.returncode == 3 and "no callback" in missing.stderr  # refused
        assert run_cli(["keys", "rotate-hmac", "key_nope"], tmp_path).returncode == 3
    finally:
        stop(worker)
        receiver.close()


def test_a_retry_scheduled_before_a_crash_is_sent_after_the_restart(tmp_path: Path) -> None:
    """kill -9 after a failed attempt: the retry lives in the database, not in the process."""
    key = _key_with_hmac(tmp_path)
    receiver = Receiver([503, 200], hmac_key=key["hmacKey"])
    port = free_port()
    settings = {"callback_retry_delays": "4", "callback_poll_seconds": 0.2}
    try:
        proc = start_server(tmp_path, port, **settings)
        try:
            task_id = _create(port, key["key"], receiver.url)
            receiver.wait_for(1)
            deadline = time.monotonic() + 3  # well inside the 4 s (-25 %) retry delay
            while _attempts(tmp_path / "seedbed.db", task_id) != 1:
                assert time.monotonic() < deadline, "the failed attempt was not recorded"
                time.sleep(0.02)
        finally:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        assert len(receiver.hits) == 1
        with server(tmp_path, port, **settings):
            hits = receiver.wait_for(2)
        assert hits[1].answered == 200 and hits[1].signature_ok
        assert hits[1].json["data"]["taskId"] == task_id and hits[0].body == hits[1].body
        (row,) = _callbacks(tmp_path)
        assert (row["state"], row["attempts"]) == ("delivered", 2)
    finally:
        receiver.close()
