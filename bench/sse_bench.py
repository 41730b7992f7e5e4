"""Live events at scale: 1,000 open SSE streams on one ``seedbed serve`` process.

Figures, each against a baseline measured in the same run:

* the server's resident memory with the streams open, against the same server without them;
* createTask throughput (wrk, 32 connections) while the streams are open, as a ratio to the
  same measurement without them. Runs alternate without / with / without / ... (``--rounds``
  runs with the streams, one more without) and the ratio is of the medians, so drift on the
  machine (and the table growing with the created tasks) hits both sides alike.

The streams follow 1,000 distinct waiting tasks (worker off: nothing moves, as in a queue that
waits on its GPU), so the server pays what idle streams cost: the shared change feed polls
their tasks every ``events_poll_seconds`` and each stream holds a connection and a coroutine.
A helper process holds the streams (``--hold``), so the client's work is not in the server's
process. Only 127.0.0.1 is contacted.

Usage: ``python bench/sse_bench.py [--streams 1000] [--duration 6] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from api_bench import BODY, create_key, free_port, rss_mb, start, stop, wrk


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float = 5.0) -> float:
    """Share of one core the process uses while nobody sends it requests."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def create_tasks(base: str, key: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, trust_env=False, headers=headers) as client:
        return [
            client.post("/api/v1/jobs/createTask", json=BODY).json()["data"]["taskId"]
            for _ in range(count)
        ]


# -- the stream holder (runs in its own process) ------------------------------------------------
async def hold(base: str, key: str, ids: list[str]) -> None:
    """Open one stream per id; print OPEN once each has its first event; hold until stdin ends."""
    opened = 0
    all_open = asyncio.Event()
    limits = httpx.Limits(max_connections=len(ids) + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(60.0, read=None)

    async def follow(client: httpx.AsyncClient, task_id: str) -> None:
        nonlocal opened
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream(
            "GET", "/api/v1/jobs/events", params={"taskId": task_id}, headers=headers
        ) as response:
            assert response.status_code == 200, response.status_code
            first = True
            async for line in response.aiter_lines():
                if first and line.startswith("data:"):
                    first = False
                    opened += 1
                    if opened == len(ids):
                        all_open.set()

    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=timeout, trust_env=False
    ) as client:
        tasks = []
        for i, task_id in enumerate(ids):
            tasks.append(asyncio.create_task(follow(client, task_id)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # open them in waves, as clients arrive
        await asyncio.wait_for(all_open.wait(), timeout=120)
        print(f"OPEN {opened}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
        failed = sum(1 for t in tasks if t.done() and t.exception() is not None)
        print(f"CLOSED failed={failed}", flush=True)
        for t in tasks:
            t.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs with the streams open")
    parser.add_argument(
        "--hold", nargs=3, metavar=("URL", "KEY", "IDS_FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    raise_fd_limit()
    if args.hold:
        url, key, ids_file = args.hold
        asyncio.run(hold(url, key, json.loads(Path(ids_file).read_text())))
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    root = Path(tempfile.mkdtemp(prefix="seedbed-sse-bench-"))
    holder = None
    try:
        data = root / "data"
        key = create_key(data)
        port = free_port()
        proc, _ = start(data, port, worker=False)
        base = f"http://127.0.0.1:{port}"
        ids = create_tasks(base, key, args.streams)
        ids_file = root / "ids.json"
        ids_file.write_text(json.dumps(ids))
        time.sleep(1)
        rss_without = rss_mb(proc.pid)
        cpu_without = idle_cpu(proc.pid)

        def create_rps() -> float:
            body = json.dumps(BODY)
            url = f"{base}/api/v1/jobs/createTask"
            result = wrk(url, key=key, method="POST", body=body, duration=args.duration, threads=2)
            assert result["bad"] == 0, result
            return result["rps"]

        def open_streams() -> tuple[subprocess.Popen[str], float]:
            t0 = time.perf_counter()
            holder = subprocess.Popen(
                [sys.executable, __file__, "--hold", base, key, str(ids_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None
            line = holder.stdout.readline().strip()
            if not line.startswith("OPEN"):
                holder.kill()
                raise SystemExit(f"the stream holder failed: {line!r}")
            return holder, time.perf_counter() - t0

        def close_streams(holder: subprocess.Popen[str]) -> str:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.close()
            closed = holder.stdout.readline().strip()
            holder.wait(timeout=30)
            time.sleep(1)
            return closed

        # A (without) and B (with) alternate: A B A B ... A, so drift hits both alike
        without = [create_rps()]
        with_streams: list[float] = []
        for round_ in range(args.rounds):
            holder, open_s = open_streams()
            time.sleep(2)
            if round_ == 0:
                rss_with = rss_mb(proc.pid)
                cpu_with = idle_cpu(proc.pid)
                metrics = httpx.get(f"{base}/metrics", trust_env=False).text
                streams = next(
                    float(m.split()[-1])
                    for m in metrics.splitlines()
                    if m.startswith("seedbed_event_streams ")
                )
            with_streams.append(create_rps())
            closed = close_streams(holder)
            holder = None
            without.append(create_rps())
        rss_after_load = rss_mb(proc.pid)
        stop(proc)
    finally:
        if holder is not None:
            holder.kill()
        shutil.rmtree(root, ignore_errors=True)

    baseline = statistics.median(without)
    during = statistics.median(with_streams)
    print(
        f"streams: {args.streams} open in {open_s:.1f} s (server counted {streams:.0f}); {closed}"
    )
    print(
        f"server RSS: {rss_without:.0f} MB without streams, {rss_with:.0f} MB with them "
        f"(+{rss_with - rss_without:.0f} MB, {(rss_with - rss_without) * 1024 / args.streams:.0f}"
        f" KB a stream); {rss_after_load:.0f} MB at the end"
    )
    print(
        f"server CPU while idle: {cpu_without * 100:.1f} % of a core without streams, "
        f"{cpu_with * 100:.1f} % with them (the shared feed's poll, heartbeats)"
    )
    print(
        "createTask req/s without streams: "
        + " / ".join(f"{x:.0f}" for x in without)
        + f" (median {baseline:.0f}); with {args.streams} streams: "
        + " / ".join(f"{x:.0f}" for x in with_streams)
        + f" (median {during:.0f}); ratio {during / baseline:.2f} (goal >= 0.70)"
    )


if __name__ == "__main__":
    main()
