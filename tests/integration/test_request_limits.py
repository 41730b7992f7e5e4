"""Hostile request shapes over a real server: deep JSON nesting and wrong methods (issue 13)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import LiveServer, auth
from seedbed.api.body import MAX_JSON_DEPTH

T2I = "seedream/4.5-text-to-image"
TOO_DEEP = "nested too deeply: arrays and objects may nest at most 64 levels deep in a request body"


def _nested(levels: int) -> bytes:
    """JSON text ``levels`` arrays and objects deep, alternating (``_nested(2)``: ``[{"a":1}]``);
    written out as text: orjson serialises at most 254 levels."""
    opening = b"".join(b'{"a":' if level % 2 else b"[" for level in range(levels))
    closing = b"".join(b"}" if level % 2 else b"]" for level in reversed(range(levels)))
    return opening + b"1" + closing


def _create(model: str, input_head: bytes, nested: bytes) -> bytes:
    """A createTask body whose input is ``{<input_head>, "extra": <nested>}``."""
    return b'{"model":"%s","input":{%s"extra":%s}}' % (model.encode(), input_head, nested)


def _post(server: LiveServer, key: str, body: bytes, **headers: str) -> dict[str, Any]:
    response = server.client.post(
        "/api/v1/jobs/createTask",
        content=body,
        headers={**auth(key), "Content-Type": "application/json", **headers},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize("levels", [64, 254, 1000])
def test_deeply_nested_input_is_422_naming_the_rule(server: LiveServer, levels: int) -> None:
    key, key_id = server.add_key(credits=50)
    # Before the limit, 254 levels and more answered 500: orjson serialises at most 254.
    deep = _create(T2I, b'"prompt":"a fox",', _nested(levels - 1))  # input: `levels` deep
    for headers in ({}, {"Idempotency-Key": f"deep-{levels}"}):
        body = _post(server, key, deep, **headers)
        assert body == {"code": 422, "msg": f"input: {TOO_DEEP}", "data": None}
    key_row = server.store_call(lambda store: store.get_key(key_id))
    assert key_row.held == 0 and key_row.open_tasks == 0


def test_nesting_past_the_parsers_own_limit_is_the_same_422(server: LiveServer) -> None:
    key, _ = server.add_key(credits=50)
    raw = b'{"model": "%s", "input": ' % T2I.encode() + b"[" * 1100 + b"]" * 1100 + b"}"
    assert _post(server, key, raw) == {"code": 422, "msg": f"body: {TOO_DEEP}", "data": None}


def test_nesting_at_the_limit_is_accepted(server: LiveServer) -> None:
    key, _ = server.add_key(credits=50)
    # input 63 levels deep: the body, one level more, is exactly at the limit
    assert MAX_JSON_DEPTH == 64
    deep = _create(T2I, b'"prompt":"a fox",', _nested(62))
    for headers in ({}, {"Idempotency-Key": "deep-63"}):
        body = _post(server, key, deep, **headers)
        assert body["code"] == 200, body
    # the stored param keeps the input as sent (it is serialised, so that had to work)
    task = server.record(key, body["data"]["taskId"])["data"]
    assert orjson.loads(orjson.loads(task["param"])["input"]) == orjson.loads(deep)["input"]


def test_nesting_within_the_limit_in_a_known_field_is_that_fields_422(
    server: LiveServer,
) -> None:
    key, _ = server.add_key(credits=50)
    raw = b'{"model":"%s","input":{"prompt":%s}}' % (T2I.encode(), _nested(60))
    body = _post(server, key, raw)
    assert body == {"code": 422, "msg": "input.prompt: must be a string", "data": None}


def test_405_carries_allow(server: LiveServer) -> None:
    cases = {
        ("GET", "/api/v1/jobs/createTask"): {"POST"},
        ("POST", "/api/v1/jobs/recordInfo"): {"GET"},
        ("DELETE", "/api/v1/chat/credit"): {"GET"},
    }
    for (method, path), allowed in cases.items():
        response = server.client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.json() == {"code": 405, "msg": "Method Not Allowed", "data": None}
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
