"""``seedbed.client`` against a real seedbed server on loopback (real HTTP, SQLite, worker)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from catalogue_cases import MINIMAL
from conftest import FileServer, LiveServer, make_settings, serve_in_thread
from images_util import png_bytes
from metrics_util import requests_to, scrape, value, wait_for_value
from seedbed import catalogue
from seedbed.client import (
    NO_RETRY,
    AsyncClient,
    BadRequest,
    Client,
    ConfigError,
    Generation,
    InsufficientCredits,
    Maintenance,
    ModelUnavailable,
    PayloadTooLarge,
    PollSchedule,
    RetryPolicy,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskState,
    Unauthorized,
    ValidationError,
    WaitTimeout,
    protocol,
)

T2I = "seedream/4.5-text-to-image"
QUICK_RETRY = RetryPolicy(initial=0.05, max_delay=2.0)
CLIENT_ENV = ("SEEDBED_URL", "SEEDBED_API_KEY", "SEEDBED_UPLOAD_URL", "KIE_API_KEY")


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The client reads SEEDBED_* and a config file where it is not told: none here."""
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEEDBED_CLIENT_CONFIG", str(tmp_path / "no-client-config.toml"))


def client_for(server: LiveServer, key: str, **kwargs: Any) -> Client:
    kwargs.setdefault("retry", QUICK_RETRY)
    return Client(key, base_url=server.url, trust_env=False, **kwargs)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def loopback_input(model: str, files: FileServer) -> dict[str, Any]:
    """The model's smallest valid input, its images served by the loopback file server."""
    inp = dict(MINIMAL[model])
    if "image_urls" in inp:
        inp["image_urls"] = [files.add("/a.png", png_bytes(300, 200))]
    if "image_url" in inp:
        inp["image_url"] = files.add("/photo.png", png_bytes(900, 600))
    return inp


@pytest.mark.parametrize("model", list(catalogue.CATALOGUE))
def test_generate_every_model_downloads_images_of_the_contract_size(
    server: LiveServer, files: FileServer, tmp_path: Path, model: str
) -> None:
    key, _ = server.add_key(credits=100)
    inp = loopback_input(model, files)
    spec = catalogue.CATALOGUE[model]
    plan = spec.plan(spec.input_model.model_validate(inp), [(900, 600)])
    seen: list[Task] = []
    with client_for(server, key) as client:
        done = client.generate(model, inp, out=tmp_path / "out", on_progress=seen.append)
    assert done.task.state is TaskState.SUCCESS and done.task.model == model
    assert done.task.input == inp  # param, double-encoded by the server, read back
    assert len(done.files) == len(done.task.result_urls) >= 1
    assert all(path.parent == tmp_path / "out" for path in done.files)
    assert size_of(done.files[0]) == (plan.width, plan.height)
    if plan.layers:
        assert len(done.files) >= 2 and all(p.suffix == ".png" for p in done.files[1:])
    assert seen[-1].state is TaskState.SUCCESS and seen[-1].progress == 100
    assert done.task.credits_consumed is not None and done.task.credits_consumed > 0


def test_a_client_told_nothing_uses_the_environment_as_the_cli_does(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits="12.5")
    monkeypatch.setenv("SEEDBED_URL", server.url)
    monkeypatch.setenv("SEEDBED_API_KEY", key)
    with Client(trust_env=False) as client:
        assert client.credits() == Decimal("12.5")
        uploaded = client.upload(png_bytes(), upload_path="env")
        assert uploaded.download_url.startswith(server.url + "/files/uploads/")

    async def balance() -> Decimal:
        async with AsyncClient(trust_env=False) as client:
            return await client.credits()

    assert asyncio.run(balance()) == Decimal("12.5")
    # a typo in the config file is reported before anything is sent, not as a 401
    monkeypatch.delenv("SEEDBED_API_KEY")
    config = tmp_path / "client.toml"
    config.write_text('api-key = "' + key + '"\n')
    monkeypatch.setenv("SEEDBED_CLIENT_CONFIG", str(config))
    with pytest.raises(ConfigError, match="unknown key 'api-key' \\(did you mean 'api_key'"):
        Client(trust_env=False)
    config.write_text('api_key = "' + key + '"\n')
    with Client(trust_env=False) as client:
        assert client.credits() == Decimal("12.5")


