"""Recovery from faults (issue 13): from the moment a fault clears to the first task finishing.

For each fault a fresh ``seedbed serve`` (SQLite, local files, in-process worker, sandbox engine,
default health and retry settings) takes a few tasks; the fault is injected while they run,
held for ``--hold`` seconds (tasks meet it and wait), then cleared; the figure is the time from
clearing it to the first of those tasks reaching ``success``, read by polling recordInfo every
10 ms. Goal: ≤ 5 s for each. Also printed: how long ``/readyz`` took to say not ready after the
fault, and ready again after it cleared.

Faults (the same injectors as ``tests/e2e/test_faults.py``; mounting needs root):
disk full (a tmpfs filled up), storage read-only (the files' tmpfs remounted read-only),
database locked by another process (``BEGIN IMMEDIATE``), the database file moved away and
put back. Only 127.0.0.1 is contacted; every wait is bounded.

Usage: ``python bench/fault_bench.py [--hold 3] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faults_util import (
    IS_ROOT,
    Api,
    cli,
    fill,
    first_done,
    remount,
    serve,
    sqlite_locked,
    tmpfs,
    unfill,
    wait_until,
)

SETTINGS = {
    # 2 tasks at a time, 1 s each: some are mid-flight when the fault comes
    "sandbox_step_seconds": 0.25,
    "record_rate_limit": 100_000,
    "create_rate_limit": 100_000,
    "storage_min_free_mb": 0,
}

#: a fault: given the data directory, a context manager that holds it while its block runs
Fault = Callable[[Path], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def disk_full(data: Path) -> Iterator[None]:
    fill(data)
    try:
        yield
    finally:
        unfill(data)


@contextlib.contextmanager
def storage_read_only(data: Path) -> Iterator[None]:
    remount(data / "files", read_only=True)
    try:
        yield
    finally:
        remount(data / "files", read_only=False)


@contextlib.contextmanager
def database_locked(data: Path) -> Iterator[None]:
    with sqlite_locked(data / "seedbed.db"):
        yield


@contextlib.contextmanager
def database_moved(data: Path) -> Iterator[None]:
    moved = data.parent / "moved.db"
    (data / "seedbed.db").rename(moved)
    try:
        yield
    finally:
        moved.rename(data / "seedbed.db")


FAULTS: dict[str, Fault] = {
    "disk full": disk_full,
    "storage read-only": storage_read_only,
    "database locked": database_locked,
    "database file moved away": database_moved,
}


@contextlib.contextmanager
def _mounts(name: str, root: Path) -> Iterator[Path]:
    data = root / "data"
    if name == "disk full":
        with tmpfs(data, "32m"):
            yield data
    elif name == "storage read-only":
        with tmpfs(data / "files", "64m"):
            yield data
    else:
        yield data


def one_run(name: str, fault: Fault, hold: float) -> tuple[float, float, float]:
    """(s to not ready, s from clearing to the first waiting task done, s from clearing to
    ready); the middle one is NaN when no task had to wait (they all finished meanwhile)."""
    root = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    try:
        with _mounts(name, root) as data:
            port = _free_port()
            server = serve(data, port, root / "server.log", **SETTINGS)
            try:
                key = cli(data, "keys", "create", "--name", "b", "--credits", "1000", "--json")
                api = Api(port, key["key"])
                try:
                    ids = [api.create(f"bench {i}")["data"]["taskId"] for i in range(6)]
                    wait_until(lambda: "generating" in api.states(ids).values(), 30)
                    with fault(data):
                        injected = time.monotonic()
                        to_503 = wait_until(lambda: api.ready()[0] == 503, 30)
                        time.sleep(max(0.0, hold - (time.monotonic() - injected)))
                        states = api.states(ids)
                    cleared = time.monotonic()
                    waiting = [t for t, state in states.items() if state not in ("success", "fail")]
                    to_done = math.nan
                    if waiting:
                        wait_until(lambda: first_done(api, waiting), 60)
                        to_done = time.monotonic() - cleared
                    wait_until(lambda: api.ready()[0] == 200, 60)
                    to_ready = time.monotonic() - cleared
                    return to_503, to_done, to_ready
                finally:
                    api.close()
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each fault is held")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not IS_ROOT:
        sys.exit("fault_bench mounts tmpfs file systems: run it as root")
    print(f"hold {args.hold:g} s, {args.runs} runs each; goal: first task done <= 5 s after clear")
    print(f"{'fault':<26} {'to 503 s':>9} {'clear->done s (runs)':>28} {'clear->ready s':>15}")
    for name, fault in FAULTS.items():
        runs = [one_run(name, fault, args.hold) for _ in range(args.runs)]
        to_503 = statistics.median(r[0] for r in runs)
        done = ", ".join("none waited" if math.isnan(r[1]) else f"{r[1]:.2f}" for r in runs)
        ready = statistics.median(r[2] for r in runs)
        measured = [r[1] for r in runs if not math.isnan(r[1])]
        verdict = "ok" if all(x <= 5 for x in measured) else "OVER GOAL"
        print(f"{name:<26} {to_503:>9.2f} {done:>28} {ready:>15.2f}  {verdict}")


if __name__ == "__main__":
    main()
