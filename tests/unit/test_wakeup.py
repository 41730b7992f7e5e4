"""Wake-ups: in-process, across Wakeup instances through Unix sockets, stale sockets dropped."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedbed.wakeup import Wakeup


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short path: Unix socket names are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="sb-") as tmp:
        yield Path(tmp)


async def test_notify_wakes_the_local_waiter() -> None:
    wakeup = Wakeup(None)
    assert await wakeup.wait(0.01) is False
    wakeup.notify()
    assert await wakeup.wait(0.01) is True
    wakeup.clear()
    assert await wakeup.wait(0.01) is False


async def test_kick_says_whether_a_waiter_ready_for_work_was_woken() -> None:
    wakeup = Wakeup(None)
    assert wakeup.kick() is False  # nobody waits
    wakeup.clear()
    waiter = asyncio.ensure_future(wakeup.wait(5))
    await asyncio.sleep(0)  # the waiter now waits
    assert wakeup.kick() is True
    assert wakeup.kick() is False  # woken already: this one wakes nobody new
    assert await waiter is True
    wakeup.clear()
    busy = asyncio.ensure_future(wakeup.wait(5, ready=False))  # a worker with no free slot
    await asyncio.sleep(0)
    assert wakeup.kick() is False  # woken, but it would take nothing
    assert await busy is True


async def test_work_is_counted_and_a_kick_is_not() -> None:
    wakeup = Wakeup(None)
    wakeup.kick()
    assert wakeup.work_signals == 0  # a slot freed up: no new work
    wakeup.clear()
    waiter = asyncio.ensure_future(wakeup.wait(5))
    await asyncio.sleep(0)
    assert wakeup.work() is True  # a task created: counted, and the waiter woken
    wakeup.notify()
    assert wakeup.work_signals == 2
    assert await waiter is True


async def test_notify_reaches_a_listener_through_its_socket(run_dir: Path) -> None:
    worker = Wakeup(run_dir)
    worker.listen()
    api = Wakeup(run_dir)
    try:
        assert await worker.wait(0.01) is False
        api.notify()
        assert await worker.wait(1.0) is True
    finally:
        worker.close()
        api.close()
    assert list(run_dir.iterdir()) == []  # the listener removed its socket


async def test_messages_reach_the_listener_in_order(run_dir: Path) -> None:
    """Change notices (``run/events/``): each datagram's message is handed on."""
    got: list[bytes] = []
    server = Wakeup(run_dir)
    server.listen(on_message=got.append)
    worker = Wakeup(run_dir)
    try:
        worker.notify(b"a" * 32)
        worker.notify(b"b" * 32)
        assert await server.wait(1.0) is True
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got == [b"a" * 32, b"b" * 32]
    finally:
        server.close()
        worker.close()


async def test_a_dead_listeners_socket_is_removed(run_dir: Path) -> None:
    stale = run_dir / "w-999999.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # bound then closed: the file stays, nobody listens
    api = Wakeup(run_dir)
    try:
        api.notify()
    finally:
        api.close()
    assert not stale.exists()
