"""The ``kie`` relay engine with a real second seedbed server as its upstream (issue 15).

Two real servers on loopback: the upstream (a seedbed with the sandbox, a slow stepping engine
for cancel, and an engine that fails) and the downstream, whose ``[engines.up]`` is
``kind = "kie"`` pointing at it with the upstream key in an environment variable.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import LiveServer, auth, make_settings, serve_in_thread
from engines_util import SteppingEngine
from seedbed import catalogue
from seedbed.api.jobs import CANCELED_FAIL_CODE
from seedbed.engines import Engines
from seedbed.engines.base import Artifact, EngineJob, EngineLimits, ProgressFn
from seedbed.engines.sandbox import SandboxEngine
from seedbed.errors import EngineFailure

KEY_ENV = "SEEDBED_TEST_KIE_UPSTREAM_KEY"
T2I = "seedream/4.5-text-to-image"
EDIT = "seedream/4.5-edit"
SLOW = "seedream/5-lite-text-to-image"
FAILING = "bytedance/seedream-v4-text-to-image"


class FailingEngine:
    name = "failing"
    limits = EngineLimits()

    def serves(self, model: str) -> bool:
        return True

    def load(self) -> None:
        pass

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> list[Artifact]:
        raise EngineFailure("the upstream's GPU ran out of memory")


@pytest.fixture
def stepping() -> SteppingEngine:
    return SteppingEngine(steps=100, step_seconds=0.05)


@pytest.fixture
def upstream(tmp_path: Path, stepping: SteppingEngine) -> Iterator[LiveServer]:
    sandbox = SandboxEngine()
    engines = Engines(
        [sandbox, stepping, FailingEngine()],
        {T2I: [sandbox], EDIT: [sandbox], SLOW: [stepping], FAILING: [FailingEngine()]},
    )
    with serve_in_thread(make_settings(tmp_path / "up"), engines=engines) as live:
        yield live


@pytest.fixture
def upstream_key(upstream: LiveServer, monkeypatch: pytest.MonkeyPatch) -> str:
    key, _ = upstream.add_key(1000)
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def downstream(tmp_path: Path, upstream: LiveServer, upstream_key: str) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path / "down",
        engines={
            "up": {
                "kind": "kie",
                "base_url": upstream.url,
                "upload_base_url": upstream.url,
                "api_key_env": KEY_ENV,
                "poll_schedule": [0.05],
                "retry_base_seconds": 0.01,
            }
        },
        models={T2I: "up", EDIT: "up", SLOW: "up", FAILING: "up"},
    )
    with serve_in_thread(settings) as live:
        yield live


def run(live: LiveServer, key: str, model: str, inp: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    created = live.create(key, {"model": model, "input": inp})
    assert created["code"] == 200, created
    task_id = created["data"]["taskId"]
    return task_id, live.wait(key, task_id)


def upstream_id(live: LiveServer, task_id: str) -> tuple[str, str | None]:
    recorded = live.store_call(lambda store: store.task_engine(task_id))
    assert recorded is not None
    return recorded  # type: ignore[no-any-return]


def test_text_to_image_through_a_seedbed_upstream_charges_both_keys(
    downstream: LiveServer, upstream: LiveServer, upstream_key: str
) -> None:
    key, _ = downstream.add_key(100)
    before = upstream.balance(upstream_key)
    task_id, data = run(downstream, key, T2I, {"prompt": "a red kite"})
    assert data["state"] == "success", data
    [url] = json.loads(data["resultJson"])["resultUrls"]
    assert url.startswith(downstream.url)  # this server's own file, not the upstream's link
    image = Image.open(io.BytesIO(downstream.client.get(url).content))
    assert image.size == (2048, 2048)
    engine, up_id = upstream_id(downstream, task_id)
    assert engine == "up" and up_id
    relayed = upstream.record(upstream_key, up_id)["data"]
    assert relayed["state"] == "success" and relayed["model"] == T2I
    # the same input, with the seed this server stored: a retried relay renders the same image
    mine = downstream.store_call(lambda store: store.get_task(task_id))
    assert json.loads(json.loads(relayed["param"])["input"])["seed"] == mine.input["seed"]
    price = next(iter(catalogue.CATALOGUE[T2I].pricing.per_output.values()))
    assert upstream.balance(upstream_key) == before - price  # the upstream charged its key
    assert downstream.balance(key) == Decimal(100) - price
    # a seedbed upstream is followed by its events stream, not by polling recordInfo
    served = [
        line for line in upstream.client.get("/metrics").text.splitlines() if "events" in line
    ]
    assert any('code="200"' in line for line in served), served


def test_an_edit_uploads_the_downstreams_own_file_to_the_upstream(
    downstream: LiveServer, upstream: LiveServer, upstream_key: str
) -> None:
    key, _ = downstream.add_key(100)
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 10, 10)).save(buf, "PNG")
    uploaded = downstream.client.post(
        "/api/file-stream-upload",
        files={"file": ("in.png", buf.getvalue(), "image/png")},
        data={"uploadPath": "mine"},
        headers=auth(key),
    ).json()
    own_url = uploaded["data"]["downloadUrl"]
    task_id, data = run(downstream, key, EDIT, {"prompt": "make it blue", "image_urls": [own_url]})
    assert data["state"] == "success", data
    _, up_id = upstream_id(downstream, task_id)
    assert up_id is not None
    relayed = upstream.record(upstream_key, up_id)["data"]
    sent = json.loads(json.loads(relayed["param"])["input"])["image_urls"]
    assert len(sent) == 1 and sent[0].startswith(upstream.url) and sent[0] != own_url


def test_an_upstream_failure_passes_its_code_and_message_through(
    downstream: LiveServer,
) -> None:
    key, _ = downstream.add_key(100)
    _, data = run(downstream, key, FAILING, {"prompt": "anything"})
    assert data["state"] == "fail"
    assert data["failCode"] == "501"
    assert "ran out of memory" in data["failMsg"]
    assert downstream.balance(key) == Decimal(100)


def test_cancel_here_cancels_the_upstream_task(
    downstream: LiveServer, upstream: LiveServer, upstream_key: str, stepping: SteppingEngine
) -> None:
    key, _ = downstream.add_key(100)
    created = downstream.create(key, {"model": SLOW, "input": {"prompt": "slow one"}})
    task_id = created["data"]["taskId"]
    assert stepping.started.wait(10), "the upstream never started the task"
    deadline = time.monotonic() + 10
    while upstream_id(downstream, task_id)[1] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _, up_id = upstream_id(downstream, task_id)
    assert up_id is not None
    assert downstream.cancel(key, task_id)["code"] == 200
    relayed = upstream.wait(upstream_key, up_id, timeout=15)
    # ended by its cancelTask (the upstream's own cancel code), not run to the end
    assert relayed["state"] == "fail" and relayed["failCode"] == CANCELED_FAIL_CODE, relayed
    # the upstream's engine stops at its next step (it was not left to run all 100)
    deadline = time.monotonic() + 5
    while stepping.stopped_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stepping.stopped_at is not None and stepping.stopped_at < stepping.steps
    assert downstream.wait(key, task_id)["state"] == "fail"
