"""The worker against the memory store, with fixture engines and a fake clock."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from seedbed import catalogue, netguard
from seedbed.engines import Engines
from seedbed.engines.base import Artifact, EngineJob, EngineLimits, Pictures, ProgressFn
from seedbed.engines.sandbox import SandboxEngine
from seedbed.images import encode
from seedbed.storage.base import Reserved
from seedbed.storage.local import LocalStorage
from seedbed.store.memory import MemoryStore
from seedbed.tasks import NewKey, NewTask, TaskState, new_task_id
from seedbed.wakeup import Wakeup
from seedbed.worker import POSTPROCESS_NICE, Worker, WorkerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FixtureEngine:
    """What every engine here shares: it serves every model and loads nothing."""

    limits = EngineLimits()

    def serves(self, model: str) -> bool:
        return True

    def load(self) -> None:
        pass


class FailingEngine(FixtureEngine):
    name = "failing"

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> list[Artifact]:
        progress(50)
        raise RuntimeError("CUDA out of memory")


class WrongSizeEngine(FailingEngine):
    name = "wrong-size"

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> list[Artifact]:
        return [encode(Image.new("RGB", (10, 10)), "png")]


async def _setup(
    tmp_path: Path,
    engine: Any = None,
    fetch: Any = netguard.fetch,
    storage: LocalStorage | None = None,
    **config: Any,
) -> tuple[MemoryStore, Clock, Callable[..., Worker]]:
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.create_key(NewKey(id="k1", name="t", key_hash="h", credits=Decimal(100)))
    engines = Engines([engine or SandboxEngine()])

    def make(worker_id: str = "otherhost:1:aa", **overrides: Any) -> Worker:
        return Worker(
            store=store,
            storage=storage or LocalStorage(tmp_path),
            engines=engines,
            wakeup=Wakeup(None),
            config=WorkerConfig(**{"poll_seconds": 0.05, **config, **overrides}),
            worker_id=worker_id,
            fetch=fetch,
        )

    return store, clock, make


async def _task(store: MemoryStore, model: str = "bytedance/seedream", **inp: Any) -> str:
    spec = catalogue.get(model)
    raw = {"prompt": "a cat", **inp}
    validated = catalogue.validate_input(spec, raw)
    task_id = new_task_id()
    await store.create_task(
        NewTask(
            id=task_id,
            key_id="k1",
            model=model,
            param="{}",
            input={**validated.model_dump(mode="json"), "seed": 7},
            callback_url=None,
            reserve=spec.max_price(validated),
        ),
        open_task_cap=100,
    )
    return task_id


async def test_burst_runs_a_task_to_success_and_charges(tmp_path: Path) -> None:
    store, _clock, make = await _setup(tmp_path)
    task_id = await _task(store, image_size="square")
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert task.progress == 100 and task.credits_consumed == Decimal("3.5")
    (key,) = task.result_keys
    with Image.open(tmp_path / key) as image:
        assert image.size == (512, 512)
    balance = (await store.get_key("k1")).balance  # type: ignore[union-attr]
    assert balance == Decimal("96.5")


class CountingStore(MemoryStore):
    """The memory store, counting the worker-side writes a task costs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.writes: list[str] = []

    async def claim(self, **kwargs: Any) -> Any:
        task = await super().claim(**kwargs)
        if task is not None:
            self.writes.append(f"claim:{task.state.value}")
        return task

    async def start_generating(self, task_id: str, *, worker_id: str) -> bool:
        self.writes.append("start_generating")
        return await super().start_generating(task_id, worker_id=worker_id)

    async def set_progress(self, task_id: str, progress: int, *, worker_id: str) -> bool:
        self.writes.append(f"progress:{progress}")
        return await super().set_progress(task_id, progress, worker_id=worker_id)

    async def finish(self, task_id: str, outcome: Any, *, worker_id: str | None) -> Any:
        self.writes.append("finish")
        return await super().finish(task_id, outcome, worker_id=worker_id)


