"""The fault matrix: each test injects a real fault into a real ``seedbed serve`` (or worker)
and checks what the API answers and ``/readyz`` says meanwhile, that a log line names the
fault, and that once it clears every accepted task finishes exactly once, charged once.

Mounting a tmpfs needs root: CI runs as root."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from faults_util import (
    IS_ROOT,
    Api,
    all_done,
    cli,
    fill,
    remount,
    serve,
    sqlite_locked,
    tmpfs,
    unfill,
    wait_until,
    worker,
)
from receiver import Receiver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IS_ROOT, reason="mounts a tmpfs: needs root (CI runs as root)"),
]

PRICE = 6.5  # seedream/4.5-text-to-image
CREDITS = 100.0
#: a sandbox slow enough that tasks are mid-flight when the fault comes
SETTINGS = {
    "sandbox_step_seconds": 0.1,
    "worker_concurrency": 2,
    "record_rate_limit": 100_000,
    "create_rate_limit": 100_000,
    "storage_min_free_mb": 0,
    "health_check_seconds": 0.25,
}


def _key(data_dir: Path) -> str:
    created = cli(data_dir, "keys", "create", "--name", "faults", "--credits", "100", "--json")
    return str(created["key"])


@contextlib.contextmanager
def _running(data: Path, port: int, log: Path, *extra: str, **settings: Any) -> Iterator[Api]:
    """A server with a key: its API client, closed with the server at the end."""
    server = serve(data, port, log, *extra, **settings)
    try:
        api = Api(port, _key(data))
        try:
            yield api
        finally:
            api.close()
    finally:
        server.stop()


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


def _charges(db: Path) -> dict[str, int]:
    """Charge entries per task in the credits ledger."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT task_id, COUNT(*) FROM credit_ledger WHERE kind = 'charge' GROUP BY task_id"
        ).fetchall()
    return {task_id: count for task_id, count in rows}


def _assert_each_succeeded_once(api: Api, db: Path, ids: list[str]) -> None:
    wait_until(lambda: all_done(api, ids), 60, what="every accepted task to finish")
    states = api.states(ids)
    assert set(states.values()) == {"success"}, states
    charges = _charges(db)
    assert all(charges.get(task_id) == 1 for task_id in ids), charges
    assert api.balance() == pytest.approx(CREDITS - PRICE * len(ids))


def _not_ready_because(api: Api, check: str) -> str:
    status, body = api.ready()
    assert status == 503, body
    assert body["checks"][check] != "ok", body
    return str(body["checks"][check])


