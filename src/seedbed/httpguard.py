"""``seedbed serve``'s HTTP/1.1 protocol: uvicorn's httptools protocol with limits on what a
client may make the server hold.

uvicorn's httptools protocol reads a request's line and headers without any cap (llhttp has
none, httptools gathers a header by repeated concatenation: a 100 MB header was read whole and
stalled the event loop for seconds) and waits for headers and bodies for ever. This subclass
adds, per connection:

- **header bytes**: at most ``max_header_bytes`` are handed to the parser while a request's
  headers are incomplete; past that the answer is 431 and the connection closes. The count is
  kept per ``data_received`` call, so a request that starts inside the chunk that ended the one
  before it may get up to one chunk (at most 256 KiB with uvloop) more: memory stays bounded.
- **header count**: more than ``max_header_count`` headers answer 431.
- **header time**: a request's line and headers must arrive within ``header_timeout`` seconds of
  its first byte (or of the connection's opening); else 408 (a connection that sent nothing is
  closed silently, as keep-alive's idle timeout does).
- **body rate**: once the headers are in, the body must arrive by
  ``body_timeout + received / body_min_rate`` seconds (a grace, then a minimum average rate);
  else 408. While the app does not read (flow control paused), the clock starts over.

Refusals answer kie's JSON envelope (``{"code": 431, "msg": ..., "data": null}``) with
``Connection: close``, then half-close and discard what the client still sends for a moment
(lingering close): closing a socket with unread data makes the kernel send a reset, and the
client would lose the answer it is about to read.

The alternatives were weighed: h11's ``h11_max_incomplete_event_size`` bounds header bytes (as
a 400) but neither count nor time, and h11 parses in Python, slower than llhttp.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["GuardedHttpToolsProtocol", "HttpLimits", "protocol_class"]

log = logging.getLogger(__name__)

#: after a refusal, how long the client's remaining bytes are read and discarded, and how many
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """What one connection may make the server hold (the ``Settings`` of the same names)."""

    max_header_bytes: int = 65_536
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    body_min_rate: float = 4096.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is in ``_refusal``."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``limits`` enforced (see the module's docstring)."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Between a request's start (or the connection's) and the end of its headers.
        self._awaiting_headers = True
        self._message_open = False
        self._header_bytes = 0
        self._header_timer: TimerHandle | None = None
        # Between the end of a request's headers and the end of its body.
        self._in_body = False
        self._body_started = 0.0
        self._body_bytes = 0
        self._body_timer: TimerHandle | None = None
        # A refusal set by a parser callback, then sent once parsing stopped.
        self._refusal: tuple[int, str] | None = None
        self._refused = False
        self._drained = 0

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends its headers is not held longer than one that is slow.
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout, self._on_header_timeout
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._refused:  # only lingering: nothing left to wait for
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._drain(len(data))
            return
        self._unset_keepalive_if_required()
        limit = self.limits.max_header_bytes
        while data:
            if self._awaiting_headers:
                room = limit - self._header_bytes
                if room <= 0:
                    self._refuse(431, f"Request header fields too large: limit is {limit} bytes")
                    return
                if len(data) > room:
                    part, data = data[:room], data[room:]
                else:
                    part, data = data, b""
                self._header_bytes += len(part)
            else:
                part, data = data, b""
            if not self._feed(part):
                return
        # Timers only for what is still incomplete: a whole request in one read (the common
        # case) arms none.
        if self._awaiting_headers and self._message_open and self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._on_header_timeout
            )
        if self._in_body and self._body_timer is None:
            self._arm_body_timer(self._body_started + self.limits.body_timeout)

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the connection was refused or closed on the way."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                log.debug("invalid HTTP request from %s", self.client)
                self._refuse(400, "Invalid HTTP request received.")
            return False
        return not self._refused and not self.transport.is_closing()

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_open = True
        self._awaiting_headers = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_header_count:
            self._refusal = (
                431,
                f"Request header fields too large: at most {self.limits.max_header_count} headers",
            )
            raise _Refused()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._in_body = True
        self._body_started = self.loop.time()
        self._body_bytes = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._message_open = False
        self._awaiting_headers = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own 400 is plain text; every answer of this server is kie's envelope.
        self._refuse(400, msg)

    # -- timers ----------------------------------------------------------------------------
    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self._refused:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A response (a live-event stream, say) is still going out; the next request's
            # headers can wait for it, and the connection is held by that response anyway.
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._on_header_timeout
            )
            return
        if self._message_open or self._header_bytes:
            limit = self.limits.header_timeout
            self._refuse(408, f"Request headers not received within {limit:g} seconds")
        else:
            self.transport.close()

    def _arm_body_timer(self, deadline: float) -> None:
        delay = max(0.0, deadline - self.loop.time())
        self._body_timer = self.loop.call_later(delay, self._on_body_timer)

    def _on_body_timer(self) -> None:
        self._body_timer = None
        if not self._in_body or self._refused:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The app is not reading: the client is not the one who is slow. Start over.
            self._body_started, self._body_bytes = now, 0
            self._arm_body_timer(now + self.limits.body_timeout)
            return
        limits = self.limits
        deadline = (
            self._body_started + limits.body_timeout + self._body_bytes / limits.body_min_rate
        )
        if now < deadline:
            self._arm_body_timer(deadline)
            return
        self._refuse(
            408,
            f"Request body too slow: it must arrive at {limits.body_min_rate:g} bytes per second "
            f"at least, after {limits.body_timeout:g} seconds",
        )

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    # -- refusing --------------------------------------------------------------------------
    def _refuse(self, status: int, msg: str) -> None:
        """Answer ``status`` when no response is under way, then close (lingering)."""
        if self._refused:
            return
        self._refused = True
        self._cancel_timers()
        log.debug("refused %s with %d: %s", self.client, status, msg)
        cycle = self.cycle
        answer = True
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not self._in_body:
                # Another response is going out (or half out) on this connection: it cannot
                # be interleaved with ours.
                answer = False
            # The app reading this request's body learns it is gone; what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if not answer:
            transport.close()
            return
        transport.write(_envelope(status, msg))
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def _drain(self, size: int) -> None:
        self._drained += size
        if self._drained > LINGER_BYTES:
            self.transport.close()


def _envelope(status: int, msg: str) -> bytes:
    body = orjson.dumps({"code": status, "msg": msg, "data": None})
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


def protocol_class(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``limits``, for ``uvicorn.Config(http=...)`` (which takes a
    class, not an instance)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
