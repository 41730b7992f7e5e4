"""The diffusers engine: real images from an open-weight pipeline on the worker's own device.

One :class:`DiffusersEngine` is one ``[engines.NAME]`` table of the settings: a pipeline loaded
once per worker (``DiffusionPipeline.from_pretrained`` from a Hugging Face repo id or a local
folder) and kept warm, serving the Seedream models that ``[models."<id>"]`` maps to it.

How a task becomes images, and why:

- The pipeline renders at its *native* size nearest the requested aspect ratio (its trained
  pixel budget, or the nearest of its listed sizes), then each image is resized with Lanczos to
  the contract's exact pixel size. Models degrade away from their training sizes; the contract's
  size is a promise to the client. With ``upscale_pipeline`` a super-resolution pipeline (such
  as ``StableDiffusionUpscalePipeline``) first enlarges images that are smaller than the
  contract's size.
- Every image gets its own CPU ``torch.Generator`` seeded ``seed + index``, so a seed gives the
  same images on any device, alone or inside a batch.
- One render thread owns the pipeline: diffusers pipelines keep per-call state (the scheduler's
  timesteps, ``_interrupt``) and must not run two calls at once. Worker threads hand it jobs
  through a queue and wait. Compatible text-to-image jobs (same size, settings and image count)
  that wait together are rendered in one call, up to ``max_batch``.
- ``callback_on_step_end`` reports progress after each step and stops the pipeline at the next
  step (``pipe._interrupt``) once every job of the call has been cancelled.
- Layer decomposition runs a layered pipeline (one whose call takes ``layers``, such as
  ``QwenImageLayeredPipeline``) on the input image. Its RGBA layers are resized to the
  contract's size; the base image is their composite over white, in the task's format.

torch and diffusers are imported in :meth:`DiffusersEngine.load` only: the API process, which
builds its engines to answer ``serves`` and ``limits``, never imports them, and a server without
the ``seedbed[diffusers]`` extra starts and answers 505 for the models it cannot serve.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from PIL import Image

from seedbed.catalogue import CATALOGUE
from seedbed.catalogue.base import Capability
from seedbed.config import DiffusersEngineSettings, ModelRoute
from seedbed.engines.base import (
    Artifact,
    EngineJob,
    EngineLimits,
    ImageFormat,
    Pictures,
    ProgressFn,
)
from seedbed.errors import EngineFailure
from seedbed.images import (
    DEFAULT_ENCODING,
    Encoding,
    encode,
    finish,
    resize_exact,
    resize_tensor,
)

__all__ = ["DiffusersEngine", "RenderSettings", "extra_installed", "render_size"]

log = logging.getLogger(__name__)

#: the render budget when neither the engine nor the model names one (most current models)
DEFAULT_NATIVE_AREA = 1024 * 1024
DEFAULT_STEPS = 8
#: layer decomposition: RGBA layers per task unless the settings say (QwenImageLayered's default)
DEFAULT_LAYERS = 4
#: progress while denoising runs up to this; the rest is decoding, resizing and encoding
DENOISE_PROGRESS = 95
_PROMPT_META_CHARS = 1000
#: from_pretrained is not thread-safe: accelerate patches torch.nn.Module process-wide while it
#: builds models on the meta device, so two loads at once can leave one with meta tensors
_FROM_PRETRAINED = threading.Lock()


def extra_installed() -> bool:
    """Whether torch and diffusers can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers"))


def render_size(
    width: int,
    height: int,
    *,
    native_area: int,
    multiple: int,
    native_sizes: Sequence[tuple[int, int]] = (),
) -> tuple[int, int]:
    """The size to render at for a ``width`` x ``height`` result.

    With ``native_sizes``, the one whose aspect ratio is nearest (in log scale, so 2:1 and 1:2
    are equally far from 1:1); else about ``native_area`` pixels at the requested aspect ratio,
    each side a multiple of ``multiple``.
    """
    target = math.log(width / height)
    if native_sizes:
        return min(native_sizes, key=lambda size: abs(math.log(size[0] / size[1]) - target))
    aspect = width / height
    render_h = math.sqrt(native_area / aspect)
    render_w = render_h * aspect

    def snap(value: float) -> int:
        return max(multiple, round(value / multiple) * multiple)

    return snap(render_w), snap(render_h)


