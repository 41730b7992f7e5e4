"""Every refusal answers with the contract's code and a precise message, and holds nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalogue_cases import MINIMAL, invalid_cases
from conftest import FileServer, LiveServer, auth, make_settings, serve_in_thread
from images_util import bomb_png, png_bytes

T2I = {"model": "seedream/4.5-text-to-image", "input": {"prompt": "a fox"}}


def _no_holds(server: LiveServer, key_id: str, credits: float) -> None:
    key = server.store_call(lambda store: store.get_key(key_id))
    assert key.balance == credits
    assert key.held == 0
    assert key.open_tasks == 0


def test_auth_is_required(server: LiveServer) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = server.client.post("/api/v1/jobs/createTask", json=T2I, headers=headers)
        assert response.status_code == 200
        assert response.json() == {
            "code": 401,
            "msg": "You do not have access permissions",
            "data": None,
        }
        record = server.client.get("/api/v1/jobs/recordInfo?taskId=x", headers=headers)
        assert record.json()["code"] == 401
        credit = server.client.get("/api/v1/chat/credit", headers=headers)
        assert credit.json()["code"] == 401


def test_revoked_key_is_refused(server: LiveServer) -> None:
    key, key_id = server.add_key(credits=10)
    assert server.create(key, T2I)["code"] == 200
    server.store_call(lambda store: store.revoke_key(key_id))
    assert server.create(key, T2I)["code"] == 401


def test_insufficient_credits_is_402_and_holds_nothing(server: LiveServer) -> None:
    key, key_id = server.add_key(credits=6)  # 4.5 costs 6.5
    body = server.create(key, T2I)
    assert body["code"] == 402
    assert "6.5" in body["msg"]
    _no_holds(server, key_id, 6)


def test_unknown_and_foreign_task_ids(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    other, _ = server.add_key(credits=10)
    task_id = server.create(key, T2I)["data"]["taskId"]
    null = {"code": 422, "msg": "recordInfo is null", "data": None}
    assert server.record(other, task_id) == null
    assert server.record(key, "0" * 32) == null
    missing = server.client.get("/api/v1/jobs/recordInfo", headers=auth(key)).json()
    assert missing == {"code": 400, "msg": "taskId parameter is required", "data": None}


def test_unknown_route_is_a_real_404(server: LiveServer) -> None:
    response = server.client.get("/api/v1/nothing")
    assert response.status_code == 404
    assert response.json()["code"] == 404


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "body: not valid JSON"),
    (b"[1, 2]", "body: must be a JSON object"),
    (b"", "body: a JSON object is required"),
    (b'{"input": {"prompt": "x"}}', "model: is required"),
    (b'{"model": 7, "input": {"prompt": "x"}}', "model: must be a string"),
    (b'{"model": "seedream/9", "input": {"prompt": "x"}}', "model: unknown model 'seedream/9'"),
    (b'{"model": "seedream/4.5-text-to-image"}', "input: is required"),
    (b'{"model": "seedream/4.5-text-to-image", "input": "x"}', "input: must be a JSON object"),
    (b'{"model": "seedream/4.5-text-to-image", "input": {}}', "input.prompt: is required"),
    (
        b'{"model": "seedream/4.5-text-to-image", "input": {"prompt": "x", "aspect_ratio": "5:4"}}',
        "input.aspect_ratio: must be one of",
    ),
    (
        b'{"model": "bytedance/seedream-v4-text-to-image", "input": {"prompt": "x", "max_images": 7}}',
        "input.max_images:",
    ),
    (
        b'{"model": "bytedance/seedream-v4-text-to-image", "input": {"prompt": "x", "max_images": "2"}}',
        "input.max_images: must be an integer",
    ),
    (
        b'{"model": "seedream/4.5-edit", "input": {"prompt": "x", "image_urls": ["ftp://a/b.png"]}}',
        "input.image_urls[0]:",
    ),
    (
        b'{"model": "seedream/4.5-edit", "input": {"prompt": "x", "image_urls": ["http://10.0.0.1/a.png"]}}',
        "input.image_urls[0]:",
    ),
    (
        b'{"model": "seedream/4.5-edit", "input": {"prompt": "x"}}',
        "input.image_urls: is required",
    ),
    (
        b'{"model": "seedream/4.5-text-to-image", "callBackUrl": 5, "input": {"prompt": "x"}}',
        "callBackUrl: must be a string",
    ),
    (
        b'{"model": "seedream/4.5-text-to-image", "callBackUrl": "file:///etc/passwd", "input": {"prompt": "x"}}',
        "callBackUrl:",
    ),
    (
        b'{"model": "seedream/4.5-text-to-image", "callBackUrl": "http://169.254.169.254/x", "input": {"prompt": "x"}}',
        "callBackUrl:",
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD_BODIES)
def test_bad_bodies_are_422_naming_the_field(server: LiveServer, raw: bytes, message: str) -> None:
    key, key_id = server.add_key(credits=50)
    response = server.client.post(
        "/api/v1/jobs/createTask",
        content=raw,
        headers={**auth(key), "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 422, body
    assert body["msg"].startswith(message), body
    assert body["data"] is None
    _no_holds(server, key_id, 50)


def test_too_many_image_urls_and_long_prompt(server: LiveServer) -> None:
    key, _ = server.add_key(credits=50)
    urls = [f"https://example.com/{i}.png" for i in range(15)]
    body = server.create(
        key, {"model": "seedream/4.5-edit", "input": {"prompt": "x", "image_urls": urls}}
    )
    assert body["code"] == 422 and body["msg"].startswith("input.image_urls:"), body
    long_prompt = "é" * 3001  # characters, not bytes
    body = server.create(
        key, {"model": "seedream/4.5-text-to-image", "input": {"prompt": long_prompt}}
    )
    assert body["code"] == 422 and body["msg"].startswith("input.prompt:"), body
    ok = server.create(
        key, {"model": "seedream/4.5-text-to-image", "input": {"prompt": "é" * 3000}}
    )
    assert ok["code"] == 200
    server.wait(key, ok["data"]["taskId"])


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    with serve_in_thread(make_settings(tmp_path, max_body_bytes=2000)) as server:
        key, key_id = server.add_key(credits=50)
        big = {"model": "bytedance/seedream", "input": {"prompt": "x" * 5000}}
        response = server.client.post("/api/v1/jobs/createTask", json=big, headers=auth(key))
        assert response.status_code == 413
        assert response.json()["code"] == 413
        _no_holds(server, key_id, 50)


def test_rate_limit_is_429_with_retry_after(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100, create_per_window=2, create_window_seconds=10)
    assert server.create(key, T2I)["code"] == 200
    assert server.create(key, T2I)["code"] == 200
    response = server.client.post("/api/v1/jobs/createTask", json=T2I, headers=auth(key))
    assert response.status_code == 429
    assert response.json()["code"] == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 10


def test_record_info_rate_limit(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10, record_per_second=3)
    codes = [server.record(key, "0" * 32)["code"] for _ in range(6)]
    assert codes[:3] == [422, 422, 422]
    assert 429 in codes[3:]


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path, sandbox_step_seconds=0.5, sandbox_steps=4)
    with serve_in_thread(settings) as live:
        yield live


def test_open_task_cap_is_429(slow_server: LiveServer) -> None:
    key, _ = slow_server.add_key(credits=100, open_task_cap=2)
    assert slow_server.create(key, T2I)["code"] == 200
    assert slow_server.create(key, T2I)["code"] == 200
    body = slow_server.create(key, T2I)
    assert body["code"] == 429
    assert "open tasks" in body["msg"]


def test_maintenance_is_455_and_lifts_without_restart(server: LiveServer) -> None:
    key, key_id = server.add_key(credits=50)
    server.store_call(lambda store: store.set_maintenance(True))
    body = server.create(key, T2I)
    assert body["code"] == 455, body
    _no_holds(server, key_id, 50)
    # recordInfo and credit still work during maintenance
    assert server.record(key, "0" * 32)["code"] == 422
    server.store_call(lambda store: store.set_maintenance(False))
    assert server.create(key, T2I)["code"] == 200


def test_disabled_model_is_505(server: LiveServer) -> None:
    key, key_id = server.add_key(credits=50)
    server.store_call(lambda store: store.set_model_enabled("seedream/4.5-text-to-image", False))
    body = server.create(key, T2I)
    assert body["code"] == 505, body
    _no_holds(server, key_id, 50)
    other = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "x"}})
    assert other["code"] == 200
    server.store_call(lambda store: store.set_model_enabled("seedream/4.5-text-to-image", True))
    assert server.create(key, T2I)["code"] == 200


def test_check_order_auth_before_maintenance_before_validation(server: LiveServer) -> None:
    key, _ = server.add_key(credits=0)
    server.store_call(lambda store: store.set_maintenance(True))
    bad = {"model": "nope", "input": {}}
    assert server.create("wrong", bad)["code"] == 401
    assert server.create(key, bad)["code"] == 455
    server.store_call(lambda store: store.set_maintenance(False))
    assert server.create(key, bad)["code"] == 422
    assert server.create(key, T2I)["code"] == 402


# -- input images that fail when fetched -----------------------------------------------------
def _fail_case(server: LiveServer, files: FileServer, url: str) -> dict[str, Any]:
    key, key_id = server.add_key(credits=50)
    ok_url = files.add("/ok.png", png_bytes())
    body = {
        "model": "seedream/4.5-edit",
        "input": {"prompt": "x", "image_urls": [ok_url, url]},
    }
    created = server.create(key, body)
    assert created["code"] == 200, created
    data = server.wait(key, created["data"]["taskId"])
    assert data["state"] == "fail"
    assert data["failCode"] == "400"
    assert data["failMsg"].startswith("input.image_urls[1]:"), data["failMsg"]
    assert data["creditsConsumed"] == 0
    assert data["resultJson"] == ""
    _no_holds(server, key_id, 50)
    return data


def test_input_image_404(server: LiveServer, files: FileServer) -> None:
    data = _fail_case(server, files, files.url("/missing.png"))
    assert "404" in data["failMsg"]


def test_input_not_an_image(server: LiveServer, files: FileServer) -> None:
    url = files.add("/fake.png", b"<html>hello</html>", content_type="image/png")
    data = _fail_case(server, files, url)
    assert "not an image" in data["failMsg"]


def test_input_over_10_mb(server: LiveServer, files: FileServer) -> None:
    url = files.add("/big.png", b"\x89PNG" + b"0" * (10 * 1024 * 1024 + 10))
    data = _fail_case(server, files, url)
    assert "10 MB" in data["failMsg"]


def test_input_decompression_bomb(server: LiveServer, files: FileServer) -> None:
    url = files.add("/bomb.png", bomb_png())
    data = _fail_case(server, files, url)
    assert "pixels" in data["failMsg"]


def test_input_redirect_to_private_address(server: LiveServer, files: FileServer) -> None:
    url = files.add("/redir", b"", status=302, headers={"Location": "http://10.1.2.3/x.png"})
    data = _fail_case(server, files, url)
    assert "10.1.2.3" in data["failMsg"]


def test_input_timeout(tmp_path: Path, files: FileServer) -> None:
    def slow() -> bytes:
        time.sleep(3)
        return png_bytes()

    files.routes["/slow.png"] = (200, {"Content-Type": "image/png"}, slow)
    with serve_in_thread(make_settings(tmp_path, fetch_timeout=0.5)) as server:
        data = _fail_case(server, files, files.url("/slow.png"))
        assert "timed out" in data["failMsg"]


def test_every_invalid_field_of_every_model_is_422_over_http(server: LiveServer) -> None:
    """The catalogue's table of bad inputs, each sent to a real server: 422 naming the field."""
    key, key_id = server.add_key(credits=50)
    wrong = []
    for model, fields, field in invalid_cases():
        raw = json.dumps({"model": model, "input": {**MINIMAL[model], **fields}})
        response = server.client.post(
            "/api/v1/jobs/createTask",
            content=raw,
            headers={**auth(key), "Content-Type": "application/json"},
        )
        body = response.json()
        expected = "body: not valid JSON" if "NaN" in raw else f"input.{field}: "
        if (
            response.status_code != 200
            or body["code"] != 422
            or not body["msg"].startswith(expected)
        ):
            wrong.append((model, fields, body))
    assert wrong == []
    _no_holds(server, key_id, 50)
