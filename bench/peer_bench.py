"""Serving overhead against a peer (issue 18): seedbed, cog, and the engine alone.

One model stand-in for all three: M milliseconds off the CPU (a sleep, as a GPU's time is),
then the 1024x1024 photo-like picture of ``seedbed.engines.standin`` resized with Lanczos to
512x512 and encoded as JPEG (quality 90), which is the work ``bytedance/seedream`` with
``image_size: square`` does on the stand-in engine.

- **engine alone** (the limit): that function called in a loop in this process; **engine in
  strips** is the same with seedbed's post-processing as its worker makes it (an output cut
  into strips shared by one thread per core, ``seedbed.strips``; a 512x512 is not cut);
- **cog** (Replicate's model server, from PyPI, in its own virtual environment ``--cog-venv``,
  made with ``python3 -m venv /tmp/cogvenv && /tmp/cogvenv/bin/pip install cog pillow numpy``):
  a ``predict.py`` doing the same, served by ``COG_PREDICT_TYPE_STUB=predict.py:Predictor
  python -m cog.server.http`` (``PORT`` picks the port), asked with a synchronous ``POST
  /predictions``; it answers 409 while its one slot is busy, so the client retries;
- **seedbed**: ``seedbed serve``'s app and server (SQLite, local files, the in-process worker,
  one device slot) with the stand-in engine, started by this file in a child process
  (``--serve-seedbed``); a task is created with createTask and followed to ``success`` through
  its events stream (``/api/v1/jobs/events``) or through its callback (a receiver in this
  process).

Printed, from one run where the systems alternate sample by sample, in a new random order each
sample (so drift on a shared machine, and what one system leaves behind for the next, hit all
alike): one task at a time, the p50 (and p90) of each system's latency above
the engine alone's p50 — seedbed through events, seedbed through a callback, cog sync — and,
for a backlog of ``--backlog`` tasks with one slot, each system's rate as a fraction of 1/M.
What each system hands back differs: cog's sync answer carries the JPEG (a data URI, as it does
without an upload URL), seedbed's success carries a link to the stored file (stored, charged,
recorded). Only 127.0.0.1 is contacted; the run takes about a minute.

Usage: ``python bench/peer_bench.py [--hold-ms 100] [--samples 40] [--backlog 30]
[--rounds 2] [--cog-venv /tmp/cogvenv] [--before-src WORKTREE/src]``. With ``--before-src``
(``git worktree add /tmp/before <commit>``, then ``/tmp/before/src``) a second seedbed runs from
that tree, as "before", alternating with the others. Figures: docs/benchmarks.md (issue 18).
"""

from __future__ import annotations

import argparse
import http.server
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from api_bench import create_key, free_port
from seedbed.engines import standin

MODEL = "bytedance/seedream"
SIZE = 512
NATIVE = 1024


def _picture_source() -> str:
    """``seedbed.engines.standin._picture`` as source, without its cache decorator."""
    source = inspect.getsource(standin._picture.__wrapped__)
    return "\n".join(line for line in source.splitlines() if not line.startswith("@"))


#: the cog predictor: the stand-in's picture, made the same way, then the same post-processing
PREDICT_PY = """
import time

import numpy as np
from cog import BasePredictor, Input, Path
from PIL import Image, ImageFilter


@PICTURE@

class Predictor(BasePredictor):
    def setup(self):
        self.pictures = [_picture(@NATIVE@, @NATIVE@, v) for v in range(4)]
        self.count = 0

    def predict(self, hold_ms: float = Input(default=100.0)) -> Path:
        time.sleep(hold_ms / 1000)
        self.count += 1
        picture = self.pictures[self.count % 4]
        image = picture.resize((@SIZE@, @SIZE@), Image.Resampling.LANCZOS)
        out = Path(f"/tmp/cog-peer-{self.count % 8}.jpg")
        image.save(out, "JPEG", quality=90)
        return out
""".replace("@NATIVE@", str(NATIVE)).replace("@SIZE@", str(SIZE))
# the stand-in's own picture function, its source copied in: cog's venv does not have seedbed
PREDICT_PY = PREDICT_PY.replace("@PICTURE@", _picture_source())


