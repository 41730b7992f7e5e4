"""An asyncio webhook receiver on loopback, in the test's own event loop, whose answers are
scripted per request: a status, raw bytes (odd answers: 1xx first, chunked, garbage), or a
hang. It counts the connections each request came on, so tests can see connection reuse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import h11


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    connection: int  # 0 for the first connection the receiver accepted, 1 for the next...


@dataclass
class Raw:
    """Bytes written as the whole answer; ``close``: the receiver hangs up after them."""

    data: bytes
    close: bool = False


Answer = Callable[[Seen], Awaitable[int | Raw]]


async def _ok(seen: Seen) -> int:
    return 200


@dataclass
class Hooks:
    port: int
    seen: list[Seen]
    connections: list[asyncio.StreamWriter]

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextlib.asynccontextmanager
async def serve_hooks(answer: Answer = _ok) -> AsyncIterator[Hooks]:
    seen: list[Seen] = []
    connections: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(connections)
        connections.append(writer)
        http = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        http.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                got = Seen(
                    method=request.method.decode(),
                    path=request.target.decode(),
                    headers={k.decode().lower(): v.decode() for k, v in request.headers},
                    body=body,
                    connection=number,
                )
                seen.append(got)
                reply = await answer(got)
                if isinstance(reply, Raw):
                    writer.write(reply.data)
                    await writer.drain()
                    if reply.close:
                        return
                    leftover = http.trailing_data[0]
                    http = h11.Connection(h11.SERVER)  # the raw answer bypassed its state
                    if leftover:  # (no bytes would tell it the connection ended)
                        http.receive_data(leftover)
                    continue
                headers = [("Content-Length", "0")]
                writer.write(http.send(h11.Response(status_code=reply, headers=headers)))
                writer.write(http.send(h11.EndOfMessage()))
                await writer.drain()
                if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    return
                http.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Hooks(port=port, seen=seen, connections=connections)
    finally:
        server.close()
        for writer in connections:
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()
