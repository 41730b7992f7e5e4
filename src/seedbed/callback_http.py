"""How a callback is POSTed: h11 over kept-alive asyncio connections, pinned by netguard.

A callback is one small POST whose answer is thrown away, and the time from a task's end to
its receiver having the callback is what a user of callbacks waits for. On a CPU that had
been idle for 0.1 s (as a server between tasks is), httpx took 1.4 ms from the call to its
first socket write, httpcore alone 1.1 ms, and h11 on an asyncio stream 0.5 ms (0.3, 0.16 and
0.07 warm; issue 18 in docs/benchmarks.md). Of h11's 0.5 ms, 0.3 were its building and
checking of the request; so the request's head is formatted here, checked to h11's own rules
(0.07 ms), and h11 is told of the request after it has left. h11 keeps the connection's state
and reads the answer. httpx stays the client for everything else.

Every POST goes through netguard first: the URL is checked, the host resolved and every
address judged, and the connection goes to the checked address, with the real name in
``Host`` and in TLS (SNI and the certificate check). Connections are kept per (scheme, name,
address, port), so a TLS connection verified for one name never carries another's callback,
and one that is idle for ``KEEPALIVE`` seconds is closed. A kept connection that the receiver
closed before answering (its own keep-alive ran out as we sent) is tried once more on a new
one: a callback may arrive twice anyway (CONTRACT §5), and otherwise it would wait for its
next attempt, 45 s later.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import h11

from seedbed import netguard

__all__ = ["CallbackPoster"]

#: seconds a connection is kept idle (httpx's default)
KEEPALIVE = 5.0
#: idle connections kept per origin, and origins kept in all
IDLE_PER_ORIGIN = 4
MAX_ORIGINS = 256
#: deliveries in flight to one origin at once (more wait): a receiver is not flooded
CONNECTIONS_PER_ORIGIN = 16
#: bytes of an answer read before hanging up: a chatty receiver cannot hold a delivery slot
READ_LIMIT = 64 * 1024

_Origin = tuple[str, str, str, int]  # scheme, host, pinned address, port

# h11's rules (RFC 9110 / 9112): a request target of visible characters; a header name is a
# token; its value has no NUL, no line break, and no space at either end
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


class _Stale(Exception):
    """A kept connection was closed by the receiver before any answer came."""


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    reused: bool = False
    #: closes the connection once it has been idle for ``KEEPALIVE`` seconds
    expiry: asyncio.TimerHandle | None = None

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        self.writer.close()


@dataclass(eq=False)
class _Pool:
    slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CONNECTIONS_PER_ORIGIN)
    )
    idle: list[_Connection] = field(default_factory=list)
    busy: int = 0


class CallbackPoster:
    """POSTs JSON bodies to user URLs under a netguard policy; one per dispatcher."""

    def __init__(
        self,
        *,
        policy: netguard.NetPolicy,
        resolver: netguard.Resolver | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: the context that verifies receivers (tests pass one trusting their own
        certificate); by default netguard's, which trusts the usual public authorities."""
        self.policy = policy
        self._resolver = resolver or netguard.default_resolver
        self._tls = tls
        self._pools: OrderedDict[_Origin, _Pool] = OrderedDict()

    async def post(
        self, url: str, body: bytes, *, headers: Mapping[str, str], timeout: float
    ) -> int:
        """POST ``body`` as JSON and return the answer's status; redirects are not followed.

        Raises :class:`netguard.UrlRefused` for a refused URL or address (before connecting)
        and :class:`netguard.FetchError` for a failure to connect, a broken answer or the
        ``timeout`` (seconds, for everything together).
        """
        target = netguard.parse_target(url, self.policy)
        try:
            async with asyncio.timeout(timeout):
                address = await netguard.pinned_address(target, self.policy, self._resolver)
                origin = (
                    target.url.scheme,
                    target.host,
                    str(address).partition("%")[0],
                    target.port,
                )
                pool = self._pool(origin)
                pool.busy += 1
                try:
                    async with pool.slots:
                        return await self._exchange(pool, origin, target, body, headers)
                finally:
                    pool.busy -= 1
                    self._trim()
        except TimeoutError:
            raise netguard.FetchError(f"timed out after {timeout:g} s") from None
        except h11.RemoteProtocolError:
            raise netguard.FetchError("invalid HTTP response from the server") from None
        except h11.LocalProtocolError:  # a header that HTTP cannot carry: nothing was sent
            raise netguard.FetchError("request failed: invalid request header") from None

    async def close(self) -> None:
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.close()
        self._pools.clear()

    # -- one request and answer ----------------------------------------------------------------
    async def _exchange(
        self,
        pool: _Pool,
        origin: _Origin,
        target: netguard.Target,
        body: bytes,
        headers: Mapping[str, str],
    ) -> int:
        connection = self._kept(pool)
        if connection is not None:
            try:
                return await self._send(pool, connection, target, body, headers)
            except _Stale:
                pass  # closed as we sent: once more, on a new connection
        connection = await self._connect(origin, target)
        try:
            return await self._send(pool, connection, target, body, headers)
        except _Stale:
            raise netguard.FetchError("connection closed unexpectedly") from None

    async def _send(
        self,
        pool: _Pool,
        connection: _Connection,
        target: netguard.Target,
        body: bytes,
        headers: Mapping[str, str],
    ) -> int:
        """One request on ``connection``; the connection is kept for the next one if the
        answer was read whole and the receiver keeps it open, and closed otherwise."""
        keep = False
        try:
            status = await self._request(connection, target, body, headers)
            http = connection.http
            keep = http.our_state is h11.DONE and http.their_state is h11.DONE
            return status
        except OSError as exc:
            if connection.reused and connection.http.their_state is h11.SEND_RESPONSE:
                raise _Stale from exc
            raise netguard.FetchError("connection closed unexpectedly") from None
        finally:
            if keep:
                connection.http.start_next_cycle()
                self._keep(pool, connection)
            else:
                connection.close()

    async def _request(
        self,
        connection: _Connection,
        target: netguard.Target,
        body: bytes,
        headers: Mapping[str, str],
    ) -> int:
        http = connection.http
        fields = [
            ("Host", target.host_header),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers.items(),
        ]
        path = target.url.raw_path
        connection.writer.write(_request_head(path, fields) + body)
        # told after the request left (the same request, already checked: h11 agrees with it)
        http.send(h11.Request(method="POST", target=path, headers=fields))
        http.send(h11.Data(data=body))
        http.send(h11.EndOfMessage())
        await connection.writer.drain()
        status: int | None = None
        read = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await connection.reader.read(READ_LIMIT)
                if not data and status is None:
                    raise ConnectionResetError("closed before answering")
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                read += len(event.data)
                if read >= READ_LIMIT:
                    break  # enough: the connection is not kept (its answer was not read whole)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
            elif event is h11.PAUSED:  # 101 Switching Protocols: not an answer to a callback
                raise h11.RemoteProtocolError("the receiver switched protocols")
            # an informational answer (1xx) is skipped: the final one follows
        if status is None:
            raise h11.RemoteProtocolError("no answer")
        return status

    # -- connections ---------------------------------------------------------------------------
    def _pool(self, origin: _Origin) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool()
        self._pools.move_to_end(origin)
        return pool

    @staticmethod
    def _kept(pool: _Pool) -> _Connection | None:
        while pool.idle:
            connection = pool.idle.pop()
            if connection.expiry is not None:
                connection.expiry.cancel()
                connection.expiry = None
            if connection.usable():
                connection.reused = True
                return connection
            connection.close()
        return None

    def _keep(self, pool: _Pool, connection: _Connection) -> None:
        if len(pool.idle) >= IDLE_PER_ORIGIN or not connection.usable():
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.expiry = loop.call_later(KEEPALIVE, self._expire, pool, connection)
        pool.idle.append(connection)

    @staticmethod
    def _expire(pool: _Pool, connection: _Connection) -> None:
        with contextlib.suppress(ValueError):
            pool.idle.remove(connection)
        connection.expiry = None
        connection.close()

    def _trim(self) -> None:
        """Forget the least recently used origins beyond ``MAX_ORIGINS`` that nothing uses."""
        excess = len(self._pools) - MAX_ORIGINS
        if excess <= 0:
            return
        for origin in [o for o, pool in self._pools.items() if not pool.busy][:excess]:
            for connection in self._pools.pop(origin).idle:
                connection.close()

    async def _connect(self, origin: _Origin, target: netguard.Target) -> _Connection:
        scheme, _host, address, port = origin
        tls: ssl.SSLContext | None = None
        name: str | None = None
        if scheme == "https":
            tls = self._tls or netguard.tls_context()
            # the certificate is checked against the real name, although the address is dialled
            name = target.host.removesuffix(".")
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=tls, server_hostname=name, limit=READ_LIMIT
            )
        except (OSError, ssl.SSLError) as exc:
            text = f"{type(exc).__name__} {exc}".lower()
            raise netguard.FetchError(netguard.connect_failure(text)) from None
        return _Connection(reader, writer)


def _request_head(path: bytes, fields: list[tuple[str, str]]) -> bytes:
    """``POST path HTTP/1.1`` and ``fields``, as h11 writes them; raises
    ``h11.LocalProtocolError`` for what h11 would refuse (then nothing is sent)."""
    if not _TARGET.fullmatch(path):
        raise h11.LocalProtocolError("illegal request target")
    lines = [b"POST " + path + b" HTTP/1.1"]
    for name, value in fields:
        try:
            raw = name.encode("ascii"), value.encode("ascii")
        except UnicodeEncodeError:
            raise h11.LocalProtocolError("a header that is not ASCII") from None
        if not _FIELD_NAME.fullmatch(raw[0]) or not _FIELD_VALUE.fullmatch(raw[1]):
            raise h11.LocalProtocolError("illegal header")
        lines.append(raw[0] + b": " + raw[1])
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
