"""``seedbed.client`` against a real seedbed server on loopback (real HTTP, SQLite, worker)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from catalogue_cases import MINIMAL
from conftest import FileServer, LiveServer, make_settings, serve_in_thread
from images_util import png_bytes
from seedbed import catalogue
from seedbed.client import (
    NO_RETRY,
    AsyncClient,
    BadRequest,
    Client,
    Generation,
    InsufficientCredits,
    Maintenance,
    ModelUnavailable,
    PayloadTooLarge,
    PollSchedule,
    RetryPolicy,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskState,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)

T2I = "seedream/4.5-text-to-image"
QUICK_RETRY = RetryPolicy(initial=0.05, max_delay=2.0)


def client_for(server: LiveServer, key: str, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", QUICK_RETRY)
    return Client(key, base_url=server.url, trust_env=False, **kwargs)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def loopback_input(model: str, files: FileServer) -> dict[str, Any]:
    """The model's smallest valid input, its images served by the loopback file server."""
    inp = dict(MINIMAL[model])
    if "image_urls" in inp:
        inp["image_urls"] = [files.add("/a.png", png_bytes(300, 200))]
    if "image_url" in inp:
        inp["image_url"] = files.add("/photo.png", png_bytes(900, 600))
    return inp


@pytest.mark.parametrize("model", list(catalogue.CATALOGUE))
def test_generate_every_model_downloads_images_of_the_contract_size(
    server: LiveServer, files: FileServer, tmp_path: Path, model: str
) -> None:
    key, _ = server.add_key(credits=100)
    inp = loopback_input(model, files)
    spec = catalogue.CATALOGUE[model]
    plan = spec.plan(spec.input_model.model_validate(inp), [(900, 600)])
    seen: list[Task] = []
    with client_for(server, key) as client:
        done = client.generate(model, inp, out=tmp_path / "out", on_progress=seen.append)
    assert done.task.state is TaskState.SUCCESS and done.task.model == model
    assert done.task.input == inp  # param, double-encoded by the server, read back
    assert len(done.files) == len(done.task.result_urls) >= 1
    assert all(path.parent == tmp_path / "out" for path in done.files)
    assert size_of(done.files[0]) == (plan.width, plan.height)
    if plan.layers:
        assert len(done.files) >= 2 and all(p.suffix == ".png" for p in done.files[1:])
    assert seen[-1].state is TaskState.SUCCESS and seen[-1].progress == 100
    assert done.task.credits_consumed is not None and done.task.credits_consumed > 0


def test_credits_follow_the_charges(server: LiveServer, tmp_path: Path) -> None:
    key, _ = server.add_key(credits="100")
    with client_for(server, key) as client:
        assert client.credits() == Decimal(100)
        done = client.generate(T2I, {"prompt": "a fox", "quality": "high"}, out=tmp_path)
        assert done.task.credits_consumed == Decimal("6.5")
        assert client.credits() == Decimal("93.5")
        assert size_of(done.files[0]) == (4096, 4096)


