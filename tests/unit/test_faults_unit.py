"""A worker that outlives store and storage faults, and the supervisor that restarts loops.

The faults are real exceptions of the kinds the store and storage raise (SQLite's
``OperationalError``, ``OSError`` ENOSPC) thrown by a real store or storage for a while."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from test_worker import _task as worker_task

from seedbed import errors, faults
from seedbed.engines import Engines
from seedbed.engines.sandbox import SandboxEngine
from seedbed.storage.base import Reserved
from seedbed.storage.local import LocalStorage
from seedbed.store.memory import MemoryStore
from seedbed.supervise import Supervisor
from seedbed.tasks import NewKey, Outcome, Task, TaskState
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig

MODEL = "bytedance/seedream"


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _locked() -> OperationalError:
    return OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))


class FlakyStore(MemoryStore):
    """A memory store whose ``finish`` raises ``fault`` the first ``times`` calls."""

    def __init__(self, fault: Exception, times: int) -> None:
        super().__init__()
        self.fault, self.times = fault, times

    async def finish(self, task_id: str, outcome: Outcome, *, worker_id: str | None) -> Task | None:
        if self.times > 0:
            self.times -= 1
            raise self.fault
        return await super().finish(task_id, outcome, worker_id=worker_id)


class FullStorage(LocalStorage):
    """Local files on a disk that is full for the first ``times`` writes."""

    def __init__(self, root: Path, times: int) -> None:
        super().__init__(root)
        self.times = times

    async def put(self, key: str, data: bytes, content_type: str, *, unique: bool = False) -> None:
        if self.times > 0:
            self.times -= 1
            raise _disk_full()
        await super().put(key, data, content_type, unique=unique)

    def put_here(self, key: str, data: bytes, content_type: str) -> bool:
        if self.times > 0:
            self.times -= 1
            raise _disk_full()
        return super().put_here(key, data, content_type)

    def reserve_here(self, key: str) -> Reserved:
        return _FullReserved(self, super().reserve_here(key))


class _FullReserved:
    """A file reserved on ``FullStorage``: its write is one of the writes the disk refuses."""

    def __init__(self, storage: FullStorage, reserved: Reserved) -> None:
        self.storage, self.reserved, self.key = storage, reserved, reserved.key

    def put(self, data: bytes) -> None:
        if self.storage.times > 0:
            self.storage.times -= 1
            self.reserved.discard()
            raise _disk_full()
        self.reserved.put(data)

    def discard(self) -> None:
        self.reserved.discard()


async def _task(store: MemoryStore) -> str:
    """A key with 100 credits and one task of it (the worker tests' task)."""
    await store.create_key(NewKey(id="k1", name="t", key_hash="h", credits=Decimal(100)))
    return await worker_task(store, MODEL)


def _worker(store: MemoryStore, storage: LocalStorage, **config: Any) -> Worker:
    return Worker(
        store=store,
        storage=storage,
        engines=Engines([SandboxEngine()]),
        wakeup=Wakeup(None),
        config=WorkerConfig(poll_seconds=0.05, **config),
    )


@pytest.mark.parametrize("fault", [_disk_full(), _locked()], ids=["disk-full", "db-locked"])
async def test_a_store_fault_at_finish_is_retried_and_the_task_succeeds_once(
    tmp_path: Path, fault: Exception
) -> None:
    store = FlakyStore(fault, times=3)
    task_id = await _task(store)
    worker = _worker(store, LocalStorage(tmp_path))
    await asyncio.wait_for(worker.run(burst=True), 20)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    key = await store.get_key("k1")
    assert key is not None and key.balance == Decimal("96.5") and key.held == 0
    assert worker.health.problem("store") is not None  # marked; the monitor clears it


async def test_storage_full_while_storing_results_is_retried(tmp_path: Path) -> None:
    store = MemoryStore()
    task_id = await _task(store)
    worker = _worker(store, FullStorage(tmp_path, times=2))
    await asyncio.wait_for(worker.run(burst=True), 20)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert len(list((tmp_path / "results").iterdir())) == 1


async def test_storage_full_past_the_retry_budget_fails_the_task_naming_it(tmp_path: Path) -> None:
    store = MemoryStore()
    task_id = await _task(store)
    worker = _worker(store, FullStorage(tmp_path, times=10_000), fault_retry_seconds=0.5)
    await asyncio.wait_for(worker.run(burst=True), 20)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.FAIL and task.fail_code == "500"
    assert task.fail_msg == "storage unavailable: storage is full: no space left on the device"
    key = await store.get_key("k1")
    assert key is not None and key.balance == 100 and key.held == 0  # released, not charged


async def test_an_unexpected_error_in_finish_does_not_end_the_worker(tmp_path: Path) -> None:
    store = FlakyStore(RuntimeError("a bug"), times=1)
    first = await _task(store)
    worker = _worker(store, LocalStorage(tmp_path), lease_seconds=0.2)
    runner = asyncio.create_task(worker.run())
    try:
        # the task's lease lapses and the same worker takes it up again
        for _ in range(200):
            task = await store.get_task(first)
            if task is not None and task.state is TaskState.SUCCESS:
                break
            await asyncio.sleep(0.05)
        assert task is not None and task.state is TaskState.SUCCESS and task.attempts == 2
        assert not runner.done()
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 10)
        worker.close()


def test_fault_classification() -> None:
    assert faults.is_infrastructure_fault(_disk_full())
    assert faults.is_infrastructure_fault(_locked())
    assert faults.is_infrastructure_fault(errors.StorageFull())
    assert not faults.is_infrastructure_fault(RuntimeError("a bug"))
    assert not faults.is_infrastructure_fault(errors.EngineFailure("CUDA out of memory"))
    assert faults.is_storage_full(_disk_full())
    ro = OSError(errno.EROFS, "Read-only file system", "/secret/path")
    assert faults.describe(ro) == "Read-only file system (EROFS)"  # never the path


async def test_supervisor_restarts_a_loop_that_dies() -> None:
    restarts: list[str] = []
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"died {runs}")
        await asyncio.sleep(30)

    supervisor = Supervisor(on_restart=restarts.append)
    supervisor.start("worker", loop)
    for _ in range(100):
        if runs == 3:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0)
    assert runs == 3 and restarts == ["worker", "worker"]
    assert supervisor.running("worker")
    assert supervisor.last_error("worker") == "RuntimeError: died 2"
    await supervisor.stop_all()
    assert not supervisor.running("worker")


def test_postgres_connection_and_restart_states_are_passing_faults() -> None:
    import asyncpg.exceptions as pg

    assert faults.is_infrastructure_fault(pg.CannotConnectNowError("starting up"))
    assert faults.is_infrastructure_fault(pg.AdminShutdownError("terminating connection"))
    assert faults.is_infrastructure_fault(pg.TooManyConnectionsError("too many clients"))
    assert not faults.is_infrastructure_fault(pg.UniqueViolationError("duplicate key"))
    assert faults.is_infrastructure_fault(ConnectionRefusedError(111, "Connect call failed"))
