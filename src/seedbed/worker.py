"""The worker: claims tasks, fetches their inputs, runs engines, stores results, settles.

One worker serves ``concurrency`` tasks at a time. It is woken by ``Wakeup`` when a task is
created and polls only slowly, as a safety net for leases that expire. While it holds tasks it
renews their leases; a task whose worker died is taken up again when its lease expires, or at
once when a worker on the same host sees that the holder's process is gone. After
``max_attempts`` such restarts the task fails with ``failCode`` "500".

The device and the CPU work as a pipeline: an engine on a device returns its pictures
(``Pictures``) as soon as they exist, the worker frees the engine's slot at once, and resizing,
encoding, storing and finishing run as post-processing on their own threads
(``postprocess_concurrency``) while the device renders the next task; a task's resize and PNG
are cut into strips that idle post-processing threads share (``seedbed.strips``), so a task
alone uses every core. The worker claims no more
than post-processing can absorb: while ``postprocess_concurrency`` tasks are in it, it claims
nothing, so the queue stays in the store (visible, claimable by other workers) instead of
piling up in memory.

Infrastructure faults (a full disk, a locked or unreachable database, storage gone read-only)
are not the task's fault: the step that met one is retried in place with backoff, for up to
``fault_retry_seconds``, and the task finishes once the fault clears. Nothing a task, the store
or storage raises ends the worker's loop (``_process`` never raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar

from PIL import Image
from pydantic import BaseModel

from seedbed import catalogue, errors, faults, images, netguard
from seedbed.catalogue.base import ModelSpec
from seedbed.engines import Engines
from seedbed.engines.base import (
    Artifact,
    Engine,
    EngineJob,
    FinishFn,
    OutputPlan,
    Pictures,
    extension_of,
    is_async,
)
from seedbed.engines.relay_routes import RouteRunner
from seedbed.links import Links
from seedbed.logs import task_extra
from seedbed.storage.base import Reserved, Storage, StoredFileNotFound
from seedbed.store.base import Store
from seedbed.tasks import ClaimedBy, Outcome, Task, TaskState
from seedbed.wakeup import Wakeup

__all__ = ["Worker", "WorkerConfig", "WorkerObserver", "new_worker_id"]

log = logging.getLogger(__name__)

R = TypeVar("R")

PROGRESS_INTERVAL = 0.25  # seconds between progress writes for one task
#: tasks claimed ahead per device slot, waiting for the device (not yet "generating")
DEVICE_PREFETCH = 1
CLAIM_RETRY = 1.0  # seconds to wait after the store failed a claim
#: longest the claim loop waits for a claimed task's engine thread to begin before it claims
#: ahead (the wait ends as soon as the thread runs, or the task ends)
ENGINE_START_WAIT = 0.05
#: longest the loop blocks, with the GIL released, for an engine thread to take a task's job:
#: it takes it within ~0.15 ms when one is idle, as one nearly always is (the pool has a thread
#: more than the device has slots)
ENGINE_HANDOFF_S = 0.001
#: backoff while a step meets an infrastructure fault: first wait, and the cap that bounds how
#: long after the fault clears the task goes on (recovery within ~2 s)
FAULT_FIRST_DELAY = 0.1
FAULT_MAX_DELAY = 2.0
#: models whose tasks have nothing to fetch before their engine starts (no image inputs): the
#: claim moves them straight to generating, in the same write (one store round trip fewer on
#: the way to the device). Tasks with inputs stay queuing while they fetch: a cancel ends them
#: there at once.
_STARTS_AT_ONCE = frozenset(
    m for m, spec in catalogue.CATALOGUE.items() if spec.image_input is None
)


def new_worker_id() -> str:
    """``host:pid:random``: lets a worker on the same host tell that a lease holder is dead."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    concurrency: int = 2
    lease_seconds: float = 30.0
    max_attempts: int = 3
    poll_seconds: float = 5.0
    fetch_timeout: float = 30.0
    net_policy: netguard.NetPolicy = field(default_factory=netguard.NetPolicy)
    #: added to the CPU nice value of the threads that run engines (Linux; 0: unchanged)
    engine_nice: int = 0
    #: how long one step of a task is retried through an infrastructure fault before this
    #: attempt gives up (storing results: the task fails "500"; the store: the lease lapses)
    fault_retry_seconds: float = 600.0
    #: tasks in post-processing at once (resize, encode, store, finish), apart from the
    #: device slots; also its threads. 0: one per CPU core
    postprocess_concurrency: int = 0
    #: how outputs are encoded (``png_compress_level``)
    encoding: images.Encoding = field(default_factory=images.Encoding)

    @property
    def postprocess_slots(self) -> int:
        return self.postprocess_concurrency or os.cpu_count() or 1


Fetcher = Callable[..., Awaitable[netguard.Fetched]]


class WorkerObserver(Protocol):
    """What the rest of the process learns from a worker: live events and metrics."""

    def changed(self, task_id: str) -> None:
        """The worker has just written a change to this task (state or progress; its end
        is told to ``finished`` instead)."""

    def generated(self, task: Task, seconds: float) -> None:
        """The engine produced the task's images in ``seconds`` (told once the engine's run
        is back on the loop: for a task post-processed on its engine's thread, after that)."""

    def finished(self, task: Task) -> None:
        """The worker ended the task (the store's final record of it, to publish as it is)."""