async def test_a_text_task_is_claimed_and_started_in_one_write(tmp_path: Path) -> None:
    """Nothing to fetch: the claim starts it (no start_generating round trip), and the finish
    writes progress 100 with the success (no write of its own)."""
    store = CountingStore(clock=Clock())
    await store.create_key(NewKey(id="k1", name="t", key_hash="h", credits=Decimal(100)))
    task_id = await _task(store, image_size="square")
    worker = Worker(
        store=store,
        storage=LocalStorage(tmp_path),
        engines=Engines([SandboxEngine(steps=1)]),
        wakeup=Wakeup(None),
        config=WorkerConfig(poll_seconds=0.05),
    )
    await worker.run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS and task.progress == 100
    assert store.writes[0] == "claim:generating" and store.writes[-1] == "finish"
    assert "start_generating" not in store.writes and "progress:100" not in store.writes


class LoggingStore(CountingStore):
    """Also logs empty claims and the engine record, in the order the worker made them."""

    async def claim(self, **kwargs: Any) -> Any:
        task = await super().claim(**kwargs)
        if task is None:
            self.writes.append("claim:none")
        return task

    async def set_task_engine(
        self, task_id: str, engine: str, upstream_task_id: str | None = None
    ) -> None:
        self.writes.append("set_task_engine")
        await super().set_task_engine(task_id, engine, upstream_task_id)


class WritesSeenEngine(SandboxEngine):
    """Notes the store writes made before its thread began the task."""

    def __init__(self, store: LoggingStore) -> None:
        super().__init__(steps=1)
        self.store = store
        self.seen: list[str] = []

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Any:
        self.seen = list(self.store.writes)
        return super().run(job, progress, cancel)


async def test_no_store_write_holds_the_loop_while_the_engine_thread_starts(
    tmp_path: Path,
) -> None:
    """The claim ahead and the engine record wait until the engine's thread runs (each is a
    store write on the loop's thread, which the engine's thread waited for before)."""
    store = LoggingStore(clock=Clock())
    await store.create_key(NewKey(id="k1", name="t", key_hash="h", credits=Decimal(100)))
    task_id = await _task(store, image_size="square")
    engine = WritesSeenEngine(store)
    worker = Worker(
        store=store,
        storage=LocalStorage(tmp_path),
        engines=Engines([engine]),
        wakeup=Wakeup(None),
        config=WorkerConfig(poll_seconds=0.05),
    )
    await worker.run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert engine.seen == ["claim:generating"]
    # both still happen, after the engine began
    assert "set_task_engine" in store.writes and "claim:none" in store.writes
    assert await store.task_engine(task_id) == (engine.name, None)


async def test_a_freed_slot_makes_no_claim_that_would_come_back_empty_again(
    tmp_path: Path,
) -> None:
    """After a claim came back empty, the same claim is made again only once a new task is
    signalled (or the poll comes round): not each time a slot frees up."""
    store = LoggingStore(clock=Clock())
    await store.create_key(NewKey(id="k1", name="t", key_hash="h", credits=Decimal(100)))
    wakeup = Wakeup(None)
    worker = Worker(
        store=store,
        storage=LocalStorage(tmp_path),
        engines=Engines([SandboxEngine(steps=1)]),
        wakeup=wakeup,
        config=WorkerConfig(poll_seconds=30),
    )

    async def run_one() -> None:
        task_id = await _task(store, image_size="square")
        wakeup.notify()
        for _ in range(500):
            task = await store.get_task(task_id)
            if task is not None and task.state is TaskState.SUCCESS:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the task did not finish (taken only at the 30 s poll?)")

    runner = asyncio.create_task(worker.run())
    try:
        for _ in range(500):  # started: its first look finds nothing, then it waits
            if "claim:none" in store.writes:
                break
            await asyncio.sleep(0.01)
        await run_one()
        await asyncio.sleep(0.1)
        # the first look, and the claim ahead once the task's engine began; the device that
        # freed up and the task that ended made none
        assert store.writes.count("claim:none") == 2
        await run_one()  # a new task is still taken at once
        assert store.writes.count("claim:none") == 3
    finally:
        worker.stop()
        await runner


async def test_engine_error_fails_501_and_releases_credits(tmp_path: Path) -> None:
    store, _clock, make = await _setup(tmp_path, FailingEngine())
    task_id = await _task(store)
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.FAIL
    assert task.fail_code == "501"
    assert task.fail_msg == "generation failed: CUDA out of memory"
    key = await store.get_key("k1")
    assert key is not None and key.balance == 100 and key.held == 0 and key.open_tasks == 0


