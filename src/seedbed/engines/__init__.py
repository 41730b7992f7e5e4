"""Engines turn validated tasks into images; ``Engines`` routes each model to one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from seedbed.engines.base import Artifact, Engine, EngineJob, EngineLimits, OutputPlan, ProgressFn

__all__ = [
    "Artifact",
    "Engine",
    "EngineJob",
    "EngineLimits",
    "Engines",
    "OutputPlan",
    "ProgressFn",
    "build_engines",
    "default_engines",
]

if TYPE_CHECKING:
    from seedbed.config import Settings

log = logging.getLogger(__name__)

#: the engine name that means "the sandbox" in ``[models."<id>"]``
SANDBOX = "sandbox"


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


def build_engines(
    settings: Settings, *, only: Sequence[str] = (), device: str | None = None
) -> Engines:
    """The engines ``settings`` describe: ``[engines.NAME]`` pipelines serving ``[models]``.

    With no ``[models]`` table every model goes to the sandbox. ``only`` keeps the named
    engines (a worker per GPU serving some pipelines); ``device`` overrides their device.
    Nothing heavy is imported here: pipelines load in :meth:`Engine.load`, in the worker.
    Raises ``ValueError`` for a mapping that cannot work, naming the table and the rule.
    """
    if not settings.models:
        if settings.engines:
            raise ValueError("[engines] are configured but no [models] table maps a model to one")
        return default_engines(
            sandbox_steps=settings.sandbox_steps, sandbox_step_seconds=settings.sandbox_step_seconds
        )
    from seedbed import catalogue
    from seedbed.catalogue.base import Capability
    from seedbed.config import ModelRoute
    from seedbed.engines.diffusers import DiffusersEngine, extra_installed
    from seedbed.engines.sandbox import SandboxEngine

    for name in only:
        if name not in settings.engines and name != SANDBOX:
            raise ValueError(f"no engine {name!r} in [engines] (have: {_names(settings.engines)})")
    routes: dict[str, dict[str, ModelRoute]] = {}
    for model, route in settings.models.items():
        where = f'[models."{model}"]'
        spec = catalogue.CATALOGUE.get(model)
        if spec is None:
            raise ValueError(f"{where}: unknown model id (see `seedbed models list`)")
        if route.engine != SANDBOX:
            engine = settings.engines.get(route.engine)
            if engine is None:
                raise ValueError(
                    f"{where}: engine {route.engine!r} is not in [engines] "
                    f"(have: {_names(settings.engines)}, or 'sandbox')"
                )
            if spec.capability is not Capability.TEXT_TO_IMAGE and engine.max_input_images < 1:
                raise ValueError(
                    f"{where}: {model} takes an input image but engine {route.engine!r} takes "
                    "none (set max_input_images in its [engines] table)"
                )
            layers = route.layers or engine.layers
            if spec.capability is Capability.LAYERS and layers and layers > spec.max_layers:
                raise ValueError(
                    f"{where}: layers = {layers} is over {model}'s limit of {spec.max_layers}"
                )
        routes.setdefault(route.engine, {})[model] = route
    installed = extra_installed()
    engines: list[Engine] = []
    for name, models in routes.items():
        if only and name not in only:
            continue
        if name == SANDBOX:
            sandbox = SandboxEngine(
                steps=settings.sandbox_steps, step_seconds=settings.sandbox_step_seconds
            )
            engines.append(_Only(sandbox, frozenset(models)))
            continue
        config = settings.engines[name]
        engines.append(DiffusersEngine(name, config, models, device=device, available=installed))
    if not installed:
        lost = sorted(m for n, ms in routes.items() if n != SANDBOX for m in ms)
        if lost:
            log.warning(
                "torch and diffusers are not installed (pip install 'seedbed[diffusers]'): "
                "these models answer 505: %s",
                ", ".join(lost),
            )
    return Engines(engines)


def _names(engines: object) -> str:
    return ", ".join(sorted(engines)) if isinstance(engines, dict) and engines else "none"


class _Only:
    """An engine restricted to some models (the sandbox named in ``[models]``)."""

    def __init__(self, engine: Engine, models: frozenset[str]) -> None:
        self._engine = engine
        self._models = models
        self.name = engine.name
        self.limits = engine.limits

    def serves(self, model: str) -> bool:
        return model in self._models

    def load(self) -> None:
        self._engine.load()

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> list[Artifact]:
        return self._engine.run(job, progress, cancel)