class Worker:
    def __init__(
        self,
        *,
        store: Store,
        storage: Storage,
        engines: Engines,
        wakeup: Wakeup,
        config: WorkerConfig,
        worker_id: str | None = None,
        fetch: Fetcher = netguard.fetch,
        pricing: Callable[[ModelSpec], catalogue.Pricing] | None = None,
        observer: WorkerObserver | None = None,
        health: faults.Health | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.engines = engines
        self.wakeup = wakeup
        self.config = config
        self.worker_id = worker_id or new_worker_id()
        self._fetch = fetch
        self._pricing = pricing or (lambda spec: spec.pricing)
        self._running: dict[str, threading.Event] = {}
        self._loaded: set[int] = set()
        # Engines run here, not in asyncio's default pool: their threads get a lower CPU
        # priority, so in the server's process a busy engine leaves the API its CPU.
        # One more thread than device slots: a task alone post-processes its pictures on its
        # engine's thread (``_post_alone``) while the next task's engine starts on another.
        self._engine_threads = ThreadPoolExecutor(
            max_workers=max(1, config.concurrency) + 1,
            thread_name_prefix="seedbed-engine",
            initializer=_lower_priority,
            initargs=(config.engine_nice,),
        )
        # Post-processing threads: Pillow's resize and encoders, numpy and ISA-L release the GIL,
        # so threads use every core without copying pictures to another process (measured
        # against a process pool: bench/encoder_bench.py). Niced below the engines'
        # threads: when one task's strips take every core, the thread that feeds the device
        # the next task still gets the CPU the moment it needs it.
        self._post_threads = ThreadPoolExecutor(
            max_workers=config.postprocess_slots,
            thread_name_prefix="seedbed-post",
            initializer=_lower_priority,
            initargs=(config.engine_nice + POSTPROCESS_NICE,),
        )
        # One task's resize and PNG are cut into strips that idle post-processing threads
        # share (seedbed.strips): alone, a task's post-processing uses every core.
        self._encoding = dataclasses.replace(
            config.encoding, helpers=self._post_threads, threads=config.postprocess_slots
        )
        #: tasks whose pictures exist and that are not finished yet (waiting or running)
        self._post: set[str] = set()
        #: outputs post-processed on their engine's thread, by task id (``_post_alone``)
        self._posted: dict[str, _Posted] = {}
        self._post_slots = asyncio.Semaphore(config.postprocess_slots)
        #: engines whose load failed, by id, with the message their tasks fail with
        self._load_errors: dict[int, str] = {}
        self._stopping = asyncio.Event()
        self._stopped_at: float | None = None
        self._observer = observer
        #: tasks handed back to the queue at shutdown: never finished by this worker
        self._abandoned: set[str] = set()
        #: the task group of ``run``'s claim loop, while it runs: tasks taken in their create
        #: (``run_new``) run in it too
        self._group: asyncio.TaskGroup | None = None
        #: the validated input of tasks taken in their create, until their attempt reads it
        self._validated: dict[str, BaseModel] = {}
        self.health = health or faults.Health()
        #: slots per engine, and routes: relay engines run on the loop beside the threads
        # Each device slot has one task claimed ahead, waiting for the device: when the
        # device's pictures exist, the next task starts at once instead of after a claim's
        # round trip (at M = 100 ms that round trip and the worker's steps were ~13 % of the
        # device's time; bench/pipeline_bench.py).
        self._routes = RouteRunner(
            engines,
            threads=config.concurrency * (1 + DEVICE_PREFETCH),
            record=store.set_task_engine,
        )
        #: the device slots of thread engines (relay engines run on the loop, apart)
        self._device = asyncio.Semaphore(max(1, config.concurrency))
        #: tasks claimed for a free device slot, by id: done once their engine's thread runs
        self._begun: dict[str, asyncio.Future[None]] = {}

    # -- the loop --------------------------------------------------------------------------
    async def run(self, *, burst: bool = False) -> None:
        """Serve tasks until ``stop()``; with ``burst``, return once no task is left.

        May be called again after it raised (a supervisor restarting it); ``close()`` ends
        the worker for good.
        """
        self.wakeup.listen()
        # Warm before claiming: a task is claimed by a worker that has its pipeline loaded.
        for engine in self.engines:
            await self._ensure_loaded(engine, raising=False)
        try:
            await self._release_dead_leases()
        except Exception:
            self._log_failure(
                "store", "could not check for dead workers' leases; they expire on their own"
            )
        try:
            async with asyncio.TaskGroup() as group:
                heartbeat = group.create_task(self._heartbeat_loop())
                self._group = group
                try:
                    await self._claim_loop(group, burst=burst)
                finally:
                    self._group = None
                    heartbeat.cancel()
        finally:
            # A hard stop: ask engines still running to stop early, without waiting for them
            # (their tasks are taken up again once the leases lapse).
            for cancel in self._running.values():
                cancel.set()
            await asyncio.shield(self._routes.aclose())  # relay engines' HTTP pools

    def close(self) -> None:
        """Release the engine threads after the last ``run`` (running engines are not awaited)."""
        for cancel in self._running.values():
            cancel.set()
        self._engine_threads.shutdown(wait=False, cancel_futures=True)
        self._post_threads.shutdown(wait=False, cancel_futures=True)

    async def hand_back(self) -> None:
        """After ``run`` died: make the tasks it held claimable now rather than at lease expiry."""
        count = await self.store.release_leases([self.worker_id])
        if count:
            log.warning("handed %d task(s) back to the queue after the worker loop died", count)

    def stop(self) -> None:
        """Claim nothing more; what is running goes on (see ``drain``)."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._stopping.set()
        self.wakeup.kick()

    def runs(self, task_id: str) -> bool:
        """Whether this worker has claimed the task and not finished it."""
        return task_id in self._running

    # -- a task taken in its create ----------------------------------------------------------
    def take_new(self, model: str) -> ClaimedBy | None:
        """createTask asks before it stores a task of ``model``: would this worker start it on
        its device at once? Only an idle worker, waiting for work with nothing running, whose
        thread engine serves the model and starts it without fetching inputs, says yes. The
        task is then created claimed by it (``Store.create_task(claimed=...)``) and started
        with ``run_new``: nothing older can be waiting for it, or it would not be idle."""
        if (
            self._group is None
            or self._stopping.is_set()
            or self._running
            or not self.wakeup.waiting_ready
            or model not in _STARTS_AT_ONCE
            or self._device.locked()
        ):
            return None
        # With nothing running every slot is free and nothing waits for post-processing: a
        # claim would choose the route's first engine (``RouteRunner.choose``), this one.
        engine = self.engines.for_model(model)
        if engine is None or is_async(engine) or id(engine) not in self._loaded:
            return None
        return ClaimedBy(self.worker_id, self.config.lease_seconds)

    def run_new(
        self, task: Task, created: asyncio.Future[Task], validated: BaseModel | None = None
    ) -> None:
        """Start ``task``, taken with ``take_new``, before its create commits: called before
        the create's write, its run's first step comes before the commit (SQLite's group
        commit, at the end of this loop turn), which thus runs beside the device. ``task`` is
        the record the create will store; ``created`` is done when the create is. Should the
        create fail (credits, the open-task cap, the database), the attempt is canceled; its
        writes change nothing, each guarded by a lease that was never stored, and its files
        are dropped with its refused finish. ``validated``: the task's input as the API
        validated it (its model), which the attempt then does not validate again."""
        assert self._group is not None, "take_new said no worker loop runs"
        if validated is not None:
            self._validated[task.id] = validated
        self._running[task.id] = cancel = threading.Event()
        self._routes.take(task.id, task.model)

        def settled(create: asyncio.Future[Task]) -> None:
            if create.cancelled() or create.exception() is not None:
                cancel.set()
            else:  # logged and told once the engine runs: neither holds it up
                log.info("task taken at its create (attempt 1)", extra=task_extra(task))
                self._changed(task.id)  # generating, as stored

        created.add_done_callback(settled)
        self._group.create_task(self._process(task))

    def cancel(self, task_id: str) -> bool:
        """Interrupt a task this worker runs (its engine stops at its next step)."""
        event = self._running.get(task_id)
        if event is None:
            return False
        event.set()
        return True

    async def drain(self, grace: float) -> list[str]:
        """Graceful shutdown: stop claiming, let running tasks end for up to ``grace`` seconds
        from the first ``stop()``, then hand the rest back to the queue (their leases are
        released, so the next worker to look takes them at once). Returns the ids handed back.
        """
        self.stop()
        assert self._stopped_at is not None
        deadline = self._stopped_at + grace
        while self._running and time.monotonic() < deadline:
            self.wakeup.clear()
            await self.wakeup.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        left = list(self._running)
        if not left:
            return []
        self._abandoned.update(left)
        for task_id in left:
            self.cancel(task_id)
        try:
            await self.store.release_leases([self.worker_id])
        except Exception:
            self._log_failure(
                "store", "could not release leases at shutdown; they expire on their own"
            )
        log.info("shutdown: handed %d running task(s) back to the queue", len(left))
        return left

    async def _claim_loop(self, group: asyncio.TaskGroup, *, burst: bool) -> None:
        served = [m for m in catalogue.CATALOGUE if self.engines.serves(m)]
        # The models of the last claim that came back empty, and the work signals then: the
        # same claim with no signal since would find nothing again, so it is not made when a
        # slot frees up (the device done, a task finished: up to three empty claims a task,
        # each a write on the loop at the moment post-processing starts or a task's end is
        # told). The poll claims anyway: a lease that lapsed is found there.
        empty: tuple[tuple[str, ...], int] | None = None
        while not self._stopping.is_set():
            self.wakeup.clear()
            claimed = False
            while models := self._claimable(served):
                signals = self.wakeup.work_signals
                if empty == (tuple(models), signals):
                    break
                try:
                    # one task, or a batch of them for relay engines' free slots
                    tasks = await self._routes.claim_some(models, self._claim)
                except Exception:
                    # The store is unreachable or busy for too long: keep the worker alive and
                    # try again after a pause rather than dying with the error.
                    self._log_failure(
                        "store", f"claiming a task failed; retrying in {CLAIM_RETRY} s"
                    )
                    await asyncio.sleep(CLAIM_RETRY)
                    break
                if not tasks:
                    empty = (tuple(models), signals)
                    break
                empty = None
                claimed = True
                begun: list[asyncio.Future[None]] = []
                for task in tasks:
                    if task.id in self._running:
                        # Claimed again by this worker: its lease lapsed while it ran here
                        # (the process stopped, the store out of reach). The attempt under
                        # way goes on, leased again; a second one here would delete its
                        # files as an earlier attempt's.
                        log.info("task claimed again while it runs here", extra=task_extra(task))
                        continue
                    self._running[task.id] = threading.Event()
                    self._routes.take(task.id, task.model)
                    log.info("task claimed (attempt %d)", task.attempts, extra=task_extra(task))
                    self._changed(task.id)
                    if self._starts_on_device_now(task):
                        begun.append(self._begun.setdefault(task.id, asyncio.Future()))
                    group.create_task(self._process(task))
                if begun:
                    # Claim ahead once the engine's thread runs, not while it starts: a claim
                    # is a store write on this thread (SQLite: ~0.3 ms holding the GIL), which
                    # the engine's thread waited for before its first step (py-spy and a
                    # wall-clock trace of bench/peer_bench.py's server).
                    await asyncio.wait(begun, timeout=ENGINE_START_WAIT)
            if burst and not claimed and not self._running:
                return
            # ready: a task created now could be claimed at once (createTask's claim along)
            ready = bool(self._claimable(served))
            if not await self.wakeup.wait(self.config.poll_seconds, ready=ready):
                empty = None  # the poll: look whatever the signals say
        # Stopping: wait for what is running (a hard stop cancels the task group instead).
        while self._running:
            self.wakeup.clear()
            await self.wakeup.wait(self.config.poll_seconds)

    async def _claim(self, models: list[str]) -> Task | None:
        return await self.store.claim(
            worker_id=self.worker_id,
            models=models,
            lease_seconds=self.config.lease_seconds,
            start=_STARTS_AT_ONCE,
        )

    def _starts_on_device_now(self, task: Task) -> bool:
        """A task claimed already generating, for a thread engine, with a device slot free."""
        if task.state is not TaskState.GENERATING or self._device.locked():
            return False
        engine = self._routes.engine_of(task.id) or self.engines.for_model(task.model)
        return engine is not None and not is_async(engine)

    def _engine_began(self, task_id: str, begun: Callable[[], None] | None) -> None:
        """On the loop: the task's engine thread runs (or the task ended before it did)."""
        future = self._begun.pop(task_id, None)
        if future is not None and not future.done():
            future.set_result(None)
        if begun is not None:
            begun()

    def _claimable(self, served: Sequence[str]) -> list[str]:
        """The models a claim may take now: none while post-processing is full (backpressure:
        a device would only make pictures that wait), else those with a free engine slot."""
        if len(self._post) >= self.config.postprocess_slots:
            return []
        return self._routes.claimable(served)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self._running)
            if not ids:
                continue
            try:
                held = await self.store.heartbeat(
                    ids, worker_id=self.worker_id, lease_seconds=self.config.lease_seconds
                )
            except Exception:
                self._log_failure("store", "heartbeat failed")
                continue
            for task_id in set(ids) - held:
                # Another worker took it (we were too slow): stop spending effort on it.
                if (cancel := self._running.get(task_id)) is not None:
                    cancel.set()

    async def _release_dead_leases(self) -> None:
        host = socket.gethostname()
        dead: list[str] = []
        for owner in await self.store.lease_owners():
            owner_host, _, rest = owner.partition(":")
            pid_text = rest.partition(":")[0]
            if owner_host != host or not pid_text.isdecimal() or owner == self.worker_id:
                continue
            if not _process_alive(int(pid_text)):
                dead.append(owner)
        if dead:
            count = await self.store.release_leases(dead)
            log.info("took back %d task(s) from %d dead worker(s)", count, len(dead))

    def _log_failure(self, part: str, what: str, extra: dict[str, Any] | None = None) -> None:
        """Log the exception being handled: one line for an infrastructure fault (which also
        marks ``part`` unhealthy), a traceback for anything else (a bug)."""
        exc = sys.exc_info()[1]
        if exc is not None and faults.is_infrastructure_fault(exc):
            reason = faults.describe(exc)
            self.health.fault(part, reason)
            log.warning("%s: %s", what, reason, extra=extra)
        else:
            log.exception(what, extra=extra)

    def _changed(self, task_id: str) -> None:
        if self._observer is not None:
            self._observer.changed(task_id)

    # -- one task --------------------------------------------------------------------------
    async def _process(self, task: Task) -> None:
        """Run one task to its end. Never raises: the worker's loop outlives any task."""
        try:
            await self._process_one(task)
        except _GaveUp as exc:
            if self._stopping.is_set():
                log.info("task left to the next worker: stopping during a %s fault", exc.part)
            else:
                log.error(
                    "gave up on this attempt after %s faults (%s); the task runs again once "
                    "its lease lapses",
                    exc.part,
                    exc.reason,
                    extra=task_extra(task),
                )
        except Exception:
            # A bug, or a fault past its retry budget: the task stays leased until its lease
            # lapses and another attempt takes it; the worker goes on.
            log.exception("processing the task failed; it runs again later", extra=task_extra(task))
        finally:
            self._engine_began(task.id, None)  # ended before its engine ran: stop waiting
            self._validated.pop(task.id, None)
            self._running.pop(task.id, None)
            self._post.discard(task.id)
            self._posted.pop(task.id, None)
            self._routes.release(task.id)
            self.wakeup.kick()

    async def _process_one(self, task: Task) -> None:
        extra = task_extra(task)
        try:
            outcome = await self._attempt(task)
        except errors.TaskFailure as exc:
            outcome = Outcome.failure(exc.fail_code, exc.fail_msg)
        except _GaveUp as exc:
            if exc.part != "storage" or self._stopping.is_set():
                raise
            outcome = Outcome.failure("500", f"storage unavailable: {exc.reason}")
        except Exception:
            log.exception("unexpected error while processing the task", extra=extra)
            outcome = Outcome.failure("500", "internal error while processing the task")
        if task.id in self._abandoned:
            outcome = None  # handed back at shutdown: the next worker runs it
        elif self._running[task.id].is_set() and outcome is not None:
            # Canceled (by the API, which already ended it) or taken by another worker:
            # the guarded finish below then changes nothing.
            log.info("task interrupted", extra=extra)
        if outcome is None:
            return
        final = outcome

        async def finish() -> Task | None:
            # Shielded: a stop must not leave a task half-settled.
            return await asyncio.shield(self.store.finish(task.id, final, worker_id=self.worker_id))

        done = await self._through_faults(task, "store", finish)
        if done is None and final.result_keys:
            await self._drop_unused_results(task, final.result_keys)
        if done is not None:
            log.info(
                "task finished: %s%s",
                done.state.value,
                f" ({done.fail_code}: {done.fail_msg})" if done.fail_code else "",
                extra=extra,
            )
            if self._observer is not None:
                self._observer.finished(done)

    async def _drop_unused_results(self, task: Task, keys: Sequence[str]) -> None:
        """The finish was refused: canceled meanwhile, or another worker took the task while
        this one was stopped past its lease. Unless the record is this attempt's own (a retried
        finish whose first commit did land), its files are nobody's: delete them, so that no
        result is stored twice."""
        try:
            record = await self.store.get_task(task.id)
        except Exception:
            return  # cannot tell: keep the files (retention deletes them in time)
        if record is not None and set(keys) & set(record.result_keys):
            return
        await self._delete_files(keys)
        log.info(
            "the task was ended elsewhere; this attempt's results were dropped",
            extra=task_extra(task),
        )

    async def _drop_earlier_results(self, task: Task) -> None:
        """The task runs again: delete the files an earlier attempt stored or began and never
        finished with (its process died before the finish), so that no result is stored
        twice. The task's record names none (it is not finished); this attempt's own files
        come after, under new names."""
        try:
            keys = [
                key
                async for batch in self.storage.list_files("results", starting=f"{task.id}_")
                for key, _written in batch
            ]
        except Exception as exc:
            log.warning(
                "an earlier attempt's files could not be listed (%s); retention deletes them",
                _short(exc),
                extra=task_extra(task),
            )
            return
        if keys:
            await self._delete_files(keys)
            log.info("deleted %d file(s) of an earlier attempt", len(keys), extra=task_extra(task))

    async def _through_faults(self, task: Task, part: str, step: Callable[[], Awaitable[R]]) -> R:
        """Run ``step``, retrying it with backoff while it meets infrastructure faults.

        Gives up (``_GaveUp``) once ``fault_retry_seconds`` have passed, or at once when the
        worker stops or the task is canceled; any other error is raised as it is.
        """
        deadline = time.monotonic() + self.config.fault_retry_seconds
        delay = FAULT_FIRST_DELAY
        while True:
            try:
                return await step()
            except Exception as exc:
                if not faults.is_infrastructure_fault(exc):
                    raise
                reason = faults.describe(exc)
                # Readiness learns of it at once; the health monitor clears it once a probe
                # of the same part succeeds again.
                self.health.fault(part, reason)
                cancel = self._running.get(task.id)
                if (
                    self._stopping.is_set()
                    or (cancel is not None and cancel.is_set())
                    or time.monotonic() + delay > deadline
                ):
                    raise _GaveUp(part, reason) from exc
                log.warning(
                    "%s fault, retrying in %.1f s: %s", part, delay, reason, extra=task_extra(task)
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(FAULT_MAX_DELAY, delay * 2)

    async def _attempt(self, task: Task) -> Outcome | None:
        if task.attempts > self.config.max_attempts:
            return Outcome.failure(
                "500", f"the task was interrupted {task.attempts - 1} times; giving up"
            )
        if task.attempts > 1:
            await self._drop_earlier_results(task)
        spec = catalogue.CATALOGUE[task.model]
        # a task taken in its create comes with the input the API validated a moment ago
        inp = self._validated.pop(task.id, None)
        if inp is None:
            inp = spec.input_model.model_validate(task.input)
        engine = self._routes.engine_of(task.id) or self.engines.for_model(task.model)
        if engine is None:
            return Outcome.failure("505", f"no engine serves {task.model} on this worker")
        inputs = await self._fetch_inputs(task, spec, spec.image_urls(inp))
        plan = spec.plan(inp, [image.size for image in inputs])
        job = EngineJob(
            task_id=task.id,
            model=task.model,
            input=task.input,
            seed=int(task.input.get("seed") or 0),
            plan=plan,
            images=inputs,
        )
        await self._ensure_loaded(engine)
        cancel = self._running[task.id]
        progress = _Progress(self._progress_reporter(task.id))
        if task.state is not TaskState.GENERATING:
            # (the claim started the task itself where nothing is fetched first: one round trip)
            started_generating = await self._through_faults(
                task,
                "store",
                partial(self.store.start_generating, task.id, worker_id=self.worker_id),
            )
            if not started_generating:
                return None  # lease lost (another worker has it now) or the task was canceled
            self._changed(task.id)
        # A thread engine's task claimed ahead waits here for the device, already "generating"
        # (as a job waiting in a batching engine's queue is): no store write between one
        # task's pictures and the next task's start.
        async with _DeviceTurn(None if is_async(engine) else self._device) as turn:
            started = time.monotonic()
            alone = partial(self._post_alone, asyncio.get_running_loop(), task, plan, cancel, turn)
            try:
                made = await self._routes.run(
                    task.id,
                    job,
                    progress,
                    cancel,
                    partial(self._in_engine_thread, task_id=task.id, then=alone),
                    time.monotonic,
                )
            except errors.TaskFailure:
                raise
            except Exception as exc:
                if not cancel.is_set():
                    log.warning("engine %s failed: %r", engine.name, exc, extra=task_extra(task))
                raise errors.EngineFailure(f"generation failed: {_short(exc)}") from exc
            turn.end()  # the pictures exist: the next task's turn on the device
        posted = self._posted.pop(task.id, None)
        if self._observer is not None:
            ended = posted.pictures_at if posted is not None else time.monotonic()
            self._observer.generated(task, ended - started)
        if isinstance(made, Pictures):
            if posted is not None:  # done on the engine's thread already
                parts = posted.parts
            else:
                parts = await self._postprocess(task, made, plan, progress, cancel)
            outputs = await self._settled(task, parts, cancel)
        else:
            outputs = [_Output(artifact, None) for artifact in made]
        keys = await self._store_results(task, outputs, plan)
        billable = len(outputs) - 1 if plan.layers else len(outputs)
        charge = spec.price(inp, billable, self._pricing(spec))
        return Outcome.success(tuple(keys), charge)

    async def _postprocess(
        self,
        task: Task,
        pictures: Pictures,
        plan: OutputPlan,
        progress: _Progress,
        cancel: threading.Event,
    ) -> list[list[_Output] | BaseException]:
        """The device is done: free its slot for the next task, then resize, encode and
        (where storage is a local write) store the outputs on the post-processing threads
        (in parallel, kept in order): each output's, or what it raised."""
        self._pictures_made(task.id)
        steps = list(pictures.outputs)
        if not steps:
            return []
        loop = asyncio.get_running_loop()
        start = progress.last
        done = 0
        # Each output's file is begun now, its name synced while the picture is encoded.
        ahead = [self._reserve(task.id, position, plan) for position in range(len(steps))]

        async def run(position: int, step: FinishFn) -> list[_Output]:
            nonlocal done
            made = await loop.run_in_executor(
                self._post_threads,
                partial(self._finish_output, task.id, plan, cancel, len(steps), position, step),
                ahead[position],
            )
            done += 1
            if done < len(steps):
                progress(start + (99 - start) * done // len(steps))
            return made

        async with self._post_slots:
            try:
                # every output ends before the slot is given back, even when one fails
                return await asyncio.gather(
                    *(run(position, step) for position, step in enumerate(steps)),
                    return_exceptions=True,
                )
            except asyncio.CancelledError:
                for reserved in ahead:  # outputs whose thread never ran them
                    _discard(reserved)
                raise

    async def _settled(
        self, task: Task, parts: list[list[_Output] | BaseException], cancel: threading.Event
    ) -> list[_Output]:
        """The outputs post-processing made, once it ended: nothing is kept (and the task
        fails) when it was canceled meanwhile or an output failed."""
        made = [output for part in parts if isinstance(part, list) for output in part]
        failed = [part for part in parts if isinstance(part, BaseException)]
        if cancel.is_set() or failed:
            await self._delete_files([output.key for output in made if output.key is not None])
        if cancel.is_set():
            raise errors.EngineFailure("canceled")
        for part in failed:
            if isinstance(part, errors.TaskFailure):
                raise part
            log.warning("post-processing failed: %r", part, extra=task_extra(task))
            raise errors.EngineFailure(f"generation failed: {_short(part)}") from part
        # No progress(100) here: the finish writes 100 with the success, in its own
        # transaction; a write of its own would be one more on every task's path.
        return made

    def _post_alone(
        self,
        loop: asyncio.AbstractEventLoop,
        task: Task,
        plan: OutputPlan,
        cancel: threading.Event,
        turn: _DeviceTurn,
        made: object,
    ) -> None:
        """On the engine's thread, the moment its pictures exist: a task alone in the worker
        (nothing claimed ahead of it, nothing in post-processing) with one output has it
        post-processed right here, as the engine alone would, the device given up first. A
        post-processing thread that has slept wakes late and runs slowly for a while, and
        the hop there goes through the loop (~0.5 ms a task, bench/peer_bench.py). With a
        backlog a task is claimed ahead and this does nothing: the outputs go to the
        post-processing threads and the engine's thread to the next generation."""
        if not isinstance(made, Pictures) or len(made.outputs) != 1:
            return
        if self._post or len(self._running) != 1:  # read off the loop: a hint, safe either way
            return
        pictures_at = time.monotonic()
        try:
            loop.call_soon_threadsafe(self._device_done, task.id, turn)
        except RuntimeError:
            return  # the loop closed: nobody waits for the task
        reserved = self._reserve(task.id, 0, plan)
        part: list[_Output] | BaseException
        try:
            part = self._finish_output(task.id, plan, cancel, 1, 0, made.outputs[0], reserved)
        except Exception as exc:
            part = exc
        self._posted[task.id] = _Posted(pictures_at, [part])

    def _device_done(self, task_id: str, turn: _DeviceTurn) -> None:
        turn.end()
        self._pictures_made(task_id)

    def _pictures_made(self, task_id: str) -> None:
        """On the loop: ``task_id``'s pictures exist; the claim loop may start the next
        generation now."""
        self._post.add(task_id)
        self._routes.release(task_id)
        self.wakeup.kick()

    def _reserve(self, task_id: str, position: int, plan: OutputPlan) -> Reserved | None:
        return self.storage.reserve_here(_result_key(task_id, position, extension_of(plan.format)))

    def _finish_output(
        self,
        task_id: str,
        plan: OutputPlan,
        cancel: threading.Event,
        count: int,
        position: int,
        step: FinishFn,
        reserved: Reserved | None,
    ) -> list[_Output]:
        """Output ``position`` of ``count``, on the calling thread: resized, encoded and
        (where storage is a local write) stored, in the file ``reserved`` for it."""
        try:
            if cancel.is_set():  # canceled while waiting for a thread: no work for nobody
                raise errors.EngineFailure("canceled")
            artifacts = list(step(self._encoding))
            if count > 1 and len(artifacts) > 1:
                # its artifacts' places in the results are not known here: stored later
                return [_Output(artifact, None) for artifact in artifacts]
            return [
                self._store_here(
                    task_id,
                    position if count > 1 else index,
                    artifact,
                    plan,
                    reserved if index == 0 else None,
                )
                for index, artifact in enumerate(artifacts)
            ]
        finally:
            _discard(reserved)  # unless stored: failed, canceled, or not taken

    def _store_here(
        self,
        task_id: str,
        index: int,
        artifact: Artifact,
        plan: OutputPlan,
        reserved: Reserved | None,
    ) -> _Output:
        """On a post-processing thread: store the file it has just encoded, where storage is a
        local write (no hop to another thread and back: ~0.5 ms a task, bench/peer_bench.py),
        under the key ``reserved`` for it where it has the reservation's extension. Anything in
        the way (a full disk, the wrong size) leaves it to ``_store_results``, which stores it
        with retries through faults, or fails the task as it should."""
        if (artifact.width, artifact.height) != (plan.width, plan.height):
            return _Output(artifact, None)
        try:
            if reserved is not None and reserved.key.endswith(f".{artifact.extension}"):
                reserved.put(artifact.data)
                return _Output(artifact, reserved.key)
            key = _result_key(task_id, index, artifact.extension)
            if self.storage.put_here(key, artifact.data, artifact.content_type):
                return _Output(artifact, key)
        except Exception as exc:
            log.debug("storing on the post-processing thread failed (%r); retried", exc)
        return _Output(artifact, None)

    async def _in_engine_thread(
        self,
        fn: Callable[..., R],
        *args: Any,
        task_id: str | None = None,
        begun: Callable[[], None] | None = None,
        then: Callable[[R], None] | None = None,
    ) -> R:
        """Run ``fn`` on an engine thread; once that thread runs it, the loop is told (the
        claim loop's wait for ``task_id``, then ``begun``: the store writes that wait for it).
        ``then``: called on that thread with what ``fn`` returned, before it is returned.
        The loop waits (``ENGINE_HANDOFF_S`` at most) for the thread to take the job."""
        loop = asyncio.get_running_loop()
        if task_id is None and begun is None and then is None:
            return await loop.run_in_executor(self._engine_threads, partial(fn, *args))

        taken = threading.Event()

        def run() -> R:
            taken.set()
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(self._engine_began, task_id or "", begun)
            made = fn(*args)
            if then is not None:
                then(made)
            return made

        future = loop.run_in_executor(self._engine_threads, run)
        # Hand the GIL over with the job: the woken thread cannot start while this thread runs
        # Python, which it would until its next system call (answering createTask: 0.3-0.6 ms
        # in bench/trace_one_task.py, against 0.15 with this wait). The device's start is what
        # the task waits on; the wait is bounded for the rare case of no idle engine thread.
        taken.wait(ENGINE_HANDOFF_S)
        return await future

    async def _ensure_loaded(self, engine: Engine, *, raising: bool = True) -> None:
        """Load ``engine`` once; a load that failed fails its tasks (501) rather than the worker."""
        key = id(engine)
        if key not in self._loaded and key not in self._load_errors:
            try:
                await self._in_engine_thread(engine.load)
                self._loaded.add(key)
            except Exception as exc:
                log.exception("engine %s failed to load", engine.name)
                self._load_errors[key] = f"engine {engine.name} failed to load: {_short(exc)}"
        if raising and key in self._load_errors:
            raise errors.EngineFailure(self._load_errors[key])

    async def _fetch_inputs(
        self, task: Task, spec: ModelSpec, urls: Sequence[str]
    ) -> list[Image.Image]:
        rule = spec.image_input
        if rule is None or not urls:
            return []
        many = rule.field == "image_urls"

        async def one(index: int, url: str) -> Image.Image:
            where = f"input.{rule.field}[{index}]" if many else f"input.{rule.field}"
            own = Links.parse(url)
            if own is not None:
                # this server's own upload or result: read from storage, not over HTTP
                try:
                    content = await self._through_faults(
                        task, "storage", partial(self.storage.read, own.key)
                    )
                except StoredFileNotFound as exc:
                    raise errors.InputImageError(
                        f"{where}: no such file on this server (deleted by retention?)"
                    ) from exc
            else:
                try:
                    fetched = await self._fetch(
                        url,
                        policy=self.config.net_policy,
                        max_bytes=rule.max_bytes,
                        timeout=self.config.fetch_timeout,
                    )
                except netguard.NetguardError as exc:
                    raise errors.InputImageError(f"{where}: {exc.reason}") from exc
                content = fetched.content
            # checked like any other input: size, sniffed format, pixels
            return await asyncio.to_thread(
                images.decode_input, content, rule, index=index, field=rule.field
            )

        return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(urls))))

    def _progress_reporter(self, task_id: str) -> Callable[[int], None]:
        """A thread-safe progress callback that writes at most every PROGRESS_INTERVAL."""
        loop = asyncio.get_running_loop()
        last = [0.0, -1]

        def report(percent: int) -> None:
            now = time.monotonic()
            percent = max(0, min(100, int(percent)))
            if percent <= last[1] or (now - last[0] < PROGRESS_INTERVAL and percent < 100):
                return
            last[0], last[1] = now, percent
            write = self._write_progress(task_id, percent)
            try:
                asyncio.run_coroutine_threadsafe(write, loop)
            except RuntimeError:
                write.close()  # the loop has closed (shutdown): the task is taken up again later

        return report

    async def _write_progress(self, task_id: str, percent: int) -> None:
        try:
            held = await self.store.set_progress(task_id, percent, worker_id=self.worker_id)
        except Exception:
            self._log_failure("store", "progress write failed", extra={"taskId": task_id})
            return
        if not held:
            # The task was canceled (another process ended it) or another worker took it: the
            # engine stops at its next step. This is how a separate worker process learns of a
            # cancel within one step.
            self.cancel(task_id)
        else:
            self._changed(task_id)

    async def _store_results(
        self, task: Task, outputs: Sequence[_Output], plan: OutputPlan
    ) -> list[str]:
        """The outputs' keys, in order, once every file is stored (those a post-processing
        thread has not stored are stored here, through faults). Nothing stored half: a task
        that cannot store all its results, or whose results break the plan, keeps none."""
        stored = [output.key for output in outputs if output.key is not None]
        try:
            _check_outputs([output.artifact for output in outputs], plan)
            keys: list[str] = []
            for index, (artifact, key) in enumerate(outputs):
                if key is None:
                    key = _result_key(task.id, index, artifact.extension)
                    put = partial(
                        self.storage.put, key, artifact.data, artifact.content_type, unique=True
                    )
                    await self._through_faults(task, "storage", put)
                    stored.append(key)
                keys.append(key)
        except BaseException:
            await self._delete_files(stored)
            raise
        return keys

    async def _delete_files(self, keys: Sequence[str]) -> None:
        """Delete files that no task will name (best effort: retention has the rest)."""
        for key in keys:
            with contextlib.suppress(Exception):
                await self.storage.delete(key)


