"""The sandbox engine must honour the output contract exactly, deterministically and quickly."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence

import pytest
from PIL import Image

from images_util import pixel, png_text
from seedbed.engines.base import Artifact, EngineJob, OutputPlan
from seedbed.engines.sandbox import SANDBOX_LABEL, SandboxEngine
from seedbed.errors import EngineFailure

PROMPT = "A lighthouse on a cliff at dusk — “cinematic”, 8k, 灯台"


def _job(
    width: int = 256,
    height: int = 256,
    *,
    fmt: str = "png",
    max_images: int = 1,
    layers: bool = False,
    seed: int = 7,
    prompt: str = PROMPT,
    model: str = "bytedance/seedream-v4-text-to-image",
    images: Sequence[Image.Image] = (),
) -> EngineJob:
    plan = OutputPlan(
        width=width,
        height=height,
        format=fmt,  # type: ignore[arg-type]
        max_images=max_images,
        layers=layers,
    )
    return EngineJob(
        task_id="task-1",
        model=model,
        input={"prompt": prompt},
        seed=seed,
        plan=plan,
        images=images,
    )


def _run(job: EngineJob, engine: SandboxEngine | None = None) -> list[Artifact]:
    return (engine or SandboxEngine()).render(job)


def _open(art: Artifact) -> Image.Image:
    image = Image.open(io.BytesIO(art.data))
    image.load()
    return image


def test_protocol_surface() -> None:
    engine = SandboxEngine()
    assert engine.name == "sandbox"
    assert engine.limits.max_input_images is None and engine.limits.max_outputs is None
    assert engine.serves("bytedance/seedream-v4-edit") and engine.serves("anything/else")
    engine.load()
    with pytest.raises(ValueError):
        SandboxEngine(steps=-1)
    with pytest.raises(ValueError):
        SandboxEngine(step_seconds=-1)


@pytest.mark.parametrize(
    ("width", "height", "fmt"),
    [
        (512, 512, "png"),
        (576, 1024, "png"),
        (1024, 576, "jpeg"),
        (4096, 4096, "png"),
        (6240, 2656, "jpeg"),
    ],
)
def test_exact_pixel_size(width: int, height: int, fmt: str) -> None:
    (art,) = _run(_job(width, height, fmt=fmt))
    assert (art.width, art.height) == (width, height)
    image = _open(art)
    assert image.size == (width, height)
    assert image.format == ("PNG" if fmt == "png" else "JPEG")
    assert art.content_type == ("image/png" if fmt == "png" else "image/jpeg")
    assert art.extension == ("png" if fmt == "png" else "jpg")


def test_png_text_chunks() -> None:
    (art,) = _run(_job(prompt="x" * 1500))
    text = png_text(_open(art))
    assert text["seedbed:engine"] == "sandbox"
    assert text["Software"] == "seedbed sandbox engine (not a real model)"
    assert text["seedbed:model"] == "bytedance/seedream-v4-text-to-image"
    assert text["seedbed:seed"] == "7"
    assert text["seedbed:prompt"] == "x" * 1000


def test_unicode_prompt_kept_in_metadata() -> None:
    (art,) = _run(_job())
    assert png_text(_open(art))["seedbed:prompt"] == PROMPT


def test_jpeg_carries_metadata_as_comment() -> None:
    (art,) = _run(_job(fmt="jpeg"))
    comment = _open(art).info["comment"].decode()
    assert "seedbed:engine=sandbox" in comment
    assert "Software=seedbed sandbox engine (not a real model)" in comment
    assert "seedbed:seed=7" in comment


def test_max_images_returns_that_many_distinct_images() -> None:
    arts = _run(_job(max_images=3))
    assert len(arts) == 3
    assert len({a.data for a in arts}) == 3
    assert [png_text(_open(a))["seedbed:image"] for a in arts] == ["1/3", "2/3", "3/3"]


def test_deterministic_per_seed() -> None:
    first = _run(_job(seed=1))[0].data
    assert _run(_job(seed=1))[0].data == first
    assert _run(_job(seed=2))[0].data != first
    assert _run(_job(seed=1, prompt="another prompt"))[0].data != first


def test_edit_job_lays_in_its_inputs() -> None:
    inputs = [
        Image.new("RGB", (300, 200), (255, 0, 0)),
        Image.new("RGBA", (100, 300), (0, 255, 0, 255)),
    ]
    plain = _open(_run(_job(512, 512, model="m/edit"))[0]).convert("RGB")
    edited_art = _run(_job(512, 512, model="m/edit", images=inputs))[0]
    edited = _open(edited_art).convert("RGB")
    assert edited.size == (512, 512)
    panel = (0, 256, 512, 440)  # the lower part, between the prompt and the footer
    assert plain.crop(panel).tobytes() != edited.crop(panel).tobytes()
    colours = {c for _, c in edited.crop(panel).getcolors(1 << 20) or []}
    assert (255, 0, 0) in colours and (0, 255, 0) in colours
    assert _run(_job(512, 512, model="m/edit", images=inputs))[0].data == edited_art.data


def test_layers_base_plus_three_rgba_layers() -> None:
    source = Image.linear_gradient("L").convert("RGB").resize((300, 200))
    arts = _run(_job(300, 200, fmt="jpeg", layers=True, images=[source]))
    assert len(arts) == 4
    base = _open(arts[0])
    assert (base.format, base.mode, base.size) == ("JPEG", "RGB", (300, 200))
    names = []
    for art in arts[1:]:
        layer = _open(art)
        assert (layer.format, layer.mode, layer.size) == ("PNG", "RGBA", (300, 200))
        assert art.content_type == "image/png" and (art.width, art.height) == (300, 200)
        names.append(png_text(layer)["seedbed:layer"])
    assert names == ["background", "subject", "text"]
    background, subject, text = (_open(a) for a in arts[1:])
    assert background.getchannel("A").getextrema() == (255, 255)
    assert pixel(subject, 0, 0)[3] == 0 and pixel(subject, 150, 100)[3] == 255
    assert pixel(text, 299, 100)[3] == 0 and text.getchannel("A").getextrema()[1] == 255


def test_layers_png_base_when_plan_says_png() -> None:
    arts = _run(_job(64, 64, layers=True, images=[Image.new("RGB", (64, 64), "blue")]))
    assert [a.content_type for a in arts] == ["image/png"] * 4


def test_progress_rises_to_99_and_leaves_100_to_post_processing() -> None:
    # the steps hold the device; 100 means "every file encoded", which the worker says after
    # post-processing (the drawing and encoding the returned Pictures do)
    seen: list[int] = []
    pictures = SandboxEngine(steps=5).run(_job(), seen.append, threading.Event())
    assert seen == [20, 40, 60, 80, 99]
    assert len(pictures.outputs) == 1


def test_canceled_before_start() -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EngineFailure) as err:
        SandboxEngine(step_seconds=10).run(_job(), lambda _p: None, cancel)
    assert err.value.fail_msg == "canceled"


def test_cancel_interrupts_a_long_step() -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.1, cancel.set)
    seen: list[int] = []
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(EngineFailure, match="canceled"):
            SandboxEngine(step_seconds=10, steps=4).run(_job(), seen.append, cancel)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 3
    assert 100 not in seen


def test_label_constant_is_honest() -> None:
    assert "SANDBOX" in SANDBOX_LABEL and "not a real model" in SANDBOX_LABEL


def test_no_steps_reports_nothing_before_post_processing() -> None:
    seen: list[int] = []
    pictures = SandboxEngine(steps=0).run(_job(max_images=3), seen.append, threading.Event())
    assert seen == [] and len(pictures.outputs) == 3


def test_threads_render_the_same_bytes() -> None:
    # worker threads may run jobs at once; fonts are per call, so output must not vary
    job = _job(640, 480, max_images=2)
    expected = [a.data for a in _run(job)]
    results: list[list[bytes]] = []
    lock = threading.Lock()

    def work() -> None:
        got = [a.data for a in _run(job)]
        with lock:
            results.append(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4