class WrongSizePicturesEngine(FixtureEngine):
    """A pipelined engine whose post-processing breaks the size contract."""

    name = "wrong-size-pictures"

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        return Pictures([lambda _encoding: [encode(Image.new("RGB", (10, 10)), "png")]])


@pytest.mark.parametrize("engine", [WrongSizeEngine(), WrongSizePicturesEngine()])
async def test_an_engine_that_breaks_the_size_contract_fails_the_task_storing_nothing(
    tmp_path: Path, engine: Any
) -> None:
    store, _clock, make = await _setup(tmp_path, engine)
    task_id = await _task(store)
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.FAIL
    assert task.fail_code == "500" and "expected 1024x1024" in (task.fail_msg or "")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


class ThreadsSeenStorage(LocalStorage):
    """Local files, noting which thread stored each one and how; ``here``: whether it stores
    on the calling thread (local files) or only through ``put`` (as S3 does)."""

    def __init__(self, root: Path, *, here: bool) -> None:
        super().__init__(root)
        self.here = here
        self.puts: list[tuple[str, str, bool]] = []  # (how, thread name, unique)

    def put_here(self, key: str, data: bytes, content_type: str) -> bool:
        if not self.here:
            return False
        self.puts.append(("here", threading.current_thread().name, True))
        return super().put_here(key, data, content_type)

    def reserve_here(self, key: str) -> Reserved | None:
        if not self.here:
            return None
        reserved = super().reserve_here(key)
        storage = self

        class Seen:
            key = reserved.key

            def put(self, data: bytes) -> None:
                storage.puts.append(("reserved", threading.current_thread().name, True))
                reserved.put(data)

            def discard(self) -> None:
                reserved.discard()

        return Seen()

    async def put(self, key: str, data: bytes, content_type: str, *, unique: bool = False) -> None:
        self.puts.append(("put", threading.current_thread().name, unique))
        await super().put(key, data, content_type, unique=unique)


async def test_results_are_stored_on_the_post_processing_thread_that_made_them(
    tmp_path: Path,
) -> None:
    storage = ThreadsSeenStorage(tmp_path, here=True)
    store, _clock, make = await _setup(tmp_path, storage=storage)
    task_id = await _task(store, "bytedance/seedream-v4-text-to-image", max_images=3)
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert len(storage.puts) == 3 == len(task.result_keys)
    # each in the file reserved for it while it was encoded
    assert all(
        how == "reserved" and thread.startswith("seedbed-post") for how, thread, _ in storage.puts
    )
    # results/<taskId>_<i>_<random>.<ext>, in order
    assert [key.split("_")[1] for key in task.result_keys] == ["0", "1", "2"]
    assert all((tmp_path / key).is_file() for key in task.result_keys)


async def test_storage_that_cannot_store_on_a_thread_gets_a_put_of_a_unique_key(
    tmp_path: Path,
) -> None:
    storage = ThreadsSeenStorage(tmp_path, here=False)
    store, _clock, make = await _setup(tmp_path, storage=storage)
    task_id = await _task(store, image_size="square")
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert [(how, unique) for how, _thread, unique in storage.puts] == [("put", True)]
    assert (tmp_path / task.result_keys[0]).is_file()


async def test_expired_lease_of_a_lost_worker_is_taken_up(tmp_path: Path) -> None:
    store, clock, make = await _setup(tmp_path, lease_seconds=30)
    task_id = await _task(store)
    lost = await store.claim(worker_id="elsewhere:99:xx", models=None, lease_seconds=30)
    assert lost is not None
    await store.start_generating(task_id, worker_id="elsewhere:99:xx")
    await make().run(burst=True)  # lease still valid: nothing to do
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.GENERATING
    clock.now += 31
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS and task.attempts == 2