def test_disk_full_while_tasks_run(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with (
        tmpfs(tmp_path / "data", "24m") as data,
        _running(data, free_port(), log, **SETTINGS) as api,
    ):
        ids = [api.create(f"before {i}")["data"]["taskId"] for i in range(4)]
        fill(data)
        # readiness and createTask tell the truth while the disk is full (the database is on
        # the same disk: its check may say so first)
        wait_until(lambda: api.ready()[1]["checks"]["storage"] != "ok", 10, what="not ready")
        assert "full" in _not_ready_because(api, "storage")
        refused = api.create("during")
        assert refused["code"] == 500, refused
        assert "full" in refused["msg"], refused
        time.sleep(1.0)  # tasks meet the full disk and wait, not fail
        assert "fail" not in api.states(ids).values()
        unfill(data)
        wait_until(lambda: api.ready()[0] == 200, 10, what="/readyz to recover")
        ids.append(api.create("after")["data"]["taskId"])
        _assert_each_succeeded_once(api, data / "seedbed.db", ids)
        text = _log(log)
        assert "storage is unhealthy: storage is full" in text.lower(), text[-3000:]
        assert "Traceback" not in text, text[-5000:]


def test_storage_directory_read_only(tmp_path: Path) -> None:
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    serve(data, port, log, **SETTINGS).stop()  # the database; now the files get their own mount
    with tmpfs(data / "files", "64m") as files, _running(data, port, log, **SETTINGS) as api:
        ids = [api.create(f"before {i}")["data"]["taskId"] for i in range(3)]
        remount(files, read_only=True)
        wait_until(lambda: api.ready()[1]["checks"]["storage"] != "ok", 10, what="not ready")
        assert "Read-only file system" in _not_ready_because(api, "storage")
        refused = api.create("during")
        assert refused["code"] == 500 and "Read-only" in refused["msg"], refused
        time.sleep(1.0)
        assert "fail" not in api.states(ids).values()
        remount(files, read_only=False)
        wait_until(lambda: api.ready()[0] == 200, 10, what="/readyz to recover")
        _assert_each_succeeded_once(api, data / "seedbed.db", ids)
        assert "storage is unhealthy: Read-only file system" in _log(log)


def test_database_locked_by_another_process(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    with _running(data, free_port(), log, **SETTINGS) as api:
        ids = [api.create(f"before {i}")["data"]["taskId"] for i in range(3)]
        with sqlite_locked(data / "seedbed.db"):
            wait_until(lambda: api.ready()[1]["checks"]["store"] != "ok", 10, what="not ready")
            assert "waited" in _not_ready_because(api, "store")
            refused = api.create("during")
            assert refused["code"] == 500 and "cannot store tasks" in refused["msg"], refused
            # reads go on: recordInfo answers from the last committed state
            assert "fail" not in api.states(ids).values()
            time.sleep(1.0)
        wait_until(lambda: api.ready()[0] == 200, 15, what="/readyz to recover")
        _assert_each_succeeded_once(api, data / "seedbed.db", ids)
        assert "store is unhealthy" in _log(log)


def test_database_file_deleted(tmp_path: Path) -> None:
    """SQLite would go on writing to the unlinked file and lose it all at the next start:
    the server says not ready and takes no new task, naming the cause."""
    data, log = tmp_path / "data", tmp_path / "server.log"
    with _running(data, free_port(), log, **SETTINGS) as api:
        assert api.create("before")["code"] == 200
        (data / "seedbed.db").rename(tmp_path / "moved.db")
        wait_until(lambda: api.ready()[1]["checks"]["store"] != "ok", 10, what="not ready")
        assert "database file was removed" in _not_ready_because(api, "store")
        refused = api.create("during")
        assert refused["code"] == 500 and "cannot store tasks" in refused["msg"], refused
        # put back (an operator's restore): ready again, tasks taken again
        (tmp_path / "moved.db").rename(data / "seedbed.db")
        wait_until(lambda: api.ready()[0] == 200, 10, what="/readyz to recover")
        assert api.create("after")["code"] == 200
        assert "database file was removed" in _log(log)


def _freeze_outside_a_write(proc: Any, database: Path) -> None:
    """SIGSTOP ``proc`` at a moment it holds no SQLite write lock: frozen inside a write it
    would lock every other process out of the database until resumed (SQLite's one writer),
    which is not what a test of leases is about."""
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=0.5)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.rollback()
            return
        except sqlite3.OperationalError:  # locked by the frozen process: let it commit
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
    raise AssertionError("the worker held the database's write lock every time it was frozen")


def test_worker_stopped_past_its_lease(tmp_path: Path) -> None:
    """A worker frozen with SIGSTOP loses its tasks to another worker; resumed, it neither
    stores nor charges them a second time."""
    data, port = tmp_path / "data", free_port()
    settings = {**SETTINGS, "lease_seconds": 2, "sandbox_step_seconds": 0.3}
    with _running(data, port, tmp_path / "server.log", "--no-worker", **settings) as api:
        first = worker(data, tmp_path / "w1.log", **settings)
        try:
            ids = [api.create(f"task {i}")["data"]["taskId"] for i in range(2)]
            wait_until(lambda: "generating" in api.states(ids).values(), 20, first, "generating")
            _freeze_outside_a_write(first.proc, data / "seedbed.db")
            second = worker(data, tmp_path / "w2.log", **settings)
            try:
                wait_until(lambda: all_done(api, ids), 30, second, "the second worker to finish")
                first.proc.send_signal(signal.SIGCONT)
                time.sleep(2.0)  # the first worker wakes, ends its step, and is refused
                _assert_each_succeeded_once(api, data / "seedbed.db", ids)
                results = sorted((data / "files" / "results").iterdir())
                # one result per task on disk: the resumed worker dropped its own
                assert len(results) == len(ids), results
            finally:
                second.stop()
        finally:
            first.proc.send_signal(signal.SIGCONT)
            first.stop()


def test_callback_receiver_down_through_the_whole_schedule(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    down = free_port()  # nothing listens here until the receiver comes back
    settings = {**SETTINGS, "callback_retry_delays": "0.2,0.2,0.2"}
    with _running(data, free_port(), log, **settings) as api:
        hook = f"http://127.0.0.1:{down}/hook"
        task_id = api.create("callback", callBackUrl=hook)["data"]["taskId"]
        wait_until(lambda: all_done(api, [task_id]), 20, what="the task")
        assert api.ready()[0] == 200  # a receiver's outage is not the server's

        def dead() -> bool:
            rows = cli(data, "callbacks", "list", "--dead", "--json")
            return any(row["taskId"] == task_id for row in rows)

        wait_until(dead, 20, what="the callback to be a dead letter")
        assert "dead" in _log(log).lower()
        # the receiver is back: the operator redelivers the dead letter, and it arrives once
        receiver = Receiver(port=down)
        try:
            cli(data, "callbacks", "redeliver", task_id)
            hits = receiver.wait_for(1, timeout=20)
            assert hits[0].json["data"]["taskId"] == task_id
            time.sleep(0.5)
            assert len(receiver.hits) == 1
        finally:
            receiver.close()
        assert _charges(data / "seedbed.db") == {task_id: 1}


def test_data_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """The database holds webhook HMAC keys: under umask 022 nothing in the data directory
    may be readable by other users (directory 0700, files 0600)."""
    data, log = tmp_path / "data", tmp_path / "server.log"
    old = os.umask(0o022)
    try:
        with _running(data, free_port(), log, **SETTINGS) as api:
            task_id = api.create("private")["data"]["taskId"]
            wait_until(lambda: all_done(api, [task_id]), 20, what="the task")
            uploaded = api.client.post(
                "/api/file-base64-upload",
                json={"base64Data": "data:text/plain;base64,aGVsbG8=", "uploadPath": "docs"},
            ).json()
            assert uploaded["code"] == 200, uploaded
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "seedbed.db" for p in files) and any("results" in p.parts for p in files)
    loose = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert all(mode == "0o600" for mode in loose.values()), loose
    dirs = {
        str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in data.rglob("*")
        if p.is_dir()
    }
    assert all(mode == "0o700" for mode in dirs.values()), dirs
