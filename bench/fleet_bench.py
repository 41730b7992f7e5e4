"""Issue 16's figures: a fleet on PostgreSQL and SeaweedFS, started on loopback.

Uses ``seedbed.devcluster`` (the servers of ``make cluster`` and the tests) and the wrk
harness of ``bench/api_bench.py``:

* **scaling**: 1 and 4 ``seedbed worker`` processes, one slot each, the sandbox spending 0.25 s
  off the CPU per task (as a task on a GPU does), the same tasks per worker: images/s ratio;
* **dispatch**: createTask answered → ``generating`` (recordInfo polled as fast as one client
  can) with idle workers in other processes, woken by LISTEN/NOTIFY;
* **throughput** of createTask and recordInfo on PostgreSQL and on SQLite, each with the bare
  endpoint (``/healthz``) of the same server, interleaved, one ``serve --no-worker`` each;
* **recordInfo at scale**: ``Store.poll_task`` with 10³ and with 10⁶ stored tasks (rows
  bulk-inserted with SQL), finished and waiting tasks polled in turn;
* **a 4K result stored**: one PUT of a 4096x4096 PNG's worth of bytes to SeaweedFS against a
  write of the same bytes to local files (``LocalStorage.put``: temp file, fsync, rename).

* **the shared limit's cost**: ``Store.rate_limit_hit`` against ``Store.poll_task`` and the
  in-process limiter, per call, on PostgreSQL;

The test servers run PostgreSQL with ``fsync=off`` (``seedbed.devcluster``), as SQLite here
runs with ``synchronous=NORMAL``: commits cost no disk flush on either.

Usage: ``python bench/fleet_bench.py [--only scaling,dispatch,throughput,scale,limits,storage]``.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from api_bench import BODY, free_port, stop, to_generating, wrk
from seedbed.devcluster import Postgres, SeaweedFS, cluster_env, postgres, seaweedfs
from seedbed.storage.local import LocalStorage
from seedbed.storage.s3 import S3Storage
from seedbed.store.sql import SqlStore

SEEDBED = [sys.executable, "-m", "seedbed"]
LIMITS = {
    "SEEDBED_CREATE_RATE_LIMIT": "100000000",
    "SEEDBED_RECORD_RATE_LIMIT": "100000000",
    "SEEDBED_OPEN_TASK_CAP": "100000000",
    "SEEDBED_LOG_LEVEL": "warning",
}


def _run(args: list[str], env: dict[str, str], cwd: str) -> str:
    done = subprocess.run([*SEEDBED, *args], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return done.stdout


def _key(env: dict[str, str], cwd: str) -> str:
    _run(["init"], env, cwd)
    out = _run(["keys", "create", "--name", "bench", "--credits", "100000000", "--json"], env, cwd)
    return str(json.loads(out)["key"])


def _serve(env: dict[str, str], cwd: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*SEEDBED, "serve", "--no-worker", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            if httpx.get(url, timeout=0.5, trust_env=False).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during start-up")
        time.sleep(0.05)


def _workers(env: dict[str, str], cwd: str, n: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [*SEEDBED, "worker", "--concurrency", "1"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]


def _fresh(pg: Postgres, weed: SeaweedFS, name: str) -> dict[str, str]:
    pg.psql(f"CREATE DATABASE {name}")
    return {**cluster_env(pg, weed, name, name), **LIMITS}


# -- scaling -------------------------------------------------------------------------------
def scaling(pg: Postgres, weed: SeaweedFS, work: str, per_worker: int) -> dict[str, float]:
    rates = {}
    for n in (1, 4):
        env = {**_fresh(pg, weed, f"scale{n}"), "SEEDBED_SANDBOX_STEPS": "1"}
        env["SEEDBED_SANDBOX_STEP_SECONDS"] = "0.25"
        key = _key(env, work)
        port = free_port()
        api = _serve(env, work, port)
        workers = _workers(env, work, n)
        try:
            time.sleep(8)  # the workers are up and idle
            headers = {"Authorization": f"Bearer {key}"}
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers=headers, trust_env=False) as client:
                t0 = time.perf_counter()
                for _ in range(per_worker * n):
                    assert client.post("/api/v1/jobs/createTask", json=BODY).json()["code"] == 200
                while True:
                    done = pg.psql(
                        "SELECT count(*) FROM tasks WHERE state = 'success'", database=f"scale{n}"
                    )
                    if int(done) == per_worker * n:
                        break
                    time.sleep(0.02)
                elapsed = time.perf_counter() - t0
            rates[f"{n} worker(s) images/s"] = per_worker * n / elapsed
        finally:
            for proc in [api, *workers]:
                stop(proc)
    rates["ratio"] = rates["4 worker(s) images/s"] / rates["1 worker(s) images/s"]
    return rates


# -- dispatch ------------------------------------------------------------------------------
def dispatch(pg: Postgres, weed: SeaweedFS, work: str, samples: int) -> dict[str, float]:
    env = _fresh(pg, weed, "dispatch")
    key = _key(env, work)
    port = free_port()
    api = _serve(env, work, port)
    workers = _workers(env, work, 2)
    try:
        time.sleep(8)
        times = sorted(to_generating(f"http://127.0.0.1:{port}", key, samples))
    finally:
        for proc in [api, *workers]:
            stop(proc)
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p90_ms": times[int(len(times) * 0.9)] * 1000,
    }


# -- throughput ------------------------------------------------------------------------------
def _create_keys(env: dict[str, str], work: str, n: int) -> list[str]:
    """``n`` more keys (the first is ``_key``'s): createTask spread over keys (``--keys``)."""
    out = []
    for i in range(n):
        made = _run(
            ["keys", "create", "--name", f"bench{i}", "--credits", "100000000", "--json"],
            env,
            work,
        )
        out.append(str(json.loads(made)["key"]))
    return out


def _creates(url: str, keys: list[str], duration: int, pid: int) -> dict[str, Any]:
    """createTask with wrk's 32 connections shared out over ``keys`` (one wrk per key, at
    once): requests/s summed, answers other than 200 counted."""
    body = json.dumps(BODY)
    conns = max(1, 32 // len(keys))
    with ThreadPoolExecutor(len(keys)) as pool:
        runs = list(
            pool.map(
                lambda key: wrk(
                    url, key=key, method="POST", body=body, duration=duration, conns=conns, pid=pid
                ),
                keys,
            )
        )
    return {"rps": sum(r["rps"] for r in runs), "bad": sum(r["bad"] for r in runs)}


def throughput(
    pg: Postgres, weed: SeaweedFS, work: str, duration: int, rounds: int, keys: int = 1
) -> dict[str, dict[str, float]]:
    setups = {
        "postgres": _fresh(pg, weed, "through"),
        "sqlite": {**os.environ, **LIMITS, "SEEDBED_DATA_DIR": str(Path(work) / "sqlite")},
    }
    found: dict[str, dict[str, list[float]]] = {}
    servers = {}
    try:
        many: dict[str, list[str]] = {}
        for name, env in setups.items():
            key = _key(env, work)
            many[name] = [key, *_create_keys(env, work, keys - 1)]
            port = free_port()
            servers[name] = (_serve(env, work, port), port, key)
        for _ in range(rounds):
            for name, (proc, port, key) in servers.items():
                base = f"http://127.0.0.1:{port}"
                headers = {"Authorization": f"Bearer {key}"}
                task = httpx.post(
                    f"{base}/api/v1/jobs/createTask", json=BODY, headers=headers, trust_env=False
                ).json()["data"]["taskId"]
                runs: dict[str, dict[str, Any]] = {
                    "bare": {"url": f"{base}/healthz", "expect": '"status":"ok"'},
                    "create": {
                        "url": f"{base}/api/v1/jobs/createTask",
                        "method": "POST",
                        "body": json.dumps(BODY),
                    },
                    "record": {"url": f"{base}/api/v1/jobs/recordInfo?taskId={task}"},
                }
                for endpoint, run in runs.items():
                    if endpoint == "create":
                        result = _creates(run["url"], many[name], duration, proc.pid)
                    else:
                        result = wrk(key=key, duration=duration, pid=proc.pid, **run)
                    if result["bad"]:  # a refusal or an error is fast: it is no throughput
                        raise SystemExit(f"{name} {endpoint}: {result['bad']} answers not 200")
                    found.setdefault(name, {}).setdefault(endpoint, []).append(result["rps"])
    finally:
        for proc, _, _ in servers.values():
            stop(proc)
    return {
        name: {endpoint: statistics.median(values) for endpoint, values in by.items()}
        for name, by in found.items()
    }


# -- recordInfo at scale -----------------------------------------------------------------------
_BULK = """
INSERT INTO tasks (id, key_id, model, state, param, input, progress, attempts, reserved_milli,
    consumed_milli, result_keys, create_time, update_time, complete_time)
SELECT md5('{state}' || g), '{key}', 'bytedance/seedream', '{state}', '{{}}', '{{}}', 100, 1, 3500,
    3500, '["results/x.png"]', 1700000000000 + g, 1700000000000 + g, 1700000000000 + g
FROM generate_series(1, {n}) AS g
"""


def record_at_scale(pg: Postgres, polls: int, rounds: int = 6) -> dict[str, float]:
    """Both databases filled first, then measured in alternating rounds (drift on this shared
    machine hits both alike); the median round of each."""
    sizes = (1_000, 1_000_000)
    urls, ids = {}, {}
    for n in sizes:
        name = f"scale_{n}"
        pg.psql(f"CREATE DATABASE {name}")
        urls[n] = pg.database_url(name)
        asyncio.run(_open_once(urls[n]))
        pg.psql(
            "INSERT INTO api_keys VALUES ('k', 'bench', 'h', 0, 0, 0, '{}', 1, NULL, NULL)", name
        )
        pg.psql(_BULK.format(key="k", n=n - 10, state="success"), name)
        pg.psql(_BULK.format(key="k", n=10, state="waiting"), name)
        pg.psql("VACUUM ANALYZE tasks", name)
        chosen = pg.psql("SELECT id FROM tasks ORDER BY random() LIMIT 1000", name).splitlines()
        chosen += pg.psql("SELECT id FROM tasks WHERE state = 'waiting'", name).splitlines()
        random.shuffle(chosen)
        ids[n] = chosen

    async def measure() -> dict[int, list[float]]:
        stores = {n: SqlStore(urls[n]) for n in sizes}
        for store in stores.values():
            await store.open()
        try:
            for n, store in stores.items():  # warm the pools and the pages alike
                for task_id in ids[n]:
                    await store.poll_task(task_id)
            found: dict[int, list[float]] = {n: [] for n in sizes}
            for _ in range(rounds):
                for n, store in stores.items():
                    t0 = time.perf_counter()
                    for i in range(polls):
                        await store.poll_task(ids[n][i % len(ids[n])])
                    found[n].append((time.perf_counter() - t0) / polls)
            return found
        finally:
            for store in stores.values():
                await store.close()

    found = asyncio.run(measure())
    out = {f"{n} tasks: poll_task µs": statistics.median(found[n]) * 1e6 for n in sizes}
    out["ratio"] = out["1000000 tasks: poll_task µs"] / out["1000 tasks: poll_task µs"]
    return out


async def _open_once(url: str) -> None:
    store = SqlStore(url)
    await store.open()  # the schema
    await store.close()


# -- the shared rate limit's cost ---------------------------------------------------------------
def limit_cost(pg: Postgres, calls: int) -> dict[str, float]:
    """``Store.rate_limit_hit`` (the shared createTask limit: one upsert) against
    ``Store.poll_task`` (recordInfo's one read) and the in-process limiter, per call."""
    from seedbed.ratelimit import RateLimiter

    pg.psql("CREATE DATABASE limits")
    url = pg.database_url("limits")

    async def measure() -> dict[str, float]:
        store = SqlStore(url)
        await store.open()
        try:
            out = {}
            for name, call in (
                ("rate_limit_hit_us", lambda: store.rate_limit_hit("b", limit=10**9, window=1)),
                ("poll_task_us", lambda: store.poll_task("0" * 32)),
            ):
                for _ in range(200):
                    await call()
                t0 = time.perf_counter()
                for _ in range(calls):
                    await call()
                out[name] = (time.perf_counter() - t0) / calls * 1e6
            local = RateLimiter()
            t0 = time.perf_counter()
            for _ in range(calls):
                local.hit("b", 10**9, 1)
            out["in_process_us"] = (time.perf_counter() - t0) / calls * 1e6
            return out
        finally:
            await store.close()

    return asyncio.run(measure())


# -- storage -------------------------------------------------------------------------------
def storage(weed: SeaweedFS, work: str, repeats: int) -> dict[str, float]:
    # A 4096x4096 PNG of a photograph is about 20 MB; random bytes do not compress either.
    data = os.urandom(20 * 1024 * 1024)

    async def timed(put: Any) -> float:
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            await put(f"results/bench{i}.png", data, "image/png")
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    s3 = S3Storage(
        weed.storage_url("bench-4k"),
        endpoint_url=weed.endpoint_url,
        access_key_id=weed.access_key,
        secret_access_key=weed.secret_key,
        region=weed.region,
    )
    local = LocalStorage(Path(work) / "files")
    return {
        "seaweedfs_ms": asyncio.run(timed(s3.put)),
        "local_ms": asyncio.run(timed(local.put)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="scaling,dispatch,throughput,scale,limits,storage")
    parser.add_argument("--per-worker", type=int, default=40, help="scaling: tasks per worker")
    parser.add_argument("--samples", type=int, default=100, help="dispatch samples")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument(
        "--keys", type=int, default=1, help="throughput: createTask spread over this many keys"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    with postgres() as pg, seaweedfs() as weed, tempfile.TemporaryDirectory() as work:
        if "scaling" in only:
            results["scaling"] = scaling(pg, weed, work, args.per_worker)
            print(json.dumps(results["scaling"]), flush=True)
        if "dispatch" in only:
            results["dispatch"] = dispatch(pg, weed, work, args.samples)
            print(json.dumps(results["dispatch"]), flush=True)
        if "throughput" in only:
            results["throughput"] = throughput(
                pg, weed, work, args.duration, args.rounds, args.keys
            )
            print(json.dumps(results["throughput"]), flush=True)
        if "scale" in only:
            results["scale"] = record_at_scale(pg, args.polls)
            print(json.dumps(results["scale"]), flush=True)
        if "limits" in only:
            results["limits"] = limit_cost(pg, args.polls)
            print(json.dumps(results["limits"]), flush=True)
        if "storage" in only:
            results["storage"] = storage(weed, work, 5)
            print(json.dumps(results["storage"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
