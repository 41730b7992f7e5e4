"""The client's figures (issue 5), each against a baseline measured in the same run.

Starts ``seedbed serve`` (one process, in-process worker, SQLite, sandbox engine) on loopback:

1. ``Client.get_task`` per poll against a bare ``httpx.Client.get`` of the same recordInfo URL
   (same server, same finished task, same connection reuse), alternating call by call; the
   client's overhead is the difference of the medians. Also measured without any network
   (``httpx.MockTransport`` answering the same bytes), where only client code runs.
2. ``seedbed generate`` of a sandbox 2K image (``seedream/4.5-text-to-image``, basic, 16:9 =
   2848x1600), end to end as a user runs it (a new process each time), against the start-up
   of the same interpreter (``python -c pass``) and of ``seedbed --help``; and the same
   generation in-process with ``Client.generate`` (no start-up).
3. What importing ``seedbed.client`` costs and that it pulls in neither FastAPI nor SQLAlchemy.

``--compare-src DIR`` also runs ``seedbed --help`` and ``seedbed generate`` from another copy
of the sources (``DIR`` on ``PYTHONPATH``, e.g. ``git archive <commit> src | tar -x -C DIR``),
run by run alternately with this one, so a start-up change is measured before and after under
the same load.

Usage: ``python bench/client_bench.py [--polls 2000] [--runs 7] [--compare-src DIR/src]``.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from api_bench import create_key, free_port, start, stop
from seedbed.client import NO_RETRY, Client
from seedbed.client.protocol import unwrap
from seedbed.client.records import parse_task

SEEDBED = [sys.executable, "-m", "seedbed"]
MODEL = "seedream/4.5-text-to-image"
INPUT = {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9", "quality": "basic"}


def quantiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p90) in milliseconds."""
    ordered = sorted(samples)
    return (
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000,
    )


