"""Fixture engines for task-control tests: slow, stepwise, and honest about when they stopped."""

from __future__ import annotations

import threading
import time

from seedbed.engines.base import Artifact, EngineJob, EngineLimits, Pictures, ProgressFn
from seedbed.engines.sandbox import SandboxEngine
from seedbed.errors import EngineFailure


class SteppingEngine:
    """Works in ``steps`` steps of ``step_seconds`` each (a plain sleep: like a model's
    denoising step, it cannot be interrupted midway), checks ``cancel`` between steps, reports
    progress after each, then renders like the sandbox.

    ``step`` is the step in progress; ``stopped_at`` the step at which a cancel was noticed.
    """

    name = "stepping"
    limits = EngineLimits()

    def __init__(self, *, steps: int = 10, step_seconds: float = 0.2) -> None:
        self.steps = steps
        self.step_seconds = step_seconds
        self.step = 0
        self.started = threading.Event()
        self.stopped_at: int | None = None
        self.runs = 0
        self._render = SandboxEngine()

    def serves(self, model: str) -> bool:
        return True

    def load(self) -> None:
        pass

    def run(
        self, job: EngineJob, progress: ProgressFn, cancel: threading.Event
    ) -> list[Artifact] | Pictures:
        self.runs += 1
        self.stopped_at = None
        self.started.set()
        for i in range(self.steps):
            self.step = i
            if cancel.is_set():
                self.stopped_at = i
                raise EngineFailure("canceled")
            time.sleep(self.step_seconds)
            progress(min(99, (i + 1) * 100 // self.steps))
        self.step = self.steps
        return self._render.run(job, progress, cancel)
