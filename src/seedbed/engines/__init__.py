"""Engines turn validated tasks into images; ``Engines`` routes each model to one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from seedbed.engines.base import (
    Artifact,
    Engine,
    EngineJob,
    EngineLimits,
    OutputPlan,
    Pictures,
    ProgressFn,
)

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
    from seedbed.catalogue.base import ModelSpec
    from seedbed.config import ModelRoute, RelayEngineSettings, Settings
    from seedbed.netguard import NetPolicy

log = logging.getLogger(__name__)

#: the engine name that means "the sandbox" in ``[models."<id>"]``
SANDBOX = "sandbox"


class Engines:
    """The engines of one process and the route of each model.

    A model's route is the engines of its ``[models]`` entry, in order (``["gpu", "ark"]``);
    ``for_model`` answers the first that serves it. Without routes (the sandbox default, or
    engines handed in by tests), the first engine that serves a model runs it.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        routes: Mapping[str, Sequence[Engine]] | None = None,
    ) -> None:
        self._engines = tuple(engines)
        self._routes = {model: tuple(route) for model, route in (routes or {}).items()}

    def __iter__(self) -> Iterator[Engine]:
        return iter(self._engines)

    def for_model(self, model: str) -> Engine | None:
        route = self.route(model)
        return route[0] if route else None

    def route(self, model: str) -> tuple[Engine, ...]:
        """The engines that may run ``model``, in the order they are tried."""
        if self._routes:
            return tuple(e for e in self._routes.get(model, ()) if e.serves(model))
        for engine in self._engines:
            if engine.serves(model):
                return (engine,)
        return ()

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
    from seedbed import catalogue, netguard
    from seedbed.config import ArkEngineSettings, DiffusersEngineSettings, RelayEngineSettings
    from seedbed.engines.diffusers import DiffusersEngine, extra_installed
    from seedbed.engines.relay import api_key_from_env
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
        if len(set(route.route)) != len(route.route):
            raise ValueError(f"{where}: the route names an engine twice: {list(route.route)}")
        for engine_name in route.route:
            if engine_name != SANDBOX:
                _check_route(where, model, spec, engine_name, settings, route)
            routes.setdefault(engine_name, {})[model] = route
    for name, config in settings.engines.items():
        if isinstance(config, ArkEngineSettings):
            for model in config.model_ids:
                if model not in catalogue.CATALOGUE:
                    raise ValueError(f"[engines.{name}].model_ids: unknown model id {model!r}")
        if isinstance(config, RelayEngineSettings) and (not only or name in only):
            # every configured upstream, routed or not: a missing key is a deployment error
            api_key_from_env(name, config.api_key_env)
    needs_diffusers = any(
        isinstance(settings.engines.get(name), DiffusersEngineSettings) for name in routes
    )
    installed = extra_installed() if needs_diffusers else True
    net_policy = netguard.NetPolicy.from_cidrs(settings.allow_network)
    built: dict[str, Engine] = {}
    for name, models in routes.items():
        if only and name not in only:
            continue
        if name == SANDBOX:
            sandbox = SandboxEngine(
                steps=settings.sandbox_steps, step_seconds=settings.sandbox_step_seconds
            )
            built[name] = _Only(sandbox, frozenset(models))
            continue
        config = settings.engines[name]
        if isinstance(config, DiffusersEngineSettings):
            built[name] = DiffusersEngine(name, config, models, device=device, available=installed)
        else:
            built[name] = _relay(name, config, frozenset(models), net_policy)
    if not installed:
        lost = sorted(
            m
            for n, ms in routes.items()
            if isinstance(settings.engines.get(n), DiffusersEngineSettings)
            for m in ms
        )
        if lost:
            log.warning(
                "torch and diffusers are not installed (pip install 'seedbed[diffusers]'): "
                "these models answer 505 unless their route has another engine: %s",
                ", ".join(lost),
            )
    model_routes = {
        model: [built[n] for n in route.route if n in built]
        for model, route in settings.models.items()
    }
    return Engines(list(built.values()), model_routes)


def _check_route(
    where: str,
    model: str,
    spec: ModelSpec,
    engine_name: str,
    settings: Settings,
    route: ModelRoute,
) -> None:
    """Refuse (``ValueError`` naming the entry) an engine of a route that cannot serve it."""
    from seedbed.catalogue.base import Capability
    from seedbed.config import ArkEngineSettings, DiffusersEngineSettings

    engine = settings.engines.get(engine_name)
    if engine is None:
        raise ValueError(
            f"{where}: engine {engine_name!r} is not in [engines] "
            f"(have: {_names(settings.engines)}, or 'sandbox')"
        )
    if spec.capability is not Capability.TEXT_TO_IMAGE and engine.max_input_images < 1:
        raise ValueError(
            f"{where}: {model} takes an input image but engine {engine_name!r} takes "
            "none (set max_input_images in its [engines] table)"
        )
    if isinstance(engine, DiffusersEngineSettings):
        layers = route.layers or engine.layers
        if spec.capability is Capability.LAYERS and layers and layers > spec.max_layers:
            raise ValueError(
                f"{where}: layers = {layers} is over {model}'s limit of {spec.max_layers}"
            )
    elif isinstance(engine, ArkEngineSettings):
        from seedbed.engines.ark import ark_model_ids

        if model not in ark_model_ids(engine):
            raise ValueError(
                f"{where}: engine {engine_name!r} (Ark) cannot serve {model}: Ark has no model "
                f"id for it (add one under [engines.{engine_name}].model_ids if it does now)"
            )


def _relay(
    name: str, config: RelayEngineSettings, models: frozenset[str], net_policy: NetPolicy
) -> Engine:
    """An ``ark`` or ``kie`` engine; its key comes from the variable ``api_key_env`` names."""
    from seedbed.config import ArkEngineSettings, KieEngineSettings
    from seedbed.engines.relay import api_key_from_env

    key = api_key_from_env(name, config.api_key_env)
    if isinstance(config, ArkEngineSettings):
        from seedbed.engines.ark import ArkEngine

        return ArkEngine(name, config, models, api_key=key, net_policy=net_policy)
    assert isinstance(config, KieEngineSettings)
    from seedbed.engines.kie import KieEngine

    return KieEngine(name, config, models, api_key=key, net_policy=net_policy)


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

    def run(
        self, job: EngineJob, progress: ProgressFn, cancel: threading.Event
    ) -> list[Artifact] | Pictures:
        return self._engine.run(job, progress, cancel)
