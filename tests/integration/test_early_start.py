"""An idle worker takes a task in its very create (SQLite): the task is stored already
generating and leased to it, and its engine is handed the job before the create commits, so
the device runs while the commit does. A create refused after that leaves nothing behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from conftest import LiveServer, make_settings, serve_in_thread
from seedbed.engines import Engines
from seedbed.engines.base import EngineJob, Pictures, ProgressFn
from seedbed.engines.sandbox import SandboxEngine

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}


class RecordingSandbox(SandboxEngine):
    """The sandbox, noting each job it was handed and whether it ended canceled."""

    def __init__(self) -> None:
        super().__init__(steps=10, step_seconds=0.05)
        self.runs: dict[str, bool] = {}
        self.ended = threading.Condition()

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        try:
            return super().run(job, progress, cancel)
        finally:
            with self.ended:
                self.runs[job.task_id] = cancel.is_set()
                self.ended.notify_all()


def _idle(live: LiveServer) -> None:
    """Wait until the worker waits for work with its slot free (it has just started)."""
    worker = live.app.state.ctx.worker
    deadline = time.monotonic() + 10
    while not worker.wakeup.waiting_ready:
        assert time.monotonic() < deadline, "the worker never became idle"
        time.sleep(0.01)


def _store(live: LiveServer, fn: Any) -> Any:
    return live.store_call(fn)


def test_an_idle_worker_takes_the_task_in_its_create(tmp_path: Path) -> None:
    engine = RecordingSandbox()
    with serve_in_thread(make_settings(tmp_path), engines=Engines([engine])) as live:
        key, _ = live.add_key(credits=100)
        _idle(live)
        task_id = live.create(key, BODY)["data"]["taskId"]
        # stored as its worker's: leased, generating, on its first attempt, before any claim
        stored = _store(live, lambda store: store.get_task(task_id))
        assert stored.lease_owner == live.app.state.ctx.worker.worker_id
        assert stored.attempts == 1 and stored.state.value in ("generating", "success")
        done = live.wait(key, task_id)
        assert done["state"] == "success" and len(done["resultJson"]) > 0
        assert engine.runs == {task_id: False}
        assert _store(live, lambda store: store.get_task(task_id)).attempts == 1


def test_a_create_refused_after_its_worker_began_leaves_nothing(tmp_path: Path) -> None:
    """The key's cached balance covers the task, the database's does not (spent elsewhere a
    moment ago): the worker was handed the job before the create's commit refused it. Its
    generation is canceled; no task, no engine record, no file, no credit moves; the worker
    takes the next task as ever."""
    engine = RecordingSandbox()
    settings = make_settings(tmp_path, admin_refresh_seconds=3600.0)
    with serve_in_thread(settings, engines=Engines([engine])) as live:
        key, key_id = live.add_key(credits=100)
        assert live.record(key, "0" * 32)["code"] != 401  # the key is read, and cached
        _store(live, lambda store: store.add_credits(key_id, -100))  # unannounced
        _idle(live)
        refused = live.create(key, BODY)
        assert refused["code"] == 402, refused
        with engine.ended:
            assert engine.ended.wait_for(lambda: engine.runs, timeout=10)
        [(begun, canceled)] = engine.runs.items()
        assert canceled  # handed the job before the refusal, then told to stop
        assert _store(live, lambda store: store.get_task(begun)) is None
        assert _store(live, lambda store: store.task_engine(begun)) is None
        results = settings.files_dir / "results"
        deadline = time.monotonic() + 5
        while results.exists() and any(results.rglob("*")):
            assert time.monotonic() < deadline, list(results.rglob("*"))
            time.sleep(0.05)
        assert live.balance(key) == 0
        _store(live, lambda store: store.add_credits(key_id, 100))
        live.app.state.ctx.keys.clear()
        _idle(live)
        task_id = live.create(key, BODY)["data"]["taskId"]
        assert live.wait(key, task_id)["state"] == "success"
        assert engine.runs[task_id] is False
