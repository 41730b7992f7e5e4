"""Output encoding and post-processing (issue 18): the fast PNG writer, ``finish``, the
device-side resize, and the model stand-in engine."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from seedbed import images
from seedbed.engines.base import EngineJob, OutputPlan
from seedbed.engines.standin import StandinEngine, _picture, native_size
from seedbed.errors import EngineFailure

TEXT = {"Software": "seedbed", "seedbed:prompt": "café ☃ 雪"}  # Latin-1 and not


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _psnr(a: Any, b: Any) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("level", range(10))
def test_png_at_every_level_is_lossless_with_its_text(mode: str, level: int) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, (37, 53, len(mode)), dtype=np.uint8)
    art = images.encode(
        Image.fromarray(pixels, mode), "png", text=TEXT, encoding=images.Encoding(level)
    )
    back = _decode(art.data)
    assert (back.format, back.mode, back.size) == ("PNG", mode, (53, 37))
    assert np.array_equal(np.asarray(back), pixels)
    assert back.text == TEXT  # type: ignore[attr-defined]
    assert (art.width, art.height, art.content_type) == (53, 37, "image/png")


def test_the_fast_levels_are_faster_than_zlibs_for_a_few_per_cent_more() -> None:
    picture = _picture(1024, 1024, 0)
    sizes, times = {}, {}
    for level in (1, 6):
        start = time.perf_counter()
        sizes[level] = len(images.encode(picture, "png", encoding=images.Encoding(level)).data)
        times[level] = time.perf_counter() - start
    assert sizes[1] < sizes[6] * 1.25
    assert times[1] < times[6]


def test_png_level_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="0 to 9"):
        images.Encoding(10)


def test_finish_resizes_to_exactly_the_contract_and_encodes() -> None:
    picture = _picture(512, 288, 1)
    art = images.finish(picture, 1280, 720, "jpeg", text={"a": "b"})
    back = _decode(art.data)
    assert (back.format, back.size, back.mode) == ("JPEG", (1280, 720), "RGB")
    reference = picture.resize((1280, 720), Image.Resampling.LANCZOS)
    assert _psnr(back, reference) > 35  # the Lanczos picture, through JPEG q90


def test_finish_takes_arrays_as_pipelines_return_them() -> None:
    rgb = np.asarray(_picture(64, 48, 2))
    as_floats = rgb.astype(np.float32) / 255
    for picture in (rgb, as_floats):
        art = images.finish(picture, 64, 48, "png")
        assert np.array_equal(np.asarray(_decode(art.data)), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    assert _decode(images.finish(rgba, 32, 24, "png").data).mode == "RGBA"
    with pytest.raises(ValueError, match="HxWx3"):
        images.to_image(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    ("source", "target"),
    [((1024, 1024), (4096, 4096)), ((512, 288), (2560, 1440)), ((1024, 1024), (512, 512))],
)
def test_resize_on_the_device_matches_pillows_lanczos(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    # CPU torch here; the same call runs on a CUDA engine's tensors (unmeasured without a GPU)
    picture = _picture(*source, 3)
    tensor = torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float() / 255
    [out] = images.resize_tensor(tensor, *target)
    assert out.shape == (target[1], target[0], 3) and out.dtype == np.uint8
    reference = picture.resize(target, Image.Resampling.LANCZOS)
    assert _psnr(out, reference) > 45  # ~51 dB measured: under half a grey level on average


# -- the model stand-in ---------------------------------------------------------------------


def _job(width: int, height: int, fmt: str = "jpeg", max_images: int = 1) -> EngineJob:
    plan = OutputPlan(width=width, height=height, format=fmt, max_images=max_images)  # type: ignore[arg-type]
    return EngineJob(task_id="t", model="m", input={"prompt": "p"}, seed=5, plan=plan)


def test_native_size_keeps_the_area_and_aspect_in_multiples_of_16() -> None:
    assert native_size(4096, 4096, 1024) == (1024, 1024)
    w, h = native_size(2560, 1440, 1024)
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 16 / 9) < 0.05
    assert abs(w * h - 1024**2) / 1024**2 < 0.05


def test_the_standin_holds_the_device_without_the_cpu_then_leaves_the_rest() -> None:
    engine = StandinEngine(hold_ms=300, native=256, steps=3)
    seen: list[int] = []
    _picture(256, 256, 1)  # made once, as a device would have it ready
    wall, cpu = time.perf_counter(), time.process_time()
    pictures = engine.run(_job(1024, 1024, max_images=2), seen.append, threading.Event())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 0.3 and cpu < 0.1
    assert seen == [33, 66, 99] and engine.runs == 1
    made = [a for step in pictures.outputs for a in step(images.Encoding())]
    assert [(a.width, a.height, a.content_type) for a in made] == [(1024, 1024, "image/jpeg")] * 2


def test_a_cancel_ends_the_standins_hold_at_once() -> None:
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(EngineFailure, match="canceled"):
        StandinEngine(hold_ms=10_000).run(_job(64, 64), lambda p: None, cancel)
    assert time.monotonic() - start < 2


class _LateEvent(threading.Event):
    """A cancel event whose every wait wakes ``late`` seconds past its timeout, as waits do
    on a loaded host."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep((timeout or 0.0) + self.late)
        return False


def test_the_standins_hold_does_not_add_up_late_wake_ups() -> None:
    """Ten steps that each wake 10 ms late hold about M + 10 ms, not M + 100 ms: each step
    waits for its deadline from the start."""
    engine = StandinEngine(hold_ms=200, native=64, steps=10)
    start = time.monotonic()
    engine.run(_job(64, 64), lambda p: None, _LateEvent(0.010))
    assert 0.2 <= time.monotonic() - start < 0.25
