"""The core API's figures, each against a baseline measured in the same run.

Starts ``seedbed serve`` (one process, SQLite, sandbox engine) on loopback and drives it with wrk
(Debian package ``wrk``):

* throughput of ``GET /healthz`` (a bare JSON endpoint of the same app, served the same way),
  ``POST createTask`` and ``GET recordInfo`` at 32 connections, interleaved over several rounds,
  in three set-ups of the server (``--configs``):

  - ``no-worker``: the API alone (``--no-worker``);
  - ``worker``: the in-process worker runs the tasks, and each spends 1 s off the CPU before
    its image is rendered (``sandbox_step_seconds=0.25``), as a task on a GPU does;
  - ``worker-cpu``: the in-process worker runs the instant sandbox, which renders and encodes a
    512x512 JPEG per task (about 8 ms of CPU) on the same two cores as the server and wrk.
    Behind thousands of creates a second it never catches up, so it uses every spare cycle.

* a mixed run: one createTask, then three recordInfo, polling 32 tasks in turn; each create
  commits, after which the polls read their tasks from the database again;
* createTask answered → state ``generating``, polled as fast as one client can;
* start-up to ready, idle resident memory, and that torch is not imported.

wrk runs one thread by default (``--wrk-threads``): the server is one event loop, so on a
two-core machine the load generator gets one core and the server the other. With two wrk
threads both compete with the server for its core, and createTask, the endpoint with the most
system calls, loses most of it (see docs/benchmarks.md for both).

Usage: ``python bench/api_bench.py [--duration 8] [--rounds 3] [--configs no-worker,worker]``.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SEEDBED = [sys.executable, "-m", "seedbed"]
BODY = {"model": "bytedance/seedream", "input": {"prompt": "bench", "image_size": "square"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env(**settings: Any) -> dict[str, str]:
    values = dict(os.environ)
    values.update({f"SEEDBED_{k.upper()}": str(v) for k, v in settings.items()})
    return values


def create_key(data_dir: Path) -> str:
    args = ["keys", "create", "--name", "bench", "--credits", "100000000", "--json"]
    limits = ["--create-rate", "100000000", "--record-rate", "100000000"]
    limits += ["--open-task-cap", "100000000"]
    # admin commands never create a database: `init` does (safe if the server made it already)
    subprocess.run([*SEEDBED, "init", "--data-dir", str(data_dir)], capture_output=True, check=True)
    done = subprocess.run(
        [*SEEDBED, *args, *limits, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(done.stdout)["key"])


def start(
    data_dir: Path, port: int, *extra: str, **settings: Any
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the server (``extra``: more ``serve`` flags); return it and the seconds until
    /healthz answered. The other benchmarks start theirs with this too."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*SEEDBED, "serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
        env=env(**settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/healthz"
    while True:
        try:
            if httpx.get(url, timeout=0.2, trust_env=False).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during start-up")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def torch_loaded(pid: int) -> bool:
    return "torch" in Path(f"/proc/{pid}/maps").read_text()


LUA = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
{mix}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '{expect}', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write("BAD " .. total .. "\\n")
end
"""


#: with ``mix``: the polls of ``mix`` in turn, a POST of ``wrk.body`` before every ``every``
#: of them, and again (wrk calls ``request`` for each request of every connection)
MIX_LUA = """
local polls = {paths}
local requests = {{}}
function request()
  if #requests == 0 then
    for i, path in ipairs(polls) do
      if (i - 1) % {every} == 0 then table.insert(requests, wrk.format()) end
      table.insert(requests, wrk.format("GET", path, nil, ""))
    end
    turn = 0
  end
  turn = turn % #requests + 1
  return requests[turn]
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str,
    *,
    key: str,
    method: str = "GET",
    body: str = "",
    expect: str = '"code":200',
    duration: int,
    conns: int = 32,
    pid: int | None = None,
    threads: int = 1,
    mix: list[str] | None = None,
    every: int = 1,
) -> dict[str, float]:
    """One wrk run; with ``pid``, also the server's CPU time per request (``cpu_us``), which a
    busy, shared machine disturbs far less than throughput. With ``mix`` (paths), GETs of
    those paths in turn, and the request given before every ``every`` of them."""
    paths = "{" + ", ".join(json.dumps(path) for path in mix or ()) + "}"
    mixing = "" if mix is None else MIX_LUA.format(paths=paths, every=every)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            LUA.format(method=method, body=json.dumps(body), key=key, expect=expect, mix=mixing)
        )
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu_used = cpu_seconds(pid) - cpu_before if pid else float("nan")
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = int(re.search(r"BAD (\d+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _latency(out, "50%")
    p99 = _latency(out, "99%")
    cpu_us = cpu_used / max(1, requests) * 1e6
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "bad": bad, "cpu_us": cpu_us}


def _latency(out: str, pct: str) -> float:
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)", out)
    assert match, out
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def to_generating(base: str, key: str, samples: int) -> list[float]:
    """Seconds from createTask's answer to the first recordInfo showing ``generating`` or later."""
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    with httpx.Client(base_url=base, trust_env=False, headers=headers) as client:
        for _ in range(samples):
            created = client.post("/api/v1/jobs/createTask", json=BODY).json()
            t0 = time.perf_counter()
            task_id = created["data"]["taskId"]
            while True:
                state = client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
                if state["data"]["state"] not in ("waiting", "queuing"):
                    out.append(time.perf_counter() - t0)
                    break
            while state["data"]["state"] not in ("success", "fail"):
                time.sleep(0.01)
                state = client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
    return out


