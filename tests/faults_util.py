"""Real faults for real servers: a small tmpfs that fills up, a mount made read-only, a SQLite
lock held by another process, a worker stopped with SIGSTOP. Used by ``tests/e2e/test_faults.py``
and ``bench/fault_bench.py``. Mounting needs root (CI runs as root)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

SEEDBED = [sys.executable, "-m", "seedbed"]
IS_ROOT = os.geteuid() == 0
MODEL = "seedream/4.5-text-to-image"


# -- mounts ------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "16m") at ``path``, unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, *, read_only: bool) -> None:
    mode = "ro" if read_only else "rw"
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system has no space left."""
    filler = directory / "filler.bin"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # whatever is left in partial pages
    with contextlib.suppress(OSError), open(directory / "filler-tail.bin", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 512)
    return filler


def unfill(directory: Path) -> None:
    for name in ("filler.bin", "filler-tail.bin"):
        (directory / name).unlink(missing_ok=True)


@contextlib.contextmanager
def sqlite_locked(db: Path) -> Iterator[None]:
    """Another process's write lock on the database, held while the block runs."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# -- processes ---------------------------------------------------------------------------------
def env(**settings: Any) -> dict[str, str]:
    values = dict(os.environ)
    values.update({f"SEEDBED_{k.upper()}": str(v) for k, v in settings.items()})
    return values


class Proc:
    """A ``seedbed`` process whose log goes to a file the test can read."""

    def __init__(self, args: list[str], log: Path, **settings: Any) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [*SEEDBED, *args], env=env(**settings), stdout=self._log, stderr=self._log
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def serve(data_dir: Path, port: int, log: Path, *extra: str, **settings: Any) -> Proc:
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    proc = Proc([*args, "--allow-network", "127.0.0.0/8", *extra], log, **settings)
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 30, proc)
    return proc


def worker(data_dir: Path, log: Path, **settings: Any) -> Proc:
    return Proc(["worker", "--data-dir", str(data_dir)], log, **settings)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(check: Any, timeout: float, proc: Proc | None = None, what: str = "") -> float:
    """Poll ``check`` until true; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"process exited {proc.proc.returncode}:\n{proc.log()[-3000:]}")
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.05)
    return time.monotonic() - start


def cli(data_dir: Path, *args: str) -> Any:
    done = subprocess.run(
        [*SEEDBED, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else done.stdout


# -- the API as a client sees it ---------------------------------------------------------------
class Api:
    def __init__(self, port: int, key: str) -> None:
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            trust_env=False,
            timeout=30,
        )

    def create(self, prompt: str = "fault", **extra: Any) -> dict[str, Any]:
        body = {"model": MODEL, "input": {"prompt": prompt}, **extra}
        answer: dict[str, Any] = self.client.post("/api/v1/jobs/createTask", json=body).json()
        return answer

    def record(self, task_id: str) -> dict[str, Any]:
        answer = self.client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
        data: dict[str, Any] = answer["data"]
        return data

    def states(self, ids: list[str]) -> dict[str, str]:
        return {task_id: self.record(task_id)["state"] for task_id in ids}

    def ready(self) -> tuple[int, dict[str, Any]]:
        answer = self.client.get("/readyz")
        return answer.status_code, answer.json()

    def balance(self) -> float:
        return float(self.client.get("/api/v1/chat/credit").json()["data"])

    def close(self) -> None:
        self.client.close()


def all_done(api: Api, ids: list[str]) -> bool:
    return all(state in ("success", "fail") for state in api.states(ids).values())


def first_done(api: Api, ids: list[str]) -> bool:
    return any(state in ("success", "fail") for state in api.states(ids).values())


class Timer(threading.Thread):
    """Runs ``action`` after ``delay`` seconds in the background."""

    def __init__(self, delay: float, action: Any) -> None:
        super().__init__(daemon=True)
        self.delay, self.action = delay, action

    def run(self) -> None:
        time.sleep(self.delay)
        self.action()
