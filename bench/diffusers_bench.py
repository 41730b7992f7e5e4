"""The diffusers engine's figures, each against a baseline measured in the same run.

Builds a tiny random-weight Stable Diffusion pipeline (``tests/tiny_pipelines.py``), saves it to a
temporary folder, and measures:

* **server overhead**: images per second through the full API (``seedbed serve`` in a
  subprocess, createTask → ``success``, results stored) against calling the same pipeline
  directly in a loop in this process, same render size and steps; interleaved rounds, medians;
* **batching**: the engine with ``max_batch = 4`` against ``max_batch = 1``, four client threads,
  at each ``--sizes`` render size;
* **start-up**: ``seedbed serve`` spawned → ready, and → its first image (a task queued at once);
* **resident memory** of that server with the pipeline loaded, against a sandbox-only server.

Usage: ``python bench/diffusers_bench.py [--images 8] [--rounds 3] [--steps 4] [--size 256]``.
Only 127.0.0.1 is contacted. ``--device cuda`` measures on a GPU (the pipeline stays tiny).
``--threads`` (default 1) sets ``OMP_NUM_THREADS`` for this process and the server alike: on a
shared 2-core machine two OpenMP threads spin against each other and a 256 px render took 5x
longer than with one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SEEDBED = [sys.executable, "-m", "seedbed"]
MODEL = "bytedance/seedream"  # "square" is 512x512: the smallest contract size
HEADERS: dict[str, str] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(path: Path, pipeline: Path | None, args: argparse.Namespace) -> Path:
    if pipeline is None:
        path.write_text("")
        return path
    path.write_text(
        f"""
[engines.sd]
pipeline = "{pipeline}"
device = "{args.device}"
steps = {args.steps}
native_area = {args.size * args.size}
size_multiple = 8

