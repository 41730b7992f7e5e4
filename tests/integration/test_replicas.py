"""Two API replicas on one PostgreSQL and one bucket, as on two hosts (issue 16).

Each replica is a real server on loopback with a data directory of its own, so nothing may
pass between them through the file system: what they agree on (rate limits, open-task caps,
the server secret, idempotency, maintenance) must come from the database, and wake-ups and
live events from another replica's writes arrive through PostgreSQL's notifications.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_events import read_events

import services
from conftest import LiveServer, auth, make_settings, serve_in_thread
from images_util import png_bytes
from receiver import Receiver
from seedbed.outbox import FileKind, StoredFile
from seedbed.retention import Sweeper
from seedbed.storage.s3 import S3Storage
from seedbed.store import open_store

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}


@pytest.fixture
def s3_env(
    seaweedfs_server: services.SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> services.SeaweedFS:
    for name, value in seaweedfs_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return seaweedfs_server


@pytest.fixture
def shared(postgres_server: services.Postgres, s3_env: services.SeaweedFS) -> dict[str, Any]:
    """The settings every replica of one deployment has in common: a database, a bucket."""
    prefix = "".join(random.choices(string.ascii_lowercase, k=12))
    return {
        "database_url": postgres_server.new_database(),
        "storage_url": s3_env.storage_url(prefix),
        "s3_endpoint_url": s3_env.endpoint_url,
        "admin_refresh_seconds": 0.0,
    }


@contextlib.contextmanager
def replicas(
    tmp_path: Path, shared: dict[str, Any], *each: dict[str, Any]
) -> Iterator[list[LiveServer]]:
    """One server per settings dict in ``each``, in its own data directory."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                serve_in_thread(make_settings(tmp_path / f"replica{i}", **shared, **extra))
            )
            for i, extra in enumerate(each)
        ]
        yield servers


