"""``seedbed serve --storage-url s3://...`` on PostgreSQL, started as an operator starts it:
``SEEDBED_S3_ENDPOINT_URL`` and the standard AWS variables in its environment."""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from pathlib import Path

import httpx
import proc
import pytest

import services
from conftest import auth
from seedbed.storage.s3 import S3Storage

pytestmark = pytest.mark.slow


def test_a_seedbed_command_reads_the_storage_url_and_aws_variables(
    tmp_path: Path, postgres_server: services.Postgres, seaweedfs_server: services.SeaweedFS
) -> None:
    """``seedbed serve --storage-url`` with ``SEEDBED_S3_ENDPOINT_URL`` and the AWS variables,
    as an operator starts it: its results land in the bucket."""
    port = services.free_port()
    storage_url = seaweedfs_server.storage_url(
        "".join(random.choices(string.ascii_lowercase, k=12))
    )
    database_url = postgres_server.new_database()
    env = seaweedfs_server.env()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        done = proc.run_cli(["init"], tmp_path / "data", database_url=database_url)
        assert done.returncode == 0, done.stderr
        made = proc.run_cli(
            ["keys", "create", "--name", "e2e", "--credits", "10", "--json"],
            tmp_path / "data",
            database_url=database_url,
        )
        assert made.returncode == 0, made.stderr
        plain = json.loads(made.stdout)["key"]
        with proc.server(
            tmp_path / "data", port, "--storage-url", storage_url, database_url=database_url
        ):
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
                created = client.post(
                    "/api/v1/jobs/createTask",
                    json={"model": "bytedance/seedream", "input": {"prompt": "cli"}},
                    headers=auth(plain),
                ).json()
                task_id = created["data"]["taskId"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    record = client.get(
                        "/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=auth(plain)
                    ).json()["data"]
                    if record["state"] in ("success", "fail"):
                        break
                    time.sleep(0.05)
                assert record["state"] == "success", record
                (url,) = json.loads(record["resultJson"])["resultUrls"]
                bucket = S3Storage(storage_url, endpoint_url=seaweedfs_server.endpoint_url)
                stored = asyncio.run(bucket.read(url.split("/files/", 1)[1]))
                assert client.get(url, follow_redirects=True).content == stored
