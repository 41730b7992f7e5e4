"""The one way seedbed fetches or calls a URL that a user supplied (CONTRACT §8).

User URLs (``image_urls``, ``fileUrl``, ``callBackUrl``) let anyone make the server open
connections, so they are an SSRF surface. Everything here exists to keep those connections
off loopback, private networks and cloud metadata endpoints:

* :func:`check_url` is the cheap create-time check (scheme, host, credentials, port, IP
  literals in any spelling, ``localhost``); names are only judged once resolved.
* :func:`fetch` and the callback poster (``callback_http``, through :func:`parse_target` and
  :func:`pinned_address`) resolve the name, refuse it if *any* address is refused,
  then connect to the checked address itself (the URL's host is rewritten to the IP, the
  ``Host`` header and TLS SNI keep the real name), so a second DNS answer cannot swap in a
  private address (DNS rebinding). Redirects are followed by hand and every hop is re-checked.
* Size and time are capped: a response over ``max_bytes`` (after decompression) is cut off,
  and one overall deadline covers resolution, every hop and the body.

Operators open holes with :class:`NetPolicy` ``allow`` networks (tests allow loopback).
A shared ``httpx.AsyncClient`` may be passed for connection reuse; it must not use proxies
(``trust_env=False``), or the proxy would resolve names and pinning would mean nothing. Its
pool is keyed by the pinned IP, so an open HTTPS connection verified for one name may carry a
request for another name at the same IP and port; pass no client where that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

__all__ = [
    "FetchError",
    "Fetched",
    "NetPolicy",
    "NetguardError",
    "Resolver",
    "UrlRefused",
    "check_resolved",
    "check_url",
    "connect_failure",
    "default_resolver",
    "fetch",
    "parse_target",
    "pinned_address",
    "tls_context",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> IP address strings``; injectable so tests never touch real DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_REDIRECTS = {301, 302, 303, 307, 308}
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")


class NetguardError(Exception):
    """Root of netguard's errors; ``reason`` is short, human and safe to show users."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UrlRefused(NetguardError):
    """The URL (or a redirect, or an address its host resolves to) is not allowed."""


class FetchError(NetguardError):
    """The URL was allowed but fetching it failed (HTTP status, size, time, connection)."""


@dataclass(frozen=True)
class Fetched:
    """A fetched body; ``url`` is the final URL after redirects (with its real host)."""

    content: bytes
    content_type: str | None
    url: str
    status: int


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form really leads to (mapped, NAT64, 6to4), if any."""
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def _kind(addr: IPAddress) -> str | None:
    """Why an address is not a public destination, or None when it is one."""
    kinds = [
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("shared (CGNAT)", isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT),
        ("private", addr.is_private),
        # fec0::/10 counts as global in Python
        ("site-local", isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local),
        ("reserved", addr.is_reserved),
        ("non-public", not addr.is_global),
    ]
    return next((kind for kind, hit in kinds if hit), None)


@dataclass(frozen=True)
class NetPolicy:
    """Which addresses outgoing connections may reach.

    Public unicast addresses are allowed; everything else is refused unless it lies in one of
    the operator's ``allow`` networks (e.g. ``--allow-network 127.0.0.0/8`` for tests).
    """

    allow: tuple[IPNetwork, ...] = ()
    max_redirects: int = 5
    #: URLs already checked by ``parse_target`` under this policy, with their target: a task's
    #: callBackUrl is parsed at its create and again at each delivery, and parsing it is
    #: 0.25 ms on a CPU that was idle a moment (httpx's URL parser; 0.01 ms warm)
    _targets: dict[str, Target] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], *, max_redirects: int = 5) -> NetPolicy:
        """Build a policy from CIDR strings; raise ValueError naming a bad one."""
        nets: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                nets.append(ipaddress.ip_network(cidr.strip()))
            except ValueError as exc:
                raise ValueError(f"invalid network {cidr!r} in allowlist: {exc}") from None
        return cls(allow=tuple(nets), max_redirects=max_redirects)

    def _allowed_net(self, addr: IPAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self.allow)

    def refusal_reason(self, ip: IPAddress | str) -> str | None:
        """A short reason why ``ip`` is refused, or None when it may be connected to."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if self._allowed_net(addr):
            return None
        inner = _embedded_ipv4(addr)
        if inner is not None:
            # The embedded IPv4 address is where the packets end up, so it alone decides.
            # Only a mapped form (::ffff:a.b.c.d) is that very host, so only it inherits an
            # allowance; a 6to4 or NAT64 form goes through a gateway first.
            mapped = isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None
            if mapped and self._allowed_net(inner):
                return None
            kind = _kind(inner)
            return f"{kind} address {inner} (as {addr}) is not allowed" if kind else None
        kind = _kind(addr)
        return f"{kind} address {addr} is not allowed" if kind else None

    def is_allowed(self, ip: IPAddress | str) -> bool:
        """Whether a connection to ``ip`` is allowed."""
        return self.refusal_reason(ip) is None


