"""The ``Engine`` protocol: what turns a validated task into images."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard, runtime_checkable

if TYPE_CHECKING:
    # Only a type here: the catalogue (and so ``seedbed.client``) imports this module, and
    # Pillow is a tenth of a second of start-up that the client does not need.
    from PIL import Image

    from seedbed.images import Encoding

__all__ = [
    "Artifact",
    "AsyncEngine",
    "Engine",
    "EngineJob",
    "EngineLimits",
    "NoteFn",
    "OutputPlan",
    "Pictures",
    "ProgressFn",
    "extension_of",
    "is_async",
]

ImageFormat = Literal["png", "jpeg"]


def extension_of(format: ImageFormat) -> str:
    """The file extension of a result in ``format``: ``jpg`` or ``png``."""
    return "jpg" if format == "jpeg" else format


#: called by an engine with a percentage 0..100; cheap and safe from any thread
ProgressFn = Callable[[int], None]
#: called by a relay engine with the upstream's id of the task as soon as it is known
NoteFn = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class OutputPlan:
    """What a task must return, from the catalogue: the contract's pixel size and format."""

    width: int
    height: int
    format: ImageFormat
    #: the engine returns between 1 and ``max_images`` images (4.0's ``max_images``)
    max_images: int = 1
    #: layer decomposition: image 0 is the base in ``format``, the rest are RGBA PNG layers
    layers: bool = False


@dataclass(frozen=True, kw_only=True)
class EngineJob:
    task_id: str
    model: str
    #: the validated input, defaults applied (``prompt``, ``seed``, ... where the model has them)
    input: Mapping[str, Any]
    #: the seed to use: the request's, or one the server drew and stored at create
    seed: int
    plan: OutputPlan
    #: decoded input images, in the order of ``image_urls`` (or the one ``image_url``)
    images: Sequence[Image.Image] = ()


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One encoded output image."""

    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


#: one step of post-processing: resize, encode (and for the sandbox, draw) one output, or the
#: few a layered output makes; it gets the worker's encoding options (``images.Encoding``)
FinishFn = Callable[["Encoding"], Sequence[Artifact]]


@dataclass(frozen=True)
class Pictures:
    """What a pipelined engine returns: the device is done, the CPU work is not.

    The worker releases the engine's slot as soon as it has this, and runs ``outputs`` as
    post-processing, beside the next generation; their artifacts are stored in order (output 0
    first, each one's artifacts in the order it returns them).
    """

    outputs: Sequence[FinishFn]


@dataclass(frozen=True, kw_only=True)
class EngineLimits:
    """What an engine can serve; requests over a limit are refused at create time (422)."""

    max_input_images: int | None = None
    max_outputs: int | None = None


class Engine(Protocol):
    name: str
    limits: EngineLimits

    def serves(self, model: str) -> bool:
        """Whether this engine can run ``model``."""

    def load(self) -> None:
        """Load weights once per worker; called in a thread before the first job."""

    def run(
        self, job: EngineJob, progress: ProgressFn, cancel: threading.Event
    ) -> list[Artifact] | Pictures:
        """Generate the job's images; runs in a worker thread, so it may block.

        Report progress as it goes and stop (raising) soon after ``cancel`` is set. Each
        artifact must have exactly ``job.plan``'s pixel size. An engine on a device returns
        ``Pictures`` (its outputs still to be resized and encoded) so that the device is free
        for the next job while the CPU finishes this one.
        """


@runtime_checkable
class AsyncEngine(Engine, Protocol):
    """An engine whose work is waiting on another service (a relay to an upstream API).

    The worker runs it on its event loop, not on one of its engine threads: one worker holds
    up to ``max_concurrency`` of its tasks at once, beside the thread engines' slots, so the
    upstream's latency does not limit throughput.
    """

    #: tasks of this engine one worker runs at once
    max_concurrency: int
    #: routes: the next engine takes a task when this one's estimated wait is longer
    spill_after_seconds: float | None

    def is_up(self) -> bool:
        """False while the engine knows its upstream is down (its circuit is open)."""

    async def run_async(
        self,
        job: EngineJob,
        progress: ProgressFn,
        cancel: threading.Event,
        note: NoteFn | None = None,
    ) -> list[Artifact]:
        """Generate the job's images on the event loop; same contract as ``run``.

        Raises ``seedbed.engines.relay.UpstreamDown`` when the upstream cannot be reached
        (the task may then move to the next engine of its route).
        """


def is_async(engine: Engine) -> TypeGuard[AsyncEngine]:
    """Whether ``engine`` runs on the event loop (``AsyncEngine``) rather than a thread.

    ``isinstance`` against a runtime-checkable protocol looks up each of its members (~24 us);
    the worker asks for every model at each claim. Without ``run_async`` the answer is no
    (isinstance would look for it too), in a fraction of a microsecond."""
    return hasattr(engine, "run_async") and isinstance(engine, AsyncEngine)
