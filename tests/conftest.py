"""Shared fixtures: a real seedbed server on loopback, keys, and a loopback file server."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import services
from seedbed import keys
from seedbed.app import create_app
from seedbed.config import Settings
from seedbed.engines import Engines
from seedbed.store import open_store
from seedbed.tasks import KeyLimits, NewKey

# No test may reach the Hugging Face Hub: pipelines load from folders the tests build.
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``gpu`` tests where no CUDA device is present (they run where one is lent)."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu or _cuda_available():
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


@dataclass
class LiveServer:
    url: str
    settings: Settings
    client: httpx.Client
    #: the FastAPI app, for tests that reach into its context (a stub resolver)
    app: Any = None

    def add_key(self, credits: Decimal | int | str = 100, **limits: Any) -> tuple[str, str]:
        """Create a key straight in the database; returns (plain key, key id)."""
        plain = keys.new_key()
        new = NewKey(
            id=keys.new_key_id(),
            name="test",
            key_hash=keys.hash_key(plain),
            credits=Decimal(str(credits)),
            limits=KeyLimits(**limits),
        )

        async def create() -> None:
            store = open_store(self.settings.database)
            await store.open()
            try:
                await store.create_key(new)
            finally:
                await store.close()

        run_async(create())
        return plain, new.id

    def store_call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(store)`` (a coroutine function) against the server's database."""

        async def call() -> Any:
            store = open_store(self.settings.database)
            await store.open()
            try:
                return await fn(store)
            finally:
                await store.close()

        return run_async(call())

    def create(self, key: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        headers = {**auth(key), **kwargs.pop("headers", {})}
        response = self.client.post("/api/v1/jobs/createTask", json=body, headers=headers, **kwargs)
        return dict(response.json())

    def record(self, key: str, task_id: str) -> dict[str, Any]:
        response = self.client.get(
            "/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=auth(key)
        )
        return dict(response.json())

    def cancel(self, key: str, task_id: Any) -> dict[str, Any]:
        """cancelTask's whole answer (always HTTP 200: the outcome is in ``code``)."""
        response = self.client.post(
            "/api/v1/jobs/cancelTask", json={"taskId": task_id}, headers=auth(key)
        )
        assert response.status_code == 200
        return dict(response.json())

    def balance(self, key: str) -> Decimal:
        body = self.client.get("/api/v1/chat/credit", headers=auth(key)).json()
        return Decimal(str(body["data"]))

    def wait(self, key: str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll recordInfo until the task ends; returns its ``data``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.record(key, task_id)
            if body["code"] == 429:
                time.sleep(0.2)
                continue
            assert body["code"] == 200, body
            if body["data"]["state"] in ("success", "fail"):
                return dict(body["data"])
            time.sleep(0.02)
        raise AssertionError(f"task {task_id} did not finish in {timeout} s")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def serve_in_thread(settings: Settings, engines: Engines | None = None) -> Iterator[LiveServer]:
    """A real uvicorn server on 127.0.0.1 in a background thread, stopped on exit."""
    app = create_app(settings, engines=engines)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        try:
            yield LiveServer(url=url, settings=settings, client=client, app=app)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "allow_network": ["127.0.0.0/8"],
        "admin_refresh_seconds": 0.0,
        "poll_seconds": 1.0,
        "fetch_timeout": 5.0,
        # Tests poll fast; the limits themselves are tested with per-key settings.
        "record_rate_limit": 1000,
        "create_rate_limit": 1000,
        # A stopping test server hands running tasks back after this, instead of waiting 30 s.
        "shutdown_grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight diffusers pipelines saved to folders, built once per session."""
    import tiny_pipelines  # torch and diffusers: only for the tests that ask

    root = tmp_path_factory.mktemp("pipelines")
    return {
        "sd": tiny_pipelines.build_sd(root / "sd", channels=16),
        "klein": tiny_pipelines.build_flux2_klein(root / "klein"),
        "upscaler": tiny_pipelines.build_sd_upscaler(root / "upscaler"),
        "zimage": tiny_pipelines.build_z_image(root / "zimage"),
        "layered": tiny_pipelines.build_qwen_image_layered(root / "layered"),
    }


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[services.Postgres]:
    """One PostgreSQL for the session, started on first use; tests take a database each."""
    with services.postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[services.SeaweedFS]:
    """One SeaweedFS (S3) for the session, started on first use; tests take a key prefix each."""
    with services.seaweedfs() as weed:
        yield weed


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with serve_in_thread(make_settings(tmp_path)) as live:
        yield live


class FileServer:
    """A loopback HTTP server for input images; ``routes`` maps a path to (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes | Callable[[], bytes]]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, body = routes.get(self.path, (404, {}, b"not found"))
                data = body() if callable(body) else body
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "image/png",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> str:
        self.routes[path] = (status, {"Content-Type": content_type, **(headers or {})}, body)
        return self.url(path)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    try:
        yield server
    finally:
        server.close()
