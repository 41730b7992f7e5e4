"""Which createTask calls wake the other worker processes of the host (SQLite, Unix datagrams):
not one that this process's idle worker took along in the create's own commit."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import make_settings, serve_in_thread

BODY = {"model": "bytedance/seedream", "input": {"prompt": "a fox", "image_size": "square"}}


@contextlib.contextmanager
def peer_worker(run_dir: Path) -> Iterator[socket.socket]:
    """A worker process's wake-up socket, as ``seedbed worker`` makes one in the run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "w-999999.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def woken(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        sock.recv(64)
    except TimeoutError:
        return False
    while True:  # drain what else came
        sock.settimeout(0.05)
        try:
            sock.recv(64)
        except TimeoutError:
            return True


def test_a_task_taken_along_wakes_no_other_worker_and_a_full_one_does(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_concurrency=1, sandbox_step_seconds=0.2)
    with serve_in_thread(settings) as server, peer_worker(settings.run_dir) as peer:
        key, _ = server.add_key(credits=1000)
        time.sleep(0.5)  # the worker is waiting for work, with its slot free
        first = server.create(key, BODY)["data"]["taskId"]
        assert not woken(peer, 0.5), "the idle worker here took the task: nobody else to wake"
        # Fill this worker (its slot and the task it claims ahead): a create it cannot take
        # along wakes the others, who may be free.
        created = [first]
        for _ in range(6):
            created.append(server.create(key, BODY)["data"]["taskId"])
            if woken(peer, 0.2):
                break
        else:
            raise AssertionError("a create this busy worker did not take woke nobody")
        for task_id in created:
            assert server.wait(key, task_id)["state"] == "success"
