"""Callbacks through a real server and real receivers on loopback (CONTRACT §5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FileServer, LiveServer, make_settings, serve_in_thread
from metrics_util import value, wait_for_value
from receiver import Receiver
from seedbed import __version__
from seedbed.outbox import CallbackState

SUCCESS_MSG = "Playground task completed successfully."
FAILURE_MSG = "Playground task failed."


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        tmp_path,
        callback_retry_delays=[0.2, 0.2],
        callback_poll_seconds=0.2,
    )
    with serve_in_thread(settings) as live:
        yield live


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def _callback_state(server: LiveServer, task_id: str, want: CallbackState) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        record = server.store_call(lambda store: store.get_callback(task_id))
        if record is not None and record.state is want:
            return record
        time.sleep(0.05)
    raise AssertionError(f"callback of {task_id} never became {want}")


DELIVERIES = "seedbed_callback_deliveries_total"


def deliveries(samples: dict[Any, float]) -> dict[str, float]:
    """``seedbed_callback_deliveries_total`` by outcome."""
    return {o: value(samples, DELIVERIES, outcome=o) for o in ("delivered", "retry", "dead")}


def _kie_view(record: dict[str, Any]) -> dict[str, Any]:
    """recordInfo's data without its two extension fields: what a callback's data must be."""
    return {k: v for k, v in record.items() if k not in ("progress", "queuePosition")}


def test_signed_callback_is_retried_until_it_arrives_with_kies_body(
    fast_server: LiveServer, receivers: list[Receiver]
) -> None:
    hmac_key = "whk-test-secret"
    receiver = Receiver([500, 500, 200], hmac_key=hmac_key)
    receivers.append(receiver)
    key, key_id = fast_server.add_key(credits=100)
    assert fast_server.store_call(lambda store: store.set_hmac_key(key_id, hmac_key))
    body = {
        "model": "seedream/4.5-text-to-image",
        "callBackUrl": receiver.url,
        "input": {"prompt": "a lighthouse", "aspect_ratio": "1:1"},
    }
    task_id = fast_server.create(key, body)["data"]["taskId"]

    hits = receiver.wait_for(3)
    record = fast_server.wait(key, task_id)
    assert [hit.answered for hit in hits] == [500, 500, 200]
    assert all(hit.signature_ok for hit in hits), [hit.headers for hit in hits]
    assert all(hit.headers["content-type"] == "application/json" for hit in hits)
    # every attempt says who sends it, not the HTTP library's default
    assert [hit.headers["user-agent"] for hit in hits] == [f"seedbed/{__version__}"] * 3
    assert len({hit.body for hit in hits}) == 1  # the same body on every attempt
    assert hits[0].json == {"code": 200, "msg": SUCCESS_MSG, "data": _kie_view(record)}
    assert list(hits[0].json) == ["code", "msg", "data"]

    delivered = _callback_state(fast_server, task_id, CallbackState.DELIVERED)
    assert delivered.attempts == 3 and delivered.last_status == 200
    attempts = fast_server.store_call(lambda store: store.callback_attempts(task_id))
    assert [(a.attempt, a.status) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    samples = wait_for_value(fast_server, DELIVERIES, 1, outcome="delivered")
    assert deliveries(samples) == {"delivered": 1, "retry": 2, "dead": 0}
    assert attempts[0].error == "HTTP 500" and attempts[2].error is None
    time.sleep(0.5)
    assert len(receiver.hits) == 3  # nothing more once delivered


def test_failed_task_calls_back_with_501_and_no_signature_without_a_key(
    fast_server: LiveServer, files: FileServer, receivers: list[Receiver]
) -> None:
    receiver = Receiver([200])
    receivers.append(receiver)
    key, _ = fast_server.add_key(credits=100)
    body = {
        "model": "seedream/4.5-edit",
        "callBackUrl": receiver.url,
        "input": {"prompt": "x", "image_urls": [files.url("/missing.png")]},
    }
    task_id = fast_server.create(key, body)["data"]["taskId"]
    (hit,) = receiver.wait_for(1)
    record = fast_server.wait(key, task_id)
    assert record["state"] == "fail" and record["failCode"] == "400"
    assert hit.json == {"code": 501, "msg": FAILURE_MSG, "data": _kie_view(record)}
    assert hit.json["data"]["resultJson"] == "" and hit.json["data"]["creditsConsumed"] == 0
    assert "x-webhook-signature" not in hit.headers and "x-webhook-timestamp" not in hit.headers


@pytest.fixture
def patient_server(tmp_path: Path) -> Iterator[LiveServer]:
    """Long enough a timeout that the live callback surely lands while the dead one hangs."""
    settings = make_settings(
        tmp_path,
        callback_retry_delays=[0.2, 0.2],
        callback_poll_seconds=0.2,
        callback_timeout=2.5,
    )
    with serve_in_thread(settings) as live:
        yield live


def test_a_receiver_that_never_answers_goes_dead_without_holding_up_others(
    patient_server: LiveServer, receivers: list[Receiver]
) -> None:
    fast_server = patient_server
    dead = Receiver([None])
    live = Receiver([200])
    receivers.extend([dead, live])
    key, _ = fast_server.add_key(credits=100)
    model = {"model": "bytedance/seedream", "input": {"prompt": "x", "image_size": "square"}}
    dead_task = fast_server.create(key, {**model, "callBackUrl": dead.url})["data"]["taskId"]
    (first_dead,) = dead.wait_for(1)
    live_task = fast_server.create(key, {**model, "callBackUrl": live.url})["data"]["taskId"]
    (live_hit,) = live.wait_for(1)
    # the live callback arrived while the dead receiver still held its first attempt
    assert live_hit.at < first_dead.at + fast_server.settings.callback_timeout
    assert live_hit.json["data"]["taskId"] == live_task

    record = _callback_state(fast_server, dead_task, CallbackState.DEAD)
    assert record.attempts == 3 and record.next_attempt_at is None
    assert record.last_error == "timed out after 2.5 s"
    attempts = fast_server.store_call(lambda store: store.callback_attempts(dead_task))
    assert [(a.attempt, a.status, a.error) for a in attempts] == [
        (n, None, "timed out after 2.5 s") for n in (1, 2, 3)
    ]
    assert all(a.duration_ms >= 2400 for a in attempts)
    assert len(dead.hits) == 3
    samples = wait_for_value(fast_server, DELIVERIES, 1, outcome="dead")
    assert deliveries(samples) == {"delivered": 1, "retry": 2, "dead": 1}

    # redelivery queues it again from the start; the receiver now answers
    dead.answers = [None, None, None, 200]
    assert fast_server.store_call(lambda store: store.redeliver_callback(dead_task))
    dead.wait_for(4)
    redelivered = _callback_state(fast_server, dead_task, CallbackState.DELIVERED)
    assert redelivered.attempts == 1
    samples = wait_for_value(fast_server, DELIVERIES, 2, outcome="delivered")
    assert deliveries(samples) == {"delivered": 2, "retry": 2, "dead": 1}


def test_tasks_without_a_callback_url_queue_nothing(fast_server: LiveServer) -> None:
    key, _ = fast_server.add_key(credits=100)
    body = {"model": "bytedance/seedream", "input": {"prompt": "x", "image_size": "square"}}
    task_id = fast_server.create(key, body)["data"]["taskId"]
    fast_server.wait(key, task_id)
    assert fast_server.store_call(lambda store: store.get_callback(task_id)) is None


def test_cancel_task_calls_back_with_501_and_failmsg_canceled(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    receiver = Receiver([200])
    receivers.append(receiver)
    settings = make_settings(tmp_path, worker=False, callback_poll_seconds=0.2)
    with serve_in_thread(settings) as server:
        key, _ = server.add_key(credits=100)
        body = {
            "model": "seedream/4.5-text-to-image",
            "callBackUrl": receiver.url,
            "input": {"prompt": "never run"},
        }
        task_id = server.create(key, body)["data"]["taskId"]
        canceled = server.cancel(key, task_id)
        (hit,) = receiver.wait_for(1)
        record = server.record(key, task_id)["data"]
        _callback_state(server, task_id, CallbackState.DELIVERED)
    assert canceled["code"] == 200 and canceled["data"]["failMsg"] == "canceled"
    assert hit.json == {"code": 501, "msg": FAILURE_MSG, "data": _kie_view(record)}
    data = hit.json["data"]
    assert (data["state"], data["failCode"], data["failMsg"]) == ("fail", "400", "canceled")
    assert data["creditsConsumed"] == 0 and data["resultJson"] == ""