# --- the engine alone ------------------------------------------------------------------------


def engine_alone(hold: float, seed: int, encoding: Any = None) -> float:
    """One stand-in job in this process: its post-processing on this thread alone (as cog's
    ``predict`` does it), or with ``encoding``'s helper threads (as seedbed's worker does)."""
    from seedbed import images
    from seedbed.engines.standin import _picture

    start = time.perf_counter()
    time.sleep(hold)
    picture = _picture(NATIVE, NATIVE, seed % 4)
    images.finish(picture, SIZE, SIZE, "jpeg", encoding=encoding or images.DEFAULT_ENCODING)
    return time.perf_counter() - start


def strips_encoding() -> Any:
    """Seedbed's post-processing as its worker makes it: strips shared by one thread per core."""
    from concurrent.futures import ThreadPoolExecutor

    from seedbed import images

    cores = os.cpu_count() or 1
    return images.Encoding(helpers=ThreadPoolExecutor(cores), threads=cores)


# --- seedbed ---------------------------------------------------------------------------------


def serve_seedbed(data_dir: Path, port: int, hold_ms: float) -> None:
    """``seedbed serve`` with the stand-in engine (the CLI has no engine for it)."""
    from seedbed import cli
    from seedbed.app import create_app
    from seedbed.config import Settings
    from seedbed.engines import Engines
    from seedbed.engines.standin import StandinEngine
    from seedbed.server import GracefulServer, uvicorn_config

    settings = Settings(
        data_dir=data_dir,
        port=port,
        host="127.0.0.1",
        worker_concurrency=1,
        allow_network=["127.0.0.0/8"],
        log_level="warning",
    )
    cli._tune_gc()
    app = create_app(settings, engines=Engines([StandinEngine(hold_ms=hold_ms, native=NATIVE)]))
    server = GracefulServer(
        uvicorn_config(app, settings, access_log=False), on_signal=app.state.ctx.begin_shutdown
    )
    server.run()


class Callbacks:
    """A callback receiver on 127.0.0.1: when each task's callback arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.perf_counter()
                task_id = str(json.loads(body).get("data", {}).get("taskId", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with outer.cond:
                    outer.arrived[task_id] = now
                    outer.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, task_id: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: task_id in self.arrived, timeout):
                raise RuntimeError(f"no callback for {task_id}")
            return self.arrived.pop(task_id)


class Seedbed:
    def __init__(self, base: str, key: str, hooks: Callbacks) -> None:
        self.client = httpx.Client(
            base_url=base, trust_env=False, headers={"Authorization": f"Bearer {key}"}
        )
        self.hooks = hooks

    def create(self, seed: int, callback: bool = False) -> str:
        body: dict[str, Any] = {
            "model": MODEL,
            "input": {"prompt": "peer bench", "image_size": "square", "seed": seed},
        }
        if callback:
            body["callBackUrl"] = self.hooks.url
        answer = self.client.post("/api/v1/jobs/createTask", json=body).json()
        if answer.get("code") != 200:
            raise RuntimeError(f"createTask: {answer}")
        return str(answer["data"]["taskId"])

    def follow(self, task_id: str) -> None:
        """Read the task's events stream until its terminal state event."""
        with self.client.stream("GET", "/api/v1/jobs/events", params={"taskId": task_id}) as s:
            for line in s.iter_lines():
                if line.startswith("data:") and '"state":"' in line.replace(" ", ""):
                    state = json.loads(line[5:])["state"]
                    if state == "success":
                        return
                    if state == "fail":
                        raise RuntimeError(f"task failed: {line}")
        raise RuntimeError("events stream ended without success")

    def one_events(self, seed: int) -> float:
        start = time.perf_counter()
        self.follow(self.create(seed))
        return time.perf_counter() - start

    def one_callback(self, seed: int) -> float:
        start = time.perf_counter()
        task_id = self.create(seed, callback=True)
        return self.hooks.wait(task_id) - start

    def backlog(self, count: int) -> float:
        start = time.perf_counter()
        ids = [self.create(seed) for seed in range(count)]
        for task_id in ids:  # one slot: they end in order; the last one's end ends the batch
            self.follow(task_id)
        return time.perf_counter() - start


