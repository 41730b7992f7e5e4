"""cancelTask and Idempotency-Key through a real server on loopback, with real SQLite."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FileServer, LiveServer, auth, make_settings, serve_in_thread
from engines_util import SteppingEngine
from images_util import png_bytes
from seedbed.engines import Engines
from seedbed.storage.local import LocalStorage
from seedbed.store import open_store
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[LiveServer]:
    """A server without a worker: tasks stay waiting."""
    with serve_in_thread(make_settings(tmp_path, worker=False)) as live:
        yield live


@pytest.fixture
def stepping() -> SteppingEngine:
    # steps long against a cancel request's round trip, so "the step at cancel" is well defined
    return SteppingEngine(steps=50, step_seconds=0.4)


@pytest.fixture
def slow(tmp_path: Path, stepping: SteppingEngine) -> Iterator[LiveServer]:
    """A server whose in-process worker runs the stepping engine."""
    with serve_in_thread(make_settings(tmp_path), engines=Engines([stepping])) as live:
        yield live


# -- cancel --------------------------------------------------------------------------------------
def test_cancel_a_waiting_task_ends_it_and_releases_its_credits(idle: LiveServer) -> None:
    key, _ = idle.add_key(credits=10)
    task_id = idle.create(key, BODY)["data"]["taskId"]
    assert idle.balance(key) < 10  # the price is held
    answer = idle.cancel(key, task_id)
    assert answer["code"] == 200
    data = answer["data"]
    assert data["taskId"] == task_id and data["state"] == "fail"
    assert data["failMsg"] == "canceled" and data["failCode"] == "400"
    assert data["creditsConsumed"] == 0 and data["completeTime"] is not None
    assert idle.record(key, task_id)["data"]["state"] == "fail"
    assert idle.balance(key) == 10
    # the key's open-task slot is free again
    assert idle.store_call(lambda s: s.get_task(task_id)).lease_owner is None


def test_cancel_a_queuing_task_while_it_fetches_its_input(
    server: LiveServer, files: FileServer
) -> None:
    release = threading.Event()

    def slow_image() -> bytes:
        release.wait(10)
        return png_bytes()

    files.routes["/slow.png"] = (200, {"Content-Type": "image/png"}, slow_image)
    key, _ = server.add_key(credits=50)
    body = {
        "model": "seedream/4.5-edit",
        "input": {"prompt": "x", "image_urls": [files.url("/slow.png")]},
    }
    task_id = server.create(key, body)["data"]["taskId"]
    wait_for(lambda: server.record(key, task_id)["data"]["state"] == "queuing")
    data = server.cancel(key, task_id)["data"]
    release.set()
    assert data["state"] == "fail" and data["failMsg"] == "canceled"
    assert server.balance(key) == 50
    time.sleep(0.3)  # the worker's fetch ends meanwhile: it must not overwrite the cancel
    after = server.record(key, task_id)["data"]
    assert after["state"] == "fail" and after["failMsg"] == "canceled"


def test_cancel_a_generating_task_stops_its_engine_within_one_step(
    slow: LiveServer, stepping: SteppingEngine
) -> None:
    key, _ = slow.add_key(credits=10)
    task_id = slow.create(key, BODY)["data"]["taskId"]
    wait_for(lambda: stepping.step >= 2)
    assert slow.record(key, task_id)["data"]["state"] == "generating"
    step_at_cancel = stepping.step
    data = slow.cancel(key, task_id)["data"]
    assert data["state"] == "fail" and data["failMsg"] == "canceled"
    wait_for(lambda: stepping.stopped_at is not None)
    assert stepping.stopped_at is not None and stepping.stopped_at <= step_at_cancel + 1
    assert slow.balance(key) == 10
    final = slow.record(key, task_id)["data"]
    assert final["state"] == "fail" and final["resultJson"] == ""


def test_a_separate_worker_process_learns_of_the_cancel_within_one_step(idle: LiveServer) -> None:
    """The worker holds no reference to the API: it hears of the cancel through the store."""
    engine = SteppingEngine(steps=50, step_seconds=0.4)
    key, _ = idle.add_key(credits=10)
    task_id = idle.create(key, BODY)["data"]["taskId"]

    async def work() -> None:
        store = open_store(idle.settings.database)
        await store.open()
        worker = Worker(
            store=store,
            storage=LocalStorage(idle.settings.files_dir),
            engines=Engines([engine]),
            wakeup=Wakeup(None),
            config=WorkerConfig(poll_seconds=0.05, net_policy=idle_policy()),
        )
        try:
            await worker.run(burst=True)
        finally:
            await store.close()

    def idle_policy() -> Any:
        from seedbed import netguard

        return netguard.NetPolicy.from_cidrs(["127.0.0.0/8"])

    thread = threading.Thread(target=lambda: asyncio.run(work()))
    thread.start()
    try:
        wait_for(lambda: engine.step >= 2)
        step_at_cancel = engine.step
        assert idle.cancel(key, task_id)["data"]["failMsg"] == "canceled"
        wait_for(lambda: engine.stopped_at is not None)
        # progress is written after each step (the write is asynchronous: the engine is in its
        # next step meanwhile); the first refused write sets the cancel, seen at the step after
        assert engine.stopped_at is not None and engine.stopped_at <= step_at_cancel + 2
    finally:
        thread.join(timeout=20)
    assert not thread.is_alive()
    final = idle.record(key, task_id)["data"]
    assert final["state"] == "fail" and final["failMsg"] == "canceled"
    assert idle.balance(key) == 10


def test_cancel_a_finished_task_is_a_no_op_answering_its_state(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    task_id = server.create(key, BODY)["data"]["taskId"]
    done = server.wait(key, task_id)
    assert done["state"] == "success"
    spent = server.balance(key)
    answer = server.cancel(key, task_id)
    assert answer["code"] == 200
    assert answer["data"]["state"] == "success" and answer["data"]["failMsg"] is None
    assert answer["data"]["resultJson"] == done["resultJson"]
    assert server.balance(key) == spent


def test_cancel_another_keys_task_or_an_unknown_one_is_422(idle: LiveServer) -> None:
    owner, _ = idle.add_key(credits=10)
    other, _ = idle.add_key(credits=10)
    task_id = idle.create(owner, BODY)["data"]["taskId"]
    for key, target in ((other, task_id), (owner, "0" * 32)):
        answer = idle.cancel(key, target)
        assert answer == {"code": 422, "msg": "recordInfo is null", "data": None}
    assert idle.record(owner, task_id)["data"]["state"] == "waiting"
    missing = idle.cancel(owner, None)
    assert missing["code"] == 422 and missing["msg"].startswith("taskId:")
    unauthenticated = idle.client.post("/api/v1/jobs/cancelTask", json={"taskId": task_id})
    assert unauthenticated.json()["code"] == 401


# -- Idempotency-Key -----------------------------------------------------------------------------
def test_ten_parallel_identical_creates_with_one_idempotency_key_make_one_task(
    idle: LiveServer,
) -> None:
    key, key_id = idle.add_key(credits=100)
    headers = {**auth(key), "Idempotency-Key": "order-42"}

    def create(_: int) -> dict[str, Any]:
        with httpx.Client(base_url=idle.url, timeout=10, trust_env=False) as client:
            return dict(client.post("/api/v1/jobs/createTask", json=BODY, headers=headers).json())

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(create, range(10)))
    assert all(a["code"] == 200 for a in answers), answers
    assert len({a["data"]["taskId"] for a in answers}) == 1
    tasks = idle.store_call(lambda s: s.list_tasks(_filter(key_id)))
    assert [t.id for t in tasks] == [answers[0]["data"]["taskId"]]
    key_record = idle.store_call(lambda s: s.get_key(key_id))
    assert key_record.open_tasks == 1 and key_record.held == tasks[0].reserved


def test_idempotency_key_with_another_body_is_422_and_other_keys_are_separate(
    idle: LiveServer,
) -> None:
    key, _ = idle.add_key(credits=100)
    first = idle.create(key, BODY, headers={"Idempotency-Key": "a"})
    # the same body with its keys in another order is the same request
    reordered = {"input": {"image_size": "square", "prompt": "a fox"}, "model": BODY["model"]}
    again = idle.create(key, reordered, headers={"Idempotency-Key": "a"})
    assert again["data"]["taskId"] == first["data"]["taskId"]
    other_body = {**BODY, "input": {"prompt": "a cat"}}
    conflict = idle.create(key, other_body, headers={"Idempotency-Key": "a"})
    assert conflict["code"] == 422 and conflict["msg"].startswith("Idempotency-Key:")
    second = idle.create(key, BODY, headers={"Idempotency-Key": "b"})
    plain = idle.create(key, BODY)
    ids = {first["data"]["taskId"], second["data"]["taskId"], plain["data"]["taskId"]}
    assert len(ids) == 3
    too_long = idle.create(key, BODY, headers={"Idempotency-Key": "x" * 201})
    assert too_long["code"] == 422 and "Idempotency-Key" in too_long["msg"]
    # another API key may use the same idempotency key for its own task
    key2, _ = idle.add_key(credits=100)
    theirs = idle.create(key2, BODY, headers={"Idempotency-Key": "a"})
    assert theirs["code"] == 200 and theirs["data"]["taskId"] not in ids


def _filter(key_id: str) -> Any:
    from seedbed.store.base import TaskFilter

    return TaskFilter(key_id=key_id)