[models]
"{MODEL}" = "sd"
"""
    )
    return path


def start_server(
    data_dir: Path, config: Path, concurrency: int
) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    started = time.perf_counter()
    environ = dict(os.environ, SEEDBED_WORKER_CONCURRENCY=str(concurrency))
    proc = subprocess.Popen(
        [
            *SEEDBED,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--config",
            str(config),
        ],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        time.sleep(0.02)
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_key(data_dir: Path, config: Path) -> str:
    command = [*SEEDBED, "keys", "create", "--name", "bench", "--credits", "1000000", "--json"]
    command += ["--open-task-cap", "100000", "--create-rate", "100000", "--record-rate", "100000"]
    command += ["--data-dir", str(data_dir), "--config", str(config)]
    # admin commands never create a database: `init` does (safe if the server made it already)
    init = [*SEEDBED, "init", "--data-dir", str(data_dir), "--config", str(config)]
    subprocess.run(init, capture_output=True, check=True)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(done.stdout)["key"])


def run_tasks(client: httpx.Client, count: int, first_seed: int) -> float:
    """Create ``count`` tasks at once and wait for all: seconds from first create to last done.

    The end is the server's ``completeTime`` of the last task, so the client's polling (gentle,
    one task at a time, so that it takes no CPU from the worker) adds no delay to the figure.
    """
    started = time.time()
    ids = []
    for i in range(count):
        body = {
            "model": MODEL,
            "input": {"prompt": "a lighthouse", "image_size": "square", "seed": first_seed + i},
        }
        answer = client.post("/api/v1/jobs/createTask", json=body).json()
        assert answer["code"] == 200, answer
        ids.append(answer["data"]["taskId"])
    finished = []
    for task_id in ids:
        while True:
            data = client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()["data"]
            if data["state"] == "fail":
                raise RuntimeError(data)
            if data["state"] == "success":
                finished.append(data["completeTime"] / 1000)
                break
            time.sleep(0.05)
    return max(finished) - started


def direct_loop(pipe: Any, torch: Any, count: int, args: argparse.Namespace) -> float:
    started = time.perf_counter()
    for i in range(count):
        with torch.inference_mode():
            pipe(
                prompt="a lighthouse",
                height=args.size,
                width=args.size,
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(i),
            )
    return time.perf_counter() - started


def overhead(pipeline: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(pipeline), dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    config = write_config(work / "overhead.toml", pipeline, args)
    data_dir = work / "overhead-data"
    proc, base, _ = start_server(data_dir, config, concurrency=2)
    key = create_key(data_dir, config)
    direct: list[float] = []
    served: list[float] = []
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            run_tasks(client, 1, 0)  # warm-up: the pipeline's first call is slower
            direct_loop(pipe, torch, 1, args)
            for round_ in range(args.rounds):
                direct.append(args.images / direct_loop(pipe, torch, args.images, args))
                served.append(args.images / run_tasks(client, args.images, 1000 * round_))
                print(f"  round {round_ + 1}: direct {direct[-1]:.3f} img/s, API {served[-1]:.3f}")
    finally:
        stop(proc)
    d, s = statistics.median(direct), statistics.median(served)
    return {"direct": d, "api": s, "ratio": s / d}


def batching(pipeline: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    from seedbed.config import DiffusersEngineSettings, ModelRoute
    from seedbed.engines.base import EngineJob, OutputPlan
    from seedbed.engines.diffusers import DiffusersEngine

    plan = OutputPlan(width=size, height=size, format="jpeg")

    def engine(max_batch: int) -> DiffusersEngine:
        settings = DiffusersEngineSettings(
            pipeline=str(pipeline),
            device=args.device,
            steps=args.steps,
            native_area=size * size,
            size_multiple=8,
            max_batch=max_batch,
            batch_window_ms=50,
        )
        built = DiffusersEngine("bench", settings, {MODEL: ModelRoute(engine="bench")})
        built.load()
        return built

    def throughput(built: DiffusersEngine, count: int) -> float:
        jobs = [
            EngineJob(task_id=str(i), model=MODEL, input={"prompt": "a boat"}, seed=i, plan=plan)
            for i in range(count)
        ]
        started = time.perf_counter()
        # four clients, like a worker with concurrency 4
        threads = [
            threading.Thread(
                target=lambda mine=jobs[k::4]: [
                    built.run(job, lambda p: None, threading.Event()) for job in mine
                ]
            )
            for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return count / (time.perf_counter() - started)

    one, four = engine(1), engine(4)
    throughput(one, 4)
    throughput(four, 4)  # warm-up
    b1: list[float] = []
    b4: list[float] = []
    for _ in range(args.rounds):
        b1.append(throughput(one, args.images))
        b4.append(throughput(four, args.images))
    one.close()
    four.close()
    r1, r4 = statistics.median(b1), statistics.median(b4)
    return {"size": size, "batch1": r1, "batch4": r4, "gain": r4 / r1, "calls": four.calls}


def start_up(pipeline: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for label, source in (("sandbox", None), ("diffusers", pipeline)):
        config = write_config(work / f"start-{label}.toml", source, args)
        data_dir = work / f"start-{label}"
        key = create_key(data_dir, config)
        spawned = time.perf_counter()
        proc, base, ready = start_server(data_dir, config, concurrency=1)
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
                run_tasks(c, 1, 0)
                first = time.perf_counter() - spawned
            figures[label] = {"ready_s": ready, "first_image_s": first, "rss_mb": rss_mb(proc.pid)}
        finally:
            stop(proc)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="render size for the overhead")
    parser.add_argument("--sizes", default="64,256", help="render sizes for batching")
    parser.add_argument("--channels", type=int, default=16, help="width of the tiny UNet/VAE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        # before torch is imported, here and (inherited) in the server
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    import tiny_pipelines

    with tempfile.TemporaryDirectory(prefix="seedbed-diffusers-bench-") as tmp:
        work = Path(tmp)
        pipeline = tiny_pipelines.build_sd(work / "sd", channels=args.channels)
        print(
            f"tiny SD pipeline ({args.channels} channels), {args.steps} steps, {args.device}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
        )
        print(f"server overhead at {args.size} px, {args.images} images x {args.rounds} rounds:")
        over = overhead(pipeline, work, args)
        print(
            f"  direct loop {over['direct']:.3f} img/s, through the API {over['api']:.3f} img/s, "
            f"ratio {over['ratio']:.3f}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            result = batching(pipeline, size, args)
            print(
                f"batching at {size} px: batch 1 {result['batch1']:.3f} img/s, batch 4 "
                f"{result['batch4']:.3f} img/s, gain {result['gain']:.2f}x "
                f"({result['calls']} pipeline calls for the batched engine)"
            )
        figures = start_up(pipeline, work, args)
        for label, values in figures.items():
            print(
                f"{label} server: ready {values['ready_s']:.2f} s, first image "
                f"{values['first_image_s']:.2f} s after spawn, RSS {values['rss_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
