"""The core issue's SSRF table, for ``callBackUrl`` (createTask) and ``fileUrl`` (upload).

The server runs without the loopback allowance and with a stub resolver, so names resolve to
the table's addresses and every refusal happens before any connection is opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LiveServer, auth, make_settings, serve_in_thread

# (url, stub DNS answers, a part of the reason)
REFUSED: list[tuple[str, dict[str, list[str]], str]] = [
    ("http://127.0.0.1/hook", {}, "loopback address 127.0.0.1"),
    ("http://[::1]/hook", {}, "loopback address ::1"),
    ("http://10.1.2.3/hook", {}, "private address 10.1.2.3"),
    ("http://172.16.5.4/hook", {}, "private address 172.16.5.4"),
    ("http://192.168.0.10/hook", {}, "private address 192.168.0.10"),
    ("http://169.254.169.254/latest/meta-data", {}, "link-local address 169.254.169.254"),
    ("http://100.64.0.1/hook", {}, "CGNAT"),
    ("http://[::ffff:10.0.0.1]/hook", {}, "private address 10.0.0.1"),
    ("http://2130706433/hook", {}, "loopback address 127.0.0.1"),
    ("http://localhost:8080/hook", {}, "localhost"),
    ("http://hooks.internal/cb", {"hooks.internal": ["10.0.0.5"]}, "resolves to a refused address"),
    (
        "http://mixed.example/cb",
        {"mixed.example": ["93.184.216.34", "192.168.1.1"]},
        "private address 192.168.1.1",
    ),
    ("http://meta.example/cb", {"meta.example": ["169.254.169.254"]}, "link-local"),
    ("ftp://example.com/cb", {}, "scheme 'ftp' is not allowed; use http or https"),
    ("file:///etc/passwd", {}, "scheme 'file'"),
    ("https://user:pw@example.com/cb", {}, "credentials"),
]


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[LiveServer, dict[str, list[str]], list[str]]]:
    dns: dict[str, list[str]] = {}
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in dns:
            raise OSError("no such host")
        return dns[host]

    with serve_in_thread(make_settings(tmp_path, allow_network=[])) as server:
        server.app.state.ctx.resolver = resolve
        yield server, dns, asked


@pytest.mark.parametrize(("url", "answers", "reason"), REFUSED)
def test_refused_callback_urls_are_a_422_that_holds_nothing(
    guarded: tuple[LiveServer, dict[str, list[str]], list[str]],
    url: str,
    answers: dict[str, list[str]],
    reason: str,
) -> None:
    server, dns, asked = guarded
    dns.update(answers)
    key, key_id = server.add_key(credits=10)
    body = {"model": "bytedance/seedream", "callBackUrl": url, "input": {"prompt": "x"}}
    answer = server.create(key, body)
    assert answer["code"] == 422 and answer["data"] is None, answer
    assert answer["msg"].startswith("callBackUrl: ") and reason in answer["msg"], answer
    assert asked == list(answers)  # names were resolved (by the stub), literals never
    stored = server.store_call(lambda store: store.get_key(key_id))
    assert (stored.balance, stored.held, stored.open_tasks) == (10, 0, 0)


def test_callback_url_check_comes_after_input_and_before_credits(
    guarded: tuple[LiveServer, dict[str, list[str]], list[str]],
) -> None:
    server, _, _ = guarded
    key, _ = server.add_key(credits=0)
    bad_input = {"model": "bytedance/seedream", "callBackUrl": "http://10.0.0.1/", "input": {}}
    assert server.create(key, bad_input)["msg"].startswith("input.prompt")
    no_credits = {
        "model": "bytedance/seedream",
        "callBackUrl": "http://10.0.0.1/",
        "input": {"prompt": "x"},
    }
    assert server.create(key, no_credits)["msg"].startswith("callBackUrl: ")
    unresolved = {**no_credits, "callBackUrl": "https://not-yet.example/hook"}
    assert server.create(key, unresolved)["code"] == 402  # kept: delivery checks it again


@pytest.mark.parametrize(("url", "answers", "reason"), REFUSED)
def test_refused_file_urls_are_an_upload_400(
    guarded: tuple[LiveServer, dict[str, list[str]], list[str]],
    url: str,
    answers: dict[str, list[str]],
    reason: str,
) -> None:
    server, dns, asked = guarded
    dns.update(answers)
    key, _ = server.add_key()
    response = server.client.post(
        "/api/file-url-upload", json={"fileUrl": url, "uploadPath": "ssrf"}, headers=auth(key)
    )
    answer = response.json()
    assert answer["success"] is False and answer["code"] == 400, answer
    assert answer["msg"].startswith("fileUrl: ") and reason in answer["msg"], answer
    assert asked == list(answers)
    assert not (server.settings.files_dir / "uploads").exists()


def test_a_file_url_of_this_servers_own_file_is_copied_from_storage(
    guarded: tuple[LiveServer, dict[str, list[str]], list[str]],
) -> None:
    """Loopback is refused here, yet the server's own URL works: it is never fetched."""
    from images_util import png_bytes

    server, _, asked = guarded
    key, _ = server.add_key()
    first = server.client.post(
        "/api/file-stream-upload",
        files={"file": ("a.png", png_bytes(), "image/png")},
        data={"uploadPath": "one"},
        headers=auth(key),
    ).json()["data"]
    copy = server.client.post(
        "/api/file-url-upload",
        json={"fileUrl": first["downloadUrl"], "uploadPath": "two", "fileName": "b.png"},
        headers=auth(key),
    ).json()
    assert copy["success"] is True, copy
    assert server.client.get(copy["data"]["downloadUrl"]).content == png_bytes()
    missing = first["downloadUrl"].replace(".png", "x.png")
    gone = server.client.post(
        "/api/file-url-upload", json={"fileUrl": missing, "uploadPath": "two"}, headers=auth(key)
    ).json()
    assert gone == {
        "success": False,
        "code": 400,
        "msg": "fileUrl: no such file on this server (HTTP 404)",
    }
    assert asked == []