@dataclass(frozen=True)
class Target:
    """A user URL that passed the checks that need no DNS answer."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host without brackets, as given
    port: int
    literal: IPAddress | None  # set when the host is an IP address in any spelling

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.url.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        """The ``Host`` header naming the real host (the connection goes to an address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.url.port is None else f"{host}:{self.url.port}"


def _ip_literal(host: str) -> IPAddress | None:
    """Parse an IP literal the way ``getaddrinfo`` would, including ``2130706433``/``0x7f.1``."""
    if ":" in host:
        if "%" in host:
            raise UrlRefused("IPv6 zone identifiers are not allowed in URLs")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlRefused(f"malformed IPv6 address {host!r}") from None
    labels = host.removesuffix(".").split(".")
    if not _NUMERIC_LABEL.match(labels[-1]):
        return None
    # A numeric last label makes it an IPv4 address (WHATWG); inet_aton accepts the decimal,
    # octal, hex and short forms that the C resolver would also accept.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host.removesuffix(".")))
    except OSError:
        raise UrlRefused(f"malformed IPv4 address {host!r}") from None


#: targets kept per policy (``NetPolicy._targets``), forgotten all at once past this
TARGETS_KEPT = 4096


def parse_target(url: str | httpx.URL, policy: NetPolicy) -> Target:
    """The target of a user URL that passes the checks needing no DNS answer, else
    :class:`UrlRefused`. The answer depends only on the URL and the policy: a URL given as
    text is checked once per policy (what was refused is checked again: it is rare)."""
    if not isinstance(url, str):
        return _parse_target(url, policy)
    cache = policy._targets
    target = cache.get(url)
    if target is None:
        target = _parse_target(url, policy)
        if len(cache) >= TARGETS_KEPT:
            cache.clear()
        cache[url] = target
    return target


def _parse_target(url: str | httpx.URL, policy: NetPolicy) -> Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UrlRefused("malformed URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(f"scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise UrlRefused("URL has no host")
    if parsed.userinfo:
        raise UrlRefused("URLs with credentials (user:password@) are not allowed")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UrlRefused(f"port {parsed.port} is out of range")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = _ip_literal(host)
    if literal is not None:
        reason = policy.refusal_reason(literal)
        if reason is not None:
            raise UrlRefused(reason)
    elif not _NAME.match(host):
        raise UrlRefused(f"malformed host name {host!r}")
    elif host.removesuffix(".").split(".")[-1] == "localhost" and not policy.is_allowed(
        "127.0.0.1"
    ):
        raise UrlRefused(f"host {host!r} is not allowed")
    return Target(parsed, host, port, literal)


def check_url(url: str, policy: NetPolicy) -> None:
    """Create-time check of a user URL; raise :class:`UrlRefused` when it can be refused now.

    Host names are not resolved here (DNS answers change); :func:`fetch` checks them.
    """
    parse_target(url, policy)


async def check_resolved(url: str, policy: NetPolicy, *, resolver: Resolver | None = None) -> None:
    """:func:`check_url`, then resolve a host name and refuse it if any address is refused.

    For URLs kept to be called later (``callBackUrl``): a name that points at a refused
    network is refused now. A name that does not resolve passes (it may resolve by the time
    it is called); the callback poster checks it again then.
    """
    target = parse_target(url, policy)
    if target.literal is not None:
        return
    try:
        await pinned_address(target, policy, resolver or default_resolver)
    except FetchError:
        return


async def default_resolver(host: str, port: int) -> list[str]:
    """Resolve through the event loop's ``getaddrinfo`` (the system resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def pinned_address(target: Target, policy: NetPolicy, resolver: Resolver) -> IPAddress:
    """The address to connect to, after checking every address the host resolves to."""
    if target.literal is not None:
        return target.literal
    try:
        answers = await resolver(target.host, target.port)
        addrs = [ipaddress.ip_address(a) for a in answers]
    except (OSError, UnicodeError, ValueError):
        raise FetchError(f"could not resolve host {target.host}") from None
    if not addrs:
        raise FetchError(f"could not resolve host {target.host}")
    for addr in addrs:
        reason = policy.refusal_reason(addr)
        if reason is not None:
            raise UrlRefused(f"{target.host} resolves to a refused address: {reason}")
    return addrs[0]


async def _send(
    client: httpx.AsyncClient,
    target: Target,
    ip: IPAddress,
    method: str,
    headers: httpx.Headers,
    content: bytes | None,
    timeout: float,
) -> httpx.Response:
    """Send to the pinned ``ip`` while naming the real host in ``Host`` and SNI."""
    headers = httpx.Headers(headers)
    headers["Host"] = target.host_header
    extensions: dict[str, Any] = {}
    if target.url.scheme == "https" and target.literal is None:
        # httpcore passes this as ssl server_hostname, so the certificate is checked
        # against the real name although the URL now holds an IP address.
        extensions["sni_hostname"] = target.host.removesuffix(".")
    request = client.build_request(
        method,
        target.url.copy_with(host=str(ip).partition("%")[0]),
        headers=headers,
        content=content,
        timeout=timeout,
        extensions=extensions,
    )
    return await client.send(request, stream=True, follow_redirects=False)


def _size(limit: int) -> str:
    for unit in (1024 * 1024, 1_000_000):
        if limit % unit == 0:
            return f"{limit // unit} MB"
    return f"{limit} bytes"


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` of decoded body, refusing as soon as more arrive."""
    too_big = FetchError(f"response is larger than {_size(max_bytes)}")
    try:
        loaded = response.content  # only a test double (MockTransport) answers pre-read
    except httpx.ResponseNotRead:
        pass
    else:
        if len(loaded) > max_bytes:
            raise too_big
        return loaded
    length = response.headers.get("content-length")
    if length is not None and length.isdecimal() and int(length) > max_bytes:
        raise too_big
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        # Decompress by hand with a bound: httpx would inflate a whole chunk at once, and a
        # few kilobytes of gzip can expand to gigabytes.
        decoder = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
    elif encoding != "identity":
        raise FetchError(f"unsupported content encoding {encoding!r}")
    else:
        decoder = None
    body = bytearray()
    try:
        async with _raw_chunks(response) as chunks:
            async for chunk in chunks:
                # max_length stops inflating one byte past the limit, so memory stays bounded.
                body += decoder.decompress(chunk, max_bytes + 1 - len(body)) if decoder else chunk
                if len(body) > max_bytes:
                    raise too_big
        if decoder is not None:
            body += decoder.flush(max_bytes + 1 - len(body))
    except zlib.error:
        raise FetchError(f"could not decode the {encoding} response") from None
    if len(body) > max_bytes:
        raise too_big
    return bytes(body)


@contextlib.asynccontextmanager
async def _raw_chunks(response: httpx.Response) -> AsyncIterator[AsyncIterator[bytes]]:
    """The undecoded body stream, closed even when we stop reading early."""
    async with contextlib.aclosing(cast(AsyncGenerator[bytes, None], response.aiter_raw())) as it:
        yield it


def _http_error(exc: httpx.HTTPError, timeout: float) -> FetchError:
    """A short, user-safe reason for an httpx failure (no internals)."""
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"timed out after {timeout:g} s")
    # The telling cause (ConnectionRefusedError, SSLCertVerificationError) is down the chain.
    chain: list[BaseException] = [exc]
    while len(chain) < 8 and (chain[-1].__cause__ or chain[-1].__context__):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if isinstance(exc, httpx.ConnectError):
        return FetchError(connect_failure(text))
    if isinstance(exc, httpx.RemoteProtocolError):
        return FetchError("invalid HTTP response from the server")
    if isinstance(exc, httpx.NetworkError):
        return FetchError("connection closed unexpectedly")
    return FetchError("request failed")


def connect_failure(text: str) -> str:
    """Why a connection could not be made, from its error's text (type names included)."""
    if "certificate" in text:
        return "TLS certificate verification failed"
    if "ssl" in text:
        return "TLS handshake failed"
    return "connection refused" if "refused" in text else "could not connect"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context of every private client, built once.

    A new ``httpx.AsyncClient`` otherwise builds its own, loading the CA bundle: about 40 ms
    of blocking work on the event loop per client. A task's inputs are fetched at once, one
    client each, so a task with 14 image URLs stalled every other request for over half a
    second (found by fuzzing createTask, issue 13).
    """
    return httpx.create_ssl_context(trust_env=False)  # as the clients it replaces had it


@contextlib.asynccontextmanager
async def _guarded(
    client: httpx.AsyncClient | None, timeout: float
) -> AsyncIterator[httpx.AsyncClient]:
    """One overall deadline, httpx errors translated, and a private client when none given."""
    try:
        async with asyncio.timeout(timeout):
            if client is not None:
                yield client
            else:
                async with httpx.AsyncClient(
                    trust_env=False, follow_redirects=False, verify=tls_context()
                ) as own:
                    yield own
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise _http_error(exc, timeout) from exc


async def fetch(
    url: str,
    *,
    policy: NetPolicy,
    max_bytes: int,
    timeout: float,
    resolver: Resolver | None = None,
    client: httpx.AsyncClient | None = None,
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    """GET a user URL under the policy, following up to ``policy.max_redirects`` redirects.

    Raises :class:`UrlRefused` for a refused URL, redirect or address (before connecting to
    it) and :class:`FetchError` for a non-2xx answer, an oversized body, the ``timeout``
    (seconds, for everything together) or a connection failure.
    """
    resolve = resolver or default_resolver
    send_headers = httpx.Headers({"Accept-Encoding": "identity"})
    send_headers.update(headers or {})
    target = parse_target(url, policy)
    async with _guarded(client, timeout) as http:
        for hop in range(policy.max_redirects + 1):
            try:
                ip = await pinned_address(target, policy, resolve)
            except UrlRefused as exc:
                if hop:
                    raise UrlRefused(f"redirect refused: {exc.reason}") from None
                raise
            response = await _send(http, target, ip, "GET", send_headers, None, timeout)
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or location is None:
                    if not 200 <= response.status_code < 300:
                        raise FetchError(f"HTTP {response.status_code}")
                    content = await _read_body(response, max_bytes)
                    content_type = response.headers.get("content-type")
                    return Fetched(content, content_type, str(target.url), response.status_code)
            finally:
                await response.aclose()
            if hop == policy.max_redirects:
                break
            try:
                next_url = target.url.join(location)
                nxt = parse_target(next_url, policy)
            except httpx.InvalidURL:
                raise UrlRefused("redirect refused: malformed Location") from None
            except UrlRefused as exc:
                raise UrlRefused(f"redirect refused: {exc.reason}") from None
            if nxt.origin != target.origin:
                for name in ("Authorization", "Cookie"):  # never hand credentials to another site
                    send_headers.pop(name, None)
            target = nxt
    raise FetchError(f"too many redirects (more than {policy.max_redirects})")