async def test_a_task_run_again_deletes_the_files_an_earlier_attempt_left(
    tmp_path: Path,
) -> None:
    """A process that died after beginning or storing a task's files and before its finish
    left them under names no record gives: the next attempt deletes them."""
    store, clock, make = await _setup(tmp_path, lease_seconds=30)
    task_id = await _task(store)
    assert await store.claim(worker_id="elsewhere:99:xx", models=None, lease_seconds=30)
    results = tmp_path / "results"
    results.mkdir()
    begun = results / f"{task_id}_0_{'a' * 32}.png"  # a file made ahead, left empty
    stored = results / f"{task_id}_0_{'b' * 32}.png"  # one stored, never finished
    other = results / f"{'f' * 32}_0_{'c' * 32}.png"  # another task's
    begun.write_bytes(b"")
    stored.write_bytes(b"\x89PNG")
    other.write_bytes(b"\x89PNG")
    clock.now += 31
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS and task.attempts == 2
    left = sorted(path.name for path in results.iterdir())
    assert left == sorted([other.name, Path(task.result_keys[0]).name])


class BlockingEngine(FixtureEngine):
    """Counts its runs; each waits for ``release`` before its picture."""

    name = "blocking"

    def __init__(self) -> None:
        self.runs = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        self.runs += 1
        self.started.set()
        assert self.release.wait(10)
        image = Image.new("RGB", (job.plan.width, job.plan.height), (10, 120, 200))
        return Pictures([lambda encoding: [encode(image, job.plan.format, encoding=encoding)]])


async def test_a_task_claimed_again_while_it_runs_here_runs_once(tmp_path: Path) -> None:
    """The lease of a task this worker runs lapses (the process was stopped, the store out of
    reach) and the same worker claims it again: the attempt under way goes on alone. A second
    one would delete the first one's files as an earlier attempt's, and the first, finishing
    under the same worker id, would name a file that is gone."""
    engine = BlockingEngine()
    store, clock, make = await _setup(tmp_path, engine, lease_seconds=30, concurrency=2)
    task_id = await _task(store)
    running = asyncio.create_task(make().run(burst=True))
    while not engine.started.is_set():
        await asyncio.sleep(0.01)
    clock.now += 31  # the lease lapses before a heartbeat (every 10 s) renews it
    while (task := await store.get_task(task_id)) is not None and task.attempts < 2:
        await asyncio.sleep(0.01)  # claimed again (the worker polls every 0.05 s)
    engine.release.set()
    await asyncio.wait_for(running, 20)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert engine.runs == 1
    assert all((tmp_path / key).is_file() for key in task.result_keys)
    assert sorted((tmp_path / "results").iterdir()) == [tmp_path / task.result_keys[0]]


async def test_dead_process_on_this_host_is_released_at_start(tmp_path: Path) -> None:
    store, _clock, make = await _setup(tmp_path, lease_seconds=600)
    task_id = await _task(store)
    dead_pid = 2**22 + 12345  # above pid_max: no such process
    owner = f"{socket.gethostname()}:{dead_pid}:dead"
    assert await store.claim(worker_id=owner, models=None, lease_seconds=600) is not None
    await make(worker_id=f"{socket.gethostname()}:1:live").run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS


async def test_after_max_attempts_the_task_fails_500(tmp_path: Path) -> None:
    store, clock, make = await _setup(tmp_path, lease_seconds=30, max_attempts=3)
    task_id = await _task(store)
    for n in range(3):
        assert await store.claim(worker_id=f"gone:{n}:x", models=None, lease_seconds=30)
        clock.now += 31
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.FAIL
    assert task.fail_code == "500" and "interrupted 3 times" in (task.fail_msg or "")
    key = await store.get_key("k1")
    assert key is not None and key.held == 0 and key.balance == 100


# -- SSRF: refused input images, with a stub resolver and no socket ever opened ----------------
REFUSED = [
    ("http://127.0.0.1/a.png", {}),
    ("http://[::1]/a.png", {}),
    ("http://10.1.2.3/a.png", {}),
    ("http://172.16.5.4/a.png", {}),
    ("http://192.168.0.10/a.png", {}),
    ("http://169.254.169.254/latest/meta-data", {}),
    ("http://images.internal/a.png", {"images.internal": ["10.0.0.5"]}),
    ("http://mixed.example/a.png", {"mixed.example": ["93.184.216.34", "192.168.1.1"]}),
]


