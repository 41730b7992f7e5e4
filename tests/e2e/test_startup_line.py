"""What ``seedbed serve`` tells an operator when it starts: one line, no alembic chatter."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
from proc import server_log, start_server, stop

from conftest import free_port
from seedbed import __version__, catalogue


def _serve_and_read_log(data_dir: Path, *extra: str, **settings: Any) -> tuple[list[Any], str]:
    """Start ``seedbed serve``, fetch its /docs, stop it; its JSON log lines and the port."""
    port = free_port()
    proc = start_server(data_dir, port, *extra, **settings)
    try:
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5, trust_env=False)
        assert docs.status_code == 200
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        err = server_log(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        stop(proc)  # closes its log file
    assert proc.returncode == 0, err
    return [json.loads(line) for line in err.splitlines() if line.strip()], str(port)


def _one_startup_line(lines: list[Any]) -> Any:
    startup = [line for line in lines if line["logger"] == "seedbed.startup"]
    assert len(startup) == 1, startup
    assert startup[0]["level"] == "info"
    return startup[0]


def test_serve_logs_one_line_saying_what_it_serves_and_no_alembic_lines(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    lines, port = _serve_and_read_log(data_dir)  # a fresh database: the migrations run
    line = _one_startup_line(lines)
    docs = f"http://127.0.0.1:{port}/docs"
    database = f"sqlite:///{data_dir}/seedbed.db"
    assert line["msg"] == (
        f"seedbed {__version__} serving: database {database}; files in {data_dir}/files; "
        f"engines: sandbox runs all {len(catalogue.CATALOGUE)} models; "
        f"worker in this process (concurrency 2); API docs at {docs}"
    )
    assert line["version"] == __version__
    assert line["database"] == database
    assert line["engines"] == {"sandbox": list(catalogue.CATALOGUE)}
    assert line["docs"] == docs
    assert not [entry for entry in lines if entry["logger"].startswith("alembic")]
    migrated = [entry["msg"] for entry in lines if entry["logger"] == "seedbed.store.migrate"]
    assert len(migrated) == 1 and migrated[0].startswith("database schema upgraded from empty")

    # Again, at head, with no worker and a public URL: still one line, no migration line.
    lines, _ = _serve_and_read_log(data_dir, "--no-worker", public_url="https://img.example/")
    line = _one_startup_line(lines)
    assert "worker none in this process" in line["msg"]
    assert line["msg"].endswith("API docs at https://img.example/docs")
    assert line["worker"] is False
    assert not [e for e in lines if e["logger"].startswith(("alembic", "seedbed.store.migrate"))]
