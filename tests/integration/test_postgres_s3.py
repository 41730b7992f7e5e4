"""A real seedbed server on PostgreSQL with its files in S3 (SeaweedFS), both real servers
started by the test session (``tests/services.py``).

Tasks succeed with their results as objects in the bucket and nothing on the server's disk;
result URLs stay the server's own and answer by redirect to the store (or by streaming); an
upload feeds an edit task from the bucket; retention deletes the objects.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import services
from conftest import LiveServer, auth, make_settings, serve_in_thread
from images_util import png_bytes
from seedbed.retention import Sweeper
from seedbed.storage import StoredFileNotFound
from seedbed.storage.s3 import S3Storage
from seedbed.store import open_store

DAY = 86400.0


def _prefix() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=12))


@pytest.fixture
def s3_env(
    seaweedfs_server: services.SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> services.SeaweedFS:
    """The standard AWS variables, as an operator sets them: the server reads them."""
    for name, value in seaweedfs_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return seaweedfs_server


def _settings(tmp_path: Path, pg: services.Postgres, weed: services.SeaweedFS, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        database_url=pg.new_database(),
        storage_url=weed.storage_url(_prefix()),
        s3_endpoint_url=weed.endpoint_url,
        **extra,
    )


@pytest.fixture
def cluster_server(
    tmp_path: Path, postgres_server: services.Postgres, s3_env: services.SeaweedFS
) -> Iterator[LiveServer]:
    with serve_in_thread(_settings(tmp_path, postgres_server, s3_env)) as live:
        yield live


def _bucket(live: LiveServer, weed: services.SeaweedFS) -> S3Storage:
    """The server's bucket and prefix, seen from outside the server."""
    assert live.settings.storage_url is not None
    return S3Storage(live.settings.storage_url, endpoint_url=weed.endpoint_url)


def _read(storage: S3Storage, key: str) -> bytes:
    return bytes(asyncio.run(storage.read(key)))


def _key_of(url: str) -> str:
    return url.split("/files/", 1)[1]


def _files_on_disk(live: LiveServer) -> list[Path]:
    files_dir = live.settings.files_dir
    return [p for p in files_dir.rglob("*") if p.is_file()] if files_dir.exists() else []


def test_results_are_objects_in_the_bucket_served_by_redirect(
    cluster_server: LiveServer, s3_env: services.SeaweedFS
) -> None:
    live = cluster_server
    assert live.settings.database.startswith("postgresql://")
    key, _ = live.add_key(credits=100)
    body = {
        "model": "seedream/4.5-text-to-image",
        "input": {"prompt": "a lighthouse"},
    }
    created = live.create(key, body)
    assert created["code"] == 200, created
    data = live.wait(key, created["data"]["taskId"])
    assert data["state"] == "success", data
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    assert url.startswith(f"{live.url}/files/results/")  # this server's stable URL
    stored = _read(_bucket(live, s3_env), _key_of(url))
    assert Image.open(io.BytesIO(stored)).width > 0  # an image, in the bucket
    assert _files_on_disk(live) == []  # nothing on the server's disk

    moved = live.client.get(url)
    assert moved.status_code == 307 and moved.headers["cache-control"] == "no-store"
    location = moved.headers["location"]
    assert location.startswith(s3_env.endpoint_url) and "X-Amz-Signature=" in location
    followed = live.client.get(url, follow_redirects=True)
    assert followed.status_code == 200 and followed.content == stored
    assert followed.headers["content-type"] == "image/" + url.rsplit(".", 1)[1].replace(
        "jpg", "jpeg"
    )
    # the credits were charged once, in PostgreSQL
    assert live.balance(key) < 100

    # a download link (an attachment) is streamed through the server, with its headers
    link = live.client.post(
        "/api/v1/common/download-url", json={"url": url}, headers=auth(key)
    ).json()["data"]
    got = live.client.get(link)
    assert got.status_code == 200 and got.content == stored
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert live.client.get(link.replace("signature=", "signature=0")).status_code == 403
    assert live.client.get(f"{live.url}/files/results/../x.png").status_code == 404


