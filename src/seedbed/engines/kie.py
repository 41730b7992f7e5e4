"""``kind = "kie"``: relay to a kie-compatible upstream (kie.ai itself, or another seedbed).

One task here is one task there: ``createTask`` with the same model and input, where input
images that are this server's own files are first uploaded to the upstream (its
``/api/file-stream-upload`` at ``upload_base_url``: the upstream cannot reach this server) and
replaced by the upstream's links. The upstream task is followed by its events stream where it
has one (a seedbed: ``/api/v1/jobs/events``), else by polling ``recordInfo`` on the
``poll_schedule`` (kie suggests 2 to 5 s between polls). Results are downloaded into this
server's storage; an upstream failure passes its ``failCode``/``failMsg`` through; a cancel
here cancels the upstream task (``cancelTask``, where the upstream has it). The upstream's
task id is recorded with the task as soon as it is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson
from PIL import Image

from seedbed import netguard
from seedbed.config import KieEngineSettings
from seedbed.engines.base import Artifact, EngineJob, NoteFn, ProgressFn
from seedbed.engines.relay import (
    Answer,
    Budget,
    RelayEngine,
    UpstreamDown,
    UpstreamRefused,
    quote,
)
from seedbed.errors import TaskFailure
from seedbed.links import Links

__all__ = ["KieEngine", "UpstreamTaskFailed"]

log = logging.getLogger(__name__)

#: kie's business codes (in the JSON body, with HTTP 200) that are worth a retry
_RETRY_CODES = frozenset({429, 455, 500, 502, 503, 504})
#: kie's codes that refuse the request itself
_REFUSED_CODES = frozenset({400, 404, 413, 422})
#: the folder of this server's uploads on the upstream
UPLOAD_PATH = "seedbed-relay"


class UpstreamTaskFailed(TaskFailure):
    """The upstream task ended ``fail``: its ``failCode`` and ``failMsg`` pass through."""

    def __init__(self, fail_code: str, fail_msg: str) -> None:
        super().__init__(fail_msg)
        self.fail_code = fail_code


class KieEngine(RelayEngine):
    kind = "kie"

    def __init__(
        self,
        name: str,
        settings: KieEngineSettings,
        models: frozenset[str],
        *,
        api_key: str,
        net_policy: netguard.NetPolicy | None = None,
    ) -> None:
        super().__init__(name, settings, models, api_key=api_key, net_policy=net_policy)
        self.kie = settings
        self.upload_base_url = (settings.upload_base_url or settings.base_url).rstrip("/")
        #: None until the first try: whether the upstream has seedbed's events stream
        self._has_events: bool | None = {"on": True, "off": False}.get(settings.events)

    async def relay(
        self,
        job: EngineJob,
        progress: ProgressFn,
        cancel: threading.Event,
        note: NoteFn | None,
    ) -> list[Artifact]:
        budget = self.budget()
        inp = await self._inputs(job, budget)
        progress(5)
        answer = await self._call(
            "POST",
            f"{self.base_url}/api/v1/jobs/createTask",
            budget,
            "createTask",
            json={"model": job.model, "input": inp},
        )
        upstream_id = _field(answer, "taskId")
        if not isinstance(upstream_id, str) or not upstream_id:
            raise TaskFailure(f"upstream {self.name}: createTask answered no taskId")
        if note is not None:
            note(upstream_id)
        log.info(
            "relayed to upstream %s as task %s",
            self.name,
            upstream_id,
            extra={"taskId": job.task_id},
        )
        try:
            record = await self._follow(upstream_id, budget, progress)
        except asyncio.CancelledError:
            # Canceled here: cancel there too, so the upstream stops spending its credits.
            await asyncio.shield(self._cancel_upstream(upstream_id))
            raise
        if record.get("state") != "success":
            code = str(record.get("failCode") or "500")
            raise UpstreamTaskFailed(code, str(record.get("failMsg") or "upstream task failed"))
        urls = _result_urls(self.name, record)
        progress(90)
        blobs = await asyncio.gather(
            *(self.download(url, own_origin=self._own(url)) for url in urls)
        )
        return await self.artifacts(job, list(blobs))

    # -- inputs ----------------------------------------------------------------------------
    async def _inputs(self, job: EngineJob, budget: Budget) -> dict[str, Any]:
        """The task's input, its own files replaced by uploads to the upstream."""
        inp = dict(job.input)
        for field in ("image_urls", "image_url"):
            value = inp.get(field)
            if not value:
                continue
            urls = [value] if isinstance(value, str) else list(value)
            swapped = await asyncio.gather(
                *(self._swap(job, budget, i, url) for i, url in enumerate(urls))
            )
            inp[field] = swapped[0] if isinstance(value, str) else list(swapped)
        return inp

    async def _swap(self, job: EngineJob, budget: Budget, index: int, url: str) -> str:
        if Links.parse(url) is None or index >= len(job.images):
            return url  # a public URL: the upstream fetches it itself
        data, mime, ext = await asyncio.to_thread(_encode_input, job.images[index])
        answer = await self._call(
            "POST",
            f"{self.upload_base_url}/api/file-stream-upload",
            budget,
            "file-stream-upload",
            files={"file": (f"{job.task_id}_{index}.{ext}", data, mime)},
            data={"uploadPath": UPLOAD_PATH, "fileName": f"{job.task_id}_{index}.{ext}"},
        )
        link = _field(answer, "downloadUrl") or _field(answer, "fileUrl")
        if not isinstance(link, str) or not link:
            raise TaskFailure(f"upstream {self.name}: the upload answered no downloadUrl")
        return link

    # -- following the upstream task ----------------------------------------------------------
    async def _follow(
        self, upstream_id: str, budget: Budget, progress: ProgressFn
    ) -> Mapping[str, Any]:
        deadline = time.monotonic() + self.kie.task_timeout
        if self._has_events is not False:
            record = await self._stream(upstream_id, deadline, progress)
            if record is not None:
                return record
        return await self._poll(upstream_id, budget, deadline, progress)

    async def _stream(
        self, upstream_id: str, deadline: float, progress: ProgressFn
    ) -> Mapping[str, Any] | None:
        """The terminal record from the upstream's events stream; None where it has none
        (then the caller polls). A stream that breaks off is picked up by polling too."""
        client, _ = self._client()
        try:
            async with client.stream(
                "GET",
                f"{self.base_url}/api/v1/jobs/events",
                params={"taskId": upstream_id},
                headers={**self._auth(), "Accept": "text/event-stream"},
                timeout=httpx.Timeout(
                    self.settings.connect_timeout, read=max(1.0, deadline - time.monotonic())
                ),
            ) as response:
                content_type = response.headers.get("content-type", "")
                if response.status_code != 200 or "text/event-stream" not in content_type:
                    if response.status_code in (404, 405):
                        self._has_events = False  # kie.ai itself: poll from now on
                    return None
                self._has_events = True
                async for data in _sse_data(response):
                    record = _json_object(data)
                    if record is None:
                        continue
                    state = record.get("state")
                    if state in ("success", "fail"):
                        return record
                    if isinstance(record.get("progress"), int):
                        progress(10 + int(record["progress"]) * 75 // 100)
        except httpx.HTTPError as exc:
            log.info("upstream %s: events stream ended (%s); polling", self.name, exc)
        return None

    async def _poll(
        self, upstream_id: str, budget: Budget, deadline: float, progress: ProgressFn
    ) -> Mapping[str, Any]:
        schedule = self.kie.poll_schedule or [3.0]
        turn = 0
        while True:
            answer = await self._call(
                "GET",
                f"{self.base_url}/api/v1/jobs/recordInfo",
                budget,
                "recordInfo",
                params={"taskId": upstream_id},
            )
            record = _json_object(answer.body)
            data = record.get("data") if record else None
            if isinstance(data, dict):
                if data.get("state") in ("success", "fail"):
                    return data
                if isinstance(data.get("progress"), int):
                    progress(10 + int(data["progress"]) * 75 // 100)
            if time.monotonic() > deadline:
                raise TaskFailure(
                    f"upstream {self.name}: task {upstream_id} did not finish within "
                    f"{self.kie.task_timeout:g} s"
                )
            await asyncio.sleep(schedule[min(turn, len(schedule) - 1)])
            turn += 1

    async def _cancel_upstream(self, upstream_id: str) -> None:
        client, _ = self._client()
        with contextlib.suppress(httpx.HTTPError):
            response = await client.post(
                f"{self.base_url}/api/v1/jobs/cancelTask",
                json={"taskId": upstream_id},
                headers=self._auth(),
                timeout=self.settings.connect_timeout,
            )
            log.info(
                "upstream %s: cancelTask %s answered HTTP %d",
                self.name,
                upstream_id,
                response.status_code,
            )

    # -- kie's envelope --------------------------------------------------------------------
    async def _call(
        self, method: str, url: str, budget: Budget, what: str, **kwargs: Any
    ) -> Answer:
        """One kie call: faults in the body's ``code`` (HTTP 200) handled like HTTP ones."""
        answer = await self.send(
            method, url, budget=budget, what=what, retry_status=_retry_code, **kwargs
        )
        body = _json_object(answer.body)
        if body is None:
            raise TaskFailure(
                f"upstream {self.name}: {what} answered a body that is not a JSON object: "
                f"{quote(answer.body)}"
            )
        code = body.get("code", answer.status)
        message = str(body.get("msg") or "")
        if code == 200 or (code is None and answer.status == 200):
            return answer
        if code in (401, 403):
            raise self.key_rejection(f"code {code}: {message}", what)
        if code == 402:
            raise TaskFailure(
                f"upstream {self.name} has too few credits on this server's key: {message}"
            )
        if code == 505:
            raise UpstreamDown(f"upstream {self.name} does not serve the model: {message}")
        if code in _REFUSED_CODES or (isinstance(code, int) and 400 <= code < 500):
            raise UpstreamRefused(f"upstream {self.name} refused the task: {message or code}")
        raise UpstreamDown(f"upstream {self.name}: {what} answered code {code}: {message}")

    def _own(self, url: str) -> bool:
        return url.startswith((self.base_url + "/", self.upload_base_url + "/"))


def _retry_code(answer: Answer) -> bool:
    body = _json_object(answer.body)
    return body is not None and body.get("code") in _RETRY_CODES


def _json_object(raw: bytes | str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _field(answer: Answer, name: str) -> Any:
    body = _json_object(answer.body) or {}
    data = body.get("data")
    return data.get(name) if isinstance(data, dict) else None


def _result_urls(engine: str, record: Mapping[str, Any]) -> list[str]:
    raw = record.get("resultJson")
    parsed = _json_object(raw) if isinstance(raw, str | bytes) else raw
    urls = parsed.get("resultUrls") if isinstance(parsed, dict) else None
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls) or not urls:
        raise TaskFailure(f"upstream {engine}: a successful task without resultUrls")
    return list(urls)


async def _sse_data(response: httpx.Response) -> Any:
    """The ``data`` of each Server-Sent Event (multi-line data joined, comments skipped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))


def _encode_input(image: Image.Image) -> tuple[bytes, str, str]:
    """An input image re-encoded for the upload: PNG where it has alpha, else JPEG."""
    buf = io.BytesIO()
    if image.mode == "RGBA":
        image.save(buf, "PNG", compress_level=1)
        return buf.getvalue(), "image/png", "png"
    image.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue(), "image/jpeg", "jpg"
