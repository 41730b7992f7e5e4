"""What every relay engine shares: an upstream API in place of a local pipeline.

A relay engine's task is mostly waiting, so it runs on the worker's event loop
(:class:`~seedbed.engines.base.AsyncEngine`), many at once under a semaphore of
``max_concurrency``. This module holds what does not depend on the upstream's API:

- :meth:`RelayEngine.send`: one upstream request with the fault rules of issue 15: 429, 5xx and
  timeouts retried with full-jitter backoff (``Retry-After`` honoured) within the task's retry
  budget; a refused connection or a spent budget raises :class:`UpstreamDown` (the task may
  move to the next engine of its route); 401/403 raise :class:`UpstreamKeyRejected` (an
  operator problem: ``failCode`` "500", an error log line, ``/readyz`` says so).
- :class:`CircuitBreaker`: after ``circuit_failures`` failures in a row the engine refuses at
  once for ``circuit_open_seconds``, then lets one trial request through.
- :meth:`RelayEngine.artifact`: an upstream image checked (size cap, real format, claimed pixel
  count before decoding), resized to the contract's size where only the scale differs, and
  encoded in the model's format, so results are always this server's own files.

The upstream's key is read from the environment variable the settings name, once, and only
ever goes into an ``Authorization`` header: never into a message, a log line or the database.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import io
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from PIL import Image

from seedbed import netguard
from seedbed.catalogue.base import ImageInputRule
from seedbed.client.protocol import parse_retry_after
from seedbed.config import RelayEngineSettings
from seedbed.engines.base import (
    Artifact,
    EngineJob,
    EngineLimits,
    NoteFn,
    ProgressFn,
    extension_of,
)
from seedbed.errors import EngineFailure, InputImageError, TaskFailure

__all__ = [
    "CircuitBreaker",
    "RelayEngine",
    "RelayObserver",
    "UpstreamDown",
    "UpstreamKeyRejected",
    "UpstreamRefused",
    "api_key_from_env",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how often a waiting relay task looks at its cancel event (a threading.Event: the API, a
#: heartbeat or a progress write may set it)
CANCEL_POLL = 0.2
#: an upstream body quoted in a message is cut to this many characters
QUOTE = 300
#: how long a canceled relay may take to tidy up (cancel the upstream task)
CANCEL_TIDY_SECONDS = 5.0
#: result formats accepted from an upstream (Ark answers JPEG or PNG; kie and seedbed too)
RESULT_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
#: an upstream image whose aspect ratio is off the contract's by more than this fails the task
#: instead of being stretched (a mere scale difference is resized)
ASPECT_TOLERANCE = 0.02
#: relay tasks per HTTP connection pool (see :class:`_Pools`)
TASKS_PER_POOL = 8


class UpstreamDown(TaskFailure):
    """The upstream cannot be reached or keeps failing: the task may try its route's next engine."""

    fail_code = "500"


class UpstreamKeyRejected(TaskFailure):
    """The upstream refused this server's own key: the operator must fix the deployment."""

    fail_code = "500"


class UpstreamRefused(TaskFailure):
    """The upstream refused the request itself (content refusal, bad input): no retry."""

    fail_code = "400"


class UpstreamCanceled(EngineFailure):
    """The task's cancel event was set while it waited on the upstream."""


def api_key_from_env(engine: str, variable: str) -> str:
    """The upstream key from ``variable``; ``ValueError`` (one line naming it) when unset."""
    value = os.environ.get(variable, "").strip()
    if not value:
        # the variable first: a terminal that wraps the line keeps it whole on the first line
        raise ValueError(
            f"{variable} is not set: engine {engine!r} reads its upstream's API key from that "
            "environment variable (api_key_env)"
        )
    return value


class RelayObserver(Protocol):
    """Where a relay engine reports its upstream traffic: the app's ``metrics.Metrics``."""

    def upstream_request(self, engine: str, outcome: str, seconds: float) -> None:
        """One upstream exchange: ``outcome`` is ok, refused, retry, key, down or download."""

    def upstream_bought(self, engine: str, images: int) -> None:
        """Images an upstream returned (and charged for) for one task."""


class _Unobserved:
    """The observer of an engine outside a server (tests, benches): keeps nothing."""

    def upstream_request(self, engine: str, outcome: str, seconds: float) -> None:
        pass

    def upstream_bought(self, engine: str, images: int) -> None:
        pass