def test_a_key_gets_its_create_rate_in_total_across_replicas(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    with replicas(tmp_path, shared, {"worker": False}, {"worker": False}) as (one, two):
        # 20 per 600 s: the burst is 20 as with 10 s, and no call refills while the test runs
        key, _ = one.add_key(credits=1000, create_per_window=20, create_window_seconds=600)
        codes = [(one if i % 2 else two).create(key, BODY)["code"] for i in range(30)]
        assert codes.count(200) == 20, codes
        assert codes.count(429) == 10
        # the refusal says when to come back, from either replica
        refused = two.client.post("/api/v1/jobs/createTask", json=BODY, headers=auth(key))
        assert refused.json()["code"] == 429 and float(refused.headers["Retry-After"]) > 0


def test_an_open_task_cap_holds_across_replicas(tmp_path: Path, shared: dict[str, Any]) -> None:
    with replicas(tmp_path, shared, {"worker": False}, {"worker": False}) as (one, two):
        key, _ = one.add_key(credits=1000, open_task_cap=5)
        codes = [(one if i % 2 else two).create(key, BODY)["code"] for i in range(8)]
        assert codes.count(200) == 5 and codes.count(429) == 3, codes


def test_a_link_signed_on_one_replica_is_honoured_by_another(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    with replicas(tmp_path, shared, {}, {"worker": False}) as (one, two):
        key, _ = one.add_key(credits=10)
        task_id = one.create(key, BODY)["data"]["taskId"]
        data = one.wait(key, task_id)
        assert data["state"] == "success", data
        (result_url,) = json.loads(data["resultJson"])["resultUrls"]
        signed = one.client.post(
            "/api/v1/common/download-url", json={"url": result_url}, headers=auth(key)
        ).json()
        assert signed["code"] == 200, signed
        path = signed["data"].split("://", 1)[1].split("/", 1)[1]
        followed = two.client.get("/" + path)
        assert followed.status_code == 200, followed.text
        assert followed.content == one.client.get(result_url, follow_redirects=True).content
        # a signature that does not match is refused there too
        assert two.client.get("/" + path.replace("signature=", "signature=0")).status_code != 200
        # an upload through one replica lands in the folder the other names for the same key
        # (a secret-derived segment), and its URL is served by the other
        urls = []
        for replica in (two, one):
            uploaded = replica.client.post(
                "/api/file-base64-upload",
                json={
                    "base64Data": "data:image/png;base64," + _png_b64(),
                    "uploadPath": "u",
                    "fileName": "same.png",
                },
                headers=auth(key),
            ).json()
            assert uploaded["code"] == 200, uploaded
            urls.append(uploaded["data"]["downloadUrl"])
        paths = [url.split("/files/", 1)[1] for url in urls]
        assert paths[0] == paths[1]
        assert one.client.get("/files/" + paths[0]).status_code == 200


def _png_b64() -> str:
    return base64.b64encode(png_bytes(8, 8)).decode()


def test_a_new_task_reaches_an_idle_worker_elsewhere_at_once(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    """The worker polls only every 30 s: the task reaches it by NOTIFY, in milliseconds."""
    api = {"worker": False}
    worker = {"poll_seconds": 30.0}
    with replicas(tmp_path, shared, api, worker) as (one, _two):
        key, _ = one.add_key(credits=10)
        time.sleep(1.0)  # the worker's first claim (at start) has found nothing
        started = time.monotonic()
        task_id = one.create(key, BODY)["data"]["taskId"]
        data = one.wait(key, task_id, timeout=20)
        assert data["state"] == "success"
        assert time.monotonic() - started < 3.0


def test_the_events_stream_follows_a_task_run_by_a_worker_elsewhere(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    """The API replica polls the feed only every 30 s: each step arrives by NOTIFY."""
    api = {"worker": False, "events_poll_seconds": 30.0}
    worker = {"sandbox_steps": 5, "sandbox_step_seconds": 0.2}
    with replicas(tmp_path, shared, api, worker) as (one, _two):
        key, _ = one.add_key(credits=10)
        task_id = one.create(key, BODY)["data"]["taskId"]
        started = time.monotonic()
        stream = read_events(one.client, key, task_id)
        assert stream.ended
        states = [e.data["state"] for e in stream.events]
        # the first event is the state when the stream opened: an idle worker claims and
        # starts a task in one write, so it may already be generating
        assert states[0] in ("waiting", "queuing", "generating"), states
        assert states[-1] == "success", states
        assert "generating" in states
        progress = [
            e.data.get("progress") for e in stream.events if e.data["state"] == "generating"
        ]
        assert len(progress) >= 2, stream.events  # progress steps, not only the end
        assert time.monotonic() - started < 5.0


def test_callbacks_are_delivered_once_by_two_replicas(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    receiver = Receiver()
    try:
        both = {"callback_poll_seconds": 0.2}
        with replicas(tmp_path, shared, both, both) as (one, two):
            key, _ = one.add_key(credits=100)
            body = {**BODY, "callBackUrl": receiver.url}
            ids = {(one if i % 2 else two).create(key, body)["data"]["taskId"] for i in range(20)}
            hits = receiver.wait_for(20, timeout=60)
            time.sleep(1.0)  # a duplicate would come now
            delivered = [h.json["data"]["taskId"] for h in receiver.hits]
            assert sorted(delivered) == sorted(ids), (len(delivered), len(hits))
    finally:
        receiver.close()


def test_maintenance_and_idempotency_hold_across_replicas(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    with replicas(tmp_path, shared, {"worker": False}, {"worker": False}) as (one, two):
        key, _ = one.add_key(credits=10)
        headers = {"Idempotency-Key": "same-request"}
        first = one.create(key, BODY, headers=headers)
        second = two.create(key, BODY, headers=headers)
        assert first["code"] == second["code"] == 200
        assert first["data"]["taskId"] == second["data"]["taskId"]
        one.store_call(lambda store: store.set_maintenance(True))
        assert one.create(key, BODY)["code"] == two.create(key, BODY)["code"] == 455


def test_one_retention_sweeper_at_a_time_across_replicas(
    tmp_path: Path, shared: dict[str, Any], seaweedfs_server: services.SeaweedFS
) -> None:
    """While one replica sweeps, another's sweep deletes nothing; then it sweeps."""

    async def scenario() -> tuple[int, int]:
        storage = S3Storage(shared["storage_url"], endpoint_url=seaweedfs_server.endpoint_url)
        first, second = open_store(shared["database_url"]), open_store(shared["database_url"])
        await first.open()
        await second.open()
        try:
            await storage.put("results/old.png", b"x", "image/png")
            await first.record_file(
                StoredFile(key="results/old.png", kind=FileKind.RESULT, key_id="k", task_id=None)
            )
            later = time.time() + 30 * 86400

            def sweeper(store: Any) -> Sweeper:
                return Sweeper(
                    store=store,
                    storage=storage,
                    result_retention=86400,
                    upload_retention=86400,
                    interval=60,
                    clock=lambda: later,
                )

            async with first.exclusive("retention") as mine:
                assert mine
                skipped = await sweeper(second).sweep()
            return skipped, await sweeper(second).sweep()
        finally:
            await first.close()
            await second.close()

    skipped, swept = asyncio.run(scenario())
    assert (skipped, swept) == (0, 1)


def test_an_admin_change_reaches_every_replica_at_once(
    tmp_path: Path, shared: dict[str, Any]
) -> None:
    """Each replica keeps keys and switches for an hour here: only the change's announcement
    (PostgreSQL's NOTIFY) can bring it to them, whether the console of one replica or the CLI
    made it."""
    from typer.testing import CliRunner

    from seedbed.cli import app

    token = "sba-replicas-admin"
    lasting = {**shared, "admin_refresh_seconds": 3600.0, "admin_token": token}
    cli = ["--database-url", shared["database_url"], "--data-dir", str(tmp_path / "cli")]

    def until(done: Any) -> None:
        deadline = time.monotonic() + 5
        while not done():
            assert time.monotonic() < deadline, "the change never reached the replica"
            time.sleep(0.02)

    with replicas(tmp_path, lasting, {"worker": False}, {"worker": False}) as (one, two):
        key, key_id = one.add_key(credits=1000)
        assert one.create(key, BODY)["code"] == two.create(key, BODY)["code"] == 200
        answer = one.client.put(
            "/api/v1/admin/maintenance",
            json={"on": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.json()["code"] == 200
        assert one.create(key, BODY)["code"] == 455  # the console's own replica: at once
        until(lambda: two.create(key, BODY)["code"] == 455)
        assert CliRunner().invoke(app, ["maintenance", "off", *cli]).exit_code == 0
        until(lambda: one.create(key, BODY)["code"] == two.create(key, BODY)["code"] == 200)
        assert CliRunner().invoke(app, ["keys", "revoke", key_id, *cli]).exit_code == 0
        until(lambda: one.record(key, "0" * 32)["code"] == two.record(key, "0" * 32)["code"] == 401)
