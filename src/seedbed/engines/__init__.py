"""Engines turn validated tasks into images; ``Engines`` routes each model to one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from seedbed.engines.base import Artifact, Engine, EngineJob, EngineLimits, OutputPlan, ProgressFn

__all__ = [
    "Artifact",
    "Engine",
    "EngineJob",
    "EngineLimits",
    "Engines",
    "OutputPlan",
    "ProgressFn",
    "default_engines",
]


class Engines:
    """The engines of one process, asked in order: the first that serves a model runs it."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        self._engines = tuple(engines)

    def __iter__(self) -> Iterator[Engine]:
        return iter(self._engines)

    def for_model(self, model: str) -> Engine | None:
        for engine in self._engines:
            if engine.serves(model):
                return engine
        return None

    def serves(self, model: str) -> bool:
        return self.for_model(model) is not None


def default_engines(*, sandbox_steps: int = 4, sandbox_step_seconds: float = 0.0) -> Engines:
    """The engines a deployment gets with no engine configuration: the sandbox for every model."""
    from seedbed.engines.sandbox import SandboxEngine

    return Engines([SandboxEngine(steps=sandbox_steps, step_seconds=sandbox_step_seconds)])
