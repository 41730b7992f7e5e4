"""The client against a stand-in of kie.ai answering with real kie bodies (``kie_standin``).

The async client reaches the stand-in through ``httpx.ASGITransport`` at kie's own host names
(nothing leaves the process); the sync client reaches it on a real loopback server.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import kie_recorded as rec
from conftest import free_port
from kie_standin import (
    DOCUMENTED_ID,
    FAILED_ID,
    I2I_ID,
    KEY,
    T2I_ID,
    KieStandIn,
    png,
    serve,
)
from seedbed.client import (
    NO_RETRY,
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    GenerationFailed,
    InsufficientCredits,
    Maintenance,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    PollSchedule,
    RateLimited,
    ResponseError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskState,
    TransportError,
    Unauthorized,
    UpstreamTimeout,
    UsageLimitExceeded,
    ValidationError,
    WaitTimeout,
)
from seedbed.client.inputs import Seedream5LiteInput, Seedream45Input
from seedbed.client.protocol import SseParser


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


FAST_POLL = PollSchedule(initial=0.001, multiplier=1.0)
FAST_RETRY = RetryPolicy(initial=0.001, max_delay=0.01)
T2I_INPUT = {
    "prompt": "A serene mountain landscape at sunrise, photorealistic",
    "aspect_ratio": "16:9",
    "quality": "basic",
    "nsfw_checker": False,
}
CREATED = '{{"code":200,"msg":"success","data":{{"taskId":"{0}","recordId":"{0}"}}}}'


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The client reads SEEDBED_*, KIE_API_KEY and a config file where it is not told."""
    for name in ("SEEDBED_URL", "SEEDBED_API_KEY", "SEEDBED_UPLOAD_URL", "KIE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEEDBED_CLIENT_CONFIG", str(tmp_path / "no-client-config.toml"))