class _Posted(NamedTuple):
    """A task's outputs post-processed on its engine's thread (``Worker._post_alone``)."""

    #: when its pictures existed (``time.monotonic``): its generation's end
    pictures_at: float
    #: as ``Worker._postprocess`` gives them: each output's, or what it raised
    parts: list[list[_Output] | BaseException]


class _Output(NamedTuple):
    """One output's file, and its key where a post-processing thread stored it already."""

    artifact: Artifact
    key: str | None


def _result_key(task_id: str, index: int, extension: str) -> str:
    """``results/<taskId>_<i>_<random>.<ext>``: unguessable, never written twice."""
    return f"results/{task_id}_{index}_{secrets.token_hex(16)}.{extension}"


def _discard(reserved: Reserved | None) -> None:
    if reserved is not None:
        reserved.discard()


class _DeviceTurn:
    """One task's turn on the device slots (``None``: an engine without one, a relay)."""

    def __init__(self, slots: asyncio.Semaphore | None) -> None:
        self._slots = slots
        self._held = False

    async def __aenter__(self) -> _DeviceTurn:
        if self._slots is not None:
            await self._slots.acquire()
            self._held = True
        return self

    def end(self) -> None:
        if self._held and self._slots is not None:
            self._held = False
            self._slots.release()

    async def __aexit__(self, *exc: object) -> None:
        self.end()


