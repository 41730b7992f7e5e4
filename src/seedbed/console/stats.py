"""Queue depth and throughput over time, for the admin page's charts.

The store keeps no history of the queue, so the server samples it: every ``interval`` seconds
one ``queue_summary()`` (index entries only, a few milliseconds with 100,000 tasks queued) and
this process's count of ended tasks (``seedbed_tasks_finished``: its in-process worker and
cancels; tasks ended by separate ``seedbed worker`` processes show in the depth, not in the
throughput). The last ``keep`` samples stay in memory: an hour at the default 10 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from seedbed.metrics import Metrics
from seedbed.store.base import Store

__all__ = ["QueueSampler", "Sample"]


@dataclass(frozen=True, kw_only=True)
class Sample:
    time: int  # Unix ms
    depth: int
    #: tasks this process ended since the previous sample, per minute
    finished_per_minute: float


class QueueSampler:
    def __init__(
        self, store: Store, metrics: Metrics, *, interval: float = 10.0, keep: int = 360
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.interval = interval
        self._samples: deque[Sample] = deque(maxlen=keep)
        self._last: tuple[float, float] | None = None  # (monotonic time, finished count)
        self._stop = asyncio.Event()

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples)

    async def sample(self) -> Sample:
        summary = await self._store.queue_summary()
        now = time.monotonic()
        finished = self._finished_total()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (finished - self._last[1]) * 60.0 / (now - self._last[0])
        self._last = (now, finished)
        taken = Sample(time=int(time.time() * 1000), depth=summary.depth, finished_per_minute=rate)
        self._samples.append(taken)
        return taken

    def _finished_total(self) -> float:
        return sum(
            sample.value
            for metric in self._metrics.tasks_finished.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.sample()
            try:
                async with asyncio.timeout(self.interval):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()