def test_uploads_live_in_the_bucket_and_feed_edit_tasks(
    cluster_server: LiveServer, s3_env: services.SeaweedFS
) -> None:
    live = cluster_server
    key, _ = live.add_key(credits=100)
    image = png_bytes(200, 160, (200, 30, 40))
    upload = live.client.post(
        "/api/file-stream-upload",
        files={"file": ("red.png", image, "image/png")},
        data={"uploadPath": "edits"},
        headers=auth(key),
    ).json()["data"]
    assert _read(_bucket(live, s3_env), upload["filePath"]) == image
    # an upload is streamed (its type sniffed, as for local files), never redirected
    served = live.client.get(upload["downloadUrl"])
    assert served.status_code == 200 and served.content == image
    assert served.headers["content-type"] == "image/png"
    assert served.headers["cache-control"] == "private, no-cache"

    body = {
        "model": "seedream/5-lite-image-to-image",
        "input": {
            "prompt": "the red swatch",
            "image_urls": [upload["downloadUrl"]],
            "output_format": "png",
        },
    }
    created = live.create(key, body)
    assert created["code"] == 200, created
    data = live.wait(key, created["data"]["taskId"])
    assert data["state"] == "success", data
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    render = Image.open(io.BytesIO(live.client.get(url, follow_redirects=True).content))
    reds = sum(n for n, c in render.convert("RGB").getcolors(1 << 24) or [] if c == (200, 30, 40))
    assert reds > 500  # the upload, read from the bucket, is laid in
    assert _files_on_disk(live) == []


def test_retention_deletes_the_objects(
    cluster_server: LiveServer, s3_env: services.SeaweedFS
) -> None:
    live = cluster_server
    key, _ = live.add_key(credits=100)
    created = live.create(key, {"model": "bytedance/seedream", "input": {"prompt": "old"}})
    data = live.wait(key, created["data"]["taskId"])
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    bucket = _bucket(live, s3_env)
    assert _read(bucket, _key_of(url))

    async def sweep() -> int:
        store = open_store(live.settings.database)
        await store.open()
        try:
            sweeper = Sweeper(
                store=store,
                storage=bucket,
                result_retention=14 * DAY,
                upload_retention=3 * DAY,
                interval=3600,
                clock=lambda: time.time() + 15 * DAY,
            )
            return await sweeper.sweep()
        finally:
            await store.close()

    assert asyncio.run(sweep()) == 1
    with pytest.raises(StoredFileNotFound):
        _read(bucket, _key_of(url))
    kept = live.store_call(lambda store: store.get_file(_key_of(url)))
    assert kept is not None and kept.deleted_at is not None
    # the stable URL still redirects (no request is made to sign it), and the store says 404
    assert live.client.get(url, follow_redirects=True).status_code == 404


def test_stream_mode_sends_the_bytes_through_the_server(
    tmp_path: Path, postgres_server: services.Postgres, s3_env: services.SeaweedFS
) -> None:
    settings = _settings(tmp_path, postgres_server, s3_env, s3_serve="stream")
    with serve_in_thread(settings) as live:
        key, _ = live.add_key(credits=100)
        created = live.create(key, {"model": "bytedance/seedream", "input": {"prompt": "s"}})
        data = live.wait(key, created["data"]["taskId"])
        (url,) = json.loads(data["resultJson"])["resultUrls"]
        got = live.client.get(url)
        assert got.status_code == 200 and got.content == _read(_bucket(live, s3_env), _key_of(url))
        assert got.headers["content-length"] == str(len(got.content))
        assert got.headers["cache-control"] == "private, max-age=31536000, immutable"
        missing = url.rsplit("/", 1)[0] + "/nothing.png"
        assert live.client.get(missing).status_code == 404