def kie_client(standin: KieStandIn, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("poll", FAST_POLL)
    kwargs.setdefault("retry", FAST_RETRY)
    transport = httpx.ASGITransport(app=standin.app())
    return AsyncClient.for_kie(KEY, transport=transport, **kwargs)


# -- the recorded bodies, parsed unchanged ---------------------------------------------------
async def test_generate_against_kie_parses_the_recorded_bodies(tmp_path: Path) -> None:
    standin = KieStandIn()
    seen: list[tuple[TaskState, int | None]] = []
    async with kie_client(standin) as client:
        done = await client.generate(
            "seedream/5-lite-text-to-image",
            T2I_INPUT,
            out=tmp_path,
            on_progress=lambda task: seen.append((task.state, task.progress)),
        )
    task = done.task
    assert task.task_id == T2I_ID and task.state is TaskState.SUCCESS
    assert task.cost_time == 45 and task.create_time == 1776484279847
    assert task.fail_code is None and task.fail_msg is None
    assert task.update_time is None and task.credits_consumed is None  # absent in 2026-04
    assert task.result_urls == [
        "https://tempfile.aiquickdraw.com/r/f400b7ea65483c2f983d61fdaeeceea8_1776484324_4xy1vy9u.png"
    ]
    # the double-encoded param, decoded
    assert task.request["model"] == "seedream/5-lite-text-to-image"
    assert task.input == T2I_INPUT
    assert seen == [(TaskState.GENERATING, None), (TaskState.SUCCESS, None)]

    assert [p.name for p in done.files] == [f"{T2I_ID}_0.png"]
    assert size_of(done.files[0]) == (8, 8)

    create = standin.seen("/api/v1/jobs/createTask")[0]
    assert create.host == "api.kie.ai"
    assert create.headers["authorization"] == f"Bearer {KEY}"
    assert len(create.headers["idempotency-key"]) == 32
    assert json.loads(create.body) == {"model": "seedream/5-lite-text-to-image", "input": T2I_INPUT}
    download = standin.seen(f"/r/{T2I_ID}_1776484324_4xy1vy9u.png")[0]
    assert download.host == "tempfile.aiquickdraw.com"
    assert "authorization" not in download.headers  # the key never goes to another host
    assert standin.seen("/api/v1/jobs/events") == []  # for_kie polls


async def test_image_to_image_record_and_typed_input() -> None:
    standin = KieStandIn(polls_before_success=0)
    inp = Seedream5LiteInput(
        prompt="Transform the scene", image_urls=["https://static.aiquickdraw.com/x.webp"]
    )
    async with kie_client(standin) as client:
        with pytest.raises(ValidationError, match="takes Seedream5LiteEditInput"):
            await client.create_task("seedream/5-lite-image-to-image", inp)
        task_id = await client.create_task(
            "seedream/5-lite-image-to-image",
            {
                "prompt": "Transform the scene",
                "image_urls": ["https://static.aiquickdraw.com/x.webp"],
            },
        )
        task = await client.get_task(task_id)
    assert task_id == I2I_ID
    assert task.cost_time == 112 and task.state is TaskState.SUCCESS
    assert task.input["image_urls"] == [
        "https://static.aiquickdraw.com/tools/example/1764851484363_ScV1s2aq.webp"
    ]


async def test_documented_form_message_key_empty_strings_and_object_param() -> None:
    async with kie_client(KieStandIn()) as client:
        task = await client.get_task(DOCUMENTED_ID)
    assert task.state is TaskState.SUCCESS
    assert task.fail_code is None and task.fail_msg is None  # "" means none
    assert task.input == {"prompt": "Cinematic portrait...", "aspect_ratio": "3:2"}
    assert task.request["callBackUrl"] == "https://your-domain.com/api/callback"
    assert task.result_urls == ["https://example.com/generated-content.jpg"]
    assert task.update_time == 1698765432000


async def test_a_failed_task_raises_task_failed_with_its_fail_fields(tmp_path: Path) -> None:
    standin = KieStandIn(script=[(200, CREATED.format(FAILED_ID), {})])
    async with kie_client(standin) as client:
        with pytest.raises(TaskFailed) as caught:
            await client.generate(
                "seedream/4.5-edit",
                {"prompt": "x", "image_urls": ["https://a.b/c.png"]},
                out=tmp_path,
            )
    assert caught.value.fail_code == "400" and caught.value.fail_msg == "content policy"
    assert caught.value.task.credits_consumed == Decimal(0)
    assert list(tmp_path.iterdir()) == []


async def test_credits_are_decimal_and_download_url() -> None:
    async with kie_client(KieStandIn()) as client:
        assert await client.credits() == Decimal("5916.25")
        own = "https://tempfile.aiquickdraw.com/r/x.png"
        assert await client.download_url(own) == own + "?token=signed-for-20-minutes"
        with pytest.raises(ValidationError) as caught:
            await client.download_url("https://cdn.kie.ai/files/sample-test-file.mp4")
    assert caught.value.code == 422 and caught.value.msg == "url is wrong"
    assert caught.value.http_status == 200


async def test_for_kie_reads_kies_own_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    standin = KieStandIn()
    transport = httpx.ASGITransport(app=standin.app())
    monkeypatch.setenv("SEEDBED_API_KEY", "a-local-seedbed-key")  # for the local server only
    monkeypatch.setenv("KIE_API_KEY", KEY)
    async with AsyncClient.for_kie(transport=transport, retry=NO_RETRY) as client:
        assert await client.credits() == Decimal("5916.25")
        uploaded = await client.upload_base64(b"Hello World", upload_path="documents/test-uploads")
    assert uploaded.file_name  # the stand-in's recorded answer
    sent = [
        r for r in standin.requests if r.path in ("/api/v1/chat/credit", "/api/file-base64-upload")
    ]
    assert [(r.host, r.headers["authorization"]) for r in sent] == [
        ("api.kie.ai", f"Bearer {KEY}"),
        ("kieai.redpandaai.co", f"Bearer {KEY}"),
    ]
    monkeypatch.setenv("KIE_API_KEY", "not-the-key")
    async with AsyncClient.for_kie(transport=transport, retry=NO_RETRY) as client:
        with pytest.raises(Unauthorized):
            await client.credits()


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "msg", "cls"),
    [
        (400, "taskId parameter is required", BadRequest),
        (401, "You do not have access permissions", Unauthorized),
        (402, "Credits insufficient", InsufficientCredits),
        (404, "Task not found", NotFound),
        (408, "upstream timeout", UpstreamTimeout),
        (413, "Request body too large", PayloadTooLarge),
        (422, "input.prompt: is required", ValidationError),
        (422, "recordInfo is null", TaskNotFound),
        (429, "Rate limit exceeded", RateLimited),
        (433, "sub-key usage exceeds limit", UsageLimitExceeded),
        (455, "Service under maintenance", Maintenance),
        (500, "Server Error - x", ServerError),
        (501, "Generation failed", GenerationFailed),
        (505, "Feature disabled", ModelUnavailable),
        (599, "odd", ServerError),
        (418, "teapot", ApiError),
    ],
)
async def test_every_kie_code_maps_to_its_exception(
    code: int, msg: str, cls: type[ApiError]
) -> None:
    body = json.dumps({"code": code, "msg": msg, "data": None})
    standin = KieStandIn(script=[(200, body, {})])
    async with kie_client(standin, retry=NO_RETRY) as client:
        with pytest.raises(ApiError) as caught:
            await client.get_task(T2I_ID)
    assert type(caught.value) is cls
    assert caught.value.code == code and caught.value.msg == msg


