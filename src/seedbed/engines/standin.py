"""A model stand-in: an engine that behaves like a model on a GPU, for benchmarks and tests.

A real engine holds its device for the model's time while the CPU waits (the work runs on the
GPU), then hands back pictures at the model's native size, which still have to be resized to the
contract's size and encoded. The stand-in does exactly that: it holds the worker's device slot
for ``hold_ms`` milliseconds without using the CPU (a wait on the cancel event, so a cancel ends
it at once), then returns :class:`~seedbed.engines.base.Pictures` of native-size pictures
(``native`` x ``native`` pixels of area, at the plan's aspect, in multiples of 16 like a latent
model). The resize and encode are the worker's post-processing, the same code path a diffusers
engine's pictures take, so that what a benchmark measures is the real path.

The pictures are photo-like (smooth colour fields with fine grain, so encoders have realistic
work: neither flat nor noise) and made once per size and seed class, then shared: making them
is the device's work, which must not be billed to the CPU.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from functools import partial

import numpy as np
from PIL import Image, ImageFilter

from seedbed.engines.base import (
    Artifact,
    EngineJob,
    EngineLimits,
    ImageFormat,
    Pictures,
    ProgressFn,
)
from seedbed.errors import EngineFailure
from seedbed.images import Encoding, finish

__all__ = ["StandinEngine", "native_size"]

#: different pictures per seed, modulo this (each kept once per size)
_VARIANTS = 4


class StandinEngine:
    """An :class:`~seedbed.engines.base.Engine` that takes ``hold_ms`` of device time per job.

    ``models``: the model ids it serves (all of them when None).
    """

    name = "standin"
    limits = EngineLimits()

    def __init__(
        self,
        *,
        hold_ms: float = 100.0,
        native: int = 1024,
        steps: int = 4,
        models: frozenset[str] | None = None,
    ) -> None:
        if hold_ms < 0 or not math.isfinite(hold_ms):
            raise ValueError("hold_ms must be a finite number >= 0")
        if native < 16 or steps < 1:
            raise ValueError("native must be >= 16 and steps >= 1")
        self.hold_ms = hold_ms
        self.native = native
        self.steps = steps
        self.models = models
        #: jobs that reached the end of their device time (tests count runs with it)
        self.runs = 0

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def load(self) -> None:
        """Nothing to load."""

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        """Hold the device for ``hold_ms`` in ``steps`` steps, then hand over the pictures."""
        # Each step waits until its own deadline from the start, not for a step's length: a
        # wait wakes a little late (more on a loaded host), and ``steps`` lengths in a row
        # would add those up into a hold longer than ``hold_ms``, which a GPU's would not be.
        start = time.monotonic()
        for index in range(self.steps):
            deadline = start + self.hold_ms / 1000 * (index + 1) / self.steps
            if cancel.wait(max(0.0, deadline - time.monotonic())):
                raise EngineFailure("canceled")
            progress(min(99, (index + 1) * 100 // self.steps))
        self.runs += 1
        width, height = native_size(job.plan.width, job.plan.height, self.native)
        plan = job.plan
        count = max(1, plan.max_images) if not plan.layers else 1
        outputs = []
        for index in range(count):
            picture = _picture(width, height, (job.seed + index) % _VARIANTS)
            meta = {
                "seedbed:engine": "standin",
                "Software": "seedbed model stand-in (not a real model)",
                "seedbed:model": job.model,
                "seedbed:seed": str(job.seed + index),
            }
            outputs.append(partial(_finish, picture, plan.width, plan.height, plan.format, meta))
        return Pictures(outputs)


def _finish(
    picture: Image.Image,
    width: int,
    height: int,
    fmt: ImageFormat,
    meta: dict[str, str],
    encoding: Encoding,
) -> list[Artifact]:
    """Post-processing of one picture: to the contract's size, encoded."""
    return [finish(picture, width, height, fmt, text=meta, encoding=encoding)]


def native_size(width: int, height: int, native: int) -> tuple[int, int]:
    """A model's render size for a ``width`` x ``height`` plan: ``native``² pixels of area at
    the plan's aspect, each side a multiple of 16."""
    aspect = width / height
    w = max(16, round(native * math.sqrt(aspect) / 16) * 16)
    h = max(16, round(native / math.sqrt(aspect) / 16) * 16)
    return w, h


@functools.lru_cache(maxsize=16)
def _picture(width: int, height: int, variant: int) -> Image.Image:
    """A photo-like RGB picture: random colours at 1/32 scale, smoothed, with fine grain."""
    rng = np.random.default_rng(variant)
    coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    smooth = (
        Image.fromarray(coarse, "RGB")
        .resize((width, height), Image.Resampling.BICUBIC)
        .filter(ImageFilter.GaussianBlur(2))
    )
    grain = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(smooth, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")
