"""``seedbed serve``'s HTTP limits against real sockets: header size and count (431), header and
body time (408), and other clients served meanwhile (issue 13)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from proc import server

from conftest import free_port

pytestmark = pytest.mark.slow

HEADER_BYTES = 32_768
HEADER_COUNT = 50
HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.0
BODY_MIN_RATE = 2000


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    data_dir: Path = tmp_path_factory.mktemp("limits")
    with server(
        data_dir,
        port,
        max_header_bytes=HEADER_BYTES,
        max_header_count=HEADER_COUNT,
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        body_min_rate=BODY_MIN_RATE,
    ):
        yield f"http://127.0.0.1:{port}"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(url: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(url)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a refusal always closes)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def _request(*headers: str, path: str = "/healthz") -> bytes:
    return "".join(
        [f"GET {path} HTTP/1.1\r\n", "Host: x\r\n", *(h + "\r\n" for h in headers), "\r\n"]
    ).encode()


def _answered(sock: socket.socket) -> bool:
    """Whether the server has written something (or closed) on ``sock``."""
    return bool(select.select([sock], [], [], 0)[0])


def _healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=5, trust_env=False).status_code == 200


def test_1_mb_header_is_431_and_others_are_served(url: str) -> None:
    served: list[float] = []
    stop = threading.Event()

    def others() -> None:
        with httpx.Client(base_url=url, timeout=5, trust_env=False) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                served.append(time.monotonic() - started)

    thread = threading.Thread(target=others)
    thread.start()
    try:
        for _ in range(3):
            response = httpx.get(
                f"{url}/healthz", headers={"X-Big": "a" * 1_000_000}, timeout=10, trust_env=False
            )
            assert response.status_code == 431
            assert response.headers["connection"] == "close"
            assert response.json() == {
                "code": 431,
                "msg": f"Request header fields too large: limit is {HEADER_BYTES} bytes",
                "data": None,
            }
    finally:
        stop.set()
        thread.join()
    assert served and max(served) < 2.0
    assert _healthy(url)


def test_headers_up_to_the_byte_limit_are_served(url: str) -> None:
    response = httpx.get(
        f"{url}/healthz", headers={"X-Big": "a" * (HEADER_BYTES - 1000)}, trust_env=False
    )
    assert response.status_code == 200


def test_too_many_headers_is_431(url: str) -> None:
    # Host and X-0 ... : HEADER_COUNT headers are served, one more is refused
    for count, status in ((HEADER_COUNT, 200), (HEADER_COUNT + 1, 431)):
        with _connect(url) as sock:
            extra = [f"X-{i}: 1" for i in range(count - 2)]
            sock.sendall(_request(*extra, "Connection: close"))
            code, _, body = _answer(_read_all(sock))
        assert code == status, count
        if status == 431:
            assert body == {
                "code": 431,
                "msg": f"Request header fields too large: at most {HEADER_COUNT} headers",
                "data": None,
            }


def test_header_count_is_per_request_on_a_kept_alive_connection(url: str) -> None:
    with _connect(url) as sock:
        extra = [f"X-{i}: 1" for i in range(HEADER_COUNT - 1)]
        sock.sendall(_request(*extra) + _request(*extra) + _request("Connection: close"))
        raw = _read_all(sock)
    assert raw.count(b"HTTP/1.1 200 OK") == 3


def test_headers_sent_byte_by_byte_are_cut_off(url: str) -> None:
    request = _request("X-Slow: " + "a" * 200)
    with _connect(url) as sock:
        started = time.monotonic()
        sent = 0
        while not _answered(sock) and time.monotonic() - started < HEADER_TIMEOUT + 3:
            sock.send(request[sent : sent + 1])
            sent += 1
            time.sleep(0.02)
            if sent % 20 == 0:  # others are served meanwhile
                assert _healthy(url)
        elapsed = time.monotonic() - started
        answer = _read_all(sock)
    assert sent < len(request)
    assert HEADER_TIMEOUT - 0.1 < elapsed < HEADER_TIMEOUT + 3
    code, _, body = _answer(answer)
    assert code == 408
    assert body["code"] == 408
    assert body["msg"] == f"Request headers not received within {HEADER_TIMEOUT:g} seconds"


def test_a_connection_that_sends_nothing_is_closed(url: str) -> None:
    with _connect(url) as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert HEADER_TIMEOUT - 0.1 < time.monotonic() - started < HEADER_TIMEOUT + 3


def _post_slowly(url: str, body: bytes, chunk: int, pause: float) -> tuple[bytes, float]:
    head = (
        "POST /api/v1/jobs/createTask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with _connect(url) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for offset in range(0, len(body), chunk):
            if _answered(sock):
                break
            sock.sendall(body[offset : offset + chunk])
            time.sleep(pause)
        while not _answered(sock):
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        return _read_all(sock), elapsed


def test_a_trickled_body_is_cut_off(url: str) -> None:
    body = b'{"model": "seedream/4.5-text-to-image", "input": {"prompt": "' + b"a" * 2000 + b'"}}'
    raw, elapsed = _post_slowly(url, body, chunk=10, pause=0.1)  # 100 bytes/s
    code, _, answer = _answer(raw)
    assert code == 408
    assert answer["code"] == 408
    assert answer["msg"].startswith("Request body too slow")
    # the grace, then the average falls below the rate at once
    assert BODY_TIMEOUT - 0.1 < elapsed < BODY_TIMEOUT + 3
    assert _healthy(url)


def test_a_body_above_the_minimum_rate_is_read(url: str) -> None:
    body = b'{"model": "seedream/4.5-text-to-image", "input": {"prompt": "' + b"a" * 9000 + b'"}}'
    # about 5,000 bytes/s over two seconds: past the grace, above the rate
    raw, elapsed = _post_slowly(url, body, chunk=500, pause=0.1)
    assert elapsed > BODY_TIMEOUT
    code, _, answer = _answer(raw)
    assert code == 200
    assert answer["code"] == 401  # read whole, then refused for want of a key


def test_an_invalid_request_is_a_json_400(url: str) -> None:
    with _connect(url) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        code, headers, body = _answer(_read_all(sock))
    assert code == 400
    assert headers["content-type"] == "application/json"
    assert body["code"] == 400
