"""``Client``: the kie Market API (and seedbed's extensions) as blocking calls over httpx."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import BaseModel

from seedbed.client import protocol
from seedbed.client.config import resolve, upload_url_for
from seedbed.client.errors import ClientError, NotFound, ResponseError, TaskFailed, WaitTimeout
from seedbed.client.inputs import prepare_input
from seedbed.client.protocol import Endpoint, PollSchedule, RetryPolicy
from seedbed.client.records import Task, UploadedFile, parse_task, parse_upload

__all__ = ["Client", "Generation", "ProgressCallback"]

#: called with the task each time its state, progress or queue position changes
ProgressCallback = Callable[[Task], None]

#: ``wait``'s default total time: kie recommends giving up after 10 to 15 minutes
DEFAULT_WAIT = 900.0
#: an events stream is reconnected (with ``Last-Event-ID``) at most this many times
EVENT_RECONNECTS = 3


@dataclass(frozen=True, kw_only=True)
class Generation:
    """What ``generate`` did: the finished task and the files it wrote, in result order."""

    task: Task
    files: list[Path]


class Client:
    """A client of seedbed or of kie.ai itself.

    >>> with Client("sb-...", base_url="http://127.0.0.1:8000") as client:
    ...     done = client.generate("seedream/4.5-text-to-image", {"prompt": "a fox"}, out="img")

    ``base_url`` serves the jobs API; ``upload_url`` the uploads (default: ``base_url``; kie.ai
    serves them from ``https://kieai.redpandaai.co``, see ``Client.for_kie``). What is not
    given comes from the environment (``SEEDBED_URL``, ``SEEDBED_API_KEY``, ``KIE_API_KEY`` for
    kie.ai, ``SEEDBED_UPLOAD_URL``) or the client config file, as for the ``seedbed`` command
    (``seedbed.client.config``): ``Client()`` alone is enough where those are set.
    ``transport`` replaces httpx's (tests, proxies); one connection pool is reused for every
    call.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        upload_url: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        use_events: bool = True,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        # what is not given comes from SEEDBED_URL, SEEDBED_API_KEY (KIE_API_KEY for kie.ai),
        # SEEDBED_UPLOAD_URL or the client config file, as for the CLI (``client.config``)
        config = resolve(base_url, api_key, upload_url)
        self.api_key = config.api_key
        self.base_url = config.url.rstrip("/")
        self.upload_url = (config.upload_url or upload_url_for(config.url)).rstrip("/")
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollSchedule()
        #: False once the server answered 404 for the events stream: poll from then on
        self.use_events = use_events
        self._http = httpx.Client(timeout=timeout, transport=transport, trust_env=trust_env)

    @classmethod
    def for_kie(cls, api_key: str | None = None, **kwargs: Any) -> Client:
        """A client of kie.ai: its API host, its upload host, polling (kie has no events);
        the key, when not given, from ``KIE_API_KEY`` (then ``SEEDBED_API_KEY``)."""
        kwargs.setdefault("base_url", protocol.KIE_BASE_URL)
        kwargs.setdefault("upload_url", protocol.KIE_UPLOAD_URL)
        kwargs.setdefault("use_events", False)
        return cls(api_key, **kwargs)

    # -- plumbing --------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """Send, read the envelope, retry what the policy retries; the envelope's ``data``."""
        sent_headers = {**protocol.auth_headers(self.api_key), **(headers or {})}
        attempt = 0
        while True:
            try:
                try:
                    response = self._http.request(method, url, headers=sent_headers, **kwargs)
                except httpx.HTTPError as exc:
                    raise protocol.transport_error(exc, url) from exc
                return protocol.unwrap(response)
            except ClientError as exc:
                if not self.retry.should_retry(exc, attempt):
                    raise
                time.sleep(self.retry.delay(exc, attempt))
                attempt += 1

    def _api(self, path: str) -> str:
        return protocol.join(self.base_url, path)

    # -- the jobs API ----------------------------------------------------------------------
    def create_task(
        self,
        model: str,
        input: Mapping[str, Any] | BaseModel,
        *,
        callback_url: str | None = None,
        validate: bool = True,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a task; its ``taskId``. ``input`` is checked first (``validate=False``: not)."""
        body = protocol.create_body(
            model, prepare_input(model, input, validate=validate), callback_url
        )
        key = idempotency_key or protocol.idempotency_key()
        data = self._call(
            "POST", self._api(Endpoint.CREATE), json=body, headers={"Idempotency-Key": key}
        )
        return protocol.created_task_id(data)

    def get_task(self, task_id: str) -> Task:
        """The task's record (recordInfo)."""
        return parse_task(self._call("GET", self._api(Endpoint.RECORD), params={"taskId": task_id}))

    def cancel(self, task_id: str) -> Task | None:
        """Cancel a task (seedbed's extension); its record when the server returns one."""
        data = self._call("POST", self._api(Endpoint.CANCEL), json={"taskId": task_id})
        return parse_task(data) if isinstance(data, dict) and "taskId" in data else None

    def credits(self) -> Decimal:
        """The key's balance."""
        return protocol.balance(self._call("GET", self._api(Endpoint.CREDIT)))

    def download_url(self, url: str) -> str:
        """A temporary (20 minutes) download link for a URL the server issued."""
        return str(self._call("POST", self._api(Endpoint.DOWNLOAD_URL), json={"url": url}))

    # -- waiting ---------------------------------------------------------------------------
    def wait(
        self,
        task_id: str,
        *,
        timeout: float = DEFAULT_WAIT,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """The task once it ends (``success`` or ``fail``; a failure is returned, not raised).

        Follows the server's events stream where it has one, else polls recordInfo on
        ``self.poll``'s schedule. ``WaitTimeout`` after ``timeout`` seconds in all.
        """
        deadline = time.monotonic() + timeout
        tracker = protocol.ProgressTracker(on_progress)
        if self.use_events:
            done = self._wait_events(task_id, deadline, tracker.seen)
            if done is not None:
                return done
        started = time.monotonic()
        delay: float | None = None
        while True:
            task = self.get_task(task_id)
            tracker.seen(task)
            if task.is_terminal:
                return task
            delay = self.poll.next_delay(delay, time.monotonic() - started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(task_id, timeout, tracker.last)
            time.sleep(min(delay, remaining))

    def _wait_events(
        self, task_id: str, deadline: float, seen: Callable[[Task], None]
    ) -> Task | None:
        """The finished task from the events stream; ``None`` when polling must take over."""
        parser = protocol.SseParser()
        url = self._api(Endpoint.EVENTS)
        for _ in range(1 + EVENT_RECONNECTS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None  # polling's first answer decides, then times out
            headers = protocol.event_headers(self.api_key, parser.last_event_id)
            try:
                with self._http.stream(
                    "GET",
                    url,
                    params={"taskId": task_id},
                    headers=headers,
                    timeout=protocol.stream_timeout(remaining),
                ) as response:
                    if not protocol.is_event_stream(response):
                        response.read()
                        self._note_no_events(response)
                        return None
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        task = protocol.task_from_event(event) if event else None
                        if task is not None:
                            seen(task)
                            if task.is_terminal:
                                if protocol.is_full_record(task):
                                    return task
                                return self.get_task(task_id)
            except httpx.HTTPError:
                continue  # dropped or silent too long: reconnect where the stream left off
        return None

    def _note_no_events(self, response: httpx.Response) -> None:
        """A server without the events stream (kie.ai, an older seedbed) is polled from now on."""
        try:
            protocol.unwrap(response)
        except NotFound:
            self.use_events = False
        except ClientError:
            pass  # an auth or taskId error: polling reports it properly

    # -- generate --------------------------------------------------------------------------
    def generate(
        self,
        model: str,
        input: Mapping[str, Any] | BaseModel,
        *,
        out: str | Path = ".",
        callback_url: str | None = None,
        timeout: float = DEFAULT_WAIT,
        on_progress: ProgressCallback | None = None,
        on_created: Callable[[str], None] | None = None,
        validate: bool = True,
    ) -> Generation:
        """Create a task, wait for it, download its results into ``out``.

        Raises ``TaskFailed`` when the task ends ``fail``.
        """
        task_id = self.create_task(model, input, callback_url=callback_url, validate=validate)
        if on_created is not None:
            on_created(task_id)
        task = self.wait(task_id, timeout=timeout, on_progress=on_progress)
        if task.state.value == "fail":
            raise TaskFailed(task)
        return Generation(task=task, files=self.download_results(task, out))

    def download_results(self, task: Task, out: str | Path) -> list[Path]:
        """Write each result of ``task`` to ``out/<taskId>_<n>.<ext>``; their paths."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            self.download(url, folder, task.task_id, n) for n, url in enumerate(task.result_urls)
        ]

    def download(self, url: str, folder: Path, task_id: str, index: int) -> Path:
        """One result file. No ``Authorization`` goes with it: result URLs are unguessable,
        and on kie.ai they live on another host that must not see the key."""
        attempt = 0
        while True:
            try:
                return self._download_once(url, folder, task_id, index)
            except ClientError as exc:
                if not self.retry.should_retry(exc, attempt):
                    raise
                time.sleep(self.retry.delay(exc, attempt))
                attempt += 1

    def _download_once(self, url: str, folder: Path, task_id: str, index: int) -> Path:
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    response.read()
                    protocol.unwrap(response)
                    raise ResponseError(
                        f"download of {url} answered {response.status_code}",
                        http_status=response.status_code,
                    )
                name = protocol.file_name_for(
                    task_id, index, url, response.headers.get("content-type")
                )
                target = folder / name
                partial = target.with_name(name + ".part")
                with partial.open("wb") as sink:
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                partial.replace(target)
                return target
        except httpx.HTTPError as exc:
            raise protocol.transport_error(exc, url) from exc

    # -- uploads ---------------------------------------------------------------------------
    def upload(
        self,
        source: str | Path | bytes,
        *,
        upload_path: str = "seedbed",
        file_name: str | None = None,
    ) -> UploadedFile:
        """Upload a local file (path), bytes, a ``data:`` URI or an http(s) URL to fetch."""
        kind = protocol.upload_kind(source)
        if kind == "url":
            assert isinstance(source, str)
            return self.upload_url_file(source, upload_path=upload_path, file_name=file_name)
        if kind == "base64":
            assert isinstance(source, str)
            return self.upload_base64(source, upload_path=upload_path, file_name=file_name)
        return self.upload_file(source, upload_path=upload_path, file_name=file_name)

    def upload_file(
        self,
        source: str | Path | bytes,
        *,
        upload_path: str = "seedbed",
        file_name: str | None = None,
    ) -> UploadedFile:
        """``file-stream-upload``: a local file (or bytes) as multipart."""
        content, name = protocol.read_source(source)
        part_name = file_name or name
        data = self._call(
            "POST",
            protocol.join(self.upload_url, Endpoint.UPLOAD_STREAM),
            files={"file": (part_name, content, protocol.guess_mime(part_name))},
            data=protocol.upload_fields(upload_path, file_name),
        )
        return parse_upload(data)

    def upload_base64(
        self, data: str | bytes, *, upload_path: str = "seedbed", file_name: str | None = None
    ) -> UploadedFile:
        """``file-base64-upload``: base64 text (plain or ``data:`` URI), or bytes to encode."""
        body = {
            "base64Data": protocol.base64_payload(data),
            **protocol.upload_fields(upload_path, file_name),
        }
        url = protocol.join(self.upload_url, Endpoint.UPLOAD_BASE64)
        return parse_upload(self._call("POST", url, json=body))

    def upload_url_file(
        self, url: str, *, upload_path: str = "seedbed", file_name: str | None = None
    ) -> UploadedFile:
        """``file-url-upload``: the server fetches ``url`` and keeps a copy."""
        body = {"fileUrl": url, **protocol.upload_fields(upload_path, file_name)}
        target = protocol.join(self.upload_url, Endpoint.UPLOAD_URL)
        return parse_upload(self._call("POST", target, json=body))
