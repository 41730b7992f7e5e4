"""``GET /metrics`` with 100,000 tasks in the store, against ``GET /healthz`` in the same run.

Fills a fresh SQLite store with ``--tasks`` tasks over the 13 models (``--queued`` of them
waiting, the rest finished, as a long-running deployment looks), starts ``seedbed serve
--no-worker`` on it and times sequential scrapes from one keep-alive client, interleaved with
``/healthz`` (the bare baseline), after a warm-up. Several ``--queued`` values can be given
(comma-separated) to show how the queue's size matters: the scrape reads only the queued
tasks' index entries, never the finished ones. Only 127.0.0.1 is contacted.

Usage: ``python bench/metrics_bench.py [--tasks 100000] [--queued 1000,100000] [--samples 300]``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from api_bench import create_key, free_port, start, stop
from seedbed import catalogue


def fill(db: Path, total: int, queued: int) -> None:
    """Insert ``total`` tasks straight into the migrated database (fast: one transaction)."""
    conn = sqlite3.connect(db)
    key_id = conn.execute("SELECT id FROM api_keys").fetchone()[0]
    models = list(catalogue.CATALOGUE)
    now = int(time.time() * 1000)
    rows = []
    for i in range(total):
        model = models[i % len(models)]
        open_ = i >= total - queued
        state = "waiting" if open_ else ("fail" if i % 10 == 0 else "success")
        created = now - (total - i) * 100
        rows.append(
            (
                secrets.token_hex(16),
                key_id,
                model,
                state,
                json.dumps({"model": model, "input": "{}"}),
                '{"prompt":"bench"}',
                0 if open_ else 100,
                0 if open_ else 1,
                1000,
                0 if state != "success" else 1000,
                "[]",
                "501" if state == "fail" else None,
                "bench failure" if state == "fail" else None,
                created,
                created if open_ else created + 2000,
                None if open_ else created + 2000,
            )
        )
    conn.executemany(
        "INSERT INTO tasks (id, key_id, model, state, param, input, progress, attempts,"
        " reserved_milli, consumed_milli, result_keys, fail_code, fail_msg, create_time,"
        " update_time, complete_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    conn.commit()
    conn.close()


def timings(client: httpx.Client, path: str, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    pick = lambda q: ms[min(len(ms) - 1, int(len(ms) * q))]  # noqa: E731
    return f"p50 {statistics.median(ms):6.2f}  p90 {pick(0.9):6.2f}  p99 {pick(0.99):6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--queued", default="1000,100000", help="comma-separated queue sizes")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    for queued in (int(q) for q in args.queued.split(",")):
        root = Path(tempfile.mkdtemp(prefix="seedbed-metrics-bench-"))
        try:
            data = root / "data"
            create_key(data)  # migrates the store
            t0 = time.perf_counter()
            fill(data / "seedbed.db", args.tasks, min(queued, args.tasks))
            filled = time.perf_counter() - t0
            port = free_port()
            proc, _ = start(data, port, worker=False)
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
                    timings(client, "/metrics", 30)  # warm-up
                    bare: list[float] = []
                    scrape: list[float] = []
                    for _ in range(3):  # interleaved rounds
                        bare += timings(client, "/healthz", args.samples // 3)
                        scrape += timings(client, "/metrics", args.samples // 3)
                    body = client.get("/metrics").text
            finally:
                stop(proc)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        depth = sum(
            float(line.split()[-1])
            for line in body.splitlines()
            if line.startswith("seedbed_queue_depth{")
        )
        print(
            f"{args.tasks} tasks, {queued} queued (filled in {filled:.1f} s; "
            f"scrape reports queue depth {depth:.0f}; {len(body)} bytes)"
        )
        print(f"  /healthz  ms: {summary(bare)}")
        print(f"  /metrics  ms: {summary(scrape)}   (goal: <= 20 ms)")


if __name__ == "__main__":
    main()