# --- cog -------------------------------------------------------------------------------------


class Cog:
    def __init__(self, base: str, hold_ms: float) -> None:
        self.client = httpx.Client(base_url=base, trust_env=False, timeout=60)
        self.hold_ms = hold_ms

    def predict(self) -> None:
        while True:
            answer = self.client.post("/predictions", json={"input": {"hold_ms": self.hold_ms}})
            if answer.status_code == 409:  # busy: its one slot is taken
                time.sleep(0.001)
                continue
            answer.raise_for_status()
            if answer.json().get("status") != "succeeded":
                raise RuntimeError(f"cog: {answer.text[:300]}")
            return

    def one(self, seed: int) -> float:
        start = time.perf_counter()
        self.predict()
        return time.perf_counter() - start

    def backlog(self, count: int) -> float:
        """``count`` predictions from two clients that retry on 409, as a queue in front of a
        cog server must (cog has no queue of its own in sync mode)."""
        left = list(range(count))
        lock = threading.Lock()

        def client() -> None:
            peer = Cog(str(self.client.base_url), self.hold_ms)
            while True:
                with lock:
                    if not left:
                        return
                    left.pop()
                peer.predict()

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start


def start_cog(venv: Path, work: Path, port: int) -> subprocess.Popen[bytes]:
    (work / "predict.py").write_text(PREDICT_PY)
    env = {
        **os.environ,
        # coglet spawns its worker as `python` from PATH: the venv's, which has coglet
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
    }
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "cog.server.http", "--host", "127.0.0.1"],
        cwd=work,
        env=env,
        stdout=open(work / "cog.log", "wb"),  # the child keeps it
        stderr=subprocess.STDOUT,
    )
    _wait_ready(proc, f"http://127.0.0.1:{port}/health-check", lambda r: '"READY"' in r.text)
    return proc


def start_seedbed(
    data_dir: Path, port: int, hold_ms: float, src: Path | None = None
) -> subprocess.Popen[bytes]:
    """The server on ``port``; ``src``: import seedbed from that source tree instead (an older
    commit's, checked out with ``git worktree add``), for before/after in one run."""
    args = [sys.executable, __file__, "--serve-seedbed", str(data_dir), str(port), str(hold_ms)]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        args,
        stdout=open(data_dir.parent / f"seedbed-{port}.log", "wb"),  # the child keeps it
        stderr=subprocess.STDOUT,
        env=env,
    )
    _wait_ready(proc, f"http://127.0.0.1:{port}/healthz", lambda r: r.status_code == 200)
    return proc