class CircuitBreaker:
    """Consecutive failures open the circuit; after ``open_seconds`` one trial may pass."""

    def __init__(self, failures: int, open_seconds: float) -> None:
        self.threshold = failures
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    def is_open(self) -> bool:
        return self.opened_at is not None and (
            time.monotonic() - self.opened_at < self.open_seconds or self._trial
        )

    def allow(self) -> bool:
        """May a request go out now? In the half-open state only one trial at a time."""
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at < self.open_seconds or self._trial:
            return False
        self._trial = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial = False

    def failure(self) -> None:
        self.failures += 1
        self._trial = False
        if self.failures >= self.threshold:
            self.opened_at = time.monotonic()


@dataclass
class Budget:
    """One task's allowance of retries and time spent waiting between them."""

    retries: int
    seconds: float
    used: int = 0
    waited: float = 0.0

    def delay(self, attempt: int, base: float, retry_after: float | None) -> float | None:
        """The wait before retry ``attempt`` (1-based), or None when the budget is spent."""
        if self.used >= self.retries:
            return None
        # full jitter (AWS's "exponential backoff and jitter"): spreads a burst of retries
        wait = random.uniform(0, base * 2 ** (attempt - 1))
        if retry_after is not None:
            wait = max(wait, retry_after)
        if self.waited + wait > self.seconds:
            return None
        self.used += 1
        self.waited += wait
        return wait


