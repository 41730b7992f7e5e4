"""/readyz and /metrics through a real server on loopback."""

from __future__ import annotations

from pathlib import Path

from conftest import LiveServer, auth, make_settings, serve_in_thread
from metrics_util import requests_to, scrape, value

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}


def test_metrics_move_as_tasks_run(server: LiveServer) -> None:
    model = BODY["model"]
    before = scrape(server)
    key, _ = server.add_key(credits=100)
    ids = [server.create(key, BODY)["data"]["taskId"] for _ in range(3)]
    for task_id in ids:
        assert server.wait(key, task_id)["state"] == "success"
    bad = server.create(key, {"model": "nope", "input": {}})
    assert bad["code"] == 422
    after = scrape(server)

    assert (
        value(after, "seedbed_tasks_created_total", model=model)
        == value(before, "seedbed_tasks_created_total", model=model) + 3
    )
    assert value(after, "seedbed_tasks_finished_total", model=model, state="success") == 3
    assert value(after, "seedbed_generation_seconds_count", model=model) == 3
    assert value(after, "seedbed_generation_seconds_sum", model=model) > 0
    charged = value(after, "seedbed_credits_charged_total", model=model)
    records = [server.record(key, task_id)["data"] for task_id in ids]
    assert charged == sum(r["creditsConsumed"] for r in records) > 0
    route = "/api/v1/jobs/createTask"
    assert value(after, "seedbed_http_requests_total", route=route, code="200") >= 3
    # unknown URLs are counted under one label, not one series each
    server.client.get("/no/such/path/123")
    server.client.get("/no/such/path/456")
    again = scrape(server)
    assert value(again, "seedbed_http_requests_total", route="unmatched", code="404") == 2
    assert value(again, "seedbed_queue_depth", engine="sandbox") == 0
    assert ("seedbed_callback_deliveries_total", ()) not in again  # no outcome yet: no series


def test_queue_gauges_and_readiness_follow_the_store(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker=False, ready_queue_limit=3)
    with serve_in_thread(settings) as live:
        ready = live.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {
            "store": "ok",
            "storage": "ok",
            "engines": "ok",
            "queue": "ok",
        }
        key, _ = live.add_key(credits=100)
        ids = [live.create(key, BODY)["data"]["taskId"] for _ in range(3)]
        samples = scrape(live)
        assert value(samples, "seedbed_queue_depth", engine="sandbox") == 3
        assert value(samples, "seedbed_queue_oldest_age_seconds", engine="sandbox") >= 0
        full = live.client.get("/readyz")
        assert full.status_code == 503
        assert full.json()["checks"]["queue"] == "3 queued (limit 3)"
        assert live.cancel(key, ids[0])["data"]["failMsg"] == "canceled"
        assert live.client.get("/readyz").status_code == 200
        samples = scrape(live)
        assert value(samples, "seedbed_queue_depth", engine="sandbox") == 2
        assert (
            value(samples, "seedbed_tasks_finished_total", model=BODY["model"], state="fail") == 1
        )


def test_http_metrics_count_kie_codes_time_routes_and_count_rate_limits(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker=False)
    create = "/api/v1/jobs/createTask"
    record = "/api/v1/jobs/recordInfo"
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(
            credits=100, create_per_window=2, create_window_seconds=60, record_per_second=1
        )
        capped, _ = live.add_key(credits=100, open_task_cap=1)
        # kie answers these with HTTP 200 and the code in the body
        assert live.create("sb-" + "0" * 48, BODY)["code"] == 401
        assert live.create(key, {"model": "nope", "input": {}})["code"] == 422
        task_id = live.create(key, BODY)["data"]["taskId"]
        assert live.create(key, BODY)["code"] == 429  # the key's two creates a minute
        live.store_call(lambda store: store.set_maintenance(True))
        assert live.create(key, BODY)["code"] == 455
        live.store_call(lambda store: store.set_maintenance(False))
        assert live.create(capped, BODY)["code"] == 200
        assert live.create(capped, BODY)["code"] == 429  # its one open task
        assert live.record(key, task_id)["code"] == 200
        assert live.record(key, task_id)["code"] == 429  # one recordInfo a second
        upload = live.client.post("/api/file-base64-upload", json={}, headers=auth("sb-x"))
        assert upload.status_code == 200 and upload.json()["code"] == 401
        samples = scrape(live)

    def answered(route: str, code: str) -> float:
        return value(samples, "seedbed_http_requests_total", route=route, code=code)

    assert {c: answered(create, c) for c in ("200", "401", "422", "429", "455")} == {
        "200": 2,
        "401": 1,
        "422": 1,
        "429": 2,
        "455": 1,
    }
    assert requests_to(samples, create) == 7
    assert answered(record, "200") == answered(record, "429") == 1
    assert answered("/api/file-base64-upload", "401") == 1
    assert {
        limit: value(samples, "seedbed_rate_limited_total", limit=limit)
        for limit in ("create_rate", "open_tasks", "record_rate")
    } == {"create_rate": 1, "open_tasks": 1, "record_rate": 1}
    duration = "seedbed_http_request_duration_seconds"
    assert value(samples, f"{duration}_count", route=create) == 7
    assert value(samples, f"{duration}_bucket", route=create, le="+Inf") == 7
    assert 0 < value(samples, f"{duration}_sum", route=create) < 7 * 5
    assert value(samples, f"{duration}_count", route=record) == 2