async def test_message_key_and_real_http_statuses() -> None:
    standin = KieStandIn(
        script=[
            (200, '{"code":401,"message":"Unauthorized"}', {}),
            (404, "<html>not found</html>", {}),
            (502, "<html>bad gateway</html>", {}),
            (200, "<html>a captive portal</html>", {}),
            (429, '{"code":429,"msg":"Rate limit exceeded","data":null}', {"Retry-After": "7"}),
        ]
    )
    async with kie_client(standin, retry=NO_RETRY) as client:
        with pytest.raises(Unauthorized, match="Unauthorized"):
            await client.credits()
        with pytest.raises(NotFound) as not_found:
            await client.credits()
        assert not_found.value.http_status == 404
        with pytest.raises(ServerError) as bad_gateway:
            await client.credits()
        assert bad_gateway.value.code == 502
        with pytest.raises(ResponseError):
            await client.credits()
        with pytest.raises(RateLimited) as limited:
            await client.credits()
    assert limited.value.retry_after == 7.0 and limited.value.http_status == 429


async def test_429_455_and_5xx_are_retried_with_the_same_idempotency_key() -> None:
    standin = KieStandIn(
        script=[
            (429, '{"code":429,"msg":"Rate limit exceeded","data":null}', {"Retry-After": "0"}),
            (200, '{"code":455,"msg":"maintenance","data":null}', {}),
            (503, "<html>unavailable</html>", {}),
            (200, '{"code":500,"msg":"Server Error","data":null}', {}),
        ]
    )
    async with kie_client(standin) as client:
        task_id = await client.create_task("seedream/5-lite-text-to-image", T2I_INPUT)
    assert task_id == T2I_ID
    creates = standin.seen("/api/v1/jobs/createTask")
    assert len(creates) == 5
    assert len({c.headers["idempotency-key"] for c in creates}) == 1


@pytest.mark.parametrize("code", [401, 402, 422, 501, 505])
async def test_final_answers_are_never_retried(code: int) -> None:
    body = json.dumps({"code": code, "msg": "no", "data": None})
    standin = KieStandIn(script=[(200, body, {})] * 3)
    async with kie_client(standin) as client:
        with pytest.raises(ApiError):
            await client.create_task("seedream/5-lite-text-to-image", T2I_INPUT)
    assert len(standin.seen("/api/v1/jobs/createTask")) == 1


async def test_retries_give_up_after_the_policy_attempts() -> None:
    body = '{"code":455,"msg":"maintenance","data":null}'
    standin = KieStandIn(script=[(200, body, {})] * 10)
    async with kie_client(standin, retry=RetryPolicy(attempts=2, initial=0.001)) as client:
        with pytest.raises(Maintenance):
            await client.credits()
    assert len(standin.seen("/api/v1/chat/credit")) == 3


def test_retry_delay_honours_retry_after_and_grows_otherwise() -> None:
    policy = RetryPolicy(initial=0.5, multiplier=2, max_delay=30, jitter=0)
    assert policy.delay(RateLimited("x", retry_after=7), 0) == 7
    assert policy.delay(RateLimited("x", retry_after=700), 0) == 30
    assert [policy.delay(Maintenance("x"), n) for n in range(4)] == [0.5, 1, 2, 4]
    assert not policy.should_retry(Unauthorized("x"), 0)
    assert policy.should_retry(ServerError("x", code=503), 4)
    assert not policy.should_retry(ServerError("x", code=503), 5)