@pytest.mark.parametrize(("url", "dns"), REFUSED)
async def test_refused_image_urls_fail_the_task_without_a_connection(
    tmp_path: Path, url: str, dns: dict[str, list[str]]
) -> None:
    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    async def resolve(host: str, port: int) -> list[str]:
        return dns[host]

    client = httpx.AsyncClient(transport=httpx.MockTransport(transport))
    fetch = partial(netguard.fetch, resolver=resolve, client=client)
    store, _clock, make = await _setup(tmp_path, fetch=fetch)
    task_id = await _task(store, "seedream/4.5-edit", image_urls=[url])
    await make().run(burst=True)
    await client.aclose()
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.FAIL
    assert task.fail_code == "400"
    assert (task.fail_msg or "").startswith("input.image_urls[0]: ")
    assert sent == []


async def test_redirect_to_a_private_address_is_refused_before_connecting(tmp_path: Path) -> None:
    sent: list[str] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://192.168.1.1/secret.png"})

    async def resolve(host: str, port: int) -> list[str]:
        return {"cdn.example": ["93.184.216.34"]}[host]

    client = httpx.AsyncClient(transport=httpx.MockTransport(transport))
    fetch = partial(netguard.fetch, resolver=resolve, client=client)
    store, _clock, make = await _setup(tmp_path, fetch=fetch)
    task_id = await _task(store, "seedream/4.5-edit", image_urls=["http://cdn.example/a.png"])
    await make().run(burst=True)
    await client.aclose()
    task = await store.get_task(task_id)
    assert task is not None and task.fail_code == "400"
    assert "192.168.1.1" in (task.fail_msg or "")
    assert len(sent) == 1  # only the first hop, to the (stub) public address


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class NiceProbeEngine(FailingEngine):
    """Records the CPU nice value (and name) of the thread it runs on and of the thread its
    output is post-processed on, then succeeds. ``hold``: its first run waits for it."""

    name = "nice-probe"

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.hold = hold
        self.seen: list[int] = []
        self.post: list[tuple[int, str]] = []

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        self.seen.append(_nice())
        if self.hold is not None and len(self.seen) == 1:
            assert self.hold.wait(10)
        return Pictures([partial(self._output, job)])

    def _output(self, job: EngineJob, encoding: Any) -> list[Artifact]:
        self.post.append((_nice(), threading.current_thread().name))
        image = Image.new("RGB", (job.plan.width, job.plan.height))
        return [encode(image, job.plan.format, encoding=encoding)]


@pytest.mark.parametrize("increment", [0, 5, 17])
async def test_engines_run_at_the_configured_lower_cpu_priority(
    tmp_path: Path, increment: int
) -> None:
    """Engines at ``engine_nice`` below the process; post-processing lower still, so that the
    thread feeding the device gets the CPU first. A task alone in the worker is
    post-processed on its engine's thread, as the engine alone would do it."""
    base = _nice()
    engine = NiceProbeEngine()
    store, _clock, make = await _setup(tmp_path, engine, engine_nice=increment)
    task_id = await _task(store, image_size="square")
    await make().run(burst=True)
    task = await store.get_task(task_id)
    assert task is not None and task.state is TaskState.SUCCESS
    assert engine.seen == [min(19, base + increment)]
    ((nice, thread),) = engine.post
    assert nice == min(19, base + increment) and thread.startswith("seedbed-engine")

    # a task with another claimed ahead of it: post-processing threads, niced lower
    engine = NiceProbeEngine(hold=threading.Event())
    store, _clock, make = await _setup(tmp_path, engine, engine_nice=increment, concurrency=1)
    first, second = await _task(store, image_size="square"), await _task(store)
    running = asyncio.create_task(make().run(burst=True))
    while (record := await store.get_task(second)) and record.state is not TaskState.GENERATING:
        await asyncio.sleep(0.01)  # claimed ahead, waiting for the device
    assert engine.hold is not None
    engine.hold.set()
    await asyncio.wait_for(running, 20)
    for task_id in (first, second):
        task = await store.get_task(task_id)
        assert task is not None and task.state is TaskState.SUCCESS
    nice, thread = engine.post[0]
    assert nice == min(19, base + increment + POSTPROCESS_NICE)
    assert thread.startswith("seedbed-post")
