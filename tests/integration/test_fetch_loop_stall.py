"""Fetching user URLs never holds the event loop: every other request of the server waits on it.

Found by fuzzing createTask (issue 13): each fetch without a client of its own built a new
TLS context (the CA bundle read and parsed on the event loop, about 40 ms), and a task's
inputs are fetched at once, so a task with 14 image URLs stalled the server for over half a
second; under load, createTask answers took longer than 30 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import FileServer
from seedbed.netguard import NetPolicy, fetch

LOOPBACK = NetPolicy.from_cidrs(["127.0.0.0/8"])
#: concurrent fetches, as the worker starts them for one task's inputs (at most 14), twice over
FETCHES = 28


async def _longest_stall(work: asyncio.Future[Any]) -> float:
    """The longest the loop went without running a 1 ms ticker while ``work`` ran."""
    longest = 0.0
    last = time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    await work
    return longest


def test_concurrent_fetches_do_not_stall_the_loop(files: FileServer) -> None:
    url = files.add("/a.png", b"\x89PNG" + b"x" * 100)

    async def one() -> bytes:
        fetched = await fetch(url, policy=LOOPBACK, max_bytes=1024, timeout=10)
        return fetched.content

    async def run() -> float:
        await one()  # whatever is built once is built here
        work = asyncio.gather(*(one() for _ in range(FETCHES)))
        return await _longest_stall(work)

    stall = asyncio.run(run())
    # each fetch blocked for tens of ms before the fix: about a second for 28 of them
    assert stall < 0.15, f"the event loop was held for {stall * 1000:.0f} ms"