# -- validation before sending ---------------------------------------------------------------
async def test_bad_input_fails_before_any_request_with_the_servers_message() -> None:
    standin = KieStandIn()
    async with kie_client(standin) as client:
        with pytest.raises(ValidationError) as caught:
            await client.create_task(
                "seedream/4.5-text-to-image", {"prompt": "x", "aspect_ratio": "7:3"}
            )
        assert (
            caught.value.msg
            == "input.aspect_ratio: must be one of 1:1, 4:3, 3:4, 16:9, 9:16, 2:3, 3:2, 21:9"
        )
        with pytest.raises(ValidationError, match=r"input\.prompt: is required"):
            await client.create_task("seedream/4.5-text-to-image", {})
        with pytest.raises(ValidationError, match="model: unknown model 'nano-banana'"):
            await client.create_task("nano-banana", {"prompt": "x"})
        assert standin.requests == []
        # kie serves models this client does not know: validate=False sends them as given
        await client.create_task("nano-banana", {"prompt": "x"}, validate=False)
        typed = Seedream45Input(prompt="a fox", aspect_ratio="16:9")
        await client.create_task("seedream/4.5-text-to-image", typed)
    sent = [json.loads(r.body) for r in standin.seen("/api/v1/jobs/createTask")]
    assert sent[0] == {"model": "nano-banana", "input": {"prompt": "x"}}
    assert sent[1]["input"] == {"prompt": "a fox", "aspect_ratio": "16:9", "quality": "basic"}


# -- uploads -------------------------------------------------------------------------------
async def test_uploads_go_to_the_upload_host_in_every_form(tmp_path: Path) -> None:
    standin = KieStandIn()
    local = tmp_path / "ref.png"
    local.write_bytes(png())
    async with kie_client(standin) as client:
        from_file = await client.upload(local, upload_path="images/test-uploads")
        from_bytes = await client.upload_file(
            png(), upload_path="images/test-uploads", file_name="a.png"
        )
        from_b64 = await client.upload_base64(
            b"Hello World", upload_path="documents/test-uploads", file_name="test.txt"
        )
        from_data_uri = await client.upload(
            "data:image/png;base64," + base64.b64encode(png()).decode()
        )
        from_url = await client.upload("https://example.com/cat.png")
        with pytest.raises(BadRequest, match="Missing required parameter: uploadPath"):
            await client.upload_base64("SGVsbG8gV29ybGQ=", upload_path="")
        with pytest.raises(ValueError, match="not a URL"):
            await client.upload(str(tmp_path / "missing.png"))
    uploads = [r for r in standin.requests if r.path.startswith("/api/file-")]
    assert {r.host for r in uploads} == {"kieai.redpandaai.co"}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in uploads)
    assert from_file.download_url.startswith("https://tempfile.redpandaai.co/kieai/136592/images/")
    assert from_file.file_size == 70 and from_file.mime_type == "image/png"
    assert from_bytes.file_name == "1776323952044-dtzo7rcrpdj.png"
    assert from_b64.file_path == "kieai/136592/images/test-uploads/test-base64.png"
    assert from_data_uri.uploaded_at == "2026-04-16T07:19:12.862Z"
    assert from_url.file_name == "from-url.png"
    stream = uploads[0]
    assert b'name="uploadPath"\r\n\r\nimages/test-uploads' in stream.body
    assert b'filename="ref.png"' in stream.body
    b64 = json.loads(uploads[2].body)
    assert b64 == {
        "base64Data": "SGVsbG8gV29ybGQ=",
        "uploadPath": "documents/test-uploads",
        "fileName": "test.txt",
    }
    assert json.loads(uploads[3].body)["base64Data"].startswith("data:image/png;base64,")
    assert json.loads(uploads[4].body) == {
        "fileUrl": "https://example.com/cat.png",
        "uploadPath": "seedbed",
    }


