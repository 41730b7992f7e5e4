"""PostgreSQL ``LISTEN``: wake-ups that cross hosts.

On SQLite every process of a deployment runs on one host, and ``wakeup.Wakeup`` wakes them
with Unix datagrams. On PostgreSQL workers and replicas run anywhere, so the database itself
tells them: a trigger on ``tasks`` (migration 0006) sends ``NOTIFY`` at the commit of

* ``seedbed_task_created`` — a task was created: idle workers claim at once;
* ``seedbed_task_changed`` (payload: the task id) — its state or progress moved: live-event
  streams following it read it at once instead of at their next poll;
* ``seedbed_callbacks`` — a task with a callBackUrl ended: dispatchers claim it;
* ``seedbed_admin_changed`` (payload: what changed, ``seedbed.admin_changes``) — sent by an
  admin command, not a trigger: servers drop the key or the switches they hold.

``PgNotifier`` holds one connection per process for ``LISTEN`` (asyncpg's ``add_listener``
on a dedicated connection, never a pooled one) and calls the subscribed callbacks on the event
loop. Notifications are not durable: one sent while a listener is disconnected is lost. So
after every (re)connection the wake-up callbacks are called once, as if a notification had
come, and every waiter keeps its slow safety-net poll (``poll_seconds``). A database restart
or a cut connection is noticed by asyncpg's termination callback or by a ``SELECT 1`` every
``check_seconds``, then the connection is made again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import make_url

__all__ = [
    "ADMIN_CHANGED",
    "CALLBACKS",
    "TASK_CHANGED",
    "TASK_CREATED",
    "PgNotifier",
    "listen_dsn",
]

log = logging.getLogger(__name__)

TASK_CREATED = "seedbed_task_created"
TASK_CHANGED = "seedbed_task_changed"
CALLBACKS = "seedbed_callbacks"
ADMIN_CHANGED = "seedbed_admin_changed"

#: seconds between reconnection attempts: doubled per failure up to the maximum
FIRST_RETRY = 0.2
MAX_RETRY = 5.0


def listen_dsn(database_url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg connects to, from a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PgNotifier:
    """One ``LISTEN`` connection per process; ``subscribe`` before ``run``."""

    def __init__(self, dsn: str, *, check_seconds: float = 5.0) -> None:
        self._dsn = dsn
        self._check_seconds = check_seconds
        self._callbacks: dict[str, list[Callable[[str], object]]] = {}
        #: channels whose callbacks run after each (re)connection: the wake-ups, which a
        #: missed notification would otherwise delay until the next safety-net poll
        self._catch_up: set[str] = set()
        self._closed = asyncio.Event()
        #: set while listening (tests wait for it)
        self.listening = asyncio.Event()
        self.connections = 0

    def subscribe(
        self, channel: str, callback: Callable[[str], object], *, on_reconnect: bool = False
    ) -> None:
        """Call ``callback(payload)`` on each notification on ``channel``; with
        ``on_reconnect``, also (payload ``""``) after every (re)connection."""
        self._callbacks.setdefault(channel, []).append(callback)
        if on_reconnect:
            self._catch_up.add(channel)

    def close(self) -> None:
        """End ``run()``."""
        self._closed.set()

    async def run(self) -> None:
        """Listen until ``close()``, reconnecting after any failure."""
        import asyncpg  # the postgres extra

        retry = FIRST_RETRY
        while not self._closed.is_set():
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for channel in self._callbacks:
                    await conn.add_listener(channel, self._on_notify)
                self.connections += 1
                if self.connections > 1:
                    log.info("listening for database notifications again")
                self.listening.set()
                retry = FIRST_RETRY
                for channel in self._catch_up:
                    self._dispatch(channel, "")
                await self._watch(conn, lost)
            except Exception as exc:  # refused, reset, timed out, the server shutting down
                if not self._closed.is_set():
                    log.warning(
                        "database notifications interrupted (%s); reconnecting in %.1f s",
                        type(exc).__name__,
                        retry,
                    )
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            if self._closed.is_set():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(retry):
                    await self._closed.wait()
            retry = min(retry * 2, MAX_RETRY)

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when closed; raise when the connection is gone."""
        waiters = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._closed.wait())]
        try:
            while True:
                await asyncio.wait(
                    waiters, timeout=self._check_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                if self._closed.is_set():
                    return
                if lost.is_set() or conn.is_closed():
                    raise ConnectionResetError("the LISTEN connection was closed")
                # A silent network cut leaves the socket open: a round trip proves it alive.
                await conn.fetchval("SELECT 1", timeout=self._check_seconds)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self._dispatch(channel, payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("a notification callback on %s failed", channel)
