"""netguard against real HTTP servers on loopback (the only real sockets its tests open).

The servers run in threads on 127.0.0.x port 0. Every test whose URLs could lead anywhere
else uses ``guard_client``, whose transport refuses to send to a non-loopback address: even
a netguard bug could not make these tests send a packet off this machine.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from seedbed.netguard import FetchError, NetPolicy, UrlRefused, fetch
from tls_util import self_signed

LOOPBACK = NetPolicy.from_cidrs(["127.0.0.0/8"])
MB = 1024 * 1024


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    host: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    sni: list[str | None] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def _record(self) -> tuple[str, dict[str, list[str]]]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            parts = urlsplit(self.path)
            return parts.path, parse_qs(parts.query)

        def do_GET(self) -> None:
            path, query = self._record()
            size = int(query.get("n", ["0"])[0])
            if path == "/ok":
                self._reply(200, b"\x89PNG fake", Content_Type="image/png")
            elif path == "/host":
                self._reply(200, self.headers["Host"].encode())
            elif path == "/missing":
                self._reply(404, b"no such image")
            elif path == "/big-length":
                self._reply(200, b"x" * size)
            elif path == "/big-chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, size, 64 * 1024):
                    chunk = b"x" * min(64 * 1024, size - start)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/big-close":  # no length at all: the body ends when we close
                self.close_connection = True
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"x" * size)
            elif path == "/slow":
                server.release.wait(3)
                self._reply(200, b"late")
            elif path == "/slow-body":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                server.release.wait(3)
            elif path.startswith("/chain/"):
                left = int(path.rsplit("/", 1)[1])
                if left == 0:
                    self._reply(200, b"end of chain")
                else:
                    status = (301, 302, 303, 307, 308)[left % 5]
                    # alternate relative and absolute Locations
                    location = str(left - 1) if left % 2 else f"{server.base}/chain/{left - 1}"
                    self._reply(status, Location=location)
            elif path == "/redirect":
                self._reply(302, Location=query["to"][0])
            else:
                self._reply(500)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up early (size limit, timeout) is expected here


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    httpd = _QuietServer((host, 0), BaseHTTPRequestHandler)
    server = Server(host, httpd.server_address[1])
    httpd.RequestHandlerClass = _handler(server)
    if tls is not None:
        tls.sni_callback = lambda sock, name, ctx: server.sni.append(name)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(2)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve() as srv:
        yield srv


class LoopbackOnly(httpx.AsyncBaseTransport):
    """A real transport that refuses, in the test itself, to send anywhere but loopback."""

    def __init__(self, **kwargs: Any) -> None:
        self.inner = httpx.AsyncHTTPTransport(**kwargs)
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if not request.url.host.startswith("127."):
            raise AssertionError(f"test tried to reach {request.url.host}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def guard() -> AsyncIterator[tuple[httpx.AsyncClient, LoopbackOnly]]:
    transport = LoopbackOnly()
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        yield client, transport


def names(table: dict[str, str]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [table[host]]

    return resolve


async def test_fetch_ok(server: Server) -> None:
    got = await fetch(f"{server.base}/ok", policy=LOOPBACK, max_bytes=MB, timeout=2)
    assert got.content == b"\x89PNG fake"
    assert got.content_type == "image/png"
    assert got.status == 200
    assert got.url == f"{server.base}/ok"


async def test_fetch_by_name_is_pinned_and_keeps_host(
    server: Server, guard: tuple[httpx.AsyncClient, LoopbackOnly]
) -> None:
    client, transport = guard
    url = f"http://images.test:{server.port}/host"
    got = await fetch(
        url,
        policy=LOOPBACK,
        max_bytes=MB,
        timeout=2,
        resolver=names({"images.test": "127.0.0.1"}),
        client=client,
    )
    assert got.content == f"images.test:{server.port}".encode()
    assert got.url == url
    assert transport.hosts == ["127.0.0.1"]


async def test_404_is_a_fetch_error(server: Server) -> None:
    with pytest.raises(FetchError) as info:
        await fetch(f"{server.base}/missing", policy=LOOPBACK, max_bytes=MB, timeout=2)
    assert info.value.reason == "HTTP 404"


@pytest.mark.parametrize("route", ["big-length", "big-chunked", "big-close"])
async def test_body_over_limit(server: Server, route: str) -> None:
    with pytest.raises(FetchError, match="larger than 1 MB"):
        await fetch(f"{server.base}/{route}?n={3 * MB}", policy=LOOPBACK, max_bytes=MB, timeout=2)


@pytest.mark.parametrize("route", ["big-length", "big-chunked", "big-close"])
async def test_body_at_limit_is_fine(server: Server, route: str) -> None:
    got = await fetch(f"{server.base}/{route}?n={MB}", policy=LOOPBACK, max_bytes=MB, timeout=2)
    assert len(got.content) == MB


@pytest.mark.parametrize("route", ["slow", "slow-body"])
async def test_slow_server_times_out(server: Server, route: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        await fetch(f"{server.base}/{route}", policy=LOOPBACK, max_bytes=MB, timeout=0.5)
    assert info.value.reason == "timed out after 0.5 s"
    assert time.monotonic() - started < 1.5


async def test_redirect_chain_within_limit(server: Server) -> None:
    got = await fetch(f"{server.base}/chain/5", policy=LOOPBACK, max_bytes=MB, timeout=2)
    assert got.content == b"end of chain"
    assert got.url == f"{server.base}/chain/0"


async def test_too_many_redirects(server: Server) -> None:
    with pytest.raises(FetchError, match=r"too many redirects \(more than 5\)"):
        await fetch(f"{server.base}/chain/6", policy=LOOPBACK, max_bytes=MB, timeout=2)
    strict = NetPolicy(allow=LOOPBACK.allow, max_redirects=0)
    with pytest.raises(FetchError, match=r"more than 0"):
        await fetch(f"{server.base}/chain/1", policy=strict, max_bytes=MB, timeout=2)


@pytest.mark.parametrize(
    ("target", "reason_part"),
    [
        ("http://10.0.0.1/x", "private address 10.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("http://[::ffff:10.0.0.1]/x", "private address 10.0.0.1"),
        ("http://167772161/x", "private address 10.0.0.1"),
        ("http://internal.test/x", "private address 192.168.0.7"),
    ],
)
async def test_redirect_to_private_target_is_refused(
    server: Server, guard: tuple[httpx.AsyncClient, LoopbackOnly], target: str, reason_part: str
) -> None:
    client, transport = guard
    with pytest.raises(UrlRefused) as info:
        await fetch(
            f"{server.base}/redirect?to={target}",
            policy=LOOPBACK,
            max_bytes=MB,
            timeout=2,
            resolver=names({"internal.test": "192.168.0.7"}),
            client=client,
        )
    assert info.value.reason.startswith("redirect refused: ")
    assert reason_part in info.value.reason
    assert transport.hosts == ["127.0.0.1"]  # only the first hop was ever sent


async def test_redirect_to_localhost_refused_when_loopback_not_allowed(
    guard: tuple[httpx.AsyncClient, LoopbackOnly],
) -> None:
    # A server on 127.0.0.2 with only that one address allowed: loopback as such stays shut.
    client, transport = guard
    policy = NetPolicy.from_cidrs(["127.0.0.2/32"])
    # All of 127.0.0.0/8 is loopback on Linux, so binding 127.0.0.2 needs no set-up.
    context = serve("127.0.0.2")
    other = context.__enter__()
    try:
        for target, reason in [
            (f"http://localhost:{other.port}/ok", "host 'localhost' is not allowed"),
            (f"http://127.0.0.1:{other.port}/ok", "loopback address 127.0.0.1 is not allowed"),
        ]:
            with pytest.raises(UrlRefused) as info:
                await fetch(
                    f"{other.base}/redirect?to={target}",
                    policy=policy,
                    max_bytes=MB,
                    timeout=2,
                    client=client,
                )
            assert info.value.reason == f"redirect refused: {reason}"
        assert transport.hosts == ["127.0.0.2", "127.0.0.2"]
        assert [s.path.split("?")[0] for s in other.seen] == ["/redirect", "/redirect"]
    finally:
        context.__exit__(None, None, None)


async def test_default_policy_refuses_loopback_without_connecting(
    server: Server, guard: tuple[httpx.AsyncClient, LoopbackOnly]
) -> None:
    client, transport = guard
    before = len(server.seen)
    for url in (f"{server.base}/ok", f"http://localhost:{server.port}/ok"):
        with pytest.raises(UrlRefused):
            await fetch(url, policy=NetPolicy(), max_bytes=MB, timeout=2, client=client)
    with pytest.raises(UrlRefused, match=r"loopback address 127\.0\.0\.1"):
        await fetch(f"{server.base}/ok", policy=NetPolicy(), max_bytes=MB, timeout=2)
    assert transport.hosts == []
    assert len(server.seen) == before


async def test_connection_refused() -> None:
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError) as info:
        await fetch(f"http://127.0.0.1:{port}/", policy=LOOPBACK, max_bytes=MB, timeout=2)
    assert info.value.reason == "connection refused"


# --- TLS: the pinned IP is dialled, yet the certificate is checked against the name -------


@pytest.mark.parametrize(("cert_name", "ok"), [("images.test", True), ("other.test", False)])
async def test_https_checks_certificate_against_real_name(
    tmp_path: Path, cert_name: str, ok: bool
) -> None:
    cert, key = self_signed(tmp_path, cert_name)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    transport = LoopbackOnly(verify=client_ctx)
    with serve(tls=server_ctx) as srv:
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            call = fetch(
                f"https://images.test:{srv.port}/host",
                policy=LOOPBACK,
                max_bytes=MB,
                timeout=2,
                resolver=names({"images.test": "127.0.0.1"}),
                client=client,
            )
            if ok:
                got = await call
                assert got.content == f"images.test:{srv.port}".encode()
            else:
                with pytest.raises(FetchError, match="TLS certificate verification failed"):
                    await call
    assert srv.sni == ["images.test"]
    assert transport.hosts == ["127.0.0.1"]