class _Pools:
    """One loop's HTTP clients for an engine: each relay task holds one for its whole run.

    httpcore's pool walks every connection it holds each time a request is queued and each
    time a response is closed (``has_expired`` asks the socket whether it is readable, a
    system call per idle connection). With one pool of 200 connections for 200 tasks at once
    that walk was 75 % of the server's main thread (py-spy, bench/relay_bench.py): quadratic
    in the tasks in flight. Tasks are spread over pools of at most ``TASKS_PER_POOL`` tasks
    instead, so each walk is over a few connections; a task's requests (the generation, then
    the download from the same host) still reuse one kept-alive connection.
    """

    def __init__(self, settings: RelayEngineSettings) -> None:
        self.settings = settings
        self.gate = asyncio.Semaphore(settings.max_concurrency)
        self._clients: list[httpx.AsyncClient] = []
        self._load: list[int] = []
        #: one TLS context for every pool: httpx makes a new one per client otherwise, loading
        #: the CA bundle each time (about 30 ms of CPU, 0.7 s over a burst of 200 tasks)
        self._tls: ssl.SSLContext | None = None

    def client(self, index: int) -> httpx.AsyncClient:
        while len(self._clients) <= index:
            self._clients.append(self._new())
            self._load.append(0)
        return self._clients[index]

    def acquire(self) -> int:
        """The index of a pool with room for one more task (a new pool when all are full)."""
        index = next(
            (i for i, load in enumerate(self._load) if load < TASKS_PER_POOL), len(self._load)
        )
        self.client(index)
        self._load[index] += 1
        return index

    def release(self, index: int) -> None:
        self._load[index] -= 1

    def _new(self) -> httpx.AsyncClient:
        s = self.settings
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return httpx.AsyncClient(
            verify=self._tls,
            timeout=httpx.Timeout(s.request_timeout, connect=s.connect_timeout),
            limits=httpx.Limits(
                max_connections=s.max_concurrency * 2,
                max_keepalive_connections=TASKS_PER_POOL * 2,
            ),
            trust_env=False,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        clients, self._clients, self._load = self._clients, [], []
        for client in clients:
            await client.aclose()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float = field(default=0.0)


class RelayEngine(abc.ABC):
    """The shared part of the ``ark`` and ``kie`` engines (see the module's docstring)."""

    kind = "relay"

    def __init__(
        self,
        name: str,
        settings: RelayEngineSettings,
        models: frozenset[str],
        *,
        api_key: str,
        net_policy: netguard.NetPolicy | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.models = models
        self.limits = EngineLimits(
            max_input_images=settings.max_input_images, max_outputs=settings.max_outputs
        )
        self.max_concurrency = settings.max_concurrency
        self.spill_after_seconds = settings.spill_after_seconds
        self.base_url = settings.base_url.rstrip("/")
        self.net_policy = net_policy or netguard.NetPolicy()
        #: metrics: the app's ``Metrics`` once the worker is built (``app.build_worker``)
        self.observer: RelayObserver = _Unobserved()
        self.circuit = CircuitBreaker(settings.circuit_failures, settings.circuit_open_seconds)
        #: set when the upstream rejected the key, cleared by the next accepted request
        self.key_rejected: str | None = None
        self.__key = api_key
        self._clients: dict[int, _Pools] = {}
        #: the HTTP client of the relay task running in this context
        self._current: contextvars.ContextVar[httpx.AsyncClient | None] = contextvars.ContextVar(
            f"seedbed-relay-{name}", default=None
        )
        self._result_rule = ImageInputRule(
            field="result",
            max_items=1,
            max_bytes=settings.max_image_bytes,
            formats=RESULT_FORMATS,
            max_pixels=settings.max_image_pixels,
        )

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} {self.name} {self.base_url}>"

    # -- the Engine protocol ---------------------------------------------------------------
    def serves(self, model: str) -> bool:
        return model in self.models

    def load(self) -> None:
        """Nothing to load: the upstream is checked by the first request."""
        return None

    def is_up(self) -> bool:
        return not self.circuit.is_open()

    def readiness(self) -> str:
        """``ok``, or why this engine cannot serve (for ``/readyz``).

        Only a rejected key makes the server unready: that needs the operator. An upstream
        that is down is a passing state the circuit breaker and routes deal with.
        """
        return self.key_rejected or "ok"

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> list[Artifact]:
        """The thread form, for callers without a loop (the worker uses ``run_async``)."""
        return asyncio.run(self.run_async(job, progress, cancel))

    async def run_async(
        self,
        job: EngineJob,
        progress: ProgressFn,
        cancel: threading.Event,
        note: NoteFn | None = None,
    ) -> list[Artifact]:
        pools = self._pools()
        async with pools.gate:
            index = pools.acquire()
            # The relay's own asyncio task (made in _until_canceled) copies this context, so
            # every request of this task goes through the pool chosen here.
            token = self._current.set(pools.client(index))
            try:
                return await self._until_canceled(self.relay(job, progress, cancel, note), cancel)
            finally:
                self._current.reset(token)
                pools.release(index)

    @abc.abstractmethod
    async def relay(
        self,
        job: EngineJob,
        progress: ProgressFn,
        cancel: threading.Event,
        note: NoteFn | None,
    ) -> list[Artifact]:
        """One task through the upstream's own API (Ark's, kie's): its images, encoded."""

    async def aclose(self) -> None:
        """Close this loop's HTTP pool (the worker's loop ends; a later run opens another)."""
        loop = asyncio.get_running_loop()
        pools = self._clients.pop(id(loop), None)
        if pools is not None:
            await pools.aclose()

    async def close_all(self) -> None:
        every, self._clients = self._clients, {}
        for pools in every.values():
            await pools.aclose()

    # -- HTTP ------------------------------------------------------------------------------
    def _client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The running task's HTTP client (its pool, see :class:`_Pools`) and this loop's
        semaphore; outside a task (tests, tidy-ups), the loop's first pool."""
        pools = self._pools()
        client = self._current.get()
        return (client if client is not None else pools.client(0)), pools.gate

    def _pools(self) -> _Pools:
        """This loop's pools (tests run several servers, one loop each)."""
        loop = asyncio.get_running_loop()
        pools = self._clients.get(id(loop))
        if pools is None:
            pools = self._clients[id(loop)] = _Pools(self.settings)
        return pools

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.__key}"}

    async def send(
        self,
        method: str,
        url: str,
        *,
        budget: Budget,
        json: Any = None,
        files: Any = None,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        what: str = "request",
        retry_status: Callable[[Answer], bool] | None = None,
    ) -> Answer:
        """One upstream exchange under the fault rules (see the module's docstring).

        Returns any answer that is not retried: 2xx, or a 4xx the caller interprets (401/403
        are raised here as :class:`UpstreamKeyRejected`). ``retry_status`` says which other
        answers to retry (kie answers faults in its JSON ``code`` with HTTP 200).
        """
        client, _ = self._client()
        attempt = 0
        while True:
            attempt += 1
            if not self.circuit.allow():
                self.observer.upstream_request(self.name, "down", 0.0)
                raise UpstreamDown(f"upstream {self.name} is down (circuit open); {what} not sent")
            started = time.monotonic()
            try:
                response = await client.request(
                    method,
                    url,
                    json=json,
                    files=files,
                    data=data,
                    params=params,
                    headers=self._auth(),
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                body = await response.aread()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Refused or unreachable: the upstream is down; the route's next engine is
                # better than waiting.
                self.circuit.failure()
                self.observer.upstream_request(self.name, "down", time.monotonic() - started)
                raise UpstreamDown(
                    f"upstream {self.name} unreachable ({type(exc).__name__}) on {what}"
                ) from None
            except httpx.HTTPError as exc:
                seconds = time.monotonic() - started
                self.circuit.failure()
                self.observer.upstream_request(self.name, "retry", seconds)
                problem = f"{type(exc).__name__} after {seconds:.1f} s"
                wait = budget.delay(attempt, self.settings.retry_base_seconds, None)
                if wait is None:
                    raise UpstreamDown(
                        f"upstream {self.name}: {what} failed {attempt} times, last: {problem}"
                    ) from None
                log.warning("upstream %s: %s; retrying in %.2f s", self.name, problem, wait)
                await asyncio.sleep(wait)
                continue
            seconds = time.monotonic() - started
            answer = Answer(response.status_code, response.headers, body, seconds)
            status = response.status_code
            if status in (401, 403):
                self.circuit.success()  # it answered: not down, but nothing will work
                self.observer.upstream_request(self.name, "key", seconds)
                raise self.key_rejection(f"HTTP {status}", what)
            retry = (
                status == 429
                or status >= 500
                or (retry_status is not None and retry_status(answer))
            )
            if not retry:
                self.circuit.success()
                self.key_rejected = None
                self.observer.upstream_request(
                    self.name, "ok" if status < 400 else "refused", seconds
                )
                return answer
            if status != 429:
                self.circuit.failure()  # a 429 is the upstream working as designed
            self.observer.upstream_request(self.name, "retry", seconds)
            wait = budget.delay(
                attempt,
                self.settings.retry_base_seconds,
                parse_retry_after(answer.headers.get("retry-after")),
            )
            if wait is None:
                raise UpstreamDown(
                    f"upstream {self.name}: {what} answered HTTP {status} "
                    f"{attempt} times, last: {quote(body)}"
                )
            log.warning(
                "upstream %s answered HTTP %d on %s; retrying in %.2f s",
                self.name,
                status,
                what,
                wait,
            )
            await asyncio.sleep(wait)

    def key_rejection(self, answer: str, what: str) -> UpstreamKeyRejected:
        """The failure for an upstream that refuses this server's key: logged once per
        occurrence as an operator problem, and ``/readyz`` says so until a request passes."""
        self.key_rejected = f"upstream rejects this server's key ({answer})"
        log.error(
            "upstream %s rejected this server's API key (%s on %s): check the variable its "
            "api_key_env names",
            self.name,
            answer,
            what,
        )
        return UpstreamKeyRejected(
            f"upstream {self.name} rejected this server's API key ({answer}); the operator "
            "must fix it"
        )

    def budget(self) -> Budget:
        return Budget(self.settings.max_retries, self.settings.retry_budget_seconds)

    async def download(self, url: str, *, own_origin: bool) -> bytes:
        """A result image from the upstream's answer, capped in size and time.

        Links on the upstream's own API host are fetched with its client (they may need its
        key); any other link goes through :mod:`seedbed.netguard` like a user's URL, since
        the upstream's answer decides where this server connects.
        """
        s = self.settings
        if own_origin:
            client, _ = self._client()
            started = time.monotonic()
            try:
                async with client.stream(
                    "GET", url, headers=self._auth(), timeout=s.download_timeout
                ) as response:
                    if response.status_code != 200:
                        raise TaskFailure(
                            f"upstream {self.name}: result download answered HTTP "
                            f"{response.status_code}"
                        )
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > s.max_image_bytes:
                            raise TaskFailure(
                                f"upstream {self.name}: result image is over the "
                                f"{s.max_image_bytes:,}-byte cap"
                            )
                        chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise TaskFailure(
                    f"upstream {self.name}: result download failed ({type(exc).__name__})"
                ) from None
            finally:
                self.observer.upstream_request(self.name, "download", time.monotonic() - started)
            return b"".join(chunks)
        try:
            fetched = await netguard.fetch(
                url, policy=self.net_policy, max_bytes=s.max_image_bytes, timeout=s.download_timeout
            )
        except netguard.NetguardError as exc:
            raise TaskFailure(
                f"upstream {self.name}: result download failed: {exc.reason}"
            ) from None
        return fetched.content

    # -- results ---------------------------------------------------------------------------
    def artifact(self, job: EngineJob, data: bytes, index: int) -> Artifact:
        """An upstream image as this server's result (runs in a thread: decoding is CPU)."""
        from seedbed import images

        try:
            image = images.decode_input(data, self._result_rule, index=index, field="result")
        except InputImageError as exc:
            reason = exc.fail_msg.partition(": ")[2] or exc.fail_msg
            raise TaskFailure(
                f"upstream {self.name} returned a bad image (#{index + 1}): {reason}"
            ) from None
        plan = job.plan
        if image.size == (plan.width, plan.height) and _as_is(data, plan.format):
            # Already what the contract asks (Ark answers JPEG at the size asked): stored as the
            # upstream made it, checked above by a full decode. A re-encode cost CPU and a
            # generation of quality; the engine and model text is then not in the file.
            return Artifact(
                data=data,
                content_type=f"image/{plan.format}",
                extension=extension_of(plan.format),
                width=plan.width,
                height=plan.height,
            )
        if image.size != (plan.width, plan.height):
            image = self._fit(image, plan.width, plan.height, index)
        return images.encode(image, plan.format, text=_origin_text(self.name, job.model))

    def _fit(self, image: Image.Image, width: int, height: int, index: int) -> Image.Image:
        from seedbed import images

        got = image.width / image.height
        want = width / height
        if abs(got / want - 1) > ASPECT_TOLERANCE:
            raise TaskFailure(
                f"upstream {self.name} returned image #{index + 1} at "
                f"{image.width}x{image.height}, not the {width}x{height} asked for"
            )
        return images.resize_exact(image, width, height)

    async def artifacts(self, job: EngineJob, blobs: list[bytes]) -> list[Artifact]:
        """Every upstream image checked and encoded, or the task fails whole (nothing half)."""
        if len(blobs) > job.plan.max_images:
            log.warning(
                "upstream %s returned %d images for at most %d; keeping the first",
                self.name,
                len(blobs),
                job.plan.max_images,
                extra={"taskId": job.task_id},
            )
            blobs = blobs[: job.plan.max_images]
        if not blobs:
            raise TaskFailure(f"upstream {self.name} returned no image")
        out = list(
            await asyncio.gather(
                *(asyncio.to_thread(self.artifact, job, blob, i) for i, blob in enumerate(blobs))
            )
        )
        self.observer.upstream_bought(self.name, len(out))
        return out

    # -- cancel ----------------------------------------------------------------------------
    async def _until_canceled(self, work: Awaitable[T], cancel: threading.Event) -> T:
        """``work``'s result, or :class:`UpstreamCanceled` soon after ``cancel`` is set."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL)
                if done:
                    return task.result()
                if cancel.is_set():
                    # The relay sees CancelledError where it waits and may tidy up (the kie
                    # engine cancels the upstream task) for a few seconds.
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await asyncio.wait_for(task, CANCEL_TIDY_SECONDS)
                    raise UpstreamCanceled("canceled")
        finally:
            if not task.done():
                task.cancel()


def quote(body: bytes) -> str:
    """An upstream body for a message: decoded, one line, cut."""
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return (text[:QUOTE] + "...") if len(text) > QUOTE else (text or "(empty body)")


#: PIL's name of each contract format an upstream file may be stored in as it is
_AS_IS_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def _as_is(data: bytes, fmt: str) -> bool:
    """May ``data`` (already decoded whole) be stored unchanged as a ``fmt`` result? Only a
    plain RGB file of that very format, one frame, with no EXIF rotation (what the decode
    turned upright would be shown turned by a browser otherwise). Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (
                image.format == _AS_IS_FORMATS.get(fmt)
                and image.mode == "RGB"
                and not getattr(image, "is_animated", False)
                and image.getexif().get(_ORIENTATION, 1) == 1
            )
    except (OSError, ValueError, SyntaxError):
        return False


#: the EXIF tag of a picture's rotation
_ORIENTATION = 0x0112


def _origin_text(engine: str, model: str) -> dict[str, str]:
    return {"seedbed-engine": engine, "seedbed-model": model}