@dataclass(frozen=True, kw_only=True)
class RenderSettings:
    """An engine's settings with one model's overrides applied."""

    steps: int
    guidance_scale: float | None
    true_cfg_scale: float | None
    negative_prompt: str | None
    scheduler: str | None
    native_area: int
    native_sizes: tuple[tuple[int, int], ...]
    call: Mapping[str, Any]
    layers: int
    default_prompt: str | None

    @classmethod
    def merge(cls, engine: DiffusersEngineSettings, route: ModelRoute | None) -> RenderSettings:
        def pick(name: str) -> Any:
            value = getattr(route, name, None) if route is not None else None
            return value if value is not None else getattr(engine, name)

        sizes = pick("native_sizes") or ()
        return cls(
            steps=pick("steps") or DEFAULT_STEPS,
            guidance_scale=pick("guidance_scale"),
            true_cfg_scale=pick("true_cfg_scale"),
            negative_prompt=pick("negative_prompt"),
            scheduler=pick("scheduler"),
            native_area=pick("native_area") or DEFAULT_NATIVE_AREA,
            native_sizes=tuple((int(w), int(h)) for w, h in sizes),
            call={**engine.call, **(route.call if route is not None else {})},
            layers=pick("layers") or DEFAULT_LAYERS,
            default_prompt=pick("default_prompt"),
        )


@dataclass(eq=False)
class _Request:
    """One job waiting for the render thread; ``future`` gets its PIL images."""

    job: EngineJob
    settings: RenderSettings
    size: tuple[int, int]
    progress: ProgressFn
    cancel: threading.Event
    future: Future[list[Image.Image]] = field(default_factory=Future)

    @property
    def count(self) -> int:
        return max(1, self.job.plan.max_images)

    def batch_key(self) -> tuple[Any, ...] | None:
        """Jobs with equal keys can share one pipeline call; None: this one runs alone."""
        if self.job.images:
            # Input images condition the whole call in edit pipelines: never shared.
            return None
        s = self.settings
        return (
            self.size,
            self.count,
            s.steps,
            s.guidance_scale,
            s.true_cfg_scale,
            s.negative_prompt,
            s.scheduler,
            tuple(sorted((k, repr(v)) for k, v in s.call.items())),
        )


_STOP = object()


