"""A whole fleet as separate processes, under fire (issue 16).

Two ``seedbed serve --no-worker`` replicas and three ``seedbed worker`` processes on one
PostgreSQL (a cluster of the test's own, so it can be restarted) and one SeaweedFS bucket; no
process shares a data directory with another (workers get none at all). 300 tasks are
created across both replicas while a random worker is killed with ``kill -9`` every couple
of seconds (and started again), one replica is killed once, one worker is stopped with SIGSTOP
past its lease and resumed, and PostgreSQL is restarted. The client behaves as kie's clients
should: each create carries an ``Idempotency-Key`` and is retried, on either replica, until
it is answered.

Then: every task succeeded exactly once and was charged exactly once; the key holds nothing
and its balance is what the charges left; every result is an object in the bucket; no process
kept a file on disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import obstore
import pytest

import services
from conftest import auth
from seedbed.storage.s3 import S3Storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 300
LEASE = 3.0
BODY = {"model": "bytedance/seedream", "input": {"prompt": "fleet", "image_size": "square"}}
CREDITS = 100_000
SEEDBED = [sys.executable, "-m", "seedbed"]


class Fleet:
    """The processes of one deployment; each one's output goes to a log file of its own."""

    def __init__(self, env: dict[str, str], root: Path, ports: list[int]) -> None:
        self.env = env
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.ports = ports
        self.replicas: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._started = 0
        self._log_paths: dict[int, Path] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._started += 1
        cwd = self.root / name
        cwd.mkdir(exist_ok=True)
        path = self.logs / f"{name}-{self._started}.log"
        log = open(path, "wb")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "seedbed", *args],
                env=self.env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self._log_paths[proc.pid] = path
            return proc
        finally:
            log.close()  # the child has its own descriptor

    def replica(self, i: int) -> subprocess.Popen[bytes]:
        port = str(self.ports[i])
        args = ["serve", "--no-worker", "--host", "127.0.0.1", "--port", port]
        return self._spawn(f"replica{i}", args)

    def worker(self, i: int) -> subprocess.Popen[bytes]:
        return self._spawn(f"worker{i}", ["worker"])

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        """The end of ``proc``'s log."""
        path = self._log_paths.get(proc.pid)
        return path.read_text(errors="replace")[-4000:] if path else ""

    def all(self) -> list[subprocess.Popen[bytes]]:
        return [*self.replicas, *self.workers]


@pytest.fixture
def fleet_db() -> Iterator[services.Postgres]:
    """A PostgreSQL of this test's own: it gets restarted mid-run."""
    with services.postgres() as pg:
        yield pg


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not start")


def _create(urls: list[str], key: str, n: int, deadline: float) -> str:
    """createTask with an Idempotency-Key, retried on either replica until answered."""
    headers = {**auth(key), "Idempotency-Key": f"fleet-{n}"}
    while time.monotonic() < deadline:
        url = random.choice(urls)
        try:
            answer = httpx.post(
                f"{url}/api/v1/jobs/createTask",
                json=BODY,
                headers=headers,
                timeout=10,
                trust_env=False,
            ).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.2)
            continue
        if answer.get("code") == 200:
            return str(answer["data"]["taskId"])
        assert answer.get("code", 500) >= 500, answer  # a database fault: try again
        time.sleep(0.2)
    raise AssertionError(f"task {n} could not be created")


def _chaos(fleet: Fleet, pg: services.Postgres, done: threading.Event, log: list[str]) -> None:
    """Kill a random worker every 2 s; kill replica 0 once; SIGSTOP a worker past its lease;
    restart PostgreSQL once. Every killed process is started again."""
    started = time.monotonic()
    replica_killed = pg_restarted = stopped = False
    while not done.wait(2.0):
        elapsed = time.monotonic() - started
        i = random.randrange(len(fleet.workers))
        fleet.workers[i].send_signal(signal.SIGKILL)
        fleet.workers[i].wait()
        fleet.workers[i] = fleet.worker(i)
        log.append(f"{elapsed:.1f}s kill -9 worker {i}")
        if not replica_killed and elapsed > 3:
            replica_killed = True
            fleet.replicas[0].send_signal(signal.SIGKILL)
            fleet.replicas[0].wait()
            fleet.replicas[0] = fleet.replica(0)
            log.append(f"{elapsed:.1f}s kill -9 replica 0")
        elif not pg_restarted and elapsed > 7:
            pg_restarted = True
            pg.restart(down_seconds=1.0)
            log.append(f"{elapsed:.1f}s PostgreSQL restarted")
        elif not stopped and elapsed > 11:
            stopped = True
            j = (i + 1) % len(fleet.workers)
            victim = fleet.workers[j]
            victim.send_signal(signal.SIGSTOP)
            time.sleep(LEASE + 1.5)
            victim.send_signal(signal.SIGCONT)
            log.append(f"{elapsed:.1f}s worker {j} stopped past its lease, resumed")