def test_async_client_generates_against_the_server(
    server: LiveServer, files: FileServer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    inp = loopback_input("seedream/5-lite-image-to-image", files)

    async def run() -> tuple[Generation, Task, Decimal]:
        async with AsyncClient(key, base_url=server.url, trust_env=False) as client:
            done = await client.generate("seedream/5-lite-image-to-image", inp, out=tmp_path)
            return done, await client.get_task(done.task.task_id), await client.credits()

    done, again, balance = asyncio.run(run())
    assert balance == Decimal("94.5")
    assert again == done.task  # raw is not compared; every field is
    assert size_of(done.files[0]) == (2048, 2048)


def test_a_failed_task_raises_task_failed(
    server: LiveServer, files: FileServer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    missing = files.url("/nothing-here.png")
    out = tmp_path / "out"
    with client_for(server, key) as client:
        with pytest.raises(TaskFailed) as caught:
            client.generate(
                "seedream/4.5-edit", {"prompt": "x", "image_urls": [missing]}, out=tmp_path
            )
        assert client.credits() == Decimal(100)  # released
    assert caught.value.fail_code == "400" and caught.value.fail_msg
    assert caught.value.task.state is TaskState.FAIL
    assert not out.exists()


# -- every error the server gives, as its exception ------------------------------------------
def test_unknown_revoked_and_missing_keys_are_unauthorized(server: LiveServer) -> None:
    key, key_id = server.add_key(credits=10)
    for wrong in ("sb-not-a-key", None):
        with client_for(server, wrong) as client:  # type: ignore[arg-type]
            with pytest.raises(Unauthorized) as caught:
                client.credits()
            assert caught.value.code == 401 and caught.value.http_status == 200
    server.store_call(lambda store: store.revoke_key(key_id))
    with client_for(server, key) as client, pytest.raises(Unauthorized):
        client.create_task(T2I, {"prompt": "x"})


def test_insufficient_credits_is_402(server: LiveServer) -> None:
    key, _ = server.add_key(credits="1")
    with client_for(server, key) as client, pytest.raises(InsufficientCredits) as caught:
        client.create_task(T2I, {"prompt": "x"})
    assert "6.5" in caught.value.msg


def test_server_side_validation_names_the_field_like_the_client(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    bad = {"prompt": "x", "aspect_ratio": "7:3"}
    with client_for(server, key) as client:
        with pytest.raises(ValidationError) as local:
            client.create_task(T2I, bad)
        with pytest.raises(ValidationError) as remote:
            client.create_task(T2I, bad, validate=False)
        with pytest.raises(ValidationError, match="model: unknown model"):
            client.create_task("seedream/9", {"prompt": "x"}, validate=False)
    assert remote.value.http_status == 200  # the server said it
    assert local.value.msg == remote.value.msg
    assert remote.value.msg.startswith("input.aspect_ratio: must be one of 1:1, 4:3")


def test_unknown_task_and_missing_task_id(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    other, _ = server.add_key(credits=10)
    with client_for(server, key) as client:
        task_id = client.create_task(T2I, {"prompt": "x"})
        with pytest.raises(TaskNotFound) as caught:
            client.get_task("0" * 32)
        assert caught.value.msg == "recordInfo is null" and caught.value.code == 422
        with pytest.raises(BadRequest, match="taskId parameter is required"):
            client.get_task("")
    with client_for(server, other) as stranger, pytest.raises(TaskNotFound):
        stranger.wait(task_id, timeout=5)


def test_body_over_the_limit_is_payload_too_large(tmp_path: Path) -> None:
    with serve_in_thread(make_settings(tmp_path, max_body_bytes=2000)) as server:
        key, _ = server.add_key(credits=10)
        with client_for(server, key) as client, pytest.raises(PayloadTooLarge) as caught:
            client.create_task("bytedance/seedream", {"prompt": "x" * 3000})
    assert caught.value.http_status == 413


def test_disabled_model_is_505_and_not_retried(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    server.store_call(lambda store: store.set_model_enabled(T2I, False))
    with client_for(server, key) as client, pytest.raises(ModelUnavailable) as caught:
        client.create_task(T2I, {"prompt": "x"})
    assert caught.value.code == 505


def test_rate_limit_429_is_retried_after_retry_after(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100, create_per_window=1, create_window_seconds=1)
    with client_for(server, key) as client:
        first = client.create_task(T2I, {"prompt": "one"})
        second = client.create_task(T2I, {"prompt": "two"})  # 429, Retry-After: 1, then 200
        assert first != second
        assert client.wait(second, timeout=30).state is TaskState.SUCCESS


def test_rate_limit_without_retries_raises_with_retry_after(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100, create_per_window=1, create_window_seconds=10)
    with client_for(server, key, retry=NO_RETRY) as client:
        client.create_task(T2I, {"prompt": "one"})
        with pytest.raises(Exception) as caught:
            client.create_task(T2I, {"prompt": "two"})
    assert getattr(caught.value, "code", None) == 429
    assert getattr(caught.value, "http_status", None) == 429
    retry_after = getattr(caught.value, "retry_after", None)
    assert retry_after is not None and 1 <= retry_after <= 10


@pytest.fixture
def maintenance_ending(server: LiveServer) -> Iterator[threading.Timer]:
    """Maintenance on now, off again in half a second (while the client waits to retry)."""
    server.store_call(lambda store: store.set_maintenance(True))
    timer = threading.Timer(0.5, lambda: server.store_call(lambda s: s.set_maintenance(False)))
    yield timer
    timer.cancel()
    timer.join()


def test_455_is_retried_until_maintenance_ends(
    server: LiveServer, maintenance_ending: threading.Timer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    with client_for(server, key, retry=NO_RETRY) as client, pytest.raises(Maintenance):
        client.create_task(T2I, {"prompt": "x"})
    maintenance_ending.start()
    retry = RetryPolicy(attempts=8, initial=0.2, multiplier=1.5, max_delay=1.0)
    with client_for(server, key, retry=retry) as client:
        done = client.generate(T2I, {"prompt": "after maintenance"}, out=tmp_path)
    assert done.task.state is TaskState.SUCCESS and done.files


# -- waiting -------------------------------------------------------------------------------
@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path, sandbox_step_seconds=0.3, sandbox_steps=4)
    with serve_in_thread(settings) as live:
        yield live


def test_wait_reports_progress_and_times_out(slow_server: LiveServer) -> None:
    key, _ = slow_server.add_key(credits=100)
    poll = PollSchedule(initial=0.05, multiplier=1.0)
    with client_for(slow_server, key, poll=poll) as client:
        task_id = client.create_task("bytedance/seedream", {"prompt": "slow"})
        with pytest.raises(WaitTimeout) as caught:
            client.wait(task_id, timeout=0.2)
        assert caught.value.last is not None and not caught.value.last.is_terminal
        seen: list[Task] = []
        done = client.wait(task_id, timeout=30, on_progress=seen.append)
    assert done.state is TaskState.SUCCESS
    progress = [t.progress for t in seen if t.state is TaskState.GENERATING]
    assert progress == sorted(progress) and len(set(progress)) >= 2  # seen moving
    assert seen[-1].progress == 100
    # each call reports a change only: no two consecutive reports are the same
    pairs = itertools.pairwise(seen)
    assert all((a.state, a.progress) != (b.state, b.progress) for a, b in pairs)
