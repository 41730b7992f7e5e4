"""Own-file URLs, signed links and the server secret."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from seedbed.links import SECRET_FILE, Links, OwnUrl, load_or_create_secret


def test_the_secret_is_made_once_private_and_reused(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "data")
    path = tmp_path / "data" / SECRET_FILE
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "data") == first
    assert load_or_create_secret(tmp_path / "other") != first


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    found: list[bytes] = []
    start = threading.Barrier(6)

    def load() -> None:
        start.wait()
        found.append(load_or_create_secret(tmp_path))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(found) == 6


def test_signed_links_hold_until_they_expire() -> None:
    links = Links(b"k" * 32)
    url = links.signed_url("http://h", "results/a_0_x.png", 1000)
    own = Links.parse(url)
    assert own is not None and own.key == "results/a_0_x.png" and own.expires == 1000
    assert own.signature is not None
    assert links.signature_valid(own.key, 1000, own.signature, now=999.9)
    assert not links.signature_valid(own.key, 1000, own.signature, now=1000.1)
    assert not links.signature_valid("results/b_0_x.png", 1000, own.signature, now=0)
    assert not links.signature_valid(own.key, 1001, own.signature, now=0)
    assert not Links(b"o" * 32).signature_valid(own.key, 1000, own.signature, now=0)


def test_upload_segments_are_stable_per_key_and_secret() -> None:
    links = Links(b"k" * 32)
    assert links.upload_segment("key_1") == links.upload_segment("key_1")
    assert links.upload_segment("key_1") != links.upload_segment("key_2")
    assert links.upload_segment("key_1") != Links(b"o" * 32).upload_segment("key_1")
    assert len(links.upload_segment("key_1")) == 32


@pytest.mark.parametrize(
    ("url", "origin", "key"),
    [
        ("http://h:1/files/results/t_0_ab.png", None, "results/t_0_ab.png"),
        ("https://cdn.x/files/uploads/s/a/b.jpg?x=1", None, "uploads/s/a/b.jpg"),
        ("http://h:1/files/results/t_0_ab.png", "http://h:1", "results/t_0_ab.png"),
        ("http://H:1/base/files/results/t.png", "http://h:1/base", "results/t.png"),
        ("http://h:2/files/results/t_0_ab.png", "http://h:1", None),
        ("https://h:1/files/results/t_0_ab.png", "http://h:1", None),
        ("http://h/files/other/t.png", None, None),
        ("http://h/files/results/../secret.png", None, None),
        ("http://h/files/results/a.png/..", None, None),
        ("http://h/x/files/results/t.png", None, None),
        ("ftp://h/files/results/t.png", None, None),
        ("not a url", None, None),
        # upload folders and names may hold dots, spaces, '#', '?', '%' and any Unicode
        (
            "http://h/files/uploads/s/cat1.jpg/a%20b%23c%3F.png",
            None,
            "uploads/s/cat1.jpg/a b#c?.png",
        ),
        ("http://h/files/uploads/s/%E5%86%99%E7%9C%9F/100%25", None, "uploads/s/写真/100%"),
        ("http://h/files/uploads/s/%2E%2E/x.png", None, None),  # '..', encoded
        ("http://h/files/uploads/s/a%00b", None, None),
        ("http://h/files/uploads/s/a%5Cb", None, None),  # a backslash
        ("http://h/files/uploads/s/%FF", None, None),  # not UTF-8
        ("http://h/files/uploads/s//x.png", None, None),
        ("http://h/files/uploads/s/" + "a" * 256, None, None),
    ],
)
def test_parse_recognises_only_this_servers_file_space(
    url: str, origin: str | None, key: str | None
) -> None:
    own = Links.parse(url, origin=origin)
    assert (own.key if own else None) == key
    if own is not None:
        assert own == OwnUrl(key=key or "", expires=None, signature=None)


@pytest.mark.parametrize(
    "key",
    ["results/t_0_ab.png", "uploads/s/a b/#1?.png", "uploads/s/写真/100%", "uploads/s/x.y/+;=&"],
)
def test_signed_links_to_any_key_round_trip_through_parse(key: str) -> None:
    links = Links(b"k" * 32)
    url = links.signed_url("http://h", key, 1000)
    assert "#" not in url.split("?")[0] and " " not in url
    own = Links.parse(url)
    assert own is not None and own.key == key and own.signature is not None
    assert links.signature_valid(own.key, 1000, own.signature, now=0)
