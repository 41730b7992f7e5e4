"""Where one task's time goes (issue 18): a wall-clock trace of the steps of one task at a time.

The server of ``peer_bench.py`` (SQLite, local files, the in-process worker, one device slot,
the model stand-in at M = 100 ms) runs in a child process with its steps wrapped: each records
when it was entered (``>``) and left (``<``). ``time.perf_counter`` is ``CLOCK_MONOTONIC`` on
Linux, one clock for every process, so the child's marks and this process's client line up.
The client here creates a task every ``--gap`` seconds (an idle server, as one task at a time
finds it), alternately followed through its events stream and through a callback to a receiver
in this process, and prints, per path, the median of each mark: before the engine's thread
begins, in ms after the client sent createTask; after it, in ms after the engine's pictures
existed (``engine<``). ``END`` is when the client had the success (the event read, the
callback received). The wrappers cost a few microseconds each; compare marks, not totals. A
mark that only some tasks pass (``keyread``: the cached key had expired) is the median of
those that passed it. ``fin_batch`` is the first write batch after the pictures: the
finish's, unless another write (a callback's record) came first.

The marks name internals (``SqlStore.claim``, ``Worker._postprocess``, the callback's
socket write...): a mark whose function is renamed is left out with a note. Only 127.0.0.1 is
contacted. Usage: ``python bench/trace_one_task.py [--samples 30] [--gap 0.4]``; figures in
docs/benchmarks.md (issue 18, "Where the rest goes").
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

#: (module, attribute path, label): the steps marked in the server, in the order they run
STEPS = [
    ("seedbed.httpguard", "GuardedHttpToolsProtocol.data_received", "recv"),
    ("seedbed.api.auth", "authenticate", "auth"),
    ("seedbed.store.sql", "SqlStore.key_by_hash", "keyread"),
    ("seedbed.store.sql", "SqlStore.flags", "flagsread"),
    ("seedbed.catalogue", "validate_input", "validate"),
    ("seedbed.store.sql", "SqlStore.create_task", "create"),
    ("seedbed.store.sql", "SqlStore.claim", "claim"),
    ("seedbed.worker", "Worker._attempt", "attempt"),
    ("seedbed.worker", "Worker._in_engine_thread", "to_engine"),
    ("seedbed.engines.standin", "StandinEngine.run", "engine"),
    ("seedbed.store.sql", "SqlStore.set_task_engine", "set_engine"),
    ("seedbed.storage.local", "_Reserved.put", "put_reserved"),
    # the result's data sync (the first after the pictures; the checkpointer's, once a second,
    # comes first now and then)
    ("os", "fdatasync", "put_fdatasync"),
    ("seedbed.storage.local", "LocalStorage.put_here", "put_here"),
    ("seedbed.worker", "Worker._postprocess", "postprocess"),
    ("seedbed.worker", "Worker._settled", "settled"),
    ("seedbed.store.sql", "SqlStore.finish", "finish"),
    ("seedbed.store.sqlite", "SqliteRunner._run_batch", "fin_batch"),
    ("seedbed.store.sql", "SqlStore._finish", "fin_sql"),
    ("seedbed.feed", "Subscription.offer", "event"),
    ("seedbed.api.events", "_event", "sse_event"),
    ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle.send", "sse_send"),
    ("seedbed.callbacks", "Dispatcher._claim_some", "cb_claim"),
    ("seedbed.callbacks", "Dispatcher._send", "cb_send"),
    ("seedbed.callback_http", "CallbackPoster.post", "cb_post"),
    ("asyncio.streams", "StreamWriter.write", "cb_socket_write"),
]
#: marks timed from the engine's pictures (the rest from the client's createTask)
AFTER_ENGINE = ("put", "postprocess", "settled", "finish", "fin_", "event", "sse_", "cb_")

_marks: list[tuple[str, float]] = []


def _wrap(owner: Any, name: str, label: str) -> None:
    fn = getattr(owner, name)
    wrapped: Any
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            _marks.append((label + ">", time.perf_counter()))
            try:
                return await fn(*args, **kwargs)
            finally:
                _marks.append((label + "<", time.perf_counter()))

    else:

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            _marks.append((label + ">", time.perf_counter()))
            try:
                return fn(*args, **kwargs)
            finally:
                _marks.append((label + "<", time.perf_counter()))

    setattr(owner, name, wrapped)


def serve(data_dir: Path, port: int, out: Path) -> None:
    """The child: ``peer_bench``'s server with its steps marked; the marks written at exit."""
    import peer_bench

    for module_name, path, label in STEPS:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        try:
            for parent in parents:
                owner = getattr(owner, parent)
            _wrap(owner, name, label)
        except AttributeError:
            print(f"note: {module_name}.{path} is gone: {label} not marked", file=sys.stderr)
    atexit.register(lambda: out.write_text(json.dumps(_marks)))
    peer_bench.serve_seedbed(data_dir, port, 100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30, help="tasks per path")
    parser.add_argument("--gap", type=float, default=0.4, help="idle seconds before each task")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), Path(args.serve[2]))
        return

    import peer_bench
    from api_bench import create_key, free_port

    runs: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="seedbed-trace-") as tmp:
        data, out, port = Path(tmp) / "data", Path(tmp) / "marks.json", free_port()
        data.mkdir()
        command = [sys.executable, __file__, "--serve", str(data), str(port), str(out)]
        proc = subprocess.Popen(command, env=dict(os.environ))
        try:
            url = f"http://127.0.0.1:{port}"
            peer_bench._wait_ready(proc, f"{url}/healthz", lambda r: r.status_code == 200)
            hooks = peer_bench.Callbacks()
            seedbed = peer_bench.Seedbed(url, create_key(data), hooks)
            for sample in range(2 * args.samples + 4):
                time.sleep(args.gap)
                path = "callback" if sample % 2 else "events"
                start = time.perf_counter()
                if path == "callback":
                    end = hooks.wait(seedbed.create(sample, callback=True))
                else:
                    seedbed.follow(seedbed.create(sample))
                    end = time.perf_counter()
                if sample >= 4:  # warm-up: connections, code paths, pictures
                    runs.append((path, start, end))
        finally:
            peer_bench.stop(proc)
        marks = [(str(label), float(at)) for label, at in json.loads(out.read_text())]
    for path in ("events", "callback"):
        _report(path, [(start, end) for p, start, end in runs if p == path], marks)


def _report(path: str, runs: list[tuple[float, float]], marks: list[tuple[str, float]]) -> None:
    rows: dict[str, list[float]] = {}
    for start, end in runs:
        pictures = next((at for label, at in marks if label == "engine<" and start <= at), start)
        seen: dict[str, float] = {}
        for label, at in marks:
            after = label.startswith(AFTER_ENGINE)
            if start <= at <= end + 0.02 and label not in seen and (not after or at >= pictures):
                seen[label] = (at - (pictures if after else start)) * 1000
        seen["END"] = (end - pictures) * 1000
        for label, value in seen.items():
            rows.setdefault(label, []).append(value)
    print(f"{path}: {len(runs)} tasks, medians in ms (from createTask sent; from engine< for")
    print("  the marks after the pictures, and END)")

    def order(item: tuple[str, list[float]]) -> tuple[bool, float]:
        label, values = item
        return (label == "END" or label.startswith(AFTER_ENGINE), statistics.median(values))

    for label, values in sorted(rows.items(), key=order):
        if label != "engine<":
            print(f"  {label:18s} {statistics.median(values):8.2f}")


if __name__ == "__main__":
    main()
