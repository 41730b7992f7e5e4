"""Retention with a fake clock: files go at their age, records stay (CONTRACT §7)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

from conftest import LiveServer, auth
from images_util import png_bytes
from seedbed.outbox import FileKind
from seedbed.retention import Sweeper
from seedbed.storage.local import LocalStorage
from seedbed.store import open_store
from seedbed.store.base import Store

DAY = 86400.0


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _sweeper(server: LiveServer, store: Store, clock: FakeClock) -> Sweeper:
    """A sweeper like a server process's (each new one is a restarted process's)."""
    return Sweeper(
        store=store,
        storage=LocalStorage(server.settings.files_dir),
        result_retention=14 * DAY,
        upload_retention=3 * DAY,
        interval=3600,
        clock=clock,
    )


def _sweep(server: LiveServer, clock: FakeClock) -> int:
    async def run() -> int:
        store = open_store(server.settings.database)
        await store.open()
        try:
            return await _sweeper(server, store, clock).sweep()
        finally:
            await store.close()

    return int(asyncio.run(run()))


def _status(server: LiveServer, url: str) -> int:
    return server.client.get(url).status_code


def test_files_go_at_their_age_and_records_stay(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100)
    created = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "old"}})
    task_id = created["data"]["taskId"]
    record = server.wait(key, task_id)
    (result,) = json.loads(record["resultJson"])["resultUrls"]
    upload: dict[str, Any] = server.client.post(
        "/api/file-stream-upload",
        files={"file": ("a.png", png_bytes(), "image/png")},
        data={"uploadPath": "keep"},
        headers=auth(key),
    ).json()["data"]
    clock = FakeClock()

    clock.now += 2 * DAY
    assert _sweep(server, clock) == 0
    assert _status(server, result) == 200 and _status(server, upload["downloadUrl"]) == 200

    clock.now += 1 * DAY + 60  # uploads are 3 days old
    assert _sweep(server, clock) == 1
    assert _status(server, upload["downloadUrl"]) == 404 and _status(server, result) == 200
    gone = server.store_call(lambda store: store.get_file(upload["filePath"]))
    assert gone is not None and gone.kind is FileKind.UPLOAD and gone.deleted_at is not None
    link = server.client.post(
        "/api/v1/common/download-url", json={"url": upload["downloadUrl"]}, headers=auth(key)
    ).json()
    assert link == {"code": 422, "msg": "url is wrong", "data": None}

    clock.now += 11 * DAY  # results are 14 days old
    assert _sweep(server, clock) == 1
    assert _status(server, result) == 404
    assert not any((server.settings.files_dir / "results").iterdir())
    assert server.wait(key, task_id) == record  # the task's record is untouched
    kept = server.store_call(lambda store: store.get_file(result.split("/files/", 1)[1]))
    assert kept is not None and kept.task_id == task_id and kept.deleted_at is not None
    assert _sweep(server, clock) == 0


async def test_the_sweeper_runs_at_once_then_every_interval_until_stopped(tmp_path: Any) -> None:
    store = open_store("memory://")
    calls: list[float] = []

    class Counting(Sweeper):
        async def sweep(self) -> int:
            calls.append(time.monotonic())
            return 0

    sweeper = Counting(
        store=store,
        storage=LocalStorage(tmp_path),
        result_retention=1,
        upload_retention=1,
        interval=0.05,
    )
    runner = asyncio.create_task(sweeper.run())
    async with asyncio.timeout(10):
        while len(calls) < 3:
            await asyncio.sleep(0.01)
    sweeper.stop()
    await asyncio.wait_for(runner, 5)
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(calls))


def test_result_files_no_task_names_go_once_a_day_after_a_day(server: LiveServer) -> None:
    """A worker that died between storing a task's file and finishing the task (or a delete
    that failed) leaves a result file no record names: the sweeper deletes it once it is a day
    old, at most once a day, and never a file a task names."""
    key, _ = server.add_key(credits=100)
    task_id = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "kept"}})[
        "data"
    ]["taskId"]
    (result,) = json.loads(server.wait(key, task_id)["resultJson"])["resultUrls"]
    results = server.settings.files_dir / "results"

    def orphan(name: str) -> Path:
        path = results / f"{task_id}_{name}.png"
        path.write_bytes(png_bytes())
        return path

    first = orphan("0_from-a-dead-attempt")
    clock = FakeClock()

    async def scenario() -> list[int]:
        store = open_store(server.settings.database)
        await store.open()
        sweeper = _sweeper(server, store, clock)
        counts = []
        try:
            clock.now += DAY / 2  # young: it may be a running task's
            counts.append(await sweeper.sweep())
            assert first.exists()
            # a new sweeper (a restarted server) looks at once; a day and a minute on, it goes
            sweeper = _sweeper(server, store, clock)
            clock.now += DAY / 2 + 60
            counts.append(await sweeper.sweep())
            assert not first.exists()
            second = orphan("1_another")
            clock.now += 3600  # old already, but the results were listed an hour ago
            counts.append(await sweeper.sweep())
            assert second.exists()
            clock.now += DAY
            counts.append(await sweeper.sweep())
            assert not second.exists()
        finally:
            await store.close()
        return counts

    assert asyncio.run(scenario()) == [0, 1, 0, 1]
    assert _status(server, result) == 200  # the task's own file stays


def test_a_result_whose_delete_failed_goes_with_the_orphans(server: LiveServer) -> None:
    """Retention marked the record deleted but the file stayed (its delete failed): no record
    names a file there any more, so the orphan pass deletes it."""
    key, _ = server.add_key(credits=100)
    task_id = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "x"}})["data"][
        "taskId"
    ]
    (result,) = json.loads(server.wait(key, task_id)["resultJson"])["resultUrls"]
    path = server.settings.files_dir / result.split("/files/", 1)[1]
    data = path.read_bytes()
    clock = FakeClock()
    clock.now += 15 * DAY
    assert _sweep(server, clock) == 1  # by retention
    path.write_bytes(data)  # as if that delete had failed
    assert _sweep(server, clock) == 1  # a new sweeper lists the results at once
    assert not path.exists()


def test_an_upload_never_recorded_goes_after_a_day(server: LiveServer) -> None:
    """An upload stored by a process that died before recording it: the orphan pass deletes it
    a day on; recorded uploads stay (until their retention)."""
    key, _ = server.add_key(credits=100)
    upload = server.client.post(
        "/api/file-stream-upload",
        files={"file": ("a.png", png_bytes(), "image/png")},
        data={"uploadPath": "keep"},
        headers=auth(key),
    ).json()["data"]
    kept = server.settings.files_dir / upload["filePath"]
    lost = kept.with_name("never-recorded.png")
    lost.write_bytes(png_bytes())
    clock = FakeClock()
    clock.now += DAY / 2
    assert _sweep(server, clock) == 0 and lost.exists()
    clock.now += DAY / 2 + 60
    assert _sweep(server, clock) == 1
    assert not lost.exists() and kept.exists()
    assert _status(server, upload["downloadUrl"]) == 200