#: the server set-ups measured: extra settings, and what each shows
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "no-worker": ({"worker": False}, "in-process worker off: the API alone"),
    "worker": (
        {"worker": True, "sandbox_step_seconds": 0.25},
        "in-process worker on; each task spends 1 s off the CPU (as on a GPU), then renders",
    ),
    "worker-cpu": (
        {"worker": True},
        "in-process worker on; the instant sandbox renders each task on these same cores",
    ),
}
ENDPOINTS = ("bare", "create", "record", "mixed")
#: the mixed run: one createTask, then this many recordInfo, and again, polling this many
#: tasks in turn (a busy server's clients poll their own tasks, not all the same one)
MIXED_POLLS = 3
MIXED_TASKS = 32


def throughput(
    root: Path, settings: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, float]]], str, float]:
    """Interleaved wrk runs of the three endpoints on one fresh server; also the polled task's
    state and the server's RSS at the end."""
    data = root / "throughput"
    shutil.rmtree(data, ignore_errors=True)
    key = create_key(data)
    port = free_port()
    proc, _ = start(data, port, **settings)
    base = f"http://127.0.0.1:{port}"
    try:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, trust_env=False, headers=headers) as client:
            task = client.post("/api/v1/jobs/createTask", json=BODY).json()["data"]["taskId"]
            # With the worker on, the polled task is finished; with it off, it stays waiting.
            deadline = time.monotonic() + (10 if settings["worker"] else 1)
            while True:
                record = client.get("/api/v1/jobs/recordInfo", params={"taskId": task}).json()
                state = str(record["data"]["state"])
                if state in ("success", "fail") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            polled = [task] + [
                client.post("/api/v1/jobs/createTask", json=BODY).json()["data"]["taskId"]
                for _ in range(MIXED_TASKS - 1)
            ]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ENDPOINTS}
        runs: dict[str, dict[str, Any]] = {
            "bare": {"url": f"{base}/healthz", "expect": '"status":"ok"'},
            "create": {
                "url": f"{base}/api/v1/jobs/createTask",
                "method": "POST",
                "body": json.dumps(BODY),
            },
            "record": {"url": f"{base}/api/v1/jobs/recordInfo?taskId={task}"},
            # Every create commits, so the polls after it read their tasks again: what a
            # busy server's recordInfo costs when little can be answered from memory.
            "mixed": {
                "url": f"{base}/api/v1/jobs/createTask",
                "method": "POST",
                "body": json.dumps(BODY),
                "mix": [f"/api/v1/jobs/recordInfo?taskId={one}" for one in polled],
                "every": MIXED_POLLS,
            },
        }
        # interleaved, so drift on this shared machine hits each endpoint alike
        for _ in range(args.rounds):
            for name in ENDPOINTS:
                results[name].append(
                    wrk(
                        key=key,
                        duration=args.duration,
                        pid=proc.pid,
                        threads=args.wrk_threads,
                        **runs[name],
                    )
                )
        return results, state, rss_mb(proc.pid)
    finally:
        stop(proc)


def report(results: dict[str, list[dict[str, float]]], state: str) -> None:
    def med(name: str, field: str) -> float:
        return statistics.median(r[field] for r in results[name])

    bare, bare_cpu = med("bare", "rps"), med("bare", "cpu_us")
    print(
        f"{'endpoint':<18}{'req/s':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'CPU us/req':>12}{'CPU ratio':>11}"
    )
    for name in ENDPOINTS:
        rps, cpu = med(name, "rps"), med(name, "cpu_us")
        bad = sum(r["bad"] for r in results[name])
        label = {"record": f"record ({state})", "mixed": f"mixed (1:{MIXED_POLLS})"}.get(name, name)
        print(
            f"{label:<18}{rps:>10.0f}{rps / bare:>8.2f}{med(name, 'p50_ms'):>9.2f}"
            f"{med(name, 'p99_ms'):>9.2f}{bad:>8.0f}{cpu:>12.0f}{bare_cpu / cpu:>11.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--samples", type=int, default=100, help="latency samples")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (-t)")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"server set-ups to measure, comma-separated, of: {', '.join(CONFIGS)}",
    )
    args = parser.parse_args()
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    if unknown := [name for name in configs if name not in CONFIGS]:
        parser.error(f"unknown configs: {', '.join(unknown)}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    root = Path(tempfile.mkdtemp(prefix="seedbed-bench-"))
    try:
        # 1. start-up, idle memory, and the create → generating latency on a fresh server
        data = root / "latency"
        key = create_key(data)
        port = free_port()
        proc, ready_s = start(data, port, sandbox_step_seconds=0.05)
        time.sleep(2)
        idle_rss, torch = rss_mb(proc.pid), torch_loaded(proc.pid)
        lat = to_generating(f"http://127.0.0.1:{port}", key, args.samples)
        stop(proc)
        lat_ms = sorted(x * 1000 for x in lat)

        # 2. throughput in each set-up, printed as each finishes
        print(
            f"machine: {os.cpu_count()} cores; wrk -t{args.wrk_threads} -c32 -d{args.duration}s"
            f" x {args.rounds} rounds per set-up"
        )
        busy_rss = 0.0
        for name in configs:
            settings, what = CONFIGS[name]
            results, state, rss = throughput(root, settings, args)
            busy_rss = max(busy_rss, rss)
            print(f"\n[{name}] {what}")
            report(results, state)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        "\nCPU ratio: the bare endpoint's server CPU per request over this endpoint's (with "
        "the worker on, its CPU counts too)"
    )
    print(
        f"createTask answered -> generating: p50 {statistics.median(lat_ms):.1f} ms, "
        f"p90 {lat_ms[int(len(lat_ms) * 0.9)]:.1f} ms (n={len(lat_ms)})"
    )
    print(
        f"serve: ready in {ready_s:.2f} s; idle RSS {idle_rss:.0f} MB; "
        f"RSS after load {busy_rss:.0f} MB; torch imported: {torch}"
    )


if __name__ == "__main__":
    main()
