"""Waking workers the moment a task is created, instead of having them poll.

A worker in the server's own process is woken through an ``asyncio.Event``. Workers in other
processes on this host (``seedbed worker`` beside ``seedbed serve``) each bind a Unix datagram
socket in ``<data_dir>/run/``; creating a task sends one byte to each. A datagram that cannot be
delivered is simply dropped: workers also poll slowly as a safety net, so a lost wake-up only
delays a task, never loses it.

The same mechanism carries short messages: the callback dispatchers' wake-ups
(``run/callbacks/``), and on SQLite the ids of changed tasks (``run/events/``), which a worker
process sends to the server processes here so that their live-event streams hear of a change
at once rather than at their feed's next poll (PostgreSQL's ``NOTIFY`` does this across hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Wakeup"]

log = logging.getLogger(__name__)


class Wakeup:
    def __init__(self, run_dir: Path | None = None) -> None:
        self._run_dir = run_dir
        self._event = asyncio.Event()
        #: local ``wait(ready=True)`` calls in progress
        self._ready = 0
        #: times work may have been added since this started: ``notify``, ``work`` and
        #: datagrams count, a ``kick`` (a slot freed up) does not
        self.work_signals = 0
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._own_path: Path | None = None
        self._peers: list[str] = []
        self._peers_scanned = -1.0
        self._on_message: Callable[[bytes], object] | None = None

    # -- the API side ----------------------------------------------------------------------
    def notify(self, message: bytes = b"!") -> None:
        """Wake every worker: the one in this process and those listening on this host (each
        of those is sent ``message``, at most 64 bytes)."""
        self.work_signals += 1
        self._event.set()
        if self._run_dir is None:
            return
        now = time.monotonic()  # not the loop's time: get_running_loop() costs a system call
        if now - self._peers_scanned > 1.0:
            # Re-list the sockets at most once a second: workers come and go rarely.
            self._peers = self._scan()
            self._peers_scanned = now
        if not self._peers:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for peer in self._peers:
            try:
                self._sender.sendto(message, peer)
            except ConnectionRefusedError:
                # Nobody listens there any more: a worker that died without cleaning up.
                with contextlib.suppress(OSError):
                    os.unlink(peer)
                self._peers_scanned = -1.0
            except OSError:
                pass  # the queue is full (that worker is already woken), or the file just went

    def _scan(self) -> list[str]:
        assert self._run_dir is not None
        try:
            names = os.listdir(self._run_dir)
        except FileNotFoundError:
            return []
        own = str(self._own_path) if self._own_path else None
        paths = [str(self._run_dir / n) for n in names if n.endswith(".sock")]
        return [p for p in paths if p != own]

    # -- the worker side -------------------------------------------------------------------
    def listen(self, on_message: Callable[[bytes], object] | None = None) -> None:
        """Start receiving wake-ups from other processes (a worker calls this once);
        ``on_message`` is given each one's message."""
        if self._run_dir is None or self._listener is not None:
            return
        self._on_message = on_message
        self._run_dir.mkdir(parents=True, exist_ok=True)
        path = self._run_dir / f"w-{os.getpid()}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            path.unlink(missing_ok=True)
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            log.warning("cannot listen for wake-ups at %s (%s); polling only", path, exc)
            return
        sock.setblocking(False)
        self._listener, self._own_path = sock, path
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_datagram)

    def _on_datagram(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(BlockingIOError, OSError):
            while message := self._listener.recv(64):
                if self._on_message is not None:
                    self._on_message(message)
        self.work_signals += 1
        self._event.set()

    def clear(self) -> None:
        """Forget past wake-ups; call before looking for work so none is missed."""
        self._event.clear()

    @property
    def waiting_ready(self) -> bool:
        """A local ``wait(ready=True)`` is in progress: a worker with a free slot, idle."""
        return self._ready > 0

    def kick(self) -> bool:
        """Wake the local waiter only (a slot freed up); True when one was waiting ready to
        take work (``wait(ready=True)``): it runs at the loop's next turn."""
        woken = self._ready > 0 and not self._event.is_set()
        self._event.set()
        return woken

    def work(self) -> bool:
        """``kick``, for work that may be new (a task created, a notification from the
        database): counted in ``work_signals``."""
        self.work_signals += 1
        return self.kick()

    async def wait(self, timeout: float, *, ready: bool = True) -> bool:
        """Wait for a wake-up; True if one came, False on timeout. ``ready``: the waiter
        would take work if woken now (a worker with a free slot), as ``kick`` tells."""
        self._ready += ready
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._ready -= ready
        return True

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._own_path is not None:
            self._own_path.unlink(missing_ok=True)
            self._own_path = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