class DiffusersEngine:
    """An :class:`~seedbed.engines.base.Engine` running one diffusers pipeline."""

    def __init__(
        self,
        name: str,
        settings: DiffusersEngineSettings,
        models: Mapping[str, ModelRoute],
        *,
        device: str | None = None,
        available: bool | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.device = device or settings.device
        #: resize pictures to the contract's size on the device (torch, antialiased bicubic)
        #: before they reach the CPU; None: where the device is CUDA. Without an upscaler only.
        self.resize_on_device: bool | None = None
        self.available = extra_installed() if available is None else available
        self._render = {model: RenderSettings.merge(settings, r) for model, r in models.items()}
        #: the layer-decomposition models among them: they need a layered pipeline
        self._layer_models = frozenset(
            model
            for model in models
            if (spec := CATALOGUE.get(model)) is not None and spec.capability is Capability.LAYERS
        )
        self.limits = EngineLimits(
            max_input_images=settings.max_input_images, max_outputs=settings.max_outputs
        )
        self._queue: queue.Queue[Any] = queue.Queue()
        self._held: deque[_Request] = deque()
        self._thread: threading.Thread | None = None
        self._load_lock = threading.Lock()
        self._pipe: Any = None
        self._upscaler: Any = None
        self._upscaler_parameters: frozenset[str] = frozenset()
        self._torch: Any = None
        self._parameters: frozenset[str] = frozenset()
        self._schedulers: dict[str | None, Any] = {}
        #: pipeline calls made, jobs rendered by them (the batching statistics), images upscaled
        self.calls = 0
        self.jobs = 0
        self.upscaled = 0

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._render)

    def serves(self, model: str) -> bool:
        return self.available and model in self._render

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the pipeline onto the device and start the render thread (once)."""
        with self._load_lock:
            if self._thread is not None:
                return
            if not self.available:
                raise EngineFailure(
                    f"engine {self.name}: torch and diffusers are not installed "
                    "(pip install 'seedbed[diffusers]')"
                )
            self._pipe = self._load_pipeline()
            self._thread = threading.Thread(
                target=self._render_loop, name=f"seedbed-render-{self.name}", daemon=True
            )
            self._thread.start()

    def _load_pipeline(self) -> Any:
        import diffusers
        import torch

        # Loading bars are noise in a server's log; the load time is logged below.
        diffusers.utils.logging.disable_progress_bar()
        self._torch = torch
        s = self.settings
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        dtype = {
            "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
            "float32": torch.float32,
            "float16": torch.float16,
            "bfloat16": torch.bfloat16,
        }[s.dtype]
        pipeline_class = _class(diffusers, s.pipeline_class or "DiffusionPipeline", "pipeline")
        options: dict[str, Any] = {"dtype": dtype}
        # a component passed as None is not loaded (a processor that needs torchvision)
        options.update({name: None for name in s.skip_components})
        if s.revision is not None:
            options["revision"] = s.revision
        if s.variant is not None:
            options["variant"] = s.variant
        started = time.perf_counter()
        pipe = self._from_pretrained(pipeline_class, s.pipeline, options)
        if s.upscale_pipeline is not None:
            self._upscaler = self._from_pretrained(
                diffusers.DiffusionPipeline, s.upscale_pipeline, {"dtype": dtype}
            )
            self._upscaler_parameters = frozenset(
                inspect.signature(self._upscaler.__call__).parameters
            )
        self._parameters = frozenset(inspect.signature(pipe.__call__).parameters)
        names = {r.scheduler for r in self._render.values()} | {s.scheduler}
        self._schedulers = {None: pipe.scheduler}
        for scheduler in names - {None}:
            assert scheduler is not None
            self._schedulers[scheduler] = _class(diffusers, scheduler, "scheduler").from_config(
                pipe.scheduler.config
            )
        for model, render in self._render.items():
            unknown = set(render.call) - self._parameters
            if unknown:
                raise EngineFailure(
                    f"engine {self.name}, model {model}: {type(pipe).__name__} takes no "
                    f"argument {', '.join(sorted(unknown))}"
                )
            self._check_layers(pipe, model, render)
        log.info(
            "engine %s: %s from %s on %s (%s) in %.1f s",
            self.name,
            type(pipe).__name__,
            s.pipeline,
            device,
            str(dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )
        return pipe

    def _check_layers(self, pipe: Any, model: str, render: RenderSettings) -> None:
        """A layer model needs a layered pipeline, and a layered pipeline serves nothing else."""
        layered = "layers" in self._parameters
        where = f"engine {self.name}, model {model}"
        if model in self._layer_models and not layered:
            raise EngineFailure(
                f"{where}: layer decomposition needs a layered pipeline (such as "
                f"QwenImageLayeredPipeline); {type(pipe).__name__} takes no `layers`"
            )
        if layered and model not in self._layer_models:
            raise EngineFailure(
                f"{where}: {type(pipe).__name__} decomposes images into layers; map only "
                "layer-decomposition models to it"
            )
        if layered and render.default_prompt is None and getattr(pipe, "processor", None) is None:
            # without a prompt the pipeline captions the image with its processor
            raise EngineFailure(
                f"{where}: {type(pipe).__name__} has no processor to caption images that come "
                "without a prompt (skip_components, or torchvision missing): set default_prompt"
            )

    def _from_pretrained(self, pipeline_class: Any, source: str, options: dict[str, Any]) -> Any:
        with _FROM_PRETRAINED:
            pipe = pipeline_class.from_pretrained(source, **options)
            if self.settings.offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            elif self.settings.offload == "sequential":
                pipe.enable_sequential_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def close(self) -> None:
        """Stop the render thread after the jobs already queued."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=60)
            self._thread = None

    # -- running -----------------------------------------------------------------------------
    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        """Queue the job for the render thread and wait for its pictures; resizing and encoding
        them is the worker's post-processing, off the device (``Pictures``)."""
        render = self._render.get(job.model)
        if render is None:
            raise EngineFailure(f"engine {self.name} does not serve {job.model}")
        if len(job.images) > self.settings.max_input_images:
            raise EngineFailure(
                f"engine {self.name} takes at most {self.settings.max_input_images} input images"
            )
        self.load()
        size = render_size(
            job.plan.width,
            job.plan.height,
            native_area=render.native_area,
            multiple=self.settings.size_multiple,
            native_sizes=render.native_sizes,
        )
        request = _Request(job=job, settings=render, size=size, progress=progress, cancel=cancel)
        self._queue.put(request)
        pictures = request.future.result()
        if cancel.is_set():
            raise EngineFailure("canceled")
        if job.plan.layers:
            return Pictures([partial(self._layer_artifacts, job, pictures)])
        plan = job.plan
        return Pictures(
            [
                partial(
                    _finish_one,
                    picture,
                    plan.width,
                    plan.height,
                    plan.format,
                    self._metadata(job, index, len(pictures)),
                )
                for index, picture in enumerate(pictures)
            ]
        )

    def _render_loop(self) -> None:
        while True:
            first = self._held.popleft() if self._held else self._queue.get()
            if first is _STOP:
                return
            batch = self._gather(first)
            try:
                self._render_batch(batch)
            except BaseException as exc:  # every waiting job learns why, whatever it was
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _gather(self, first: _Request) -> list[_Request]:
        """``first`` and the compatible jobs that arrive within the batch window."""
        batch = [first]
        key = first.batch_key()
        limit = self.settings.max_batch
        if key is None or limit <= 1:
            return batch
        deadline = time.monotonic() + self.settings.batch_window_ms / 1000
        # Jobs held back from an earlier batch come first, in order.
        for waiting in list(self._held):
            if len(batch) < limit and waiting.batch_key() == key:
                self._held.remove(waiting)
                batch.append(waiting)
        while len(batch) < limit:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)
                break
            if item.batch_key() == key:
                batch.append(item)
            else:
                self._held.append(item)
        return batch

    def _render_batch(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.cancel.is_set()]
        for request in batch:
            if request.cancel.is_set():
                request.future.set_result([])
        if not live:
            return
        pictures = self._call(live)
        if not pictures:
            for request in live:
                request.future.set_result([])
            return
        offset = 0
        for request in live:
            mine = pictures[offset : offset + request.count]
            if self._on_device(mine):
                # each job to its own plan's size, on the device; only that crosses to the host
                plan = request.job.plan
                mine = list(resize_tensor(self._torch.stack(mine), plan.width, plan.height))
            request.future.set_result(mine)
            offset += request.count

    def _on_device(self, pictures: Sequence[Any]) -> bool:
        return bool(pictures) and not isinstance(pictures[0], Image.Image)

    def _call(self, batch: list[_Request]) -> list[Image.Image]:
        if batch[0].job.plan.layers:
            return self._call_layered(batch[0])  # alone: its input image conditions the call
        torch = self._torch
        pipe = self._pipe
        first = batch[0]
        s = first.settings
        width, height = first.size
        steps = s.steps
        prompts = [_prompt(r.job) for r in batch]
        generators = [
            torch.Generator(device="cpu").manual_seed(r.job.seed + index)
            for r in batch
            for index in range(r.count)
        ]
        plan = first.job.plan
        upscale = self._upscaler is not None and (plan.width > width or plan.height > height)
        # the upscaler's steps are costlier (bigger images): give it the larger share
        split = DENOISE_PROGRESS * 2 // 5 if upscale else DENOISE_PROGRESS
        on_step_end = _StepCallback(batch, 0, split, steps)

        arguments: dict[str, Any] = {
            "prompt": prompts if len(prompts) > 1 else prompts[0],
            "num_inference_steps": steps,
            "generator": generators if len(generators) > 1 else generators[0],
            "num_images_per_prompt": first.count,
            "output_type": "pil",
        }
        on_device = self.resize_on_device
        if on_device is None:
            on_device = str(self.device).startswith("cuda")
        if on_device and not upscale:
            arguments["output_type"] = "pt"  # tensors in 0..1, still on the device
        if "callback_on_step_end" in self._parameters:
            arguments["callback_on_step_end"] = on_step_end
        else:
            # older pipelines: callback(step, timestep, latents), stopped by raising
            arguments["callback"], arguments["callback_steps"] = on_step_end.legacy, 1
        optional = {
            "guidance_scale": s.guidance_scale,
            "true_cfg_scale": s.true_cfg_scale,
            "negative_prompt": (
                None
                if s.negative_prompt is None
                else [s.negative_prompt] * len(batch)
                if len(batch) > 1
                else s.negative_prompt
            ),
        }
        arguments.update({k: v for k, v in optional.items() if v is not None})
        images = list(first.job.images)
        if "height" in self._parameters:
            arguments["height"], arguments["width"] = height, width
        elif images:
            # img2img-style pipelines render at the input's size: give it the render size.
            images = [resize_exact(image.convert("RGB"), width, height) for image in images]
        if images:
            rgb = [image.convert("RGB") for image in images]
            arguments["image"] = rgb[0] if self.settings.max_input_images == 1 else rgb
        arguments.update(s.call)
        arguments = {k: v for k, v in arguments.items() if k in self._parameters or k in s.call}
        pipe.scheduler = self._schedulers[s.scheduler]
        try:
            with torch.inference_mode():
                output = pipe(**arguments)
        except _Interrupted:
            return []  # every job of the call was cancelled; run() raises "canceled"
        self.calls += 1
        self.jobs += len(batch)
        pictures: list[Image.Image] = list(output.images)
        expected = sum(r.count for r in batch)
        if len(pictures) != expected:
            raise EngineFailure(f"the pipeline returned {len(pictures)} images, not {expected}")
        if upscale:
            pictures = self._upscale(batch, pictures, split)
        return pictures

    def _call_layered(self, request: _Request) -> list[Image.Image]:
        """A layered pipeline on the job's input image: its RGBA layers, bottom first (the
        order in which the model's own app stacks them)."""
        job, s = request.job, request.settings
        # the plan bounds the layers by the catalogue's max_layers (the credits held)
        layers = max(1, min(s.layers, job.plan.max_images - 1))
        vae = getattr(self._pipe, "vae", None)
        channels = getattr(getattr(vae, "config", None), "input_channels", 3)
        # opaque RGB first, as the model's own app does: a transparent input's hidden colours
        # would otherwise reach the RGBA VAE
        picture = job.images[0].convert("RGB")
        arguments: dict[str, Any] = {
            "image": picture.convert("RGBA") if channels == 4 else picture,
            # "" makes the pipeline caption the image itself (load checked it can)
            "prompt": _prompt(job) or s.default_prompt or "",
            "layers": layers,
            "num_inference_steps": s.steps,
            "generator": self._torch.Generator(device="cpu").manual_seed(job.seed),
            "num_images_per_prompt": 1,
            "output_type": "pil",
            "callback_on_step_end": _StepCallback([request], 0, DENOISE_PROGRESS, s.steps),
        }
        optional = {
            "guidance_scale": s.guidance_scale,
            "true_cfg_scale": s.true_cfg_scale,
            "negative_prompt": s.negative_prompt,
        }
        arguments.update({k: v for k, v in optional.items() if v is not None})
        arguments.update(s.call)
        arguments = {k: v for k, v in arguments.items() if k in self._parameters or k in s.call}
        self._pipe.scheduler = self._schedulers[s.scheduler]
        with self._torch.inference_mode():
            output = self._pipe(**arguments)
        self.calls += 1
        self.jobs += 1
        pictures: list[Image.Image] = list(output.images[0])
        if len(pictures) != layers:
            raise EngineFailure(f"the pipeline returned {len(pictures)} layers, not {layers}")
        return pictures

    def _layer_artifacts(
        self, job: EngineJob, layers: Sequence[Image.Image], encoding: Encoding = DEFAULT_ENCODING
    ) -> list[Artifact]:
        """The base image (the layers composited over white), then each layer as RGBA PNG."""
        width, height = job.plan.width, job.plan.height
        exact = [resize_exact(layer.convert("RGBA"), width, height) for layer in layers]
        base = Image.new("RGBA", (width, height), (255, 255, 255, 255))
        for layer in exact:
            base.alpha_composite(layer)
        count = 1 + len(exact)
        meta = self._metadata(job, 0, count, 0)
        artifacts = [encode(base.convert("RGB"), job.plan.format, text=meta, encoding=encoding)]
        for number, layer in enumerate(exact, start=1):
            meta = self._metadata(job, number, count, 0)
            meta["seedbed:layer"] = f"{number}/{len(exact)}"
            artifacts.append(encode(layer, "png", text=meta, encoding=encoding))
        return artifacts

    def _upscale(
        self, batch: list[_Request], pictures: list[Image.Image], start: int
    ) -> list[Image.Image]:
        """Each picture through the super-resolution pipeline, with its own prompt and seed."""
        owners = [(r, index) for r in batch for index in range(r.count)]
        steps = self.settings.upscale_steps
        share = (DENOISE_PROGRESS - start) / len(pictures)
        out = []
        for number, (picture, (request, index)) in enumerate(zip(pictures, owners, strict=True)):
            if all(r.cancel.is_set() for r in batch):
                break
            low = start + round(number * share)
            callback = _StepCallback(batch, low, start + round((number + 1) * share), steps)
            arguments: dict[str, Any] = {
                "prompt": _prompt(request.job),
                "image": picture,
                "num_inference_steps": steps,
                "generator": self._torch.Generator(device="cpu").manual_seed(
                    request.job.seed + index
                ),
            }
            if "callback_on_step_end" in self._upscaler_parameters:
                arguments["callback_on_step_end"] = callback
            else:
                # older pipelines (StableDiffusionUpscalePipeline): callback(step, t, latents)
                arguments["callback"] = callback.legacy
                arguments["callback_steps"] = 1
            try:
                with self._torch.inference_mode():
                    out.append(self._upscaler(**arguments).images[0])
            except _Interrupted:
                break
            self.upscaled += 1
        return out if len(out) == len(pictures) else pictures

    def _metadata(
        self, job: EngineJob, index: int, count: int, seed_offset: int | None = None
    ) -> dict[str, str]:
        """PNG text / JPEG comment of image ``index``; its seed is ``seed + index`` unless
        ``seed_offset`` says (the layers of one decomposition share one seed)."""
        meta = {
            "seedbed:engine": f"diffusers:{self.name}",
            "Software": f"seedbed diffusers engine ({self.settings.pipeline})",
            "seedbed:model": job.model,
            "seedbed:seed": str(job.seed + (index if seed_offset is None else seed_offset)),
            "seedbed:prompt": _prompt(job)[:_PROMPT_META_CHARS],
        }
        if count > 1:
            meta["seedbed:image"] = f"{index + 1}/{count}"
        return meta