def _wait_ready(
    proc: subprocess.Popen[bytes], url: str, ready: Callable[[httpx.Response], bool]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited during start-up")
        try:
            if ready(httpx.get(url, timeout=0.5, trust_env=False)):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url}: not ready in 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the run ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold-ms", type=float, default=100.0)
    parser.add_argument("--samples", type=int, default=40, help="one-at-a-time samples each")
    parser.add_argument("--backlog", type=int, default=30, help="tasks per backlog batch")
    parser.add_argument("--rounds", type=int, default=2, help="backlog batches per system")
    parser.add_argument("--cog-venv", type=Path, default=Path("/tmp/cogvenv"))
    parser.add_argument(
        "--before-src",
        type=Path,
        help="also run seedbed imported from this source folder (e.g. a worktree's src/ at an "
        "older commit), as 'before', alternating with the others",
    )
    parser.add_argument("--serve-seedbed", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_seedbed:
        data_dir, port, hold_ms = args.serve_seedbed
        serve_seedbed(Path(data_dir), int(port), float(hold_ms))
        return
    hold = args.hold_ms / 1000
    if not (args.cog_venv / "bin" / "python").exists():
        raise SystemExit(f"no cog venv at {args.cog_venv} (see the docstring)")
    with tempfile.TemporaryDirectory(prefix="seedbed-peer-") as tmp:
        root = Path(tmp)
        (root / "cog").mkdir()
        hooks = Callbacks()
        servers: dict[str, Seedbed] = {}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            sources: dict[str, Path | None] = {"seedbed": None}
            if args.before_src is not None:
                sources["before"] = args.before_src
            for label, src in sources.items():
                data, port = root / label / "data", free_port()
                data.mkdir(parents=True)
                procs.append(start_seedbed(data, port, args.hold_ms, src))
                servers[label] = Seedbed(f"http://127.0.0.1:{port}", create_key(data), hooks)
            cog_port = free_port()
            procs.append(start_cog(args.cog_venv, root / "cog", cog_port))
            cog = Cog(f"http://127.0.0.1:{cog_port}", args.hold_ms)
            in_strips = strips_encoding()
            systems: dict[str, Callable[[int], float]] = {
                "engine alone": lambda seed: engine_alone(hold, seed),
                "engine in strips": lambda seed: engine_alone(hold, seed, in_strips),
            }
            for label, server in servers.items():
                systems[f"{label} events"] = server.one_events
                systems[f"{label} callback"] = server.one_callback
            systems["cog sync"] = cog.one
            for one in systems.values():  # warm-up: connections, code paths, pictures
                for seed in range(3):
                    one(seed)
            latencies: dict[str, list[float]] = {name: [] for name in systems}
            names = list(systems)
            shuffler = random.Random(18)
            for sample in range(args.samples):
                # a new order each sample: in a rotated fixed order each system would always
                # follow the same one, and what that one leaves behind (a busy core, a cold
                # cache) would count against it alone
                turn = names.copy()
                shuffler.shuffle(turn)
                for name in turn:
                    latencies[name].append(systems[name](sample))
            order = ["engine alone", *servers, "cog"]
            rates: dict[str, list[float]] = {name: [] for name in order}
            n = args.backlog
            for round_ in range(args.rounds):
                shift = round_ % len(order)
                for name in order[shift:] + order[:shift]:
                    if name == "engine alone":
                        start = time.perf_counter()
                        for seed in range(n):
                            engine_alone(hold, seed)
                        wall = time.perf_counter() - start
                    elif name == "cog":
                        wall = cog.backlog(n)
                    else:
                        wall = servers[name].backlog(n)
                    rates[name].append(n * hold / wall)
        finally:
            for proc in procs:
                stop(proc)
    base = statistics.median(latencies["engine alone"])
    in_strips_base = statistics.median(latencies["engine in strips"])
    print(f"M = {args.hold_ms:.0f} ms, {args.samples} samples each, alternating")
    print(f"engine alone: p50 {base * 1000:.1f} ms (M + resize + JPEG on one thread)")
    print(
        f"engine in strips: p50 {in_strips_base * 1000:.1f} ms (the same, post-processing "
        "in strips on every core, as seedbed's worker does it)"
    )
    print("one task at a time, latency above the engine alone's p50 (and above the engine")
    print("in strips', the serving overhead of seedbed's own post-processing):")
    for name in names[1:]:
        values = latencies[name]
        p50, p90 = pct(values, 0.5), pct(values, 0.9)
        print(
            f"  {name:17s} p50 {(p50 - base) * 1000:6.1f} ms   p90 {(p90 - base) * 1000:6.1f} ms"
            f"   (above the engine in strips: p50 {(p50 - in_strips_base) * 1000:6.1f} ms)"
        )
    print(f"backlog, one slot, {n} tasks x {args.rounds} rounds, rate / (1/M):")
    for name, values in rates.items():
        shown = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {name:17s} {shown}")


if __name__ == "__main__":
    main()
