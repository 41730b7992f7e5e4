"""The worker's pipeline under a backlog (issue 18): does the device ever wait for the CPU?

A worker with one device slot serves a backlog of tasks on the model stand-in
(``engines/standin.py``: it holds the slot for M seconds off the CPU, then returns 1024x1024-area
pictures that post-processing resizes to the contract's size and encodes). Each scenario runs
in two modes, alternating, in one process, on the same store (SQLite, WAL) and local storage:

- ``before``: the engine resizes and encodes in its own thread, holding the device slot, with
  Pillow's PNG encoder (what the worker did before issue 18);
- ``after``: the pipeline (``Pictures``; post-processing on ``postprocess_concurrency`` threads,
  one per core) with the fast PNG writer (ISA-L).

Printed per scenario and mode: the device's rate as a fraction of 1/M (from the first to the
last moment the device finished a task and gave its slot up: (n-1)·M over that span), the
end-to-end rate (n·M over the wall time from the first claim to the last finish, which
includes the last task's post-processing tail), and the server's CPU seconds per image
outside the model (``time.process_time`` of the process, every thread, over the batch: the
stand-in's hold costs none). The machine may be shared: compare modes within one run, and
repeat (``--rounds``).

Usage: ``python bench/pipeline_bench.py [--rounds 2] [--only 512,4k-png]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from seedbed import catalogue, images
from seedbed.engines import Engines
from seedbed.engines.base import Artifact, EngineJob, Pictures, ProgressFn
from seedbed.engines.standin import StandinEngine
from seedbed.storage.local import LocalStorage
from seedbed.store import open_store
from seedbed.store.base import Store
from seedbed.tasks import NewKey, NewTask, Task, new_task_id
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    input: dict[str, Any]
    hold: float  # M, seconds
    tasks: int


SCENARIOS = [
    Scenario("512-jpeg", "bytedance/seedream", {"image_size": "square"}, 0.1, 40),
    Scenario("2k-jpeg", "seedream/4.5-text-to-image", {"quality": "basic"}, 1.0, 5),
    Scenario("4k-jpeg", "seedream/4.5-text-to-image", {"quality": "high"}, 1.0, 8),
    Scenario("2k-png", "seedream/5-lite-text-to-image", {"quality": "basic"}, 1.0, 5),
    Scenario("4k-png", "seedream/5-lite-text-to-image", {"quality": "ultra"}, 1.0, 8),
]


class TimedStandin(StandinEngine):
    """The stand-in, recording when each hold began and ended, and when each run gave the
    device slot up (the worker may post-process a task alone on the engine's thread after
    that: the moment the run returns, or the worker's observer is told, is later)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.holds: list[tuple[float, float]] = []
        self.freed: list[float] = []

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        start = time.perf_counter()
        pictures = super().run(job, progress, cancel)
        end = time.perf_counter()
        self.holds.append((start, end))
        self.freed.append(end)
        return pictures


class SerialStandin(TimedStandin):
    """The stand-in as engines were before the pipeline: resize and encode on the engine's
    thread, holding the device slot until the files exist."""

    def run(  # type: ignore[override]
        self, job: EngineJob, progress: ProgressFn, cancel: threading.Event
    ) -> list[Artifact]:
        pictures = super().run(job, progress, cancel)
        made = [a for step in pictures.outputs for a in step(images.Encoding())]
        self.freed[-1] = time.perf_counter()  # the slot was held until the files existed
        return made


class Timeline:
    """When each task ended."""

    def __init__(self) -> None:
        self.finished: list[float] = []


class Observer:
    """The worker's observer, writing the timeline."""

    def __init__(self, timeline: Timeline) -> None:
        self.t = timeline

    def changed(self, task_id: str) -> None:
        pass

    def generated(self, task: Task, seconds: float) -> None:
        pass

    def finished(self, task: Task) -> None:
        self.t.finished.append(time.perf_counter())


async def _backlog(store: Store, scenario: Scenario, count: int) -> None:
    spec = catalogue.get(scenario.model)
    validated = catalogue.validate_input(spec, {"prompt": "a lake at dawn", **scenario.input})
    for index in range(count):
        await store.create_task(
            NewTask(
                id=new_task_id(),
                key_id="bench",
                model=scenario.model,
                param="{}",
                input={**validated.model_dump(mode="json"), "seed": index},
                callback_url=None,
                reserve=spec.max_price(validated),
            ),
            open_task_cap=100_000,
        )


async def _run(root: Path, scenario: Scenario, mode: str) -> dict[str, float]:
    store = open_store(f"sqlite:///{root / 'db.sqlite'}")
    await store.open()
    try:
        if await store.get_key("bench") is None:
            await store.create_key(
                NewKey(id="bench", name="bench", key_hash="bench", credits=Decimal(10**9))
            )
        hold_ms = scenario.hold * 1000
        engine = (
            TimedStandin(hold_ms=hold_ms) if mode == "after" else SerialStandin(hold_ms=hold_ms)
        )
        timeline = Timeline()

        def worker() -> Worker:
            return Worker(
                store=store,
                storage=LocalStorage(root / "files"),
                engines=Engines([engine]),
                wakeup=Wakeup(None),
                config=WorkerConfig(concurrency=1, poll_seconds=0.5, engine_nice=0),
                observer=Observer(timeline),
            )

        saved = images._isal
        if mode == "before":
            images._isal = lambda: None  # type: ignore[assignment]  # Pillow's PNG, as before
        try:
            # warm-up: the stand-in's pictures for this size, the encoders, the code paths
            await _backlog(store, scenario, 1)
            first = worker()
            await first.run(burst=True)
            first.close()
            timeline.finished.clear()
            engine.holds.clear()
            engine.freed.clear()
            await _backlog(store, scenario, scenario.tasks)
            measured = worker()
            cpu, wall = time.process_time(), time.perf_counter()
            await measured.run(burst=True)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            measured.close()
        finally:
            images._isal = saved
        n, hold = scenario.tasks, scenario.hold
        span = engine.freed[-1] - engine.freed[0]
        busy = sum(end - start for start, end in engine.holds)
        return {
            "device": (n - 1) * hold / span,
            # a sleeping thread wakes late on a loaded machine (a GPU would not): the share of
            # the span the stand-in held the device, whatever each hold took
            "busy": busy / (engine.holds[-1][1] - engine.holds[0][0]),
            "end_to_end": n * hold / wall,
            "cpu_per_image": cpu / n,
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="seedbed-pipeline-") as tmp:
        for round_ in range(args.rounds):
            for scenario in chosen:
                modes = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                for mode in modes:
                    root = Path(tmp) / f"{scenario.name}-{mode}-{round_}"
                    root.mkdir()
                    figures = asyncio.run(_run(root, scenario, mode))
                    results.setdefault((scenario.name, mode), []).append(figures)
                    print(
                        f"round {round_ + 1} {scenario.name:9s} {mode:6s} "
                        f"device {figures['device']:.3f} of 1/M, end-to-end "
                        f"{figures['end_to_end']:.3f}, busy {figures['busy']:.3f}, "
                        f"CPU {figures['cpu_per_image']:.3f} s/image",
                        flush=True,
                    )
    print("\nscenario   mode    device/(1/M)    end-to-end      device busy     CPU s/image")
    for (name, mode), runs in results.items():

        def span(key: str, runs: list[dict[str, float]] = runs) -> str:
            values = [r[key] for r in runs]
            if len(values) == 1:
                return f"{values[0]:.3f}"
            return f"{min(values):.3f}-{max(values):.3f} (median {statistics.median(values):.3f})"

        print(
            f"{name:10s} {mode:6s}  {span('device'):15s} {span('end_to_end'):15s} "
            f"{span('busy'):15s} "
            f"{span('cpu_per_image')}"
        )


if __name__ == "__main__":
    main()