def _finish_one(
    picture: Image.Image | Any,
    width: int,
    height: int,
    fmt: ImageFormat,
    meta: dict[str, str],
    encoding: Encoding,
) -> list[Artifact]:
    """Post-processing of one picture (on the worker's post-processing threads): a PIL
    picture at the render size, or an array already resized on the device."""
    return [finish(picture, width, height, fmt, text=meta, encoding=encoding)]


class _Interrupted(Exception):
    """Raised from a legacy step callback: those pipelines have no ``_interrupt`` flag."""


class _StepCallback:
    """``callback_on_step_end``: progress from ``low`` to ``high`` over ``steps``, and cancel."""

    def __init__(self, batch: Sequence[_Request], low: int, high: int, steps: int) -> None:
        self.batch = batch
        self.low, self.high, self.steps = low, high, steps
        self.reported = -1

    def __call__(self, pipeline: Any, step: int, timestep: Any, tensors: Any) -> Any:
        if self._step(step):
            pipeline._interrupt = True  # diffusers skips the remaining steps
        return tensors

    def legacy(self, step: int, timestep: Any, latents: Any) -> None:
        """The ``callback(step, timestep, latents)`` of older pipelines, which cannot be told
        to stop: raising is the only way out."""
        if self._step(step):
            raise _Interrupted

    def _step(self, step: int) -> bool:
        """Report progress; True once every job of the call is cancelled."""
        percent = min(self.high, self.low + (step + 1) * (self.high - self.low) // self.steps)
        if percent > self.reported:
            self.reported = percent
            for request in self.batch:
                request.progress(percent)
        return all(r.cancel.is_set() for r in self.batch)


def _prompt(job: EngineJob) -> str:
    value = job.input.get("prompt")
    return value if isinstance(value, str) else ""


def _class(module: Any, name: str, what: str) -> Any:
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise EngineFailure(f"diffusers has no {what} class {name!r}")
    return found
