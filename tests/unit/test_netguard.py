"""netguard's address policy, URL checks and fetch logic, without a single real socket.

Every fetch here goes through a stub resolver and an ``httpx.MockTransport``; refusals are
asserted to happen before the transport is ever called.
"""

from __future__ import annotations

import gzip
import ipaddress
import socket
import zlib
from collections.abc import Callable

import httpx
import pytest

from seedbed import netguard
from seedbed.netguard import (
    FetchError,
    NetguardError,
    NetPolicy,
    UrlRefused,
    check_url,
    default_resolver,
    fetch,
)

DEFAULT = NetPolicy()
LOOPBACK = NetPolicy.from_cidrs(["127.0.0.0/8", "::1/128"])
PUBLIC_IP = "93.184.216.34"
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: any attempt to connect a real socket in these tests fails them."""

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"unit test tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def stub_resolver(table: dict[str, list[str]]) -> Callable[[str, int], object]:
    """A resolver answering from ``table``; an unknown name fails like NXDOMAIN."""
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def forbidden_client() -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose transport records and fails any request: nothing may be sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise AssertionError(f"netguard connected to {request.url}")

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), seen


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(record)), seen


# --- address policy ------------------------------------------------------------------------

REFUSED_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("100.64.0.1", "CGNAT"),
    ("fc00::1", "private"),
    ("fec0::1", "site-local"),
    ("255.255.255.255", ""),
    ("240.0.0.1", ""),
    ("192.0.2.1", ""),
    ("::ffff:127.0.0.1", "loopback address 127.0.0.1"),
    ("::ffff:10.0.0.1", "private address 10.0.0.1"),
    ("::ffff:169.254.169.254", "link-local address 169.254.169.254"),
    ("2002:7f00:1::", "loopback address 127.0.0.1"),  # 6to4
    ("2002:a00:1::5", "private address 10.0.0.1"),  # 6to4
    ("64:ff9b::a00:1", "private address 10.0.0.1"),  # NAT64
    ("::7f00:1", ""),  # IPv4-compatible (deprecated) form
    ("2001::1", ""),  # Teredo
]


@pytest.mark.parametrize(("ip", "reason_part"), REFUSED_ADDRESSES)
def test_refused_addresses(ip: str, reason_part: str) -> None:
    assert not DEFAULT.is_allowed(ip)
    assert not DEFAULT.is_allowed(ipaddress.ip_address(ip))
    reason = DEFAULT.refusal_reason(ip)
    assert reason is not None and reason.endswith("is not allowed")
    assert reason_part in reason


@pytest.mark.parametrize(
    "ip",
    [PUBLIC_IP, "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822"],
)
def test_public_addresses_allowed(ip: str) -> None:
    # Policy check only: nothing ever connects to these.
    assert DEFAULT.is_allowed(ip)
    assert DEFAULT.refusal_reason(ip) is None


def test_reason_is_human() -> None:
    assert DEFAULT.refusal_reason("127.0.0.1") == "loopback address 127.0.0.1 is not allowed"


def test_allowlist_opens_a_network() -> None:
    assert LOOPBACK.is_allowed("127.0.0.1")
    assert LOOPBACK.is_allowed("::1")
    assert LOOPBACK.is_allowed("::ffff:127.0.0.1")  # the very same host
    assert not LOOPBACK.is_allowed("2002:7f00:1::")  # via a 6to4 gateway: not the same host
    assert not LOOPBACK.is_allowed("10.0.0.1")
    assert NetPolicy.from_cidrs(["10.0.0.0/8"]).is_allowed("10.1.2.3")
    assert NetPolicy.from_cidrs(["169.254.169.254"]).is_allowed("169.254.169.254")


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "not-a-network", "10.1.2.3/8", "", "::1/200"])
def test_from_cidrs_rejects_bad_cidr(cidr: str) -> None:
    with pytest.raises(ValueError, match="invalid network") as info:
        NetPolicy.from_cidrs(["127.0.0.0/8", cidr])
    assert repr(cidr) in str(info.value)


def test_from_cidrs_builds_policy() -> None:
    policy = NetPolicy.from_cidrs([" 127.0.0.0/8 ", "fd00::/8"], max_redirects=2)
    assert policy.allow == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert policy.max_redirects == 2
    assert NetPolicy().max_redirects == 5


# --- create-time URL check -----------------------------------------------------------------

REFUSED_URLS = [
    ("http://127.0.0.1/a.png", "loopback address 127.0.0.1"),
    ("http://[::1]/a.png", "loopback address ::1"),
    ("http://10.0.0.1/", "private address 10.0.0.1"),
    ("http://172.16.0.1:8080/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
    ("http://[fe80::1]/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://[::ffff:127.0.0.1]/", "loopback address 127.0.0.1"),
    ("http://[::ffff:10.0.0.1]/", "private address 10.0.0.1"),
    ("http://2130706433/", "loopback address 127.0.0.1"),
    ("http://0x7f000001/", "loopback address 127.0.0.1"),
    ("http://0x7f.1/", "loopback address 127.0.0.1"),
    ("http://0177.0.0.1/", "malformed URL"),  # httpx itself rejects leading zeros
    ("http://127.1/", "loopback address 127.0.0.1"),
    ("http://127.0.0.1./", "loopback address 127.0.0.1"),
    ("http://167772161/", "private address 10.0.0.1"),
    ("http://1.2.3.999/", "malformed URL"),  # httpx rejects it
    ("http://1.2.3.4.5/", "malformed IPv4"),
    ("http://0x100000000/", "malformed IPv4"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://localhost/", "localhost"),
    ("http://LOCALHOST:8080/", "localhost"),
    ("http://localhost./", "localhost"),
    ("http://api.localhost/", "localhost"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://example.com/a.png", "scheme 'ftp'"),
    ("gopher://example.com/", "scheme 'gopher'"),
    ("data:image/png;base64,AAAA", "scheme 'data'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("example.com/a.png", "scheme"),
    ("http:///a.png", "no host"),
    ("http://", "no host"),
    ("https://user:secret@example.com/a.png", "credentials"),
    ("https://user@example.com/a.png", "credentials"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:65536/", "port 65536"),
    ("http://exa%6dple.com/", "malformed host"),
    ("http://[::1/", "malformed URL"),
]


@pytest.mark.parametrize(("url", "reason_part"), REFUSED_URLS)
def test_check_url_refuses(url: str, reason_part: str) -> None:
    with pytest.raises(UrlRefused) as info:
        check_url(url, DEFAULT)
    assert reason_part in info.value.reason
    assert isinstance(info.value, NetguardError)
    assert str(info.value) == info.value.reason


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_IP}/a.png",
        "https://example.com/a.png?x=1#frag",
        "https://images.example.com:8443/a.png",
        "http://[2606:4700:4700::1111]/",
        "https://bücher.example/a.png",  # IDNA
        "http://internal.corp/a.png",  # a name: judged once resolved, at fetch time
    ],
)
def test_check_url_accepts(url: str) -> None:
    check_url(url, DEFAULT)


def test_localhost_allowed_with_loopback_allowlist() -> None:
    check_url("http://localhost:8080/a.png", LOOPBACK)
    check_url("http://127.0.0.1:8080/a.png", LOOPBACK)
    check_url("http://2130706433/", LOOPBACK)


# --- fetch: refusals happen before any connection ------------------------------------------


@pytest.mark.parametrize(
    ("url", "table", "reason_part"),
    [
        ("http://127.0.0.1/", {}, "loopback address 127.0.0.1"),
        ("http://2130706433/", {}, "loopback address 127.0.0.1"),
        ("http://localhost/", {"localhost": ["127.0.0.1"]}, "localhost"),
        ("http://evil.example/", {"evil.example": ["10.0.0.1"]}, "private address 10.0.0.1"),
        (
            "http://meta.example/",
            {"meta.example": ["169.254.169.254"]},
            "link-local address 169.254.169.254",
        ),
        (
            "http://mixed.example/",
            {"mixed.example": [PUBLIC_IP, "192.168.1.1"]},
            "private address 192.168.1.1",
        ),
        (
            "http://mapped.example/",
            {"mapped.example": ["::ffff:127.0.0.1"]},
            "loopback address 127.0.0.1",
        ),
        ("http://v6.example/", {"v6.example": ["2606:4700::1", "::1"]}, "loopback address ::1"),
        ("gopher://evil.example/", {}, "scheme 'gopher'"),
    ],
)
async def test_fetch_refuses_before_connecting(
    url: str, table: dict[str, list[str]], reason_part: str
) -> None:
    client, seen = forbidden_client()
    async with client:
        with pytest.raises(UrlRefused) as info:
            await fetch(
                url,
                policy=DEFAULT,
                max_bytes=MB,
                timeout=2,
                resolver=stub_resolver(table),  # type: ignore[arg-type]
                client=client,
            )
    assert reason_part in info.value.reason
    assert seen == []


async def test_fetch_follows_and_rechecks_redirects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        host, path = request.headers["Host"], request.url.path
        if (host, path) == ("a.example", "/start"):
            return httpx.Response(301, headers={"Location": "next"})
        if (host, path) == ("a.example", "/next"):
            return httpx.Response(303, headers={"Location": "https://b.example/final"})
        if (host, path) == ("b.example", "/final"):
            return httpx.Response(200, content=b"done")
        raise AssertionError(f"unexpected {host}{path}")

    client, seen = mock_client(handler)
    resolver = stub_resolver({"a.example": [PUBLIC_IP], "b.example": ["8.8.8.8"]})
    async with client:
        got = await fetch(
            "http://a.example/start",
            policy=DEFAULT,
            max_bytes=MB,
            timeout=2,
            resolver=resolver,  # type: ignore[arg-type]
            client=client,
            headers={"Authorization": "Bearer secret"},
        )
    assert got.content == b"done"
    assert got.url == "https://b.example/final"
    assert [str(r.url) for r in seen] == [
        f"http://{PUBLIC_IP}/start",
        f"http://{PUBLIC_IP}/next",
        "https://8.8.8.8/final",
    ]
    assert all(r.method == "GET" for r in seen)
    assert seen[1].headers.get("Authorization") == "Bearer secret"  # same origin
    assert "Authorization" not in seen[2].headers  # dropped on a cross-origin hop
    assert seen[2].extensions["sni_hostname"] == "b.example"


async def test_redirect_to_name_resolving_private_is_refused() -> None:
    client, seen = mock_client(
        lambda r: httpx.Response(302, headers={"Location": "http://rebind.example/x"})
    )
    resolver = stub_resolver({"a.example": [PUBLIC_IP], "rebind.example": ["192.168.0.10"]})
    async with client:
        with pytest.raises(UrlRefused) as info:
            await fetch(
                "http://a.example/",
                policy=DEFAULT,
                max_bytes=MB,
                timeout=2,
                resolver=resolver,  # type: ignore[arg-type]
                client=client,
            )
    assert "private address 192.168.0.10" in info.value.reason
    assert [r.url.host for r in seen] == [PUBLIC_IP]


async def test_redirect_to_bad_url_is_refused() -> None:
    client, seen = mock_client(
        lambda r: httpx.Response(307, headers={"Location": "file:///etc/passwd"})
    )
    async with client:
        with pytest.raises(UrlRefused) as info:
            await fetch(
                f"http://{PUBLIC_IP}/", policy=DEFAULT, max_bytes=MB, timeout=2, client=client
            )
    assert info.value.reason == "redirect refused: scheme 'file' is not allowed; use http or https"
    assert len(seen) == 1


async def test_malformed_location_is_a_fetch_error() -> None:
    # httpx parses Location itself (for response.next_request) and calls it a protocol error.
    client, seen = mock_client(lambda r: httpx.Response(302, headers={"Location": "http://[::1/"}))
    async with client:
        with pytest.raises(FetchError, match="invalid HTTP response"):
            await fetch(
                f"http://{PUBLIC_IP}/", policy=DEFAULT, max_bytes=MB, timeout=2, client=client
            )
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("max_bytes", "message"),
    [
        (10 * MB, "larger than 10 MB"),
        (3_000_000, "larger than 3 MB"),
        (1000, "larger than 1000 bytes"),
    ],
)
async def test_size_limit_message(max_bytes: int, message: str) -> None:
    client, _ = mock_client(lambda r: httpx.Response(200, content=b"x" * (max_bytes + 1)))
    async with client:
        with pytest.raises(FetchError, match=message):
            await fetch(
                f"http://{PUBLIC_IP}/",
                policy=DEFAULT,
                max_bytes=max_bytes,
                timeout=2,
                client=client,
            )


def streamed(body: bytes, encoding: str) -> httpx.Response:
    """A response whose body is still to be read, as from a real connection."""
    return httpx.Response(
        200, stream=httpx.ByteStream(body), headers={"Content-Encoding": encoding}
    )


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)],
)
async def test_compressed_body_is_decoded_and_bounded(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    small = compress(b"hello" * 10)
    bomb = compress(bytes(16 * MB))  # ~16 KB that would inflate to 16 MB

    def handler(request: httpx.Request) -> httpx.Response:
        return streamed(small if request.url.path == "/small" else bomb, encoding)

    client, _ = mock_client(handler)
    async with client:
        got = await fetch(
            f"http://{PUBLIC_IP}/small", policy=DEFAULT, max_bytes=MB, timeout=2, client=client
        )
        assert got.content == b"hello" * 10
        with pytest.raises(FetchError, match="larger than 1 MB"):
            await fetch(
                f"http://{PUBLIC_IP}/bomb", policy=DEFAULT, max_bytes=MB, timeout=2, client=client
            )


async def test_unsupported_encoding_and_bad_gzip() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return streamed(b"not gzip at all", "br" if request.url.path == "/br" else "gzip")

    client, _ = mock_client(handler)
    async with client:
        with pytest.raises(FetchError, match="unsupported content encoding 'br'"):
            await fetch(
                f"http://{PUBLIC_IP}/br", policy=DEFAULT, max_bytes=MB, timeout=2, client=client
            )
        with pytest.raises(FetchError, match="could not decode the gzip response"):
            await fetch(
                f"http://{PUBLIC_IP}/gz", policy=DEFAULT, max_bytes=MB, timeout=2, client=client
            )


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (
            httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] bad"),
            "TLS certificate verification failed",
        ),
        (httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version"), "TLS handshake failed"),
        (httpx.ConnectError("[Errno 113] No route to host"), "could not connect"),
        (httpx.ReadTimeout("read timed out"), "timed out after 1.5 s"),
        (httpx.RemoteProtocolError("illegal header"), "invalid HTTP response from the server"),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection closed unexpectedly"),
    ],
)
async def test_httpx_errors_are_translated(exc: httpx.HTTPError, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = mock_client(handler)
    async with client:
        with pytest.raises(FetchError) as info:
            await fetch(
                f"http://{PUBLIC_IP}/", policy=DEFAULT, max_bytes=MB, timeout=1.5, client=client
            )
    assert info.value.reason.startswith(reason)
    assert info.value.__cause__ is exc


async def test_non_2xx_and_redirect_without_location() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(int(request.url.path.strip("/")))

    client, _ = mock_client(handler)
    async with client:
        for status in (404, 500, 302, 304):
            with pytest.raises(FetchError, match=f"^HTTP {status}$"):
                await fetch(
                    f"http://{PUBLIC_IP}/{status}",
                    policy=DEFAULT,
                    max_bytes=MB,
                    timeout=2,
                    client=client,
                )


async def test_default_resolver_numeric_host() -> None:
    # A numeric host is parsed by getaddrinfo itself: no DNS query is sent.
    assert "127.0.0.1" in await default_resolver("127.0.0.1", 80)


def test_a_url_is_parsed_once_per_policy_and_a_refusal_every_time() -> None:
    open_ = netguard.NetPolicy.from_cidrs(["127.0.0.0/8"])
    closed = netguard.NetPolicy()
    url = "http://127.0.0.1:8080/hook?x=1"
    first = netguard.parse_target(url, open_)
    assert netguard.parse_target(url, open_) is first  # kept: a delivery reuses the create's
    assert first.port == 8080 and first.url.raw_path == b"/hook?x=1"
    assert netguard.NetPolicy.from_cidrs(["127.0.0.0/8"]) == open_  # the cache is no part of it
    for _ in range(2):  # the other policy keeps its own answer: refused, each time
        with pytest.raises(netguard.UrlRefused, match="loopback"):
            netguard.parse_target(url, closed)
    for n in range(netguard.TARGETS_KEPT + 1):  # bounded: forgotten all at once when full
        netguard.parse_target(f"http://127.0.0.1:8080/{n}", open_)
    assert len(open_._targets) <= netguard.TARGETS_KEPT
