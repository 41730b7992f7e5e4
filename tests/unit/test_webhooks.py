"""Callback signatures (kie's scheme, CONTRACT §5) and callback bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

import kie_recorded as rec
from seedbed.client import TaskState
from seedbed.webhooks import (
    InvalidSignature,
    parse_callback,
    sign,
    verify_callback,
    verify_signature,
)

KEY = "whk_0123456789abcdef"
TASK_ID = "558a0e58d58a6cb69e5c6a55170398da"
NOW = 1_786_413_300


def headers(task_id: str = TASK_ID, ts: int = NOW, key: str = KEY) -> dict[str, str]:
    return {"X-Webhook-Timestamp": str(ts), "X-Webhook-Signature": sign(key, task_id, ts)}


def test_sign_is_kies_documented_algorithm() -> None:
    # reference §4.3: base64(HMAC-SHA256(key, taskId + "." + timestamp))
    expected = base64.b64encode(
        hmac.new(KEY.encode(), f"{TASK_ID}.{NOW}".encode(), hashlib.sha256).digest()
    ).decode()
    assert sign(KEY, TASK_ID, NOW) == expected == sign(KEY.encode(), TASK_ID, str(NOW))


def test_a_signed_success_callback_verifies_and_parses() -> None:
    callback = verify_callback(rec.CALLBACK_SUCCESS.encode(), headers(), KEY, now=NOW)
    assert callback.code == 200 and callback.succeeded
    assert callback.msg == "Playground task completed successfully."
    task = callback.task
    assert task.task_id == TASK_ID and task.state is TaskState.SUCCESS
    assert task.cost_time == 21 and task.credits_consumed == 5
    assert task.input["image_resolution"] == "1K"  # double-encoded param
    assert task.request["callBackUrl"] == "https://example.com/cb"
    assert task.result_urls[0].endswith("_4092.jpg")


def test_a_failure_callback_parses() -> None:
    callback = parse_callback(rec.CALLBACK_FAIL)
    assert callback.code == 501 and not callback.succeeded
    assert callback.task.state is TaskState.FAIL
    assert (callback.task.fail_code, callback.task.fail_msg) == ("400", "content policy")
    assert callback.task.result_urls == []


def test_header_names_are_case_insensitive_and_str_bodies_and_dicts_work() -> None:
    lowered = {k.lower(): v for k, v in headers().items()}
    assert verify_callback(rec.CALLBACK_SUCCESS, lowered, KEY, now=NOW).task.task_id == TASK_ID
    body = json.loads(rec.CALLBACK_SUCCESS)
    assert verify_callback(body, headers(), KEY, now=NOW).code == 200


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (headers(key="another-key"), "does not match"),
        (headers(task_id="0" * 32), "does not match"),
        ({"X-Webhook-Timestamp": str(NOW)}, "missing"),
        ({"X-Webhook-Signature": sign(KEY, TASK_ID, NOW)}, "missing"),
        ({}, "missing"),
        ({"X-Webhook-Timestamp": "soon", "X-Webhook-Signature": "x"}, "not Unix seconds"),
        (headers(ts=NOW - 301), "tolerance 300"),
        (headers(ts=NOW + 301), "tolerance 300"),
    ],
)
def test_bad_or_stale_signatures_are_refused(sent: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidSignature, match=reason):
        verify_callback(rec.CALLBACK_SUCCESS, sent, KEY, now=NOW)


def test_tolerance_can_be_widened_or_turned_off() -> None:
    old = headers(ts=NOW - 3600)
    verify_callback(rec.CALLBACK_SUCCESS, old, KEY, now=NOW, tolerance=4000)
    verify_callback(rec.CALLBACK_SUCCESS, old, KEY, now=NOW, tolerance=None)
    verify_signature(KEY, TASK_ID, NOW - 299, sign(KEY, TASK_ID, NOW - 299), now=NOW)


def test_the_signed_id_is_found_where_kies_docs_put_it() -> None:
    # Suno-style sample from kie's webhook page: top-level taskId and data.task_id
    body = {
        "code": 200,
        "msg": "ok",
        "taskId": TASK_ID,
        "data": {"task_id": TASK_ID, "state": "success"},
    }
    callback = verify_callback(body, headers(), KEY, now=NOW)
    assert callback.task.task_id == TASK_ID


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"code": 200, "data": {}}',
        '{"code":200,"data":{"taskId":"t","state":"odd"}}',
    ],
)
def test_bodies_that_are_not_callbacks_are_refused(body: str) -> None:
    with pytest.raises(InvalidSignature):
        verify_callback(body, headers(task_id="t"), KEY, now=NOW)


def test_the_documented_receiver_accepts_signed_callbacks_over_loopback() -> None:
    """The receiver of docs/client.md, served for real; callbacks posted to it over HTTP."""
    import time

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from kie_standin import serve

    received: list[str] = []

    async def callback(request: Request) -> JSONResponse:
        try:
            cb = verify_callback(await request.body(), request.headers, KEY)
        except InvalidSignature as exc:
            return JSONResponse({"code": 401, "msg": str(exc)}, status_code=401)
        received.append(cb.task.task_id)
        return JSONResponse({"code": 200, "msg": "success"})

    app = Starlette(routes=[Route("/kie-callback", callback, methods=["POST"])])
    now = int(time.time())
    body = rec.CALLBACK_SUCCESS.encode()
    with serve(app) as url, httpx.Client(base_url=url, trust_env=False) as client:
        good = client.post("/kie-callback", content=body, headers=headers(ts=now))
        forged = client.post("/kie-callback", content=body, headers=headers(ts=now, key="guess"))
    assert good.status_code == 200 and good.json() == {"code": 200, "msg": "success"}
    assert forged.status_code == 401 and "does not match" in forged.json()["msg"]
    assert received == [TASK_ID]
