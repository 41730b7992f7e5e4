"""The diffusers engine with tiny random-weight pipelines, through a real server on loopback.

The pipelines are built once per session and saved to folders; the server loads them through
its settings (``[engines.*]`` and ``[models.*]``), the same ``from_pretrained`` path an
operator's config takes. Four families: Stable Diffusion (text-to-image, image-to-image from the
same folder, its x4 upscaler), Z-Image (text-to-image), FLUX.2 [klein] (text-to-image and
multi-reference editing) and Qwen-Image-Layered (layer decomposition).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import tiny_pipelines as tiny
from conftest import FileServer, LiveServer, auth, make_settings, serve_in_thread
from images_util import image_size, png_bytes
from seedbed import catalogue
from seedbed.config import DiffusersEngineSettings, ModelRoute
from seedbed.engines import Engines
from seedbed.engines.base import Artifact, EngineJob, Pictures
from seedbed.engines.diffusers import DENOISE_PROGRESS, DiffusersEngine
from seedbed.errors import EngineFailure
from seedbed.images import Encoding
from seedbed.storage.local import LocalStorage
from seedbed.store.memory import MemoryStore
from seedbed.tasks import NewKey, NewTask, TaskState
from seedbed.wakeup import Wakeup
from seedbed.worker import Worker, WorkerConfig

SD_T2I = "bytedance/seedream"
KLEIN_T2I = "bytedance/seedream-v4-text-to-image"
KLEIN_EDIT = "bytedance/seedream-v4-edit"
SD_IMG2IMG = "seedream/4.5-edit"
ZIMAGE_T2I = "seedream/5-flash-text-to-image"
BROKEN = "seedream/5-lite-text-to-image"
UNLOADABLE = "seedream/4.5-text-to-image"
UNMAPPED = "seedream/5-pro-text-to-image"
FLASH_LAYERS = "seedream/5-flash-layer-decomposition"
PRO_LAYERS = "seedream/5-pro-layer-decomposition"


def _engines(models: dict[str, Path]) -> dict[str, dict[str, Any]]:
    small = {"steps": 2, "native_area": 64 * 64, "device": "cpu"}
    return {
        "sd": {"pipeline": str(models["sd"]), "size_multiple": 8, **small},
        "sd-img2img": {
            "pipeline": str(models["sd"]),
            "pipeline_class": "StableDiffusionImg2ImgPipeline",
            "size_multiple": 8,
            "max_input_images": 1,
            "call": {"strength": 1.0},
            **small,
        },
        "klein": {
            "pipeline": str(models["klein"]),
            "max_input_images": 2,
            "max_outputs": 2,
            "guidance_scale": 1.0,
            "call": tiny.KLEIN_CALL,
            **small,
        },
        "zimage": {
            "pipeline": str(models["zimage"]),
            "guidance_scale": 0.0,
            "call": tiny.ZIMAGE_CALL,
            **small,
        },
        "layered": {
            "pipeline": str(models["layered"]),
            "max_input_images": 1,
            # no torchvision here, so no processor to caption images (tiny_pipelines says why)
            "skip_components": ["processor"],
            "default_prompt": "a picture in layers",
            # each layer is a VAE decode at 640 px, seconds on a CPU: as few as tell the story
            "layers": 1,
            "true_cfg_scale": 1.0,
            "call": tiny.LAYERED_CALL,
            **small,
        },
        "missing": {"pipeline": str(models["sd"].parent / "no-such-pipeline"), **small},
        # the tiny text encoder has 3 hidden states: asking for the 8th makes the pipeline raise
        "broken": {
            "pipeline": str(models["klein"]),
            "guidance_scale": 1.0,
            "call": {**tiny.KLEIN_CALL, "text_encoder_out_layers": [7]},
            **small,
        },
    }


MODELS = {
    SD_T2I: "sd",
    KLEIN_T2I: "klein",
    KLEIN_EDIT: "klein",
    SD_IMG2IMG: "sd-img2img",
    ZIMAGE_T2I: "zimage",
    BROKEN: "broken",
    UNLOADABLE: "missing",
    FLASH_LAYERS: "layered",
    PRO_LAYERS: {"engine": "layered", "layers": 2},
}


@pytest.fixture(scope="module")
def live(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("diffusers-server"),
        engines=_engines(tiny_models),
        models=MODELS,
        worker_concurrency=2,
    )
    with serve_in_thread(settings) as server:
        yield server


def _download(server: LiveServer, data: dict[str, Any]) -> list[bytes]:
    urls = json.loads(data["resultJson"])["resultUrls"]
    out = []
    for url in urls:
        response = server.client.get(url)
        assert response.status_code == 200
        out.append(response.content)
    return out


def _balance(server: LiveServer, key: str) -> Any:
    return server.client.get("/api/v1/chat/credit", headers=auth(key)).json()["data"]


# -- through the server ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "extra", "size"),
    [
        (SD_T2I, {"image_size": "landscape_4_3"}, (1024, 768)),
        (SD_T2I, {"image_size": "portrait_16_9"}, (576, 1024)),
        (KLEIN_T2I, {"image_size": "landscape_16_9"}, (1280, 720)),
        (ZIMAGE_T2I, {"aspect_ratio": "3:4"}, (864, 1152)),
    ],
)
def test_text_to_image_succeeds_at_the_contract_size(
    live: LiveServer, model: str, extra: dict[str, Any], size: tuple[int, int]
) -> None:
    key, _ = live.add_key(credits=100)
    created = live.create(key, {"model": model, "input": {"prompt": "a red fox", **extra}})
    assert created["code"] == 200, created
    data = live.wait(key, created["data"]["taskId"], timeout=60)
    assert data["state"] == "success", data
    [picture] = _download(live, data)
    assert image_size(picture) == size
    pixels = np.asarray(Image.open(io.BytesIO(picture)).convert("L"), dtype=np.float32)
    assert pixels.std() > 1.0, "a rendered image, not a flat fill"


def test_max_images_renders_that_many_and_seeds_reproduce(live: LiveServer) -> None:
    key, _ = live.add_key(credits=100)
    body = {"model": KLEIN_T2I, "input": {"prompt": "a cat", "seed": 7, "max_images": 2}}
    runs = [live.wait(key, live.create(key, body)["data"]["taskId"], timeout=60) for _ in range(2)]
    body["input"]["seed"] = 8
    runs.append(live.wait(key, live.create(key, body)["data"]["taskId"], timeout=60))
    first, again, other = (_download(live, data) for data in runs)
    assert len(first) == 2 and all(image_size(p) == (1024, 1024) for p in first)
    assert first == again
    assert first[0] != first[1], "each image of a task has its own seed"
    assert other[0] != first[0] and other[0] != first[1]


def test_multi_image_edit_succeeds(live: LiveServer, files: FileServer) -> None:
    key, _ = live.add_key(credits=100)
    urls = [
        files.add("/a.png", png_bytes(96, 64, (200, 30, 30))),
        files.add("/b.png", png_bytes(64, 64, (20, 30, 200))),
    ]
    body = {
        "model": KLEIN_EDIT,
        "input": {"prompt": "put the cat on the hat", "image_urls": urls, "seed": 3},
    }
    data = live.wait(key, live.create(key, body)["data"]["taskId"], timeout=60)
    assert data["state"] == "success", data
    [picture] = _download(live, data)
    assert image_size(picture) == (1024, 1024)


def test_image_to_image_succeeds(live: LiveServer, files: FileServer) -> None:
    key, _ = live.add_key(credits=100)
    url = files.add("/in.png", png_bytes(96, 64))
    body = {
        "model": SD_IMG2IMG,
        "input": {"prompt": "make it blue", "image_urls": [url], "aspect_ratio": "3:2"},
    }
    data = live.wait(key, live.create(key, body)["data"]["taskId"], timeout=60)
    assert data["state"] == "success", data
    [picture] = _download(live, data)
    assert image_size(picture) == (2496, 1664)


def _rgba(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_layer_decomposition_returns_a_base_and_rgba_layers_charged_per_layer(
    live: LiveServer, files: FileServer
) -> None:
    key, _ = live.add_key(credits=100)
    url = files.add("/poster.png", png_bytes(768, 512, (30, 160, 90)))
    body = {
        "model": FLASH_LAYERS,
        "input": {"image_url": url, "prompt": "a green poster", "output_format": "png"},
    }
    data = live.wait(key, live.create(key, body)["data"]["taskId"], timeout=120)
    assert data["state"] == "success", data
    base, *layers = (_rgba(picture) for picture in _download(live, data))
    # size "auto" keeps the input's size; the engine's one layer, at that exact size
    assert base.format == "PNG" and base.mode == "RGB" and base.size == (768, 512)
    [layer] = layers
    assert layer.format == "PNG" and layer.mode == "RGBA" and layer.size == (768, 512)
    assert layer.text["seedbed:model"] == FLASH_LAYERS and layer.text["seedbed:layer"] == "1/1"
    alpha = np.asarray(layer.getchannel("A"), dtype=np.float32)
    assert alpha.std() > 1.0, "the layer's alpha comes from the pipeline, not a flat fill"
    assert Decimal(str(_balance(live, key))) == 100 - Decimal("3.24")


def test_a_layer_model_override_and_a_task_without_prompt(
    live: LiveServer, files: FileServer
) -> None:
    key, _ = live.add_key(credits=100)
    url = files.add("/square.png", png_bytes(512, 512, (200, 30, 30)))
    body = {"model": PRO_LAYERS, "input": {"image_url": url, "size": "1K"}}
    data = live.wait(key, live.create(key, body)["data"]["taskId"], timeout=120)
    assert data["state"] == "success", data
    base, *layers = (_rgba(picture) for picture in _download(live, data))
    assert base.format == "JPEG" and base.size == (1024, 1024)
    assert [(layer.mode, layer.size) for layer in layers] == [("RGBA", (1024, 1024))] * 2
    assert layers[0].text["seedbed:prompt"] == "", "the task had no prompt"
    assert _balance(live, key) == 100 - 2 * 7


def test_more_input_images_than_the_engine_takes_is_422(
    live: LiveServer, files: FileServer
) -> None:
    key, _ = live.add_key(credits=100)
    urls = [files.add(f"/{i}.png", png_bytes(64, 64)) for i in range(3)]
    body = {"model": KLEIN_EDIT, "input": {"prompt": "x", "image_urls": urls}}
    answer = live.create(key, body)
    assert answer["code"] == 422
    assert "input.image_urls" in answer["msg"] and "at most 2 images" in answer["msg"]
    assert _balance(live, key) == 100


def test_more_outputs_than_the_engine_returns_is_422(live: LiveServer) -> None:
    key, _ = live.add_key(credits=100)
    answer = live.create(key, {"model": KLEIN_T2I, "input": {"prompt": "x", "max_images": 3}})
    assert answer["code"] == 422
    assert "input.max_images" in answer["msg"] and "at most 2" in answer["msg"]


def test_a_pipeline_that_raises_fails_the_task_with_501_and_releases_credits(
    live: LiveServer,
) -> None:
    key, _ = live.add_key(credits=100)
    created = live.create(key, {"model": BROKEN, "input": {"prompt": "a red fox"}})
    assert created["code"] == 200, created
    data = live.wait(key, created["data"]["taskId"], timeout=60)
    assert data["state"] == "fail"
    assert data["failCode"] == "501"
    assert data["failMsg"].startswith("generation failed:")
    assert _balance(live, key) == 100


def test_an_engine_that_cannot_load_fails_its_tasks_with_501(live: LiveServer) -> None:
    key, _ = live.add_key(credits=100)
    created = live.create(key, {"model": UNLOADABLE, "input": {"prompt": "a red fox"}})
    data = live.wait(key, created["data"]["taskId"], timeout=60)
    assert data["state"] == "fail" and data["failCode"] == "501"
    assert data["failMsg"].startswith("engine missing failed to load:")
    assert _balance(live, key) == 100


def test_a_model_no_engine_is_mapped_to_is_505(live: LiveServer) -> None:
    key, _ = live.add_key(credits=100)
    answer = live.create(key, {"model": UNMAPPED, "input": {"prompt": "x"}})
    assert answer["code"] == 505
    assert UNMAPPED in answer["msg"]


# -- the engine itself ---------------------------------------------------------------------------
def _engine(path: Path, model: str = SD_T2I, **settings: Any) -> DiffusersEngine:
    values: dict[str, Any] = {
        "pipeline": str(path),
        "device": "cpu",
        "steps": 2,
        "native_area": 64 * 64,
        "size_multiple": 8,
    }
    values.update(settings)
    return DiffusersEngine(
        "test", DiffusersEngineSettings(**values), {model: ModelRoute(engine="test")}
    )


def _job(seed: int, prompt: str = "a boat", model: str = SD_T2I) -> EngineJob:
    spec = catalogue.CATALOGUE[model]
    inp = spec.input_model.model_validate({"prompt": prompt, "image_size": "square"})
    return EngineJob(
        task_id=f"t{seed}",
        model=model,
        input={"prompt": prompt},
        seed=seed,
        plan=spec.plan(inp, []),
    )


def _made(pictures: Pictures) -> list[Artifact]:
    """The artifacts the worker's post-processing makes of an engine's pictures."""
    return [artifact for step in pictures.outputs for artifact in step(Encoding())]


def _pixels(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_progress_rises_to_100_and_cancel_stops_at_the_next_step(
    tiny_models: dict[str, Path],
) -> None:
    engine = _engine(tiny_models["sd"], steps=40)
    seen: list[int] = []
    never = threading.Event()
    [artifact] = _made(engine.run(_job(1), seen.append, never))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    # 100 ("every file encoded") is the worker's to say, after post-processing
    assert seen[0] < 10 and seen[-1] == DENOISE_PROGRESS
    assert (artifact.width, artifact.height) == (512, 512)

    cancel = threading.Event()
    steps: list[int] = []

    def cancel_at_third_step(percent: int) -> None:
        steps.append(percent)
        if len(steps) == 3:
            cancel.set()

    with pytest.raises(EngineFailure, match="canceled"):
        _made(engine.run(_job(1), cancel_at_third_step, cancel))
    assert len(steps) == 3, "no step ran after the one that saw the cancel"
    engine.close()


def test_batching_renders_compatible_jobs_in_one_call_with_the_same_images(
    tiny_models: dict[str, Path],
) -> None:
    alone = _engine(tiny_models["sd"])
    expected = [
        _made(alone.run(_job(seed), lambda p: None, threading.Event()))[0] for seed in (1, 2, 3)
    ]
    assert alone.calls == 3
    alone.close()

    batched = _engine(tiny_models["sd"], max_batch=4, batch_window_ms=2000)
    batched.load()
    results: dict[int, bytes] = {}

    def run(seed: int) -> None:
        results[seed] = _made(batched.run(_job(seed), lambda p: None, threading.Event()))[0].data

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert (batched.calls, batched.jobs) == (1, 3)
    for seed, artifact in zip((1, 2, 3), expected, strict=True):
        # a batched matmul may round differently in the last bit (JPEG then magnifies it a
        # little): the seed, not the batch, decides the picture
        difference = np.abs(_pixels(results[seed]) - _pixels(artifact.data))
        assert difference.mean() < 0.5 and difference.max() <= 12
    assert np.abs(_pixels(results[1]) - _pixels(results[2])).mean() > 5
    batched.close()


def test_a_scheduler_named_per_model_is_used(tiny_models: dict[str, Path]) -> None:
    default = _engine(tiny_models["sd"])
    other = _engine(tiny_models["sd"], scheduler="DDIMScheduler")
    a = _made(default.run(_job(5), lambda p: None, threading.Event()))[0]
    b = _made(other.run(_job(5), lambda p: None, threading.Event()))[0]
    assert type(other._pipe.scheduler).__name__ == "DDIMScheduler"
    assert a.data != b.data
    default.close()
    other.close()


def test_resizing_on_the_device_matches_pillows_lanczos(tiny_models: dict[str, Path]) -> None:
    # what a CUDA engine does (torch's antialiased bicubic before the pictures leave the
    # device), run here on CPU torch against the Lanczos path. Random weights draw noise, the
    # hardest case for a resize, and both go through JPEG: 35 dB here (40.2 measured); photo-like
    # pictures without the encoder are held to 45 dB in tests/unit/test_images_encode.py
    on_host = _engine(tiny_models["sd"])
    on_device = _engine(tiny_models["sd"])
    on_host.resize_on_device, on_device.resize_on_device = False, True
    job = _job(3)  # rendered at 64x64, the contract's 512x512 after the resize
    [a] = _made(on_host.run(job, lambda p: None, threading.Event()))
    [b] = _made(on_device.run(job, lambda p: None, threading.Event()))
    assert (b.width, b.height) == (a.width, a.height) == (job.plan.width, job.plan.height)
    mse = float(((_pixels(a.data) - _pixels(b.data)).astype(np.float64) ** 2).mean())
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 35
    on_host.close()
    on_device.close()


def test_an_upscaler_enlarges_renders_smaller_than_the_contract(
    tiny_models: dict[str, Path],
) -> None:
    plain = _engine(tiny_models["sd"])
    upscaling = _engine(
        tiny_models["sd"], upscale_pipeline=str(tiny_models["upscaler"]), upscale_steps=2
    )
    seen: list[int] = []
    [a] = _made(plain.run(_job(4), lambda p: None, threading.Event()))
    [b] = _made(upscaling.run(_job(4), seen.append, threading.Event()))
    assert (b.width, b.height) == (512, 512) and upscaling.upscaled == 1
    assert np.abs(_pixels(a.data) - _pixels(b.data)).mean() > 1, "not a plain Lanczos resize"
    assert seen == sorted(seen) and seen[-1] == DENOISE_PROGRESS
    assert any(38 < p < 95 for p in seen)
    plain.close()
    upscaling.close()


def _layer_job(seed: int, model: str = PRO_LAYERS) -> EngineJob:
    spec = catalogue.CATALOGUE[model]
    image = Image.new("RGB", (512, 512), (20, 30, 200))
    inp = spec.input_model.model_validate({"image_url": "https://example.com/a.png"})
    return EngineJob(
        task_id=f"layers{seed}",
        model=model,
        input={"prompt": "blue"},
        seed=seed,
        plan=spec.plan(inp, [image.size]),
        images=[image],
    )


def _layered(path: Path, **settings: Any) -> DiffusersEngine:
    values: dict[str, Any] = {
        "max_input_images": 1,
        "skip_components": ["processor"],
        "default_prompt": "layers",
        "layers": 1,
        "true_cfg_scale": 1.0,
        "call": tiny.LAYERED_CALL,
    }
    values.update(settings)
    return _engine(path, model=PRO_LAYERS, **values)


def test_a_layered_pipeline_reports_progress_and_stops_on_cancel(
    tiny_models: dict[str, Path],
) -> None:
    engine = _layered(tiny_models["layered"], steps=4)
    cancel = threading.Event()
    seen: list[int] = []

    def cancel_at_first_step(percent: int) -> None:
        seen.append(percent)
        cancel.set()

    with pytest.raises(EngineFailure, match="canceled"):
        _made(engine.run(_layer_job(1), cancel_at_first_step, cancel))
    assert seen == [23], "one step of four reported, none ran after the cancel"
    engine.close()


@pytest.mark.parametrize(
    ("folder", "model", "settings", "message"),
    [
        ("sd", PRO_LAYERS, {"max_input_images": 1}, "needs a layered pipeline"),
        ("layered", SD_IMG2IMG, {"skip_components": ["processor"]}, "map only layer"),
        ("layered", PRO_LAYERS, {"skip_components": ["processor"]}, "set default_prompt"),
    ],
)
def test_a_layer_mapping_that_cannot_work_fails_at_load(
    tiny_models: dict[str, Path], folder: str, model: str, settings: dict[str, Any], message: str
) -> None:
    engine = _engine(tiny_models[folder], model=model, **settings)
    with pytest.raises(EngineFailure, match=message):
        engine.load()


def test_a_call_argument_the_pipeline_lacks_fails_at_load(tiny_models: dict[str, Path]) -> None:
    engine = _engine(tiny_models["sd"], call={"no_such_argument": 1})
    with pytest.raises(EngineFailure, match="no_such_argument"):
        engine.load()


@pytest.mark.gpu
def test_klein_renders_on_cuda_in_bfloat16(tiny_models: dict[str, Path]) -> None:
    engine = _engine(
        tiny_models["klein"],
        model=KLEIN_T2I,
        device="cuda",
        dtype="bfloat16",
        size_multiple=16,
        guidance_scale=1.0,
        call=tiny.KLEIN_CALL,
    )
    first = _made(engine.run(_job(1, model=KLEIN_T2I), lambda p: None, threading.Event()))
    again = _made(engine.run(_job(1, model=KLEIN_T2I), lambda p: None, threading.Event()))
    assert engine.device.startswith("cuda")
    assert first[0].data == again[0].data
    engine.close()


@pytest.mark.gpu
def test_layered_decomposes_on_cuda_in_bfloat16(tiny_models: dict[str, Path]) -> None:
    engine = _layered(tiny_models["layered"], device="cuda", dtype="bfloat16", layers=2)
    first = _made(engine.run(_layer_job(2), lambda p: None, threading.Event()))
    again = _made(engine.run(_layer_job(2), lambda p: None, threading.Event()))
    assert engine.device.startswith("cuda")
    assert [(a.width, a.height, a.extension) for a in first] == [
        (512, 512, "jpeg"),
        (512, 512, "png"),
        (512, 512, "png"),
    ]
    assert [a.data for a in first] == [a.data for a in again]
    engine.close()


async def test_a_cancel_through_the_worker_stops_the_pipeline_and_releases_credits(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    store = MemoryStore()
    await store.create_key(NewKey(id="k1", name="t", key_hash="h", credits=Decimal(100)))
    spec = catalogue.CATALOGUE[SD_T2I]
    validated = catalogue.validate_input(spec, {"prompt": "a cat", "image_size": "square"})
    await store.create_task(
        NewTask(
            id="task1",
            key_id="k1",
            model=SD_T2I,
            param="{}",
            input={**validated.model_dump(mode="json"), "seed": 7},
            callback_url=None,
            reserve=spec.max_price(validated),
        ),
        open_task_cap=100,
    )
    engine = _engine(tiny_models["sd"], steps=1000)
    worker = Worker(
        store=store,
        storage=LocalStorage(tmp_path),
        engines=Engines([engine]),
        wakeup=Wakeup(None),
        config=WorkerConfig(poll_seconds=0.05),
    )
    runner = asyncio.create_task(worker.run(burst=True))
    while (task := await store.get_task("task1")) is None or task.progress == 0:
        await asyncio.sleep(0.02)
    # what cancelTask and a lost lease do: set the task's cancel event in its worker
    worker._running["task1"].set()
    await asyncio.wait_for(runner, timeout=60)
    task = await store.get_task("task1")
    assert task is not None and task.state is TaskState.FAIL
    assert task.fail_msg == "canceled" and task.progress < 50
    key = await store.get_key("k1")
    assert key is not None and key.balance == 100 and key.held == 0
    engine.close()