# -- waiting -------------------------------------------------------------------------------
async def test_wait_polls_when_the_server_has_no_events_stream() -> None:
    standin = KieStandIn()
    transport = httpx.ASGITransport(app=standin.app())
    async with AsyncClient(
        KEY, base_url="https://api.kie.ai", transport=transport, poll=FAST_POLL
    ) as client:
        assert client.use_events
        first = await client.wait(T2I_ID)
        assert not client.use_events  # the 404 was remembered
        second = await client.wait(I2I_ID)
    assert first.state is second.state is TaskState.SUCCESS
    assert len(standin.seen("/api/v1/jobs/events")) == 1
    assert len(standin.seen("/api/v1/jobs/recordInfo")) == 6


async def test_wait_times_out_with_the_last_state() -> None:
    standin = KieStandIn(polls_before_success=10_000)
    async with kie_client(standin, poll=PollSchedule(initial=0.01, multiplier=1.0)) as client:
        with pytest.raises(WaitTimeout) as caught:
            await client.wait(T2I_ID, timeout=0.1)
    assert caught.value.last is not None
    assert caught.value.last.state is TaskState.GENERATING


async def test_wait_follows_the_events_stream_where_there_is_one() -> None:
    standin = KieStandIn(extensions=True)
    seen: list[Task] = []
    transport = httpx.ASGITransport(app=standin.app())
    async with AsyncClient(KEY, base_url="http://seedbed.test", transport=transport) as client:
        task = await client.wait(T2I_ID, on_progress=seen.append)
    assert task.state is TaskState.SUCCESS and task.result_urls
    assert [(t.state.value, t.progress) for t in seen] == [
        ("generating", 30),
        ("generating", 70),
        ("success", 100),
    ]
    events = standin.seen("/api/v1/jobs/events")[0]
    assert events.query == f"taskId={T2I_ID}" and events.headers["accept"] == "text/event-stream"
    assert standin.seen("/api/v1/jobs/recordInfo") == []


async def test_a_dropped_events_stream_resumes_after_the_last_event_id() -> None:
    standin = KieStandIn(extensions=True, drop_events_once=True)
    seen: list[int | None] = []
    transport = httpx.ASGITransport(app=standin.app())
    async with AsyncClient(KEY, base_url="http://seedbed.test", transport=transport) as client:
        task = await client.wait(T2I_ID, on_progress=lambda t: seen.append(t.progress))
    assert task.state is TaskState.SUCCESS
    streams = standin.seen("/api/v1/jobs/events")
    assert len(streams) == 2
    assert "last-event-id" not in streams[0].headers
    assert streams[1].headers["last-event-id"] == "1"
    assert seen == [30, 70, 100]


async def test_a_terminal_event_without_the_record_is_completed_by_record_info() -> None:
    standin = KieStandIn(extensions=True, partial_events=True, polls_before_success=0)
    transport = httpx.ASGITransport(app=standin.app())
    async with AsyncClient(KEY, base_url="http://seedbed.test", transport=transport) as client:
        task = await client.wait(T2I_ID)
    assert task.result_urls and task.cost_time == 45
    assert len(standin.seen("/api/v1/jobs/recordInfo")) == 1


async def test_a_balance_that_is_not_a_number_is_a_response_error() -> None:
    standin = KieStandIn(script=[(200, '{"code":200,"msg":"success","data":null}', {})])
    async with kie_client(standin) as client:
        with pytest.raises(ResponseError, match="not a number"):
            await client.credits()


async def test_events_stream_errors_leave_it_to_polling_to_report() -> None:
    standin = KieStandIn(extensions=True)
    transport = httpx.ASGITransport(app=standin.app())
    async with AsyncClient(KEY, base_url="http://seedbed.test", transport=transport) as client:
        with pytest.raises(TaskNotFound):
            await client.wait("0" * 32)
        assert client.use_events  # a 422 is about the task, not the stream


async def test_cancel_where_the_server_has_it_and_not_on_kie() -> None:
    standin = KieStandIn(extensions=True)
    transport = httpx.ASGITransport(app=standin.app())
    async with AsyncClient(KEY, base_url="http://seedbed.test", transport=transport) as client:
        canceled = await client.cancel(T2I_ID)
        assert canceled is not None
        assert canceled.state is TaskState.FAIL and canceled.fail_msg == "canceled"
        with pytest.raises(TaskNotFound):
            await client.cancel("0" * 32)
    assert json.loads(standin.seen("/api/v1/jobs/cancelTask")[0].body) == {"taskId": T2I_ID}
    async with kie_client(KieStandIn(), retry=NO_RETRY) as kie:
        with pytest.raises(NotFound):
            await kie.cancel(T2I_ID)


