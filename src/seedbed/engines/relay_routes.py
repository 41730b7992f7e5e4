"""Slots and routes: which engine a claimed task runs on, and how many tasks a worker takes.

A worker has ``worker_concurrency`` engine threads, shared by its thread engines (diffusers,
the sandbox). A relay engine (:class:`~seedbed.engines.base.AsyncEngine`) runs on the event
loop instead, with ``max_concurrency`` slots of its own, so one worker holds
``worker_concurrency`` GPU tasks *and* hundreds of relay tasks at once.

A model's route (``["gpu", "ark"]``) is tried in order. An engine is passed over when it is
down (its circuit is open) and there is a next one, or when it has ``spill_after_seconds`` and
its estimated wait is longer: tasks it holds in this worker times its mean run time, divided
by how many it runs at once (1 for a pipeline, which renders one call at a time). A task
whose engine turns out to be down while it runs (:class:`~seedbed.engines.relay.UpstreamDown`)
moves to the next engine of its route that is up. The engine that runs a task is recorded in
the store (``seedbed tasks get ID --json`` shows it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from seedbed.engines import Engines
from seedbed.engines.base import (
    Artifact,
    AsyncEngine,
    Engine,
    EngineJob,
    Pictures,
    ProgressFn,
    is_async,
)
from seedbed.engines.relay import UpstreamDown

__all__ = ["RouteRunner"]

log = logging.getLogger(__name__)

#: weight of the newest run time in an engine's moving mean
EWMA_WEIGHT = 0.3

#: tasks claimed at most in one batch for relay engines' free slots
CLAIM_BATCH = 32

#: (task id, engine name, upstream task id) -> a store write
Recorder = Callable[[str, str, str | None], Awaitable[None]]
#: runs a blocking callable on one of the worker's engine threads
InThread = Callable[..., Awaitable[Any]]
T = TypeVar("T")


class RouteRunner:
    """Slot accounting and fallback for one worker (used from its event loop only)."""

    def __init__(self, engines: Engines, *, threads: int, record: Recorder | None = None) -> None:
        self.engines = engines
        self.threads = max(1, threads)
        self._record = record
        #: task id -> the engine whose slot it holds
        self._held: dict[str, Engine] = {}
        #: engine id -> tasks held on it
        self._count: dict[int, int] = {}
        self._threads_used = 0
        #: engine id -> moving mean of its run seconds
        self._mean: dict[int, float] = {}
        #: record writes in flight (kept referenced until done)
        self._pending: set[asyncio.Task[None]] = set()

    # -- slots -----------------------------------------------------------------------------
    def claimable(self, models: Sequence[str]) -> list[str]:
        """The models a claim may take now: those some engine of the route would run now."""
        return [model for model in models if self.choose(model) is not None]

    def choose(self, model: str) -> Engine | None:
        """The engine a task of ``model`` would run on now, or None to leave it queued."""
        route = self.engines.route(model)
        spilled: Engine | None = None
        for index, engine in enumerate(route):
            last = index == len(route) - 1
            if not last and not _up(engine):
                continue
            free = self._free(engine)
            if free and not self._spills(engine):
                return engine
            spill = _spill_after(engine)
            if spill is not None and not last:
                if free and spilled is None:
                    spilled = engine
                continue
            return engine if free else spilled
        return spilled

    async def claim_some(
        self, models: Sequence[str], claim: Callable[[list[str]], Awaitable[T | None]]
    ) -> list[T]:
        """One claimed task, or, when it is a relay engine's, up to that engine's free slots.

        A claim is one store write that the worker awaits before the next: 200 relay tasks
        submitted at once were claimed one write after another, and the last started seconds
        after the first (bench/relay_bench.py). After a first claim that takes a relay task,
        the relay engines' remaining slots are claimed by concurrent claims, which SQLite's
        group commit makes one transaction and PostgreSQL's ``SKIP LOCKED`` lets run side by
        side. Only models routed to relay engines alone are claimed so: a batch never takes a
        GPU slot's task. An idle worker still makes one claim per wake-up.
        """
        first = await claim(list(models))
        if first is None:
            return []
        relay_models, room = self._relay_room(models)
        model = getattr(first, "model", None)
        if model not in relay_models or room <= 1:
            return [first]
        more = await asyncio.gather(
            *(claim(relay_models) for _ in range(min(room, CLAIM_BATCH) - 1)),
            return_exceptions=True,
        )
        got = [first]
        for outcome in more:
            if isinstance(outcome, BaseException):
                # the tasks claimed beside it are held and must run: log and go on
                log.warning("one of a batch of claims failed: %s", outcome)
            elif outcome is not None:
                got.append(outcome)
        return got

    def _relay_room(self, models: Sequence[str]) -> tuple[list[str], int]:
        """The models whose whole route is relay engines and that one would run now, and the
        fewest free slots among the engines they would run on."""
        chosen: list[str] = []
        room: int | None = None
        for model in models:
            route = self.engines.route(model)
            if not route or not all(is_async(e) for e in route):
                continue
            engine = self.choose(model)
            if not isinstance(engine, AsyncEngine):
                continue
            chosen.append(model)
            free = engine.max_concurrency - self._count.get(id(engine), 0)
            room = free if room is None else min(room, free)
        return chosen, room or 0

    def take(self, task_id: str, model: str) -> Engine | None:
        """Hold a slot for a claimed task on the engine it will run on."""
        engine = self.choose(model)
        if engine is None:
            route = self.engines.route(model)
            if not route:
                return None
            engine = route[0]  # claimed in a race with another choice: run over the limit
        self._hold(task_id, engine)
        return engine

    def release(self, task_id: str) -> None:
        engine = self._held.pop(task_id, None)
        if engine is None:
            return
        key = id(engine)
        self._count[key] = self._count.get(key, 1) - 1
        if not is_async(engine):
            self._threads_used -= 1

    def engine_of(self, task_id: str) -> Engine | None:
        return self._held.get(task_id)

    def _hold(self, task_id: str, engine: Engine) -> None:
        self.release(task_id)
        self._held[task_id] = engine
        key = id(engine)
        self._count[key] = self._count.get(key, 0) + 1
        if not is_async(engine):
            self._threads_used += 1

    def _free(self, engine: Engine) -> bool:
        if is_async(engine):
            return self._count.get(id(engine), 0) < engine.max_concurrency
        return self._threads_used < self.threads

    def estimated_wait(self, engine: Engine) -> float:
        """Seconds a new task would wait for ``engine`` in this worker (0 before any run)."""
        mean = self._mean.get(id(engine))
        if mean is None:
            return 0.0
        parallel = engine.max_concurrency if is_async(engine) else 1
        return self._count.get(id(engine), 0) / parallel * mean

    def _spills(self, engine: Engine) -> bool:
        spill = _spill_after(engine)
        return spill is not None and self.estimated_wait(engine) > spill

    async def aclose(self) -> None:
        """Close the relay engines' HTTP pools of this loop (at the end of a worker's run)."""
        for engine in self.engines:
            aclose = getattr(engine, "aclose", None)
            if isinstance(engine, AsyncEngine) and aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing engine %s failed", engine.name)

    # -- running ---------------------------------------------------------------------------
    async def run(
        self,
        task_id: str,
        job: EngineJob,
        progress: ProgressFn,
        cancel: threading.Event,
        in_thread: InThread,
        clock: Callable[[], float],
    ) -> list[Artifact] | Pictures:
        """Run the task on its engine; on :class:`UpstreamDown`, on the route's next ones."""
        engine = self._held.get(task_id) or self.engines.for_model(job.model)
        if engine is None:
            raise UpstreamDown(f"no engine serves {job.model}")
        route = self.engines.route(job.model)
        later = list(route[route.index(engine) + 1 :]) if engine in route else []
        while True:
            # not awaited: a record for operators, kept off the device's critical path
            note_now = partial(self._spawn_note, task_id, engine.name, None)
            started = clock()
            try:
                if isinstance(engine, AsyncEngine):
                    note_now()

                    def note(upstream_id: str, name: str = engine.name) -> None:
                        self._spawn_note(task_id, name, upstream_id)

                    artifacts: list[Artifact] | Pictures = await engine.run_async(
                        job, progress, cancel, note
                    )
                else:
                    # recorded once the engine's thread runs: a store write on the loop while
                    # it starts holds the GIL that thread waits for (~0.5 ms per task)
                    artifacts = await in_thread(engine.run, job, progress, cancel, begun=note_now)
            except UpstreamDown as exc:
                nxt = next((e for e in later if _up(e)), None)
                if nxt is None or cancel.is_set():
                    raise
                later = later[later.index(nxt) + 1 :]
                log.warning(
                    "engine %s is down (%s); the task moves on to %s",
                    engine.name,
                    exc.fail_msg,
                    nxt.name,
                    extra={"taskId": task_id},
                )
                engine = nxt
                self._hold(task_id, engine)
                continue
            self._learn(engine, clock() - started)
            return artifacts

    def _learn(self, engine: Engine, seconds: float) -> None:
        key = id(engine)
        mean = self._mean.get(key)
        self._mean[key] = seconds if mean is None else mean + EWMA_WEIGHT * (seconds - mean)

    async def _note(self, task_id: str, engine: str, upstream_id: str | None) -> None:
        if self._record is None:
            return
        try:
            await self._record(task_id, engine, upstream_id)
        except Exception:  # a record is for operators: never worth failing the task
            log.exception("could not record the task's engine", extra={"taskId": task_id})

    def _spawn_note(self, task_id: str, engine: str, upstream_id: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._note(task_id, engine, upstream_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _up(engine: Engine) -> bool:
    return engine.is_up() if is_async(engine) else True


def _spill_after(engine: Engine) -> float | None:
    """The engine's ``spill_after_seconds`` (a relay's own, or a pipeline's settings')."""
    value = getattr(engine, "spill_after_seconds", None)
    if value is None:
        value = getattr(getattr(engine, "settings", None), "spill_after_seconds", None)
    return float(value) if isinstance(value, int | float) else None
