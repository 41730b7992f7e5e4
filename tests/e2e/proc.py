"""Starting ``seedbed`` as a user does: real processes, real ports on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

SEEDBED = [sys.executable, "-m", "seedbed"]


def env(**settings: Any) -> dict[str, str]:
    """The environment for a seedbed process: ``SEEDBED_<NAME>`` for each setting given."""
    values = dict(os.environ)
    values.update({f"SEEDBED_{k.upper()}": str(v) for k, v in settings.items()})
    return values


def run_cli(
    args: Sequence[str], data_dir: Path, **settings: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEEDBED, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(**settings),
        check=False,
    )


def create_key(data_dir: Path, credits: int = 100) -> dict[str, Any]:
    """A key in ``data_dir``'s database, made first (admin commands never create one)."""
    initialised = run_cli(["init"], data_dir)
    assert initialised.returncode == 0, initialised.stderr
    done = run_cli(
        ["keys", "create", "--name", "e2e", "--credits", str(credits), "--json"], data_dir
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@contextmanager
def server(
    data_dir: Path, port: int, *extra: str, **settings: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """``seedbed serve`` in a subprocess; waits until it answers /healthz."""
    proc = start_server(data_dir, port, *extra, **settings)
    try:
        yield proc
    finally:
        stop(proc)


def start_server(
    data_dir: Path, port: int, *extra: str, **settings: Any
) -> subprocess.Popen[bytes]:
    cmd = [
        *SEEDBED,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    # The log goes to a file, not a pipe: a pipe nobody reads fills up (64 KiB) and then
    # blocks the server at its next log line.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [*cmd, "--allow-network", "127.0.0.0/8", *extra],
        env=env(**settings),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    _LOGS[proc.pid] = log
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc


#: the log file of each server started here, by pid
_LOGS: dict[int, Any] = {}


def server_log(proc: subprocess.Popen[bytes]) -> str:
    """What the server has logged so far (stderr)."""
    log = _LOGS.get(proc.pid)
    if log is None:
        return proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    log.seek(0)
    return bytes(log.read()).decode(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {server_log(proc)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()
    log = _LOGS.pop(proc.pid, None)
    if log is not None:
        log.close()