def test_credits_follow_the_charges(server: LiveServer, tmp_path: Path) -> None:
    key, _ = server.add_key(credits="100")
    with client_for(server, key) as client:
        assert client.credits() == Decimal(100)
        done = client.generate(T2I, {"prompt": "a fox", "quality": "high"}, out=tmp_path)
        assert done.task.credits_consumed == Decimal("6.5")
        assert client.credits() == Decimal("93.5")
        assert size_of(done.files[0]) == (4096, 4096)


def test_async_client_generates_against_the_server(
    server: LiveServer, files: FileServer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    inp = loopback_input("seedream/5-lite-image-to-image", files)

    async def run() -> tuple[Generation, Task, Decimal]:
        async with AsyncClient(key, base_url=server.url, trust_env=False) as client:
            done = await client.generate("seedream/5-lite-image-to-image", inp, out=tmp_path)
            return done, await client.get_task(done.task.task_id), await client.credits()

    done, again, balance = asyncio.run(run())
    assert balance == Decimal("94.5")
    assert again == done.task  # raw is not compared; every field is
    assert size_of(done.files[0]) == (2048, 2048)


def test_a_failed_task_raises_task_failed(
    server: LiveServer, files: FileServer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    missing = files.url("/nothing-here.png")
    out = tmp_path / "out"
    with client_for(server, key) as client:
        with pytest.raises(TaskFailed) as caught:
            client.generate(
                "seedream/4.5-edit", {"prompt": "x", "image_urls": [missing]}, out=tmp_path
            )
        assert client.credits() == Decimal(100)  # released
    assert caught.value.fail_code == "400" and caught.value.fail_msg
    assert caught.value.task.state is TaskState.FAIL
    assert not out.exists()


# -- every error the server gives, as its exception ------------------------------------------
def test_unknown_revoked_and_missing_keys_are_unauthorized(server: LiveServer) -> None:
    key, key_id = server.add_key(credits=10)
    for wrong in ("sb-not-a-key", None):
        with client_for(server, wrong) as client:  # type: ignore[arg-type]
            with pytest.raises(Unauthorized) as caught:
                client.credits()
            assert caught.value.code == 401 and caught.value.http_status == 200
    server.store_call(lambda store: store.revoke_key(key_id))
    with client_for(server, key) as client, pytest.raises(Unauthorized):
        client.create_task(T2I, {"prompt": "x"})


def test_insufficient_credits_is_402(server: LiveServer) -> None:
    key, _ = server.add_key(credits="1")
    with client_for(server, key) as client, pytest.raises(InsufficientCredits) as caught:
        client.create_task(T2I, {"prompt": "x"})
    assert "6.5" in caught.value.msg


def test_server_side_validation_names_the_field_like_the_client(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    bad = {"prompt": "x", "aspect_ratio": "7:3"}
    with client_for(server, key) as client:
        with pytest.raises(ValidationError) as local:
            client.create_task(T2I, bad)
        with pytest.raises(ValidationError) as remote:
            client.create_task(T2I, bad, validate=False)
        with pytest.raises(ValidationError, match="model: unknown model"):
            client.create_task("seedream/9", {"prompt": "x"}, validate=False)
    assert remote.value.http_status == 200  # the server said it
    assert local.value.msg == remote.value.msg
    assert remote.value.msg.startswith("input.aspect_ratio: must be one of 1:1, 4:3")


def test_unknown_task_and_missing_task_id(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    other, _ = server.add_key(credits=10)
    with client_for(server, key) as client:
        task_id = client.create_task(T2I, {"prompt": "x"})
        with pytest.raises(TaskNotFound) as caught:
            client.get_task("0" * 32)
        assert caught.value.msg == "recordInfo is null" and caught.value.code == 422
        with pytest.raises(BadRequest, match="taskId parameter is required"):
            client.get_task("")
    with client_for(server, other) as stranger, pytest.raises(TaskNotFound):
        stranger.wait(task_id, timeout=5)


def test_body_over_the_limit_is_payload_too_large(tmp_path: Path) -> None:
    with serve_in_thread(make_settings(tmp_path, max_body_bytes=2000)) as server:
        key, _ = server.add_key(credits=10)
        with client_for(server, key) as client, pytest.raises(PayloadTooLarge) as caught:
            client.create_task("bytedance/seedream", {"prompt": "x" * 3000})
    assert caught.value.http_status == 413


def test_disabled_model_is_505_and_not_retried(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    server.store_call(lambda store: store.set_model_enabled(T2I, False))
    with client_for(server, key) as client, pytest.raises(ModelUnavailable) as caught:
        client.create_task(T2I, {"prompt": "x"})
    assert caught.value.code == 505


def test_rate_limit_429_is_retried_after_retry_after(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100, create_per_window=1, create_window_seconds=1)
    with client_for(server, key) as client:
        first = client.create_task(T2I, {"prompt": "one"})
        second = client.create_task(T2I, {"prompt": "two"})  # 429, Retry-After: 1, then 200
        assert first != second
        assert client.wait(second, timeout=30).state is TaskState.SUCCESS


def test_rate_limit_without_retries_raises_with_retry_after(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100, create_per_window=1, create_window_seconds=10)
    with client_for(server, key, retry=NO_RETRY) as client:
        client.create_task(T2I, {"prompt": "one"})
        with pytest.raises(Exception) as caught:
            client.create_task(T2I, {"prompt": "two"})
    assert getattr(caught.value, "code", None) == 429
    assert getattr(caught.value, "http_status", None) == 429
    retry_after = getattr(caught.value, "retry_after", None)
    assert retry_after is not None and 1 <= retry_after <= 10


@pytest.fixture
def maintenance_ending(server: LiveServer) -> Iterator[threading.Timer]:
    """Maintenance on now, off again in half a second (while the client waits to retry)."""
    server.store_call(lambda store: store.set_maintenance(True))
    timer = threading.Timer(0.5, lambda: server.store_call(lambda s: s.set_maintenance(False)))
    yield timer
    timer.cancel()
    timer.join()


def test_455_is_retried_until_maintenance_ends(
    server: LiveServer, maintenance_ending: threading.Timer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    with client_for(server, key, retry=NO_RETRY) as client, pytest.raises(Maintenance):
        client.create_task(T2I, {"prompt": "x"})
    maintenance_ending.start()
    retry = RetryPolicy(attempts=8, initial=0.2, multiplier=1.5, max_delay=1.0)
    with client_for(server, key, retry=retry) as client:
        done = client.generate(T2I, {"prompt": "after maintenance"}, out=tmp_path)
    assert done.task.state is TaskState.SUCCESS and done.files


# -- waiting -------------------------------------------------------------------------------
@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path, sandbox_step_seconds=0.3, sandbox_steps=4)
    with serve_in_thread(settings) as live:
        yield live


def test_wait_reports_progress_and_times_out(slow_server: LiveServer) -> None:
    key, _ = slow_server.add_key(credits=100)
    poll = PollSchedule(initial=0.05, multiplier=1.0)
    with client_for(slow_server, key, poll=poll) as client:
        task_id = client.create_task("bytedance/seedream", {"prompt": "slow"})
        with pytest.raises(WaitTimeout) as caught:
            client.wait(task_id, timeout=0.2)
        assert caught.value.last is not None and not caught.value.last.is_terminal
        seen: list[Task] = []
        done = client.wait(task_id, timeout=30, on_progress=seen.append)
    assert done.state is TaskState.SUCCESS
    progress = [t.progress for t in seen if t.state is TaskState.GENERATING]
    assert progress == sorted(progress) and len(set(progress)) >= 2  # seen moving
    assert seen[-1].progress == 100
    # each call reports a change only: no two consecutive reports are the same
    pairs = itertools.pairwise(seen)
    assert all((a.state, a.progress) != (b.state, b.progress) for a, b in pairs)


# -- uploads, download links, cancel and the events stream, against the real server ---------
EDIT = "seedream/4.5-edit"
RECORD_ROUTE = "/api/v1/jobs/recordInfo"
EVENTS_ROUTE = "/api/v1/jobs/events"


def test_each_upload_endpoint_feeds_an_edit_task(
    server: LiveServer, files: FileServer, tmp_path: Path
) -> None:
    """File path, bytes, a data: URI and a URL (the server fetches it), each through its own
    endpoint; their downloadUrls are the inputs of an edit task that runs to success."""
    key, _ = server.add_key(credits=100)
    local = tmp_path / "local.png"
    local.write_bytes(png_bytes(320, 240))
    raw = png_bytes(200, 100)
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()
    remote = files.add("/remote.png", png_bytes(128, 96))
    sources: list[str | Path | bytes] = [local, raw, data_uri, remote]
    with client_for(server, key) as client:
        uploads = [client.upload(source, upload_path="refs/t1") for source in sources]
        done = client.generate(
            EDIT,
            {"prompt": "combine them", "image_urls": [u.download_url for u in uploads]},
            out=tmp_path / "out",
        )
    assert all(
        u.mime_type == "image/png" and u.download_url.startswith(server.url) for u in uploads
    )
    assert [u.file_size for u in uploads[:2]] == [local.stat().st_size, len(raw)]
    assert all("/uploads/" in u.download_url and "/refs/t1/" in u.file_path for u in uploads)
    # what is served back is what was sent
    assert server.client.get(uploads[1].download_url).content == raw
    assert done.task.state is TaskState.SUCCESS
    assert done.task.input["image_urls"] == [u.download_url for u in uploads]
    assert len(done.files) == 1 and done.files[0].stat().st_size > 0


def test_download_url_of_a_result_is_a_signed_link_to_the_same_file(
    server: LiveServer, tmp_path: Path
) -> None:
    key, _ = server.add_key(credits=100)
    other, _ = server.add_key(credits=100)
    with client_for(server, key) as client:
        done = client.generate("bytedance/seedream", {"prompt": "a fox"}, out=tmp_path)
        (result,) = done.task.result_urls
        link = client.download_url(result)
    assert link != result and link.startswith(result.split("?")[0])
    fetched = server.client.get(link)
    assert fetched.status_code == 200 and fetched.content == done.files[0].read_bytes()
    with (
        client_for(server, other) as stranger,
        pytest.raises(ValidationError, match="url is wrong"),
    ):
        stranger.download_url(result)  # another key's file


def test_cancel_of_a_waiting_task_ends_it_and_releases_the_credits(tmp_path: Path) -> None:
    with serve_in_thread(make_settings(tmp_path, worker=False)) as server:
        key, _ = server.add_key(credits=100)
        with client_for(server, key) as client:
            task_id = client.create_task(T2I, {"prompt": "never run"})
            assert client.credits() == Decimal("93.5")  # reserved
            canceled = client.cancel(task_id)
            assert canceled is not None and canceled.state is TaskState.FAIL
            assert (canceled.fail_code, canceled.fail_msg) == ("400", "canceled")
            assert client.wait(task_id, timeout=10) == canceled
            assert client.credits() == Decimal(100)
            with pytest.raises(TaskFailed) as caught:
                client.generate(T2I, {"prompt": "canceled at once"}, on_created=client.cancel)
            assert client.credits() == Decimal(100)
    assert caught.value.fail_msg == "canceled" and caught.value.task.state is TaskState.FAIL


def test_cancel_of_a_generating_task_fails_generate_and_releases_the_credits(
    slow_server: LiveServer, tmp_path: Path
) -> None:
    key, _ = slow_server.add_key(credits=100)
    canceled: list[Task | None] = []
    with client_for(slow_server, key) as client:

        def cancel_once_generating(task: Task) -> None:
            if task.state is TaskState.GENERATING and not canceled:
                canceled.append(client.cancel(task.task_id))

        with pytest.raises(TaskFailed) as caught:
            client.generate(
                T2I, {"prompt": "stopped"}, out=tmp_path / "out", on_progress=cancel_once_generating
            )
        assert client.credits() == Decimal(100)
    assert caught.value.fail_code == "400" and caught.value.fail_msg == "canceled"
    assert canceled[0] is not None and canceled[0].state is TaskState.FAIL
    assert caught.value.task.credits_consumed == 0
    assert not (tmp_path / "out").exists()


def test_wait_follows_the_events_stream_not_recordinfo(slow_server: LiveServer) -> None:
    key, _ = slow_server.add_key(credits=100)
    with client_for(slow_server, key) as client:
        task_id = client.create_task("bytedance/seedream", {"prompt": "streamed"})
        before = scrape(slow_server)
        seen: list[Task] = []
        done = client.wait(task_id, timeout=30, on_progress=seen.append)
    # the stream's own request is counted when its response ends, just after the last event
    after = wait_for_value(
        slow_server,
        "seedbed_http_requests_total",
        value(before, "seedbed_http_requests_total", route=EVENTS_ROUTE, code="200") + 1,
        route=EVENTS_ROUTE,
        code="200",
    )
    assert requests_to(after, EVENTS_ROUTE) == requests_to(before, EVENTS_ROUTE) + 1
    assert requests_to(after, RECORD_ROUTE) == requests_to(before, RECORD_ROUTE)  # never polled
    assert done.state is TaskState.SUCCESS and done.result_urls and done.param
    assert done.raw["resultJson"] == done.result_json  # the terminal event's full record
    progress = [t.progress for t in seen if t.state is TaskState.GENERATING]
    assert len(set(progress)) >= 2 and progress == sorted(progress)
    assert seen[-1].state is TaskState.SUCCESS and seen[-1].progress == 100


def test_the_parser_reads_the_servers_event_stream(slow_server: LiveServer) -> None:
    """The real wire format through ``SseParser``: retry, ids, event names, full records."""
    key, _ = slow_server.add_key(credits=100)
    task_id = slow_server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "x"}})[
        "data"
    ]["taskId"]
    parser = protocol.SseParser()
    events: list[protocol.SseEvent] = []
    headers = protocol.event_headers(key, None)
    with slow_server.client.stream(
        "GET", EVENTS_ROUTE, params={"taskId": task_id}, headers=headers, timeout=30
    ) as response:
        assert protocol.is_event_stream(response)
        lines = list(response.iter_lines())
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            events.append(event)
    assert lines[0] == "retry: 2000"
    tasks = [protocol.task_from_event(event) for event in events]
    assert all(task is not None and task.task_id == task_id for task in tasks)
    assert events[0].event == "state" and events[-1].event == "state"
    assert {e.event for e in events} == {"state", "progress"}
    ids = [int(e.id or "") for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    last = tasks[-1]
    assert last is not None and last.state is TaskState.SUCCESS and protocol.is_full_record(last)
    # resuming after the end: nothing more to say (204, which stops an EventSource)
    again = slow_server.client.get(
        EVENTS_ROUTE, params={"taskId": task_id}, headers=protocol.event_headers(key, events[-1].id)
    )
    assert again.status_code == 204
