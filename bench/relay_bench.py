"""Relay engine figures (issue 15): seedbed in front of an Ark upstream.

Starts the stand-in Ark API (``tests/ark_standin.py``) in this process, answering each
generation after ``--latency`` seconds (1), and ``seedbed serve`` (one process: SQLite, the
in-process worker) with ``[engines.ark]`` pointing at it. All on loopback.

* **relay overhead**: ``--samples`` tasks (20) one after another, create → success as a client
  sees it (polling recordInfo every 10 ms), against the same request sent to the stand-in
  directly. p50 and p90 of each, and the difference. Model ``bytedance/seedream`` at 512x512
  (the upstream's image is downloaded, decoded, checked and re-encoded by seedbed, so the
  image size is part of the overhead; ``--size 2K`` uses Seedream 4.5 at 2048x2048).
* **200 at once**: ``--burst`` tasks (200) created concurrently; seconds from the first create
  to the last task's success as seen by polling each every ``--burst-poll`` s (0.25; kie
  suggests 2 to 5 s), one worker, the engine's ``max_concurrency`` = ``--burst``.
* **server CPU per relayed image**: the server process's user + system CPU seconds over the
  burst, divided by the images relayed (``/proc/<pid>/stat``).

Usage: ``python bench/relay_bench.py [--latency 1] [--samples 20] [--burst 200] [--size 512]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api_bench import cpu_seconds, create_key, free_port, start, stop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ark_standin import KEY, serve_ark

CASES = {
    "512": ("bytedance/seedream", {"image_size": "square"}, "seedream-3-0-t2i-250415", "512x512"),
    "2K": ("seedream/4.5-text-to-image", {}, "seedream-4-5-251128", "2048x2048"),
}
#: burst tasks per client connection pool
CLIENT_TASKS = 8


def _config(path: Path, ark_url: str, concurrency: int) -> Path:
    path.write_text(
        f'[engines.ark]\nkind = "ark"\nbase_url = "{ark_url}"\napi_key_env = "BENCH_ARK_KEY"\n'
        f"max_concurrency = {concurrency}\n\n"
        '[models]\n"bytedance/seedream" = "ark"\n"seedream/4.5-text-to-image" = "ark"\n'
    )
    return path


async def _through_seedbed(
    client: httpx.AsyncClient,
    key: str,
    model: str,
    extra: dict[str, Any],
    poll: float = 0.01,
    answered: list[float] | None = None,
) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    t0 = time.perf_counter()
    created = await client.post(
        "/api/v1/jobs/createTask",
        json={"model": model, "input": {"prompt": "bench", **extra}},
        headers=headers,
    )
    task_id = created.json()["data"]["taskId"]
    if answered is not None:
        answered.append(time.perf_counter() - t0)
    while True:
        data = (
            await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=headers)
        ).json()["data"]
        if data["state"] in ("success", "fail"):
            if data["state"] != "success":
                raise SystemExit(f"task failed: {data}")
            return time.perf_counter() - t0
        await asyncio.sleep(poll)


async def _direct(client: httpx.AsyncClient, ark_url: str, ark_model: str, size: str) -> float:
    t0 = time.perf_counter()
    answer = await client.post(
        f"{ark_url}/api/v3/images/generations",
        json={"model": ark_model, "prompt": "bench", "size": size, "response_format": "url"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    url = answer.json()["data"][0]["url"]
    (await client.get(url)).raise_for_status()  # the client would fetch the image too
    return time.perf_counter() - t0


def _profile(path: str | None, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy recording the server over the burst (``--profile``), or None."""
    if path is None:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "-o", path, "-f", "raw", "-r", "200", "-p", str(pid), "-t"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    model, extra, ark_model, size = CASES[args.size]
    with serve_ark() as ark, tempfile.TemporaryDirectory() as tmp:
        ark.script.latency = args.latency
        data_dir = Path(tmp) / "data"
        config = _config(Path(tmp) / "seedbed.toml", ark.url, args.burst)
        os.environ["BENCH_ARK_KEY"] = KEY
        port = free_port()
        proc, _ = start(
            data_dir,
            port,
            "--config",
            str(config),
            "--allow-network",
            "127.0.0.0/8",
            worker_concurrency=2,
        )
        try:
            key = create_key(data_dir)
            base = f"http://127.0.0.1:{port}"
            limits = httpx.Limits(max_connections=64)  # a client pool, as real clients have
            async with httpx.AsyncClient(
                base_url=base, timeout=60, trust_env=False, limits=limits
            ) as client:
                await _through_seedbed(client, key, model, extra)  # warm: pools, caches
                via, direct = [], []
                for _ in range(args.samples):
                    direct.append(await _direct(client, ark.url, ark_model, size))
                    via.append(await _through_seedbed(client, key, model, extra))
                print(f"relay overhead ({model}, {size}, upstream latency {args.latency:g} s):")
                for name, values in (("direct", direct), ("via seedbed", via)):
                    print(
                        f"  {name:12s} p50 {_pct(values, 0.5) * 1000:7.1f} ms   "
                        f"p90 {_pct(values, 0.9) * 1000:7.1f} ms"
                    )
                added = statistics.median(via) - statistics.median(direct)
                print(f"  added at p50: {added * 1000:.1f} ms")

                # The burst's clients: one pool per CLIENT_TASKS tasks, as many clients would
                # have. One pool for all 200 spent seconds of this process's CPU in httpcore's
                # pool bookkeeping (quadratic in the requests in flight), and that, not the
                # server, set the figure on a 2-core machine (py-spy on the bench, 2026-12-07).
                clients = [
                    httpx.AsyncClient(base_url=base, timeout=60, trust_env=False)
                    for _ in range(-(-args.burst // CLIENT_TASKS))
                ]
                spy = _profile(args.profile, proc.pid)
                answered: list[float] = []
                cpu0, own0 = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
                t0 = time.perf_counter()
                times = await asyncio.gather(
                    *(
                        _through_seedbed(
                            clients[i // CLIENT_TASKS], key, model, extra, args.burst_poll, answered
                        )
                        for i in range(args.burst)
                    )
                )
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(proc.pid) - cpu0
                own = cpu_seconds(os.getpid()) - own0
                for each in clients:
                    await each.aclose()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                print(
                    f"{args.burst} tasks at once, one worker: all done in {wall:.2f} s "
                    f"(per task p50 {_pct(times, 0.5):.2f} s, max {max(times):.2f} s; "
                    f"every create answered within {max(answered):.2f} s)"
                )
                print(
                    f"server CPU per relayed image: {cpu / args.burst * 1000:.1f} ms "
                    f"({cpu:.2f} s for {args.burst}, including the bench's own recordInfo polls); "
                    f"the bench's process (clients and stand-in) used {own:.2f} s"
                )
        finally:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--size", choices=sorted(CASES), default="512")
    parser.add_argument(
        "--burst-poll", type=float, default=0.25, help="recordInfo interval per burst task"
    )
    parser.add_argument(
        "--profile", help="write py-spy's raw (collapsed) stacks of the server over the burst here"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