def timed(fn: Callable[[], object], count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_polls(url: str, key: str, polls: int, rounds: int) -> None:
    with Client(key, base_url=url, retry=NO_RETRY, trust_env=False) as client:
        task_id = client.create_task(MODEL, INPUT)
        client.wait(task_id, timeout=60)
        bare = httpx.Client(trust_env=False)
        record = f"{url}/api/v1/jobs/recordInfo"
        headers = {"Authorization": f"Bearer {key}"}

        def raw() -> None:
            response = bare.get(record, params={"taskId": task_id}, headers=headers)
            response.read()

        raw()
        client.get_task(task_id)
        bare_s: list[float] = []
        client_s: list[float] = []
        # Alternate call by call, so that the machine's drift hits both alike.
        for _ in range(polls):
            bare_s += timed(raw, 1)
            client_s += timed(lambda: client.get_task(task_id), 1)
        per_round = polls // rounds
        body = bare.get(record, params={"taskId": task_id}, headers=headers).content
        bare.close()

    b50, b90 = quantiles(bare_s)
    c50, c90 = quantiles(client_s)
    print(f"\n## get_task per poll on loopback ({len(client_s)} polls each, alternating)")
    print("| call | p50 ms | p90 ms |")
    print("|---|---:|---:|")
    print(f"| bare httpx GET recordInfo (baseline) | {b50:.3f} | {b90:.3f} |")
    print(f"| Client.get_task | {c50:.3f} | {c90:.3f} |")
    print(f"client overhead at p50: **{c50 - b50:.3f} ms** (ratio {c50 / b50:.2f})")

    # The same bytes from a MockTransport: only httpx and the client's own code run.
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    mock = httpx.MockTransport(answer)
    with Client(key, base_url="http://bench.invalid", transport=mock, retry=NO_RETRY) as offline:
        plain = httpx.Client(transport=mock)
        target = "http://bench.invalid/api/v1/jobs/recordInfo"

        def plain_get() -> None:
            plain.get(target, params={"taskId": task_id}, headers=headers)

        for _ in range(200):
            offline.get_task(task_id)
            plain_get()
        plain_s: list[float] = []
        offline_s: list[float] = []
        for _ in range(rounds):
            plain_s += timed(plain_get, per_round)
            offline_s += timed(lambda: offline.get_task(task_id), per_round)
        plain.close()
    p50, _ = quantiles(plain_s)
    o50, _ = quantiles(offline_s)
    response = httpx.Response(200, content=body)
    parse_s = timed(lambda: parse_task(unwrap(response)), polls)
    print(
        f"no network (MockTransport): httpx alone p50 {p50:.3f} ms, Client.get_task p50 "
        f"{o50:.3f} ms; reading the envelope and the record alone: "
        f"p50 **{quantiles(parse_s)[0]:.3f} ms**"
    )


def bench_generate(url: str, key: str, runs: int, compare_src: Path | None) -> None:
    env = {**os.environ, "SEEDBED_URL": url, "SEEDBED_API_KEY": key}
    out = Path(tempfile.mkdtemp(prefix="seedbed-gen-"))
    trees = {"": env}
    if compare_src is not None:
        trees[" (--compare-src)"] = {**env, "PYTHONPATH": str(compare_src.resolve())}
    try:
        python_s: list[float] = []
        help_s: dict[str, list[float]] = {tree: [] for tree in trees}
        cli_s: dict[str, list[float]] = {tree: [] for tree in trees}
        command = [*SEEDBED, "generate", INPUT["prompt"], "-m", MODEL, "--aspect-ratio", "16:9"]
        command += ["--quality", "basic", "--json", "--out", str(out)]
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            python_s.append(time.perf_counter() - t0)
            for tree, tree_env in trees.items():
                t0 = time.perf_counter()
                subprocess.run([*SEEDBED, "--help"], check=True, capture_output=True, env=tree_env)
                help_s[tree].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                done = subprocess.run(
                    command, env=tree_env, capture_output=True, text=True, check=True
                )
                cli_s[tree].append(time.perf_counter() - t0)
                answer = json.loads(done.stdout)
                assert answer["state"] == "success" and answer["files"], done.stdout
        with Client(key, base_url=url, trust_env=False) as client:
            client.generate(MODEL, INPUT, out=out)  # warm
            inproc_s = timed(lambda: client.generate(MODEL, INPUT, out=out), runs)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n## `seedbed generate`, sandbox 2K (2848x1600), end to end ({runs} runs)")
    print("| what | median s | min s |")
    print("|---|---:|---:|")
    rows = [("`python -c pass` (interpreter start, baseline)", python_s)]
    for tree in trees:
        rows.append((f"`seedbed --help` (CLI start, baseline){tree}", help_s[tree]))
        rows.append((f"`seedbed generate ... --json` (new process){tree}", cli_s[tree]))
    rows.append(("`Client.generate` in-process (no start-up)", inproc_s))
    for name, samples in rows:
        print(f"| {name} | {statistics.median(samples):.3f} | {min(samples):.3f} |")
    if compare_src is not None:
        this, other = (statistics.median(cli_s[tree]) for tree in trees)
        print(f"`seedbed generate` median, this tree / --compare-src: {this / other:.2f}")


def bench_import() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import seedbed.client; "
        "print(time.perf_counter() - t, "
        "[m for m in ('fastapi', 'sqlalchemy', 'starlette', 'uvicorn') if m in sys.modules])"
    )
    samples, heavy = [], ""
    for _ in range(5):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        seconds, _, heavy = done.stdout.strip().partition(" ")
        samples.append(float(seconds))
    print("\n## import seedbed.client")
    print(
        f"median {statistics.median(samples) * 1000:.0f} ms over 5 fresh interpreters; "
        f"server modules imported: {heavy}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--compare-src", type=Path, default=None)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="seedbed-client-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        key = create_key(data)
        proc, _ = start(data, port)
        try:
            bench_polls(url, key, args.polls, args.rounds)
            bench_generate(url, key, args.runs, args.compare_src)
        finally:
            stop(proc)
        bench_import()
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
