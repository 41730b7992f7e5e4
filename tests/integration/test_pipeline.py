"""The worker's pipeline through a real server on loopback, with real SQLite (issue 18).

An engine's slot is free as soon as its pictures exist; resizing, encoding, storing and
finishing run as post-processing beside the next generation, with every guarantee kept: exact
sizes and formats, progress, cancel during post-processing, the order of ``max_images``
results, nothing stored half or twice, and no more claimed than post-processing can absorb.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import LiveServer, make_settings, serve_in_thread
from seedbed import catalogue
from seedbed.engines import Engines
from seedbed.engines.base import (
    Artifact,
    EngineJob,
    EngineLimits,
    OutputPlan,
    Pictures,
    ProgressFn,
)
from seedbed.engines.standin import StandinEngine, _picture, native_size
from seedbed.errors import EngineFailure
from seedbed.images import Encoding, finish

T2I = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


class GatedEngine:
    """Generates at once (progress 50), then leaves its outputs to post-processing, where each
    waits for ``gate`` (output ``i`` of ``n`` also sleeps ``(n - i) * delay``, so later outputs
    end first). Each output is a solid colour at 64x64, resized by ``images.finish``."""

    name = "gated"
    limits = EngineLimits()

    def __init__(self, *, delay: float = 0.0, fail_output: int | None = None) -> None:
        self.gate = threading.Event()
        #: generation waits for this one (set unless a test holds the device)
        self.device = threading.Event()
        self.device.set()
        self.delay = delay
        self.fail_output = fail_output
        #: task ids whose generation ended, in order
        self.generated: list[str] = []
        #: outputs whose post-processing started / ended, and the threads they ran on
        self.started = 0
        self.finished = 0
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def serves(self, model: str) -> bool:
        return True

    def load(self) -> None:
        pass

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        self.device.wait(30)
        progress(50)
        with self._lock:
            self.generated.append(job.task_id)
        count = max(1, job.plan.max_images)
        return Pictures([partial(self._output, job, i, count) for i in range(count)])

    def _output(self, job: EngineJob, index: int, count: int, encoding: Encoding) -> list[Artifact]:
        with self._lock:
            self.started += 1
            self.threads.append(threading.current_thread().name)
        self.gate.wait(30)
        time.sleep((count - index) * self.delay)
        if index == self.fail_output:
            raise EngineFailure("the encoder broke")
        picture = Image.new("RGB", (64, 64), COLOURS[index % len(COLOURS)])
        plan = job.plan
        made = finish(picture, plan.width, plan.height, plan.format, encoding=encoding)
        with self._lock:
            self.finished += 1
        return [made]


def serve(tmp_path: Path, engine: Any, **settings: Any) -> Any:
    values = {"worker_concurrency": 1, "postprocess_concurrency": 2, **settings}
    return serve_in_thread(make_settings(tmp_path, **values), engines=Engines([engine]))


@pytest.fixture
def gated() -> Iterator[GatedEngine]:
    engine = GatedEngine()
    yield engine
    engine.gate.set()  # never leave a post-processing thread waiting past the test
    engine.device.set()


def _plan(body: dict[str, Any]) -> OutputPlan:
    spec = catalogue.CATALOGUE[body["model"]]
    return spec.plan(spec.input_model.model_validate(body["input"]), [])


def _data(live: LiveServer, key: str, task_id: str) -> dict[str, Any]:
    body = live.record(key, task_id)
    assert body["code"] == 200, body
    return dict(body["data"])


def _results(live: LiveServer, data: dict[str, Any]) -> list[Image.Image]:
    out = []
    for url in json.loads(data["resultJson"])["resultUrls"]:
        response = live.client.get(url)
        assert response.status_code == 200
        image = Image.open(io.BytesIO(response.content))
        image.load()
        out.append(image)
    return out


def _result_files(live: LiveServer) -> list[Path]:
    folder = Path(live.settings.data_dir) / "files" / "results"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_the_device_slot_is_free_once_the_pictures_exist(
    tmp_path: Path, gated: GatedEngine
) -> None:
    # one device slot: the second task generates while the first is still post-processing
    with serve(tmp_path, gated) as live:
        key, _ = live.add_key(credits=100)
        first = live.create(key, T2I)["data"]["taskId"]
        second = live.create(key, T2I)["data"]["taskId"]
        wait_for(lambda: gated.generated == [first, second] and gated.started == 2)
        assert gated.finished == 0
        assert _data(live, key, first)["state"] == "generating"
        gated.gate.set()
        for task_id in (first, second):
            data = live.wait(key, task_id)
            assert data["state"] == "success" and data["progress"] == 100
            [image] = _results(live, data)
            plan = _plan(T2I)
            assert (image.format, image.size) == (plan.format.upper(), (plan.width, plan.height))


def test_no_more_is_claimed_than_post_processing_absorbs(
    tmp_path: Path, gated: GatedEngine
) -> None:
    with serve(tmp_path, gated, postprocess_concurrency=1) as live:
        key, _ = live.add_key(credits=100)
        # The first generation waits until all four exist: else the first task could reach
        # post-processing (which then claims nothing) before the second was even created.
        gated.device.clear()
        ids = [live.create(key, T2I)["data"]["taskId"] for _ in range(4)]
        gated.device.set()
        wait_for(lambda: gated.started == 1 and len(gated.generated) == 2)
        time.sleep(0.5)  # the device slot is free, but post-processing is full
        # the first in post-processing; the second (claimed ahead while the first generated)
        # made its pictures and waits for a post-processing slot; nothing more is claimed
        assert gated.generated == ids[:2] and gated.started == 1
        assert [_data(live, key, t)["state"] for t in ids[2:]] == ["waiting", "waiting"]
        gated.gate.set()
        assert [live.wait(key, t)["state"] for t in ids] == ["success"] * 4
        assert gated.generated == ids


def test_progress_moves_through_post_processing_to_100(tmp_path: Path) -> None:
    engine = GatedEngine(delay=0.4)  # outputs end 0.4 s apart: each progress write lands
    engine.gate.set()
    body = {
        "model": "bytedance/seedream-v4-text-to-image",
        "input": {"prompt": "four", "max_images": 4, "image_size": "square"},
    }
    with serve(tmp_path, engine, postprocess_concurrency=4) as live:
        key, _ = live.add_key(credits=100)
        task_id = live.create(key, body)["data"]["taskId"]
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while (data := _data(live, key, task_id))["state"] != "success":
            assert time.monotonic() < deadline and data["state"] != "fail", data
            seen.append(data["progress"])
            time.sleep(0.02)
    seen.append(data["progress"])
    assert seen == sorted(seen)
    # the engine's 50, then a share of the rest per output encoded, then 100
    assert 50 in seen and any(50 < p < 100 for p in seen) and seen[-1] == 100


def test_max_images_results_keep_their_order(tmp_path: Path) -> None:
    engine = GatedEngine(delay=0.15)  # output 3 ends first, output 0 last
    engine.gate.set()
    body = {
        "model": "bytedance/seedream-v4-text-to-image",
        "input": {"prompt": "order", "max_images": 4, "image_size": "landscape_16_9"},
    }
    with serve(tmp_path, engine, postprocess_concurrency=4) as live:
        key, _ = live.add_key(credits=100)
        data = live.wait(key, live.create(key, body)["data"]["taskId"])
        images = _results(live, data)
    assert len(images) == 4
    plan = _plan(body)
    for image, colour in zip(images, COLOURS, strict=True):
        centre = image.getpixel((image.width // 2, image.height // 2))
        assert isinstance(centre, tuple)
        assert max(abs(a - b) for a, b in zip(centre, colour, strict=True)) <= 3  # JPEG
        assert image.size == (plan.width, plan.height)  # every output resized, not 64x64


def test_cancel_during_post_processing_stores_nothing_and_releases_credits(
    tmp_path: Path, gated: GatedEngine
) -> None:
    body = {
        "model": "bytedance/seedream-v4-text-to-image",
        "input": {"prompt": "stop", "max_images": 3},
    }
    with serve(tmp_path, gated, postprocess_concurrency=1) as live:
        key, _ = live.add_key(credits=100)
        task_id = live.create(key, body)["data"]["taskId"]
        wait_for(lambda: gated.started == 1)  # one output in post-processing, two waiting
        assert live.cancel(key, task_id)["code"] == 200
        gated.gate.set()
        data = live.wait(key, task_id)
        assert (data["state"], data["failMsg"]) == ("fail", "canceled")
        time.sleep(0.5)  # let the worker end its part
        assert gated.started == 1, "outputs not yet begun must not run after a cancel"
        assert _result_files(live) == []
        assert live.balance(key) == 100
        # the worker goes on: the next task runs and finishes
        gated.started = 0
        assert live.wait(key, live.create(key, T2I)["data"]["taskId"])["state"] == "success"
        assert len(_result_files(live)) == 1


def test_a_task_alone_is_post_processed_on_its_engines_thread_and_can_be_canceled_there(
    tmp_path: Path, gated: GatedEngine
) -> None:
    """Nothing claimed ahead, nothing in post-processing: the one output is resized, encoded
    and stored on the engine's thread, the device given up first (a second task generates
    meanwhile); a cancel there stores nothing, not even the file begun for the result."""
    with serve(tmp_path, gated) as live:
        key, _ = live.add_key(credits=100)
        task_id = live.create(key, T2I)["data"]["taskId"]
        wait_for(lambda: gated.started == 1)
        assert gated.threads[0].startswith("seedbed-engine")
        other = live.create(key, T2I)["data"]["taskId"]  # the device is free
        wait_for(lambda: gated.generated == [task_id, other] and gated.started == 2)
        assert gated.threads[1].startswith("seedbed-post")  # not alone: the first is in post
        assert live.cancel(key, task_id)["code"] == 200
        gated.gate.set()
        data = live.wait(key, task_id)
        assert (data["state"], data["failMsg"]) == ("fail", "canceled")
        assert live.wait(key, other)["state"] == "success"
        time.sleep(0.3)  # let the worker end the canceled task's part
        # the other task's result alone: the canceled one's file, begun ahead, was removed
        [stored] = _result_files(live)
        assert stored.name.startswith(other) and stored.stat().st_size > 0
        assert live.balance(key) == 100 - live.wait(key, other)["creditsConsumed"]


def test_a_failed_output_fails_the_task_and_stores_none(tmp_path: Path) -> None:
    engine = GatedEngine(fail_output=1)
    engine.gate.set()
    body = {
        "model": "bytedance/seedream-v4-text-to-image",
        "input": {"prompt": "half", "max_images": 3},
    }
    with serve(tmp_path, engine) as live:
        key, _ = live.add_key(credits=100)
        data = live.wait(key, live.create(key, body)["data"]["taskId"])
        assert data["state"] == "fail" and "encoder broke" in data["failMsg"]
        assert _result_files(live) == []
        assert live.balance(key) == 100


@pytest.mark.parametrize(
    ("body", "fmt", "size"),
    [
        (
            {
                "model": "seedream/4.5-text-to-image",
                "input": {"prompt": "a lake", "quality": "high"},
            },
            "JPEG",
            (4096, 4096),
        ),
        (
            {
                "model": "bytedance/seedream-v4-text-to-image",
                "input": {
                    "prompt": "a lake",
                    "image_size": "portrait_16_9",
                    "image_resolution": "2K",
                },
            },
            "JPEG",
            None,
        ),
        (
            {
                "model": "seedream/5-lite-text-to-image",
                "input": {"prompt": "a lake", "quality": "ultra"},
            },
            "PNG",
            None,
        ),
    ],
)
def test_a_standin_at_native_size_gives_the_contracts_size_and_format(
    tmp_path: Path, body: dict[str, Any], fmt: str, size: tuple[int, int] | None
) -> None:
    """The result is the contract's size and format, and (made in strips shared by the two
    post-processing threads) pixel for pixel what one thread alone makes of the picture."""
    plan = _plan(body)
    engine = StandinEngine(hold_ms=20, native=512)
    with serve(tmp_path, engine) as live:
        key, _ = live.add_key(credits=100)
        data = live.wait(key, live.create(key, body)["data"]["taskId"], timeout=60)
        [image] = _results(live, data)
    assert engine.runs == 1
    assert (image.format, image.size) == (fmt, (plan.width, plan.height))
    if size is not None:
        assert image.size == size
    assert plan.format == fmt.lower()
    meta = (
        image.text
        if fmt == "PNG"
        else dict(  # type: ignore[attr-defined]
            line.split("=", 1) for line in image.info["comment"].decode().splitlines()
        )
    )
    native = native_size(plan.width, plan.height, 512)
    picture = _picture(*native, int(meta["seedbed:seed"]) % 4)
    alone = finish(picture, plan.width, plan.height, plan.format)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(alone.data))))


def test_an_idle_worker_claims_a_task_in_its_creates_own_commit(
    tmp_path: Path, gated: GatedEngine
) -> None:
    """createTask wakes the idle in-process worker before its write commits, and the worker's
    claim joins that commit: when the create is answered the task is already generating (a
    claim after the commit would have left it waiting a while)."""
    gated.gate.set()
    with serve(tmp_path, gated) as live:
        key, _ = live.add_key(credits=100)
        assert live.wait(key, live.create(key, T2I)["data"]["taskId"])["state"] == "success"
        time.sleep(0.2)  # the worker is idle, waiting for a wake-up
        for _ in range(3):
            gated.device.clear()  # the device holds each task until the test looks
            task_id = live.create(key, T2I)["data"]["taskId"]
            assert _data(live, key, task_id)["state"] == "generating"
            gated.device.set()
            assert live.wait(key, task_id)["state"] == "success"
            time.sleep(0.2)
