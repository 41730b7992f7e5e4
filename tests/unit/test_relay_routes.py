"""Relay engine settings, start-up refusals and the worker's slots and routes (issue 15)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from seedbed.config import Settings
from seedbed.engines import build_engines
from seedbed.engines.base import Artifact, EngineJob, EngineLimits, ProgressFn, is_async
from seedbed.engines.relay import TASKS_PER_POOL, CircuitBreaker, _Pools
from seedbed.engines.relay_routes import RouteRunner

T2I = "seedream/4.5-text-to-image"
KEY_ENV = "SEEDBED_TEST_ROUTES_KEY"


def ark(**extra: object) -> dict[str, object]:
    return {"kind": "ark", "base_url": "http://127.0.0.1:9", "api_key_env": KEY_ENV, **extra}


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "k-123")


def test_a_route_list_and_engine_kinds_parse() -> None:
    settings = Settings(
        engines={"ark": ark(), "gpu": {"pipeline": "some/repo"}},
        models={T2I: ["gpu", "ark"], "seedream/4.5-edit": "ark"},
    )
    assert settings.models[T2I].route == ("gpu", "ark")
    assert settings.models["seedream/4.5-edit"].route == ("ark",)
    assert settings.engines["gpu"].kind == "diffusers"
    assert settings.engines["ark"].kind == "ark"


def test_a_route_naming_an_unknown_engine_is_refused_naming_the_entry() -> None:
    settings = Settings(engines={"ark": ark()}, models={T2I: ["ark", "nowhere"]})
    with pytest.raises(ValueError, match=r'\[models\."seedream/4\.5-text-to-image"\].*nowhere'):
        build_engines(settings)


def test_an_ark_engine_cannot_serve_a_model_without_an_ark_id() -> None:
    settings = Settings(engines={"ark": ark()}, models={"seedream/5-pro-text-to-image": "ark"})
    with pytest.raises(ValueError, match=r"5-pro-text-to-image.*cannot serve"):
        build_engines(settings)
    # an id in model_ids makes it servable
    mapped = Settings(
        engines={"ark": ark(model_ids={"seedream/5-pro-text-to-image": "ep-1"})},
        models={"seedream/5-pro-text-to-image": "ark"},
    )
    assert build_engines(mapped).serves("seedream/5-pro-text-to-image")


def test_an_unset_key_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    settings = Settings(engines={"ark": ark()}, models={T2I: "ark"})
    with pytest.raises(ValueError, match=f"^{KEY_ENV} is not set"):
        build_engines(settings)


class Pipeline:
    """A thread engine (like a diffusers pipeline) with ``spill_after_seconds`` in its settings."""

    name = "gpu"
    limits = EngineLimits()

    def __init__(self, spill: float | None) -> None:
        self.settings = SimpleNamespace(spill_after_seconds=spill)

    def serves(self, model: str) -> bool:
        return True

    def load(self) -> None:
        pass

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> list[Artifact]:
        raise AssertionError("not run here")


def _engines(spill: float | None) -> tuple[RouteRunner, Pipeline, object]:
    from seedbed.engines import Engines

    relay = build_engines(Settings(engines={"ark": ark()}, models={T2I: "ark"})).for_model(T2I)
    assert relay is not None and is_async(relay)
    gpu = Pipeline(spill)
    return RouteRunner(Engines([gpu, relay], {T2I: [gpu, relay]}), threads=2), gpu, relay


def test_relay_slots_are_apart_from_the_engine_threads() -> None:
    runner, gpu, _relay = _engines(spill=None)
    assert runner.take("a", T2I) is gpu
    assert runner.take("b", T2I) is gpu
    # both threads busy and no spill: the GPU's tasks wait (the relay is not a spill target)
    assert runner.claimable([T2I]) == []
    runner.release("a")
    assert runner.claimable([T2I]) == [T2I]


def test_a_long_estimated_wait_spills_to_the_next_engine() -> None:
    runner, gpu, relay = _engines(spill=5.0)
    runner._learn(gpu, 10.0)  # a render takes 10 s
    assert runner.take("a", T2I) is gpu  # nothing ahead of it: no wait
    assert runner.estimated_wait(gpu) == 10.0
    assert runner.take("b", T2I) is relay  # would wait 10 s > 5 s: spills
    assert runner.choose(T2I) is relay  # the two threads are not what limits relays


def test_a_down_engine_is_passed_over_unless_it_is_the_last() -> None:
    runner, gpu, relay = _engines(spill=None)
    breaker: CircuitBreaker = relay.circuit  # type: ignore[attr-defined]
    for _ in range(breaker.threshold):
        breaker.failure()
    assert not relay.is_up()  # type: ignore[attr-defined]
    from seedbed.engines import Engines

    alone = RouteRunner(Engines([relay], {T2I: [relay]}), threads=2)  # type: ignore[list-item]
    assert alone.choose(T2I) is relay  # the last of its route: claimed, fails at once
    assert runner.choose(T2I) is gpu


class Queue:
    """The store's claim as the worker calls it: takes the oldest task of the given models."""

    def __init__(self, models: list[str]) -> None:
        self.tasks = [SimpleNamespace(id=f"t{i}", model=m) for i, m in enumerate(models)]
        self.calls = 0

    async def claim(self, models: list[str]) -> SimpleNamespace | None:
        self.calls += 1
        await asyncio.sleep(0)  # a store round trip: the batch's claims overlap
        for task in self.tasks:
            if task.model in models:
                self.tasks.remove(task)
                return task
        return None


