"""Live events (SSE) read by a real HTTP client from a real server on loopback."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LiveServer, auth, make_settings, serve_in_thread
from engines_util import SteppingEngine
from seedbed.engines import Engines

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}


@dataclass
class Event:
    id: int | None = None
    event: str = "message"
    data: dict[str, Any] = field(default_factory=dict)
    received: float = 0.0


@dataclass
class Stream:
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    ended: bool = False


def read_events(
    client: httpx.Client,
    key: str,
    task_id: str,
    *,
    last_event_id: int | None = None,
    stop_after: int | None = None,
    stop_on_comment: bool = False,
) -> Stream:
    """Read the stream until it ends (or ``stop_after`` events / the first comment)."""
    headers = auth(key)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    stream = Stream()
    with client.stream(
        "GET", "/api/v1/jobs/events", params={"taskId": task_id}, headers=headers, timeout=20
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        current = Event()
        for line in response.iter_lines():
            if line.startswith(":"):
                stream.comments.append(line)
                if stop_on_comment:
                    return stream
            elif line.startswith("retry:"):
                stream.retry = int(line.split(":", 1)[1])
            elif line.startswith("id:"):
                current.id = int(line.split(":", 1)[1])
            elif line.startswith("event:"):
                current.event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                current.data = json.loads(line.split(":", 1)[1])
            elif line == "" and current.data:
                current.received = time.monotonic()
                stream.events.append(current)
                current = Event()
                if stop_after is not None and len(stream.events) >= stop_after:
                    return stream
        stream.ended = True
    return stream


@pytest.fixture
def stepping() -> SteppingEngine:
    return SteppingEngine(steps=20, step_seconds=0.1)


@pytest.fixture
def slow(tmp_path: Path, stepping: SteppingEngine) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path, events_poll_seconds=0.05)
    with serve_in_thread(settings, engines=Engines([stepping])) as live:
        yield live


def test_events_follow_a_task_to_success_then_the_stream_closes(slow: LiveServer) -> None:
    key, _ = slow.add_key(credits=10)
    task_id = slow.create(key, BODY)["data"]["taskId"]
    stream = read_events(slow.client, key, task_id)
    assert stream.ended and stream.retry == 2000
    events = stream.events
    states = [e.data["state"] for e in events]
    assert states[-1] == "success" and events[-1].event == "state"
    assert "generating" in states
    # every event is recordInfo's data; ids grow strictly
    assert all(e.data["taskId"] == task_id for e in events)
    ids = [e.id for e in events]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))  # type: ignore[type-var]
    assert events[-1].data == slow.record(key, task_id)["data"]
    # progress-only events, at most two a second. The worker writes progress every 0.25 s,
    # so unthrottled they would come 0.25 s apart. On average they are 0.5 s apart or more
    # (delivery jitter only moves the two ends), and no gap is near 0.25 s.
    progress = [e for e in events if e.event == "progress"]
    assert len(progress) >= 2, states
    assert all(e.data["state"] == "generating" for e in progress)
    gaps = [b.received - a.received for a, b in itertools.pairwise(progress)]
    assert sum(gaps) / len(gaps) >= 0.45 and min(gaps) >= 0.3, gaps
    values = [e.data["progress"] for e in events]
    assert values == sorted(values)


def test_reconnect_with_last_event_id_resumes_after_what_was_seen(slow: LiveServer) -> None:
    key, _ = slow.add_key(credits=10)
    task_id = slow.create(key, BODY)["data"]["taskId"]
    first = read_events(slow.client, key, task_id, stop_after=2)
    assert len(first.events) == 2 and not first.ended
    seen = first.events[-1].id
    assert seen is not None
    rest = read_events(slow.client, key, task_id, last_event_id=seen)
    assert rest.ended and rest.events
    assert all(e.id is not None and e.id > seen for e in rest.events)
    assert rest.events[-1].data["state"] == "success"
    # after the terminal event, a reconnect is told to stop (204, no stream)
    final_id = rest.events[-1].id
    again = slow.client.get(
        "/api/v1/jobs/events",
        params={"taskId": task_id},
        headers={**auth(key), "Last-Event-ID": str(final_id)},
    )
    assert again.status_code == 204
    # without Last-Event-ID a finished task gives its terminal event and closes
    late = read_events(slow.client, key, task_id)
    assert late.ended and [e.data["state"] for e in late.events] == ["success"]


def test_idle_stream_gets_heartbeats_and_sees_a_cancel(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, worker=False, events_heartbeat_seconds=0.2, events_poll_seconds=0.05
    )
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(credits=10)
        task_id = live.create(key, BODY)["data"]["taskId"]
        beat = read_events(live.client, key, task_id, stop_on_comment=True)
        assert beat.comments and [e.data["state"] for e in beat.events] == ["waiting"]
        assert beat.events[0].data["queuePosition"] == 0

        with httpx.Client(base_url=live.url, timeout=10, trust_env=False) as other:
            import threading

            def cancel_soon() -> None:
                time.sleep(0.5)
                other.post("/api/v1/jobs/cancelTask", json={"taskId": task_id}, headers=auth(key))

            thread = threading.Thread(target=cancel_soon)
            thread.start()
            stream = read_events(live.client, key, task_id, last_event_id=beat.events[0].id)
            thread.join()
        assert stream.ended and stream.comments  # heartbeats while it waited
        assert [e.data["state"] for e in stream.events] == ["fail"]
        assert stream.events[0].data["failMsg"] == "canceled"


def test_a_change_made_by_another_process_reaches_the_stream(tmp_path: Path) -> None:
    """A task ended straight in the database (as a separate worker would) is seen by the feed."""
    from seedbed.tasks import Outcome

    settings = make_settings(tmp_path, worker=False, events_poll_seconds=0.05)
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(credits=10)
        task_id = live.create(key, BODY)["data"]["taskId"]
        import threading

        def finish_elsewhere() -> None:
            time.sleep(0.3)
            live.store_call(
                lambda s: s.finish(task_id, Outcome.failure("500", "elsewhere"), worker_id=None)
            )

        thread = threading.Thread(target=finish_elsewhere)
        thread.start()
        stream = read_events(live.client, key, task_id)
        thread.join()
        assert stream.ended
        assert [e.data["state"] for e in stream.events] == ["waiting", "fail"]
        assert stream.events[-1].data["failMsg"] == "elsewhere"


def test_events_for_another_keys_task_are_refused_like_record_info(server: LiveServer) -> None:
    owner, _ = server.add_key(credits=10)
    other, _ = server.add_key(credits=10)
    task_id = server.create(owner, BODY)["data"]["taskId"]
    refused = server.client.get(
        "/api/v1/jobs/events", params={"taskId": task_id}, headers=auth(other)
    )
    assert refused.json() == {"code": 422, "msg": "recordInfo is null", "data": None}
    missing = server.client.get("/api/v1/jobs/events", headers=auth(owner))
    assert missing.json()["code"] == 400
    assert (
        server.client.get("/api/v1/jobs/events", params={"taskId": task_id}).json()["code"] == 401
    )