def test_a_fleet_loses_nothing_and_charges_once_through_kills_and_a_restart(
    tmp_path: Path, fleet_db: services.Postgres, seaweedfs_server: services.SeaweedFS
) -> None:
    pg, weed = fleet_db, seaweedfs_server
    pg.psql("CREATE DATABASE fleet")
    prefix = f"fleet-{random.randrange(1 << 30):x}"
    env = {
        **services.cluster_env(pg, weed, "fleet", prefix),
        # one client key sends everything: its own limits out of the way
        "SEEDBED_CREATE_RATE_LIMIT": "1000000",
        "SEEDBED_RECORD_RATE_LIMIT": "1000000",
        "SEEDBED_OPEN_TASK_CAP": "100000",
        # a killed worker's tasks come back within seconds; kills may hit a task many times
        "SEEDBED_LEASE_SECONDS": str(LEASE),
        "SEEDBED_MAX_ATTEMPTS": "50",
        "SEEDBED_POLL_SECONDS": "1",
        "SEEDBED_SANDBOX_STEPS": "2",
        "SEEDBED_SANDBOX_STEP_SECONDS": "0.05",
        "SEEDBED_SHUTDOWN_GRACE_SECONDS": "1",
        "SEEDBED_LOG_LEVEL": "warning",
    }
    env.pop("SEEDBED_DATA_DIR", None)
    work = tmp_path / "fleet"
    work.mkdir()
    init = subprocess.run([*SEEDBED, "init"], env=env, cwd=work, capture_output=True)
    assert init.returncode == 0, init.stderr
    made = subprocess.run(
        [*SEEDBED, "keys", "create", "--name", "fleet", "--credits", str(CREDITS), "--json"],
        env=env,
        cwd=work,
        capture_output=True,
    )
    assert made.returncode == 0, made.stderr  # an admin command with only the database URL
    key = json.loads(made.stdout)["key"]

    fleet = Fleet(env, work, [services.free_port(), services.free_port()])
    chaos_log: list[str] = []
    done = threading.Event()
    try:
        fleet.replicas = [fleet.replica(0), fleet.replica(1)]
        fleet.workers = [fleet.worker(i) for i in range(3)]
        for url, proc in zip(fleet.urls(), fleet.replicas, strict=True):
            _wait_ready(url, proc)
        chaos = threading.Thread(target=_chaos, args=(fleet, pg, done, chaos_log))
        chaos.start()
        try:
            deadline = time.monotonic() + 120
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                ids = list(
                    pool.map(lambda n: _create(fleet.urls(), key, n, deadline), range(TASKS))
                )
            # keep the chaos up for a while after the last create
            time.sleep(max(0.0, 16 - (time.monotonic() - (deadline - 120))))
        finally:
            done.set()
            chaos.join()
        assert len(set(ids)) == TASKS
        _wait_all_finished(pg, deadline=time.monotonic() + 90)
        _check_ledger(pg)
        _check_objects(pg, weed, prefix)
        for proc in fleet.all():
            assert proc.poll() is None, f"a process died on its own:\n{fleet.log_of(proc)}"
    finally:
        for proc in fleet.all():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        print("\n".join(chaos_log))
    # no process kept a file: the replicas' and workers' directories hold nothing
    kept = [p for p in work.rglob("*") if p.is_file() and fleet.logs not in p.parents]
    assert kept == []
    assert any("PostgreSQL restarted" in line for line in chaos_log), chaos_log
    assert any("replica 0" in line for line in chaos_log), chaos_log


def _query(pg: services.Postgres, sql: str) -> list[list[str]]:
    out = pg.psql(sql, database="fleet")
    return [line.split("|") for line in out.splitlines() if line]


def _wait_all_finished(pg: services.Postgres, deadline: float) -> None:
    while True:
        states = dict(_query(pg, "SELECT state, count(*) FROM tasks GROUP BY state"))
        if set(states) == {"success"} and int(states["success"]) == TASKS:
            return
        if "fail" in states or time.monotonic() >= deadline:
            failed = _query(pg, "SELECT id, fail_code, fail_msg FROM tasks WHERE state = 'fail'")
            raise AssertionError(f"{states}; failed: {failed}")
        time.sleep(0.5)


def _check_ledger(pg: services.Postgres) -> None:
    charges = _query(
        pg, "SELECT task_id, count(*) FROM credit_ledger WHERE kind = 'charge' GROUP BY task_id"
    )
    assert len(charges) == TASKS and all(count == "1" for _, count in charges)
    ((balance, held, open_tasks, charged),) = _query(
        pg,
        "SELECT balance_milli, held_milli, open_tasks, (SELECT sum(amount_milli) FROM "
        "credit_ledger WHERE kind = 'charge') FROM api_keys",
    )
    assert (held, open_tasks) == ("0", "0")
    assert int(balance) == CREDITS * 1000 - int(charged) and int(charged) > 0


def _check_objects(pg: services.Postgres, weed: services.SeaweedFS, prefix: str) -> None:
    keys = [k for (row,) in _query(pg, "SELECT result_keys FROM tasks") for k in json.loads(row)]
    assert len(keys) == TASKS
    bucket = S3Storage(
        weed.storage_url(prefix),
        endpoint_url=weed.endpoint_url,
        access_key_id=weed.access_key,
        secret_access_key=weed.secret_key,
        region=weed.region,
    )
    listed = obstore.list(bucket._store, prefix=f"{prefix}/results/").collect()
    names = {meta["path"].removeprefix(f"{prefix}/") for meta in listed}
    # every result is there (a worker killed between its PUT and its finish may leave an
    # object no task names: that attempt was never settled, and retention never sees it)
    assert set(keys) <= names, len(set(keys) - names)

    async def sizes() -> list[int]:
        return [len(await bucket.read(k)) for k in random.sample(keys, 10)]

    assert all(size > 1000 for size in asyncio.run(sizes()))
