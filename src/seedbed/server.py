"""``seedbed serve``'s uvicorn server, with a graceful stop for supervisors.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits for open ones to finish;
then the app's lifespan shuts down. Two things must happen *before* that wait, or it would
last for ever: live-event streams must end and the in-process worker must stop claiming. The
app's ``Context.begin_shutdown`` does both; this server calls it as soon as the signal comes.
The lifespan then lets generating tasks run for ``shutdown_grace_seconds`` and hands the rest
back to the queue (``Worker.drain``).

A supervisor's SIGTERM is an ordinary stop, so the process exits 0 (uvicorn re-raises the
signal after its shutdown, which would make the exit status "killed by SIGTERM").

``uvicorn_config`` is the server's configuration, with the HTTP limits of ``seedbed.httpguard``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from seedbed.config import Settings
from seedbed.httpguard import HttpLimits, protocol_class

__all__ = ["GracefulServer", "uvicorn_config"]


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            captured: list[int] = getattr(self, "_captured_signals", [])
            while sig in captured:
                captured.remove(sig)
        if self._signalled:
            return
        self._signalled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._on_signal()
            return
        # A signal handler runs between two bytecodes of whatever the loop was doing: do the
        # work as a callback of the loop instead.
        loop.call_soon_threadsafe(self._on_signal)


def uvicorn_config(app: Any, settings: Settings, *, access_log: bool) -> uvicorn.Config:
    """``seedbed serve``'s uvicorn configuration: uvloop, and httptools behind the limits of
    ``seedbed.httpguard`` (header size, count and time; body rate) taken from ``settings``."""
    limits = HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through seedbed's handler (JSON, redacted)
        access_log=access_log,
        loop="uvloop",
        http=protocol_class(limits),
        timeout_graceful_shutdown=30,
    )