async def test_a_relay_task_claimed_brings_a_batch_for_the_free_relay_slots() -> None:
    relay = build_engines(
        Settings(engines={"ark": ark(max_concurrency=5)}, models={T2I: "ark"})
    ).for_model(T2I)
    assert relay is not None
    from seedbed.engines import Engines

    runner = RouteRunner(Engines([relay], {T2I: [relay]}), threads=2)
    queue = Queue([T2I] * 12)
    got = await runner.claim_some([T2I], queue.claim)
    assert [t.id for t in got] == ["t0", "t1", "t2", "t3", "t4"]  # the 5 slots, one batch
    for task in got:
        runner.take(task.id, T2I)
    assert runner.claimable([T2I]) == []  # the slots are full: no claim over the limit
    runner.release("t0")
    assert [t.id for t in await runner.claim_some([T2I], queue.claim)] == ["t5"]


async def test_an_idle_worker_claims_once_and_a_gpu_route_one_task_at_a_time() -> None:
    runner, _gpu, _relay = _engines(spill=None)  # T2I routed to the GPU first
    idle = Queue([])
    assert await runner.claim_some([T2I], idle.claim) == []
    assert idle.calls == 1
    queue = Queue([T2I] * 4)
    got = await runner.claim_some([T2I], queue.claim)
    assert len(got) == 1 and queue.calls == 1  # a GPU slot's task: never batched


def test_relay_tasks_spread_over_small_http_pools_sharing_one_tls_context() -> None:
    relay = build_engines(
        Settings(engines={"ark": ark(max_concurrency=40)}, models={T2I: "ark"})
    ).for_model(T2I)
    pools = _Pools(relay.settings)  # type: ignore[union-attr]
    held = [pools.acquire() for _ in range(40)]
    assert len(set(held)) == 40 // TASKS_PER_POOL
    assert all(held.count(i) == TASKS_PER_POOL for i in set(held))
    contexts = {id(pools.client(i)._transport._pool._ssl_context) for i in set(held)}  # type: ignore[attr-defined]
    assert len(contexts) == 1
    pools.release(held[0])
    assert pools.acquire() == held[0]  # a freed place is filled before a new pool is made
    asyncio.run(pools.aclose())
