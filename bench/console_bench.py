"""The web console's figures (issue 17), on a real ``seedbed serve`` on loopback.

1. First load of ``/`` in Chromium (Debian's, via Playwright), cold cache each time: bytes
   transferred (the document and every asset, from the Resource Timing API) and the time until
   the playground is interactive (the model list filled in, from navigation start).
2. The gallery with 1,000 tasks: scrolled to the end, page after page; how long, and how many
   full-size result files the browser fetched (the gallery asks for thumbnails only).
3. createTask throughput (wrk, worker off so tasks stay waiting) with no console open and with
   50 open consoles, each holding an events stream (the playground follows its task with one),
   alternated over ``--rounds``; the ratio is the figure (target >= 95 %).

Run: ``.venv/bin/python bench/console_bench.py`` (about 2 minutes). Figures go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from api_bench import BODY, create_key, free_port, start, stop, wrk
from console_browser import browser, context

#: the playground is interactive: the model list is filled in
READY = "() => document.querySelectorAll('[data-testid=model] option').length > 0"
#: bytes over the wire for the document and everything it loaded (headers included)
TRANSFERRED = """() => performance.getEntriesByType('navigation')[0].transferSize
  + performance.getEntriesByType('resource').reduce((s, e) => s + e.transferSize, 0)"""
CREATE = "/api/v1/jobs/createTask"


def first_loads(base: str, key: str, runs: int) -> list[dict[str, float]]:
    out = []
    with browser() as chromium:
        for _ in range(runs):
            with context(chromium) as (ctx, watch):
                page = ctx.new_page()
                page.goto(base + "/")
                page.wait_for_function(READY)
                ready = page.evaluate("() => performance.now()")
                size = page.evaluate(TRANSFERRED)
                assert not watch.foreign_requests and not watch.console_errors
                out.append({"ms": ready, "bytes": size})
    return out


def gallery_scroll(base: str, key: str) -> dict[str, float]:
    with (
        browser() as chromium,
        context(chromium, viewport={"width": 1200, "height": 900}) as (ctx, _),
    ):
        full_size: list[str] = []
        ctx.on("request", lambda r: full_size.append(r.url) if "/files/results/" in r.url else None)
        page = ctx.new_page()
        page.goto(base + "/")
        page.get_by_test_id("api-key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.locator("#signed-in").wait_for(state="visible")
        t0 = time.perf_counter()
        page.get_by_test_id("nav-gallery").click()
        page.get_by_test_id("gallery-item").first.wait_for()
        while page.get_by_test_id("gallery-item").count() < 1000:
            page.mouse.wheel(0, 20000)
            page.wait_for_timeout(50)
        return {
            "items": page.get_by_test_id("gallery-item").count(),
            "seconds": time.perf_counter() - t0,
            "full_size_requests": len(full_size),
        }


async def hold_streams(base: str, key: str, task_ids: list[str], stop: asyncio.Event) -> int:
    """One events stream per task, held open until ``stop``; returns how many opened."""
    opened = 0

    async def one(client: httpx.AsyncClient, task_id: str) -> None:
        nonlocal opened
        async with client.stream("GET", "/api/v1/jobs/events", params={"taskId": task_id}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            opened += 1
            async for _ in r.aiter_bytes():
                if stop.is_set():
                    return

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=None, trust_env=False
    ) as c:
        tasks = [asyncio.create_task(one(c, t)) for t in task_ids]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return opened


def with_streams(
    base: str, key: str, task_ids: list[str], seconds: int, pid: int
) -> dict[str, float]:
    import threading

    loop = asyncio.new_event_loop()
    stop_event = asyncio.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        result["opened"] = loop.run_until_complete(hold_streams(base, key, task_ids, stop_event))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(2)  # all streams open and past their first event
    figures = wrk(
        base + "/api/v1/jobs/createTask",
        key=key,
        method="POST",
        body=json.dumps(BODY),
        duration=seconds,
        pid=pid,
    )
    loop.call_soon_threadsafe(stop_event.set)
    thread.join()
    figures["streams"] = result.get("opened", 0)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--consoles", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="console-bench-"))
    data, port = root / "data", free_port()
    key = create_key(data)
    proc, _ = start(data, port, worker="false", callbacks="false")
    base = f"http://127.0.0.1:{port}"
    try:
        loads = first_loads(base, key, args.loads)
        print(json.dumps({"first_load": loads}))
        client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, trust_env=False
        )
        ids = [
            client.post("/api/v1/jobs/createTask", json=BODY).json()["data"]["taskId"]
            for _ in range(1000)
        ]
        print(json.dumps({"gallery": gallery_scroll(base, key)}))
        watched = ids[: args.consoles]
        rounds: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
        for _ in range(args.rounds):
            url = base + "/api/v1/jobs/createTask"
            rounds["without"].append(
                wrk(
                    url,
                    key=key,
                    method="POST",
                    body=json.dumps(BODY),
                    duration=args.seconds,
                    pid=proc.pid,
                )
            )
            rounds["with"].append(with_streams(base, key, watched, args.seconds, proc.pid))
            print(json.dumps({k: v[-1] for k, v in rounds.items()}))
        rps = {k: statistics.median(r["rps"] for r in v) for k, v in rounds.items()}
        print(
            json.dumps(
                {
                    "first_load_bytes_median": statistics.median(x["bytes"] for x in loads),
                    "first_load_ms_median": statistics.median(x["ms"] for x in loads),
                    "create_rps_median": rps,
                    "ratio": rps["with"] / rps["without"],
                }
            )
        )
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