# -- the sync client on a real loopback server -------------------------------------------------
def test_sync_client_against_loopback_stand_ins(tmp_path: Path) -> None:
    api, uploads = KieStandIn(extensions=True), KieStandIn()
    with serve(api.app()) as api_url, serve(uploads.app()) as upload_url:
        with Client(
            KEY, base_url=api_url, upload_url=upload_url, poll=FAST_POLL, trust_env=False
        ) as client:
            uploaded = client.upload_file(png())
            progress: list[int | None] = []
            task = client.wait(T2I_ID, on_progress=lambda t: progress.append(t.progress))
            assert client.credits() == Decimal("5916.25")
            canceled = client.cancel(T2I_ID)
            with pytest.raises(TaskNotFound):
                client.get_task("0" * 32)
    assert uploaded.download_url.startswith("https://tempfile.redpandaai.co/")
    assert len(uploads.seen("/api/file-stream-upload")) == 1
    assert api.seen("/api/file-stream-upload") == []
    assert task.state is TaskState.SUCCESS and progress == [30, 70, 100]
    assert canceled is not None and canceled.fail_msg == "canceled"


def test_sync_generate_polls_and_downloads_on_loopback(tmp_path: Path) -> None:
    standin = KieStandIn()
    with serve(standin.app()) as url:
        # The recorded result URL is kie's own host: download the stand-in's copy instead.
        with Client(KEY, base_url=url, poll=FAST_POLL, trust_env=False) as client:
            task = client.wait(client.create_task("seedream/5-lite-text-to-image", T2I_INPUT))
            result = f"{url}/r/{T2I_ID}.png"
            path = client.download(result, tmp_path, task.task_id, 0)
    assert task.state is TaskState.SUCCESS
    assert path.name == f"{T2I_ID}_0.png" and size_of(path) == (8, 8)
    assert "authorization" not in standin.seen(f"/r/{T2I_ID}.png")[0].headers


def test_a_server_that_is_down_is_one_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    retry = RetryPolicy(transport_attempts=1, initial=0.001)
    with Client(KEY, base_url=url, retry=retry, trust_env=False) as client:
        with pytest.raises(TransportError) as caught:
            client.credits()
    assert str(caught.value) == f"cannot reach {url}: connection refused"


# -- pieces --------------------------------------------------------------------------------
def test_poll_schedule_follows_kies_bands() -> None:
    schedule = PollSchedule()
    delays, delay, elapsed = [], None, 0.0
    while elapsed < 400:
        delay = schedule.next_delay(delay, elapsed)
        delays.append((elapsed, delay))
        elapsed += delay
    assert delays[0] == (0.0, 0.1)
    assert sum(1 for t, _ in delays if t < 3) <= 30  # at most 10 a second at the start
    assert all(d <= 3 for t, d in delays if t < 30)
    assert all(5 <= d <= 10 for t, d in delays if 30 <= t < 120)
    assert all(15 <= d <= 30 for t, d in delays if t >= 120)


def test_sse_parser_reads_multiline_data_comments_and_ids() -> None:
    parser = SseParser()
    lines = [
        ": heartbeat",
        "",
        "id: 7",
        "event: state",
        'data: {"a":',
        "data: 1}",
        "",
        "data: x",
        "",
    ]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert [(e.event, e.data, e.id) for e in events] == [
        ("state", '{"a":\n1}', "7"),
        ("message", "x", "7"),
    ]
    assert parser.last_event_id == "7"


def test_recorded_bodies_are_kept_verbatim() -> None:
    # The stand-in must not drift from the recordings: spot-check a few exact strings.
    assert '"failCode":null,"failMsg":null,"costTime":45' in rec.RECORD_T2I_SUCCESS
    assert '"resultJson":"","failCode":null' in rec.RECORD_T2I_GENERATING
    assert rec.CREDIT == '{"code":200,"msg":"success","data":5916.25}'
