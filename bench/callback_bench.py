"""Callback delivery figures (issue 3), each against a baseline measured in the same run.

Starts ``seedbed serve`` (one process: SQLite, in-process worker and dispatcher, sandbox engine)
on loopback, and runs webhook receivers on loopback in this process (a minimal asyncio HTTP
server that records when each callback's body has arrived):

* **task end → callback received**: for each task, the receiver's arrival time minus the task's
  ``completeTime`` (the moment ``finish`` committed), while ``--tasks`` tasks (200) are created
  at an even pace over ``--seconds`` (10) and so finish within about that window. Callbacks go
  round-robin to 10 live receivers. Baseline: a bare POST from this process to a receiver.
* **one dead receiver among 10 live ones**: the same load, but every 11th task's callBackUrl
  is a receiver that accepts the connection and never answers (the dispatcher's 15 s timeout
  runs out on each). Ratio: live receivers' p50 against the run without the dead one.

The two loads alternate for ``--rounds`` rounds on the same server, so drift on the machine
hits both alike. Only 127.0.0.1 is contacted; every wait is bounded.

Usage: ``python bench/callback_bench.py [--tasks 200] [--seconds 10] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api_bench import create_key, free_port, start, stop

MODEL = {"model": "bytedance/seedream", "input": {"prompt": "bench", "image_size": "square"}}
_ANSWER = b'{"code":200,"msg":"success"}'
REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_ANSWER)}\r\n\r\n".encode()
    + _ANSWER
)


@dataclass
class Receiver:
    """A loopback webhook receiver; ``dead`` ones read the request and never answer."""

    dead: bool = False
    port: int = 0
    #: task id → time.time() when its callback's body had arrived (first arrival only)
    arrivals: dict[str, float] = field(default_factory=dict)
    server: asyncio.Server | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                now = time.time()
                task_id = json.loads(body)["data"]["taskId"]
                self.arrivals.setdefault(task_id, now)
                self.event.set()
                if self.dead:
                    await asyncio.sleep(3600)
                writer.write(REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def baseline(receiver: Receiver, samples: int) -> list[float]:
    """A bare POST to a receiver (body to arrival), the floor any callback pays."""
    lat = []
    async with httpx.AsyncClient(trust_env=False) as client:
        for i in range(samples):
            body = json.dumps({"data": {"taskId": f"baseline-{i}"}}).encode()
            t0 = time.time()
            await client.post(receiver.url, content=body)
            lat.append((receiver.arrivals[f"baseline-{i}"] - t0) * 1000)
    return lat


async def load(
    base: str, key: str, live: list[Receiver], dead: Receiver | None, tasks: int, seconds: float
) -> dict[str, Any]:
    """Create ``tasks`` tasks evenly over ``seconds``; wait for every live callback."""
    targets: list[Receiver] = list(live) + ([dead] if dead else [])
    sent: dict[str, Receiver] = {}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as client:
        t0 = time.monotonic()
        for i in range(tasks):
            await asyncio.sleep(max(0.0, t0 + i * seconds / tasks - time.monotonic()))
            target = targets[i % len(targets)]
            body = {**MODEL, "callBackUrl": target.url}
            answer = (await client.post("/api/v1/jobs/createTask", json=body)).json()
            if answer["code"] != 200:
                raise SystemExit(f"createTask failed: {answer}")
            sent[answer["data"]["taskId"]] = target
        waiting = [t for t, r in sent.items() if not r.dead]
        deadline = time.monotonic() + 60
        while any(t not in sent[t].arrivals for t in waiting):
            if time.monotonic() > deadline:
                missing = sum(t not in sent[t].arrivals for t in waiting)
                raise SystemExit(f"{missing} live callbacks did not arrive within 60 s")
            await asyncio.sleep(0.05)
        completes: dict[str, int] = {}
        for task_id in sent:
            data = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()
            completes[task_id] = data["data"]["completeTime"]
    latencies = [(sent[t].arrivals[t] - completes[t] / 1000) * 1000 for t in waiting]
    span = (max(completes.values()) - min(completes.values())) / 1000
    return {"latencies": latencies, "finish_span": span, "tasks": len(sent)}


async def run(args: argparse.Namespace) -> None:
    live = [Receiver() for _ in range(10)]
    dead = Receiver(dead=True)
    for receiver in [*live, dead]:
        await receiver.start()
    data_dir = Path(tempfile.mkdtemp(prefix="seedbed-cb-bench-"))
    port = free_port()
    key = await asyncio.to_thread(create_key, data_dir)
    settings = {"worker_concurrency": args.concurrency, "sandbox_steps": 1}
    proc, _ = await asyncio.to_thread(
        start, data_dir, port, "--allow-network", "127.0.0.0/8", **settings
    )
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict[str, Any]]] = {"live only": [], "with a dead receiver": []}
    try:
        floor = await baseline(live[0], 200)
        await load(base, key, live, None, 20, 1.0)  # warm-up: engine, connections
        for _ in range(args.rounds):
            for name, with_dead in (("live only", None), ("with a dead receiver", dead)):
                results[name].append(
                    await load(base, key, live, with_dead, args.tasks, args.seconds)
                )
    finally:
        await asyncio.to_thread(stop, proc)
        for receiver in [*live, dead]:
            await receiver.close()

    print(
        f"baseline: bare POST to a loopback receiver, p50 {pct(floor, 0.5):.2f} ms, "
        f"p99 {pct(floor, 0.99):.2f} ms"
    )
    print(
        f"{args.tasks} tasks over {args.seconds:g} s per run, {args.rounds} rounds, "
        f"10 live receivers, worker_concurrency {args.concurrency}"
    )
    print("| load | callbacks | p50 ms | p99 ms | max ms | finish span s |")
    print("|---|---:|---:|---:|---:|---:|")
    p50s: dict[str, float] = {}
    for name, runs in results.items():
        lat = [x for r in runs for x in r["latencies"]]
        span = max(r["finish_span"] for r in runs)
        p50s[name] = statistics.median(lat)
        print(
            f"| {name} | {len(lat)} | {pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} | "
            f"{max(lat):.1f} | {span:.1f} |"
        )
    ratio = p50s["with a dead receiver"] / p50s["live only"]
    print(f"live p50 with a dead receiver / without: {ratio:.2f} (goal <= 1.5)")
    print(f"live-only p50 / baseline p50: {p50s['live only'] / pct(floor, 0.5):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="worker_concurrency")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
