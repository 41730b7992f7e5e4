"""The callback poster against real receivers on loopback: what is sent, what is read, which
connections are kept, and every way a receiver can fail."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from hook_receiver import Raw, Seen, serve_hooks
from seedbed import callback_http
from seedbed.callback_http import CallbackPoster
from seedbed.netguard import FetchError, NetPolicy, UrlRefused
from tls_util import self_signed

LOOPBACK = NetPolicy.from_cidrs(["127.0.0.0/8"])


def names(table: dict[str, str]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return [table[host]]

    return resolve


async def test_posts_the_exact_body_and_headers_to_the_pinned_address() -> None:
    body = b'{"code": 200, "data": {"taskId": "t-1", "state": "success"}}'
    poster = CallbackPoster(policy=LOOPBACK, resolver=names({"hooks.test": "127.0.0.1"}))
    async with serve_hooks() as hooks:
        status = await poster.post(
            hooks.url("/cb?x=1&y=%20", host="hooks.test"),
            body,
            headers={"X-Webhook-Signature": "abc", "User-Agent": "seedbed/0.1"},
            timeout=2,
        )
        await poster.close()
    assert status == 200
    [seen] = hooks.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/cb?x=1&y=%20", body)
    assert seen.headers["host"] == f"hooks.test:{hooks.port}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["content-length"] == str(len(body))
    assert seen.headers["x-webhook-signature"] == "abc"
    assert seen.headers["user-agent"] == "seedbed/0.1"


async def test_a_refused_address_is_never_connected_to() -> None:
    poster = CallbackPoster(policy=NetPolicy(), resolver=names({"inside.test": "127.0.0.1"}))
    async with serve_hooks() as hooks:
        for url in (hooks.url(), hooks.url(host="inside.test"), "ftp://127.0.0.1/x"):
            with pytest.raises(UrlRefused):
                await poster.post(url, b"{}", headers={}, timeout=2)
    assert hooks.connections == []


async def test_redirects_are_answers_not_followed() -> None:
    async def moved(seen: Seen) -> Raw:
        return Raw(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")

    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks(moved) as hooks:
        assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 302
        await poster.close()
    assert [s.path for s in hooks.seen] == ["/hook"]


async def test_one_kept_connection_carries_successive_callbacks() -> None:
    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks() as hooks:
        for _ in range(3):
            assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 200
        await poster.close()
    assert [s.connection for s in hooks.seen] == [0, 0, 0]


async def test_answers_that_end_the_connection_are_not_kept() -> None:
    answers = [
        Raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
        Raw(b"HTTP/1.0 204 No Content\r\n\r\n", close=True),  # HTTP/1.0: one request each
        Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200_000),  # too long
        201,
        201,
    ]

    async def answer(seen: Seen) -> int | Raw:
        return answers[len(hooks.seen) - 1]

    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks(answer) as hooks:
        statuses = [await poster.post(hooks.url(), b"{}", headers={}, timeout=2) for _ in answers]
        await poster.close()
    assert statuses == [200, 204, 200, 201, 201]
    # a new connection after each answer that ended it (or was cut off unread), then one kept
    assert [s.connection for s in hooks.seen] == [0, 1, 2, 3, 3]


async def test_informational_and_chunked_answers() -> None:
    answers = [
        Raw(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"),
        Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ]

    async def answer(seen: Seen) -> Raw:
        return answers[len(hooks.seen) - 1]

    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks(answer) as hooks:
        statuses = [await poster.post(hooks.url(), b"{}", headers={}, timeout=2) for _ in range(2)]
        await poster.close()
    assert statuses == [202, 200]
    assert [s.connection for s in hooks.seen] == [0, 0]


async def test_a_kept_connection_the_receiver_closed_is_replaced_once() -> None:
    """The receiver hangs up a kept connection just as the next callback is sent on it (its
    keep-alive ran out): the callback goes again on a new connection, and arrives once."""
    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks() as hooks:
        assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 200
        # The receiver drops the first connection; the poster has not noticed yet (its loop has
        # not run), so it sends on it and finds it closed.
        hooks.connections[0].transport.abort()
        assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 200
        await poster.close()
    assert [s.connection for s in hooks.seen] == [0, 1]


async def test_idle_connections_are_closed_after_the_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(callback_http, "KEEPALIVE", 0.05)
    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks() as hooks:
        assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 200
        await asyncio.sleep(0.3)
        assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 200
        await poster.close()
    assert [s.connection for s in hooks.seen] == [0, 1]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Raw(b"this is not http\r\n\r\n", close=True), "invalid HTTP response from the server"),
        (Raw(b"", close=True), "connection closed unexpectedly"),
        (Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True),
         "invalid HTTP response from the server"),
    ],
)  # fmt: skip
async def test_broken_answers_have_short_reasons(reply: Raw, reason: str) -> None:
    async def answer(seen: Seen) -> Raw:
        return reply

    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks(answer) as hooks:
        with pytest.raises(FetchError) as info:
            await poster.post(hooks.url(), b"{}", headers={}, timeout=2)
        await poster.close()
    assert info.value.reason == reason
    assert len(hooks.seen) == 1  # a new connection is not tried again


@pytest.mark.parametrize(
    "bad",
    [{"X-Bad": "a\r\nb"}, {"X-Bad": " padded"}, {"X-Bad": "nul\x00"}, {"X Bad": "1"},
     {"X-Bad": "caf\u00e9"}, {"": "1"}],
)  # fmt: skip
async def test_a_header_http_cannot_carry_is_refused_before_sending(bad: dict[str, str]) -> None:
    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks() as hooks:
        with pytest.raises(FetchError, match="invalid request header"):
            await poster.post(hooks.url(), b"{}", headers=bad, timeout=2)
        # nothing of it was sent: the next callback goes out as usual
        assert await poster.post(hooks.url(), b"{}", headers={}, timeout=2) == 200
        await poster.close()
    assert len(hooks.seen) == 1


@pytest.mark.parametrize(
    "fields",
    [
        [("Host", "hooks.test:8080"), ("Content-Type", "application/json")],
        [("Host", "h"), ("Content-Length", "2"), ("X-Empty", ""), ("X-Inner", "a  b\tc")],
        [("Host", "h"), ("x-lower", "v"), ("User-Agent", "seedbed/0.1 (+https://x.test/a?b=c)")],
    ],
)
def test_the_request_head_is_what_h11_writes(fields: list[tuple[str, str]]) -> None:
    """Formatted by hand ahead of the socket write (h11 is told after): byte for byte h11's,
    and h11 refuses nothing it lets through."""
    import h11

    for path in (b"/", b"/cb?x=1&y=%20", b"/a/b;c"):
        http = h11.Connection(h11.CLIENT)
        expected = http.send(h11.Request(method="POST", target=path, headers=fields))
        assert callback_http._request_head(path, fields) == expected
    for bad_path in (b"", b"/a b", b"/\x7f"):
        with pytest.raises(h11.LocalProtocolError):
            callback_http._request_head(bad_path, fields)
        with pytest.raises(h11.LocalProtocolError):
            h11.Request(method="POST", target=bad_path, headers=fields)


async def test_a_receiver_that_never_answers_times_out() -> None:
    never = asyncio.Event()

    async def hang(seen: Seen) -> int:
        await never.wait()
        return 200

    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks(hang) as hooks:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(FetchError, match=r"timed out after 0\.2 s"):
            await poster.post(hooks.url(), b"{}", headers={}, timeout=0.2)
        assert loop.time() - started < 2
        await poster.close()
        never.set()


async def test_connection_refused() -> None:
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    poster = CallbackPoster(policy=LOOPBACK)
    with pytest.raises(FetchError) as info:
        await poster.post(f"http://127.0.0.1:{port}/", b"{}", headers={}, timeout=2)
    assert info.value.reason == "connection refused"


async def test_deliveries_to_one_origin_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callback_http, "CONNECTIONS_PER_ORIGIN", 2)
    inside = 0
    most = 0

    async def slow(seen: Seen) -> int:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.05)
        inside -= 1
        return 200

    poster = CallbackPoster(policy=LOOPBACK)
    async with serve_hooks(slow) as hooks:
        calls = [poster.post(hooks.url(), b"{}", headers={}, timeout=5) for _ in range(6)]
        assert await asyncio.gather(*calls) == [200] * 6
        await poster.close()
    assert most == 2
    assert len({s.connection for s in hooks.seen}) == 2


async def test_origins_in_use_are_never_forgotten_to_make_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(callback_http, "MAX_ORIGINS", 2)
    release = asyncio.Event()

    async def answer(seen: Seen) -> int:
        if seen.headers["host"].startswith("a.test"):
            await release.wait()
        return 200

    table = dict.fromkeys(("a.test", "b.test", "c.test"), "127.0.0.1")
    poster = CallbackPoster(policy=LOOPBACK, resolver=names(table))
    async with serve_hooks(answer) as hooks:
        held = asyncio.create_task(
            poster.post(hooks.url(host="a.test"), b"{}", headers={}, timeout=5)
        )
        while not hooks.seen:
            await asyncio.sleep(0.01)
        for host in ("b.test", "c.test"):
            assert await poster.post(hooks.url(host=host), b"{}", headers={}, timeout=2) == 200
        # three origins for a MAX of 2: the least recently used idle one (b) was forgotten,
        # never a, the oldest, which a delivery is still using
        assert [origin[1] for origin in poster._pools] == ["a.test", "c.test"]
        release.set()
        assert await held == 200
        await poster.close()


# --- TLS: the pinned address is dialled, yet the certificate is checked against the name ------


@pytest.mark.parametrize(("cert_name", "ok"), [("hooks.test", True), ("other.test", False)])
async def test_https_checks_the_certificate_against_the_real_name(
    tmp_path: Path, cert_name: str, ok: bool
) -> None:
    cert, key = self_signed(tmp_path, cert_name)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    names_seen: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names_seen.append(name)  # type: ignore[assignment]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    poster = CallbackPoster(
        policy=LOOPBACK,
        resolver=names({"hooks.test": "127.0.0.1"}),
        tls=ssl.create_default_context(cafile=str(cert)),
    )
    call = poster.post(f"https://hooks.test:{port}/cb", b"{}", headers={}, timeout=2)
    try:
        if ok:
            assert await call == 204
        else:
            with pytest.raises(FetchError, match="TLS certificate verification failed"):
                await call
    finally:
        await poster.close()
        server.close()
    assert names_seen == ["hooks.test"]
