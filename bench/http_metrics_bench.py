"""The HTTP-metrics middleware's own cost per request, in process (no sockets, no server).

Calls a trivial ASGI app (it answers 200 on a route template) ``--calls`` times bare and
wrapped in ``metrics.HttpMetrics``, best of ``--repeat``, and prints both and the difference.
Run it on two checkouts (``PYTHONPATH=<checkout>/src``) to compare versions of the middleware.

Usage: ``python bench/http_metrics_bench.py [--calls 50000] [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from seedbed.metrics import HttpMetrics, Metrics


class _Route:
    path = "/api/v1/jobs/recordInfo"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = _Route
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message: Any) -> None:
    pass


async def _receive() -> Any:
    return {"type": "http.request"}


async def _best(app: Any, calls: int, repeat: int) -> float:
    """The fastest of ``repeat`` loops, in ns per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            await app({"type": "http"}, _receive, _send)
        best = min(best, (time.perf_counter() - started) / calls * 1e9)
    return best


async def main(calls: int, repeat: int) -> None:
    bare = await _best(_app, calls, repeat)
    wrapped = await _best(HttpMetrics(_app, Metrics()), calls, repeat)
    print(f"bare {bare:.0f} ns, with the middleware {wrapped:.0f} ns: {wrapped - bare:.0f} ns")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeat))