class _Progress:
    """The engine's progress callback, remembering the last percentage it reported (where
    post-processing's share of the bar begins)."""

    def __init__(self, report: Callable[[int], None]) -> None:
        self._report = report
        self.last = 0

    def __call__(self, percent: int) -> None:
        self.last = max(self.last, min(99, int(percent)))
        self._report(percent)


class _GaveUp(Exception):
    """A step met infrastructure faults past its retry budget (or the worker is stopping)."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def _check_outputs(artifacts: Sequence[Artifact], plan: OutputPlan) -> None:
    """The contract's pixel size is a promise: an engine that breaks it fails the task."""
    if not artifacts or len(artifacts) > plan.max_images:
        raise errors.TaskFailure(
            f"engine returned {len(artifacts)} images, expected 1 to {plan.max_images}"
        )
    for artifact in artifacts:
        if (artifact.width, artifact.height) != (plan.width, plan.height):
            raise errors.TaskFailure(
                f"engine returned {artifact.width}x{artifact.height}, "
                f"expected {plan.width}x{plan.height}"
            )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


#: how much lower than the engines' threads the post-processing threads run (nice levels)
POSTPROCESS_NICE = 5


def _lower_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (Linux, where threads have
    their own; elsewhere the call would renice the whole process, so it is skipped)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        )
    except OSError:
        log.warning("could not lower the engine threads' CPU priority", exc_info=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run_until_stopped(worker: Worker, stop: asyncio.Event) -> None:
    """Run ``worker`` until ``stop`` is set (used by the server's lifespan and the CLI)."""
    runner = asyncio.create_task(worker.run())
    await stop.wait()
    worker.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
