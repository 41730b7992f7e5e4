"""kie's upload endpoints, download links and own files as task inputs, on a real server."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import kie_recorded as rec
from conftest import FileServer, LiveServer, auth
from images_util import jpeg_bytes, png_bytes

COLOURS = [(1, 254, 3), (251, 2, 249), (3, 5, 252)]


def _upload_stream(server: LiveServer, key: str, data: bytes, **fields: str) -> dict[str, Any]:
    response = server.client.post(
        "/api/file-stream-upload",
        files={"file": ("picture.bin", data, "application/octet-stream")},
        data=fields,
        headers=auth(key),
    )
    return dict(response.json())


def _upload_base64(server: LiveServer, key: str, **body: Any) -> dict[str, Any]:
    response = server.client.post("/api/file-base64-upload", json=body, headers=auth(key))
    return dict(response.json())


def _upload_url(server: LiveServer, key: str, **body: Any) -> dict[str, Any]:
    response = server.client.post("/api/file-url-upload", json=body, headers=auth(key))
    return dict(response.json())


def _ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["success"] is True and answer["code"] == 200, answer
    assert answer["msg"] == "File uploaded successfully"
    data = dict(answer["data"])
    assert list(data) == [
        "success",
        "fileName",
        "filePath",
        "downloadUrl",
        "fileSize",
        "mimeType",
        "uploadedAt",
    ]
    assert data["success"] is True
    return data


def test_each_upload_endpoint_feeds_an_edit_task_whose_render_shows_it(
    server: LiveServer, files: FileServer
) -> None:
    key, _ = server.add_key(credits=100)
    images = [png_bytes(200, 160, colour) for colour in COLOURS]
    streamed = _ok(_upload_stream(server, key, images[0], uploadPath="edits/in"))
    b64 = base64.b64encode(images[1]).decode()
    encoded = _ok(
        _upload_base64(server, key, base64Data=f"data:image/png;base64,{b64}", uploadPath="edits")
    )
    fetched = _ok(
        _upload_url(server, key, fileUrl=files.add("/c.png", images[2]), uploadPath="edits")
    )
    for data, image in zip((streamed, encoded, fetched), images, strict=True):
        assert data["mimeType"] == "image/png" and data["fileSize"] == len(image)
        assert data["fileName"].endswith(".png")
        assert data["downloadUrl"] == f"{server.url}/files/{data['filePath']}"
        assert server.client.get(data["downloadUrl"]).content == image
        assert data["uploadedAt"].endswith("Z")
    assert streamed["filePath"].split("/")[-3:-1] == ["edits", "in"]

    urls = [d["downloadUrl"] for d in (streamed, encoded, fetched)]
    files.routes.clear()  # own files are read from storage, never fetched again over HTTP
    body = {
        "model": "seedream/5-lite-image-to-image",
        "input": {"prompt": "three swatches", "image_urls": urls, "output_format": "png"},
    }
    created = server.create(key, body)
    assert created["code"] == 200, created
    data = server.wait(key, created["data"]["taskId"])
    assert data["state"] == "success", data
    (result_url,) = json.loads(data["resultJson"])["resultUrls"]
    render = Image.open(io.BytesIO(server.client.get(result_url).content)).convert("RGB")
    counts = {colour: 0 for colour in COLOURS}
    for count, colour in render.getcolors(maxcolors=1 << 24) or []:
        if colour in counts:
            counts[colour] = count
    assert all(n > 500 for n in counts.values()), counts  # each upload is laid in


def test_same_file_name_overwrites_and_names_follow_the_content(server: LiveServer) -> None:
    key, _ = server.add_key()
    first = _ok(_upload_stream(server, key, png_bytes(10, 10), uploadPath="a", fileName="x.png"))
    second = _ok(_upload_stream(server, key, png_bytes(20, 20), uploadPath="a", fileName="x.png"))
    assert first["downloadUrl"] == second["downloadUrl"] and first["fileName"] == "x.png"
    assert server.client.get(second["downloadUrl"]).content == png_bytes(20, 20)
    # the content decides the type, not the name or the declared type; the name is kept
    jpeg = _ok(_upload_stream(server, key, jpeg_bytes(), uploadPath="a", fileName="photo.JPEG"))
    assert (jpeg["fileName"], jpeg["mimeType"]) == ("photo.JPEG", "image/jpeg")
    named_png = _ok(_upload_stream(server, key, png_bytes(), uploadPath="a", fileName="y.jpg"))
    assert (named_png["fileName"], named_png["mimeType"]) == ("y.jpg", "image/png")
    served = server.client.get(named_png["downloadUrl"])
    assert served.headers["content-type"] == "image/png"
    bare = _ok(_upload_stream(server, key, jpeg_bytes(), uploadPath="a", fileName="noext"))
    assert bare["fileName"] == "noext.jpg"
    auto = _ok(_upload_stream(server, key, png_bytes(), uploadPath="a"))
    stem, _, ext = auto["fileName"].partition(".")
    millis, _, rand = stem.partition("-")
    assert ext == "png" and abs(int(millis) - time.time() * 1000) < 60_000 and rand.isalnum()
    # another key's uploads live under another secret folder
    other, _ = server.add_key()
    theirs = _ok(_upload_stream(server, other, png_bytes(10, 10), uploadPath="a", fileName="x.png"))
    assert theirs["downloadUrl"] != first["downloadUrl"]


def _refused(answer: dict[str, Any], code: int, msg: str) -> None:
    assert answer == {"success": False, "code": code, "msg": answer["msg"]}, answer
    assert answer["code"] == code and msg in answer["msg"], answer


def test_bad_uploads_answer_kies_errors_and_store_nothing(
    server: LiveServer, files: FileServer
) -> None:
    key, _ = server.add_key()
    png = png_bytes()
    _refused(_upload_stream(server, "sb-nope", png, uploadPath="a"), 401, "Authentication failed")
    _refused(_upload_stream(server, key, png), 400, "Missing required parameter: uploadPath")
    _refused(_upload_stream(server, key, png, uploadPath="///"), 400, "uploadPath")
    no_file = server.client.post(
        "/api/file-stream-upload", data={"uploadPath": "a"}, headers=auth(key)
    ).json()
    _refused(no_file, 400, "Missing required parameter: file")
    _refused(_upload_stream(server, key, png, uploadPath="a/../b"), 400, "uploadPath: folder '..'")
    _refused(_upload_stream(server, key, png, uploadPath="a", fileName="../x.png"), 400, "fileName")
    _refused(_upload_stream(server, key, png, uploadPath="a", fileName=".."), 400, "fileName: '..'")
    _refused(_upload_stream(server, key, b"", uploadPath="a"), 400, "file: the file is empty")
    _refused(
        _upload_base64(server, key, uploadPath="a"), 400, "Missing required parameter: base64Data"
    )
    _refused(
        _upload_base64(server, key, base64Data="@@not base64@@", uploadPath="a"),
        400,
        "Base64 decoding failed: Invalid Base64 format",
    )
    _refused(
        _upload_base64(server, key, base64Data=base64.b64encode(png).decode()),
        400,
        "Missing required parameter: uploadPath",
    )
    _refused(_upload_url(server, key, uploadPath="a"), 400, "Missing required parameter: fileUrl")
    _refused(
        _upload_url(server, key, fileUrl=files.url("/missing.png"), uploadPath="a"),
        400,
        "fileUrl: HTTP 404",
    )
    assert not (server.settings.files_dir / "uploads").exists()


def test_uploads_over_the_limit_are_refused(tmp_path: Any, files: FileServer) -> None:
    from conftest import make_settings, serve_in_thread

    settings = make_settings(tmp_path, upload_max_bytes=50_000)
    big = png_bytes(400, 400, (0, 0, 0))[:10] + bytes(60_000)  # a PNG signature, then padding
    with serve_in_thread(settings) as server:
        key, _ = server.add_key()
        streamed = server.client.post(
            "/api/file-stream-upload",
            files={"file": ("a.png", big, "image/png")},
            data={"uploadPath": "a"},
            headers=auth(key),
        )
        assert streamed.status_code == 413
        _refused(streamed.json(), 413, "too large")
        encoded = _upload_base64(
            server, key, base64Data=base64.b64encode(bytes(60_000)).decode(), uploadPath="a"
        )
        _refused(encoded, 413, "the limit is 50,000 bytes")
        fetched = _upload_url(server, key, fileUrl=files.add("/big.png", big), uploadPath="a")
        _refused(fetched, 400, "fileUrl: response is larger than 50000 bytes")
        assert not (settings.files_dir / "uploads").exists()


def test_download_url_signs_own_files_only(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100)
    upload = _ok(_upload_stream(server, key, png_bytes(), uploadPath="dl", fileName="a.png"))

    def download_url(url: str, as_key: str = key) -> dict[str, Any]:
        response = server.client.post(
            "/api/v1/common/download-url", json={"url": url}, headers=auth(as_key)
        )
        return dict(response.json())

    answer = download_url(upload["downloadUrl"])
    assert answer["code"] == 200 and answer["msg"] == "success", answer
    link = answer["data"]
    assert link.startswith(upload["downloadUrl"] + "?expires=") and "&signature=" in link
    expires = int(link.split("expires=")[1].split("&")[0])
    assert 1190 <= expires - time.time() <= 1201  # 20 minutes
    got = server.client.get(link)
    assert got.status_code == 200 and got.content == png_bytes()
    assert got.headers["content-disposition"].startswith("attachment")
    assert download_url(link)["code"] == 200  # a link still valid may be renewed

    results = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "x"}})
    record = server.wait(key, results["data"]["taskId"])
    (result_url,) = json.loads(record["resultJson"])["resultUrls"]
    assert download_url(result_url)["code"] == 200

    wrong = {"code": 422, "msg": "url is wrong", "data": None}
    assert download_url("https://cdn.kie.ai/files/sample-test-file.mp4") == wrong
    assert download_url(upload["downloadUrl"].replace("127.0.0.1", "example.com")) == wrong
    assert download_url(upload["downloadUrl"].replace("a.png", "b.png")) == wrong
    other, _ = server.add_key()
    assert download_url(upload["downloadUrl"], as_key=other) == wrong  # not that key's file
    expired = link.replace(f"expires={expires}", f"expires={int(time.time()) - 1}")
    assert download_url(expired) == wrong
    forged = link[:-4] + "0000"
    assert download_url(forged) == wrong
    assert server.client.get(forged).status_code == 403
    assert server.client.get(expired).status_code == 403
    assert download_url("")["msg"] == "url: is required"


@pytest.mark.parametrize("gone", ["upload", "never"])
def test_edit_input_pointing_at_a_missing_own_file_is_refused(
    server: LiveServer, gone: str
) -> None:
    key, _ = server.add_key(credits=100)
    upload = _ok(_upload_stream(server, key, png_bytes(), uploadPath="a", fileName="a.png"))
    url = upload["downloadUrl"]
    if gone == "never":
        url = url.replace("a.png", "b.png")
    else:
        server.store_call(lambda store: store.mark_files_deleted([upload["filePath"]]))
    body = {"model": "seedream/4.5-edit", "input": {"prompt": "x", "image_urls": [url]}}
    answer = server.create(key, body)
    assert answer["code"] == 422 and answer["msg"].startswith("input.image_urls[0]: no such file")


# -- any file, as kie takes it (issue 13 #1) -----------------------------------------------------
def test_kies_recorded_uploads_of_a_text_file_and_an_undecodable_png_are_stored(
    server: LiveServer,
) -> None:
    key, _ = server.add_key()
    for request, answer in (
        (rec.UPLOAD_TEXT_REQUEST, rec.UPLOAD_TEXT),
        (rec.UPLOAD_PNG_REQUEST, rec.UPLOAD_BASE64),
    ):
        body = json.loads(request)
        ours = _ok(_upload_base64(server, key, **body))
        kies = json.loads(answer)["data"]
        for field in ("fileName", "fileSize", "mimeType"):
            assert ours[field] == kies[field], (field, ours, kies)
        assert ours["filePath"].endswith(kies["filePath"].split("/", 2)[2])  # after kieai/<id>/
        served = server.client.get(ours["downloadUrl"])
        assert served.status_code == 200
        assert served.content == base64.b64decode(body["base64Data"])
    # the text file is served as text, never sniffed into anything else by a browser
    text = server.client.get(
        _ok(_upload_base64(server, key, **json.loads(rec.UPLOAD_TEXT_REQUEST)))["downloadUrl"]
    )
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in text.headers


#: (content, fileName, mimeType in the answer, Content-Type served, served as an attachment)
SERVED = [
    (png_bytes(), "p.png", "image/png", "image/png", False),
    (jpeg_bytes(), "photo.html", "image/jpeg", "image/jpeg", False),  # the name is not the type
    (b"plain words\n", "notes.txt", "text/plain", "text/plain; charset=utf-8", False),
    (b'{"a": [1, 2]}', "data.json", "application/json", "application/json", False),
    (
        b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>",
        "page.html",
        "text/html",
        "application/octet-stream",
        True,
    ),
    (
        b"<html><script>alert(1)</script>",
        "innocent.png",
        "text/html",
        "application/octet-stream",
        True,
    ),
    (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "logo.svg",
        "image/svg+xml",
        "application/octet-stream",
        True,
    ),
    (b"<note><to>you</to></note>", None, "text/plain", "text/plain; charset=utf-8", False),
    (b"%PDF-1.7\n...", "doc.pdf", "application/pdf", "application/octet-stream", True),
    (bytes(range(256)) * 4, "blob", "application/octet-stream", "application/octet-stream", True),
]


@pytest.mark.parametrize(("content", "name", "mime", "served_as", "attachment"), SERVED)
def test_any_file_is_stored_and_served_so_that_it_cannot_run_in_a_browser(
    server: LiveServer,
    content: bytes,
    name: str | None,
    mime: str,
    served_as: str,
    attachment: bool,
) -> None:
    key, _ = server.add_key()
    fields = {"uploadPath": "any"} | ({"fileName": name} if name else {})
    data = _ok(_upload_stream(server, key, content, **fields))
    assert data["mimeType"] == mime and data["fileSize"] == len(content)
    got = server.client.get(data["downloadUrl"])
    assert got.status_code == 200 and got.content == content
    assert got.headers["content-type"] == served_as
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]
    disposition = got.headers.get("content-disposition", "")
    assert disposition.startswith("attachment") == attachment, disposition


def test_an_uploaded_file_that_is_not_a_usable_image_fails_the_task_naming_its_index(
    server: LiveServer,
) -> None:
    key, _ = server.add_key(credits=100)
    good = _ok(_upload_stream(server, key, png_bytes(300, 200), uploadPath="in"))
    text = _ok(_upload_base64(server, key, **json.loads(rec.UPLOAD_TEXT_REQUEST)))
    broken = _ok(_upload_base64(server, key, **json.loads(rec.UPLOAD_PNG_REQUEST)))
    for bad, reason in ((text, "not an image"), (broken, "image could not be decoded")):
        body = {
            "model": "seedream/5-lite-image-to-image",
            "input": {
                "prompt": "two swatches",
                "image_urls": [good["downloadUrl"], bad["downloadUrl"]],
            },
        }
        created = server.create(key, body)
        assert created["code"] == 200, created
        record = server.wait(key, created["data"]["taskId"])
        assert record["state"] == "fail" and record["failCode"] == "400", record
        assert record["failMsg"].startswith(f"input.image_urls[1]: {reason}"), record
    assert server.balance(key) == 100  # both holds released


# -- uploadPath: what kie allows, and only what is unsafe refused (issue 13 #2) ------------------
ALLOWED_PATHS = [
    "uploads/1775638903039_cat1.jpg",  # real kie.ai made this a folder
    "a.b/c.d/e",
    "..hidden/x..y/...",
    ".config",
    "with space/and (parens)",
    "ünïcödé/写真/🐱",
    "100%/#not-a-fragment/?not-a-query&x=1",
    "a+b=c;d,e@f!g$h'i~j[k]",
    "/".join(["d"] * 40),
    "x" * 255,
]
REFUSED_PATHS = [
    ("/absolute", "must not start with '/'"),
    ("//twice", "must not start with '/'"),
    ("a//b", "folder '' is empty"),
    ("a/", "folder '' is empty"),
    (".", "folder '.' is not allowed"),
    ("a/./b", "folder '.' is not allowed"),
    ("..", "folder '..' is not allowed"),
    ("a/../../b", "folder '..' is not allowed"),
    ("a\\b", "contains a backslash"),
    ("..\\..\\etc", "contains a backslash"),
    ("a\x00b", "contains the control character '\\x00'"),
    ("a\nb", "contains the control character '\\n'"),
    ("tab\there", "contains the control character '\\t'"),
    ("del\x7f", "contains the control character '\\x7f'"),
    ("c1\x85", "contains the control character '\\x85'"),
    ("x" * 256, "is longer than 255 bytes"),
    ("é" * 128, "is longer than 255 bytes"),
    ("/".join(["abcdefghij"] * 47), "at most 512 bytes long"),
]


@pytest.mark.parametrize("upload_path", ALLOWED_PATHS)
def test_upload_paths_kie_allows_are_stored_served_signed_and_usable(
    server: LiveServer, upload_path: str
) -> None:
    key, _ = server.add_key(credits=100)
    image = png_bytes(300, 200, (4, 250, 6))
    data = _ok(
        _upload_base64(
            server,
            key,
            base64Data=base64.b64encode(image).decode(),
            uploadPath=upload_path,
            fileName="in put #1.png",
        )
    )
    assert data["filePath"].split("/", 2)[2] == f"{upload_path}/in put #1.png"
    assert server.client.get(data["downloadUrl"]).content == image
    signed = server.client.post(
        "/api/v1/common/download-url", json={"url": data["downloadUrl"]}, headers=auth(key)
    ).json()
    assert signed["code"] == 200, signed
    assert server.client.get(signed["data"]).content == image
    # an own URL: read from storage by the worker, whatever characters it holds
    body = {
        "model": "seedream/4.5-edit",
        "input": {"prompt": "x", "image_urls": [data["downloadUrl"]]},
    }
    created = server.create(key, body)
    assert created["code"] == 200, created
    assert server.wait(key, created["data"]["taskId"])["state"] == "success"


@pytest.mark.parametrize(("upload_path", "msg"), REFUSED_PATHS)
def test_unsafe_upload_paths_are_refused_saying_why(
    server: LiveServer, upload_path: str, msg: str
) -> None:
    key, _ = server.add_key()
    answer = _upload_base64(server, key, base64Data="SGVsbG8=", uploadPath=upload_path)
    _refused(answer, 400, f"uploadPath: {msg}" if "'/'" in msg or "512" in msg else msg)
    assert answer["msg"].startswith("uploadPath: ")
    assert not (server.settings.files_dir / "uploads").exists()


def test_a_folder_where_a_file_is_and_a_file_where_a_folder_is_are_refused(
    server: LiveServer,
) -> None:
    key, _ = server.add_key()
    _ok(_upload_base64(server, key, base64Data="SGVsbG8=", uploadPath="a", fileName="b.txt"))
    _refused(
        _upload_base64(server, key, base64Data="SGVsbG8=", uploadPath="a/b.txt", fileName="c"),
        400,
        "clashes with an earlier upload",
    )
    _ok(_upload_base64(server, key, base64Data="SGVsbG8=", uploadPath="x/y.txt", fileName="z"))
    _refused(
        _upload_base64(server, key, base64Data="SGVsbG8=", uploadPath="x", fileName="y.txt"),
        400,
        "clashes with an earlier upload",
    )


# -- over-long names under /files/ (issue 13 #7) -------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Every log record of the server thread, uvicorn's own (which do not propagate) too."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    for one in loggers:
        one.addHandler(handler)
    try:
        yield handler.records
    finally:
        for one in loggers:
            one.removeHandler(handler)


def test_an_over_long_name_under_files_is_404_without_a_traceback(
    server: LiveServer, server_log: list[logging.LogRecord]
) -> None:
    key, _ = server.add_key(credits=100)
    folder = _ok(_upload_stream(server, key, png_bytes(), uploadPath="a"))["filePath"]
    folder = folder.rsplit("/", 1)[0]
    created = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "x"}})
    server.wait(key, created["data"]["taskId"])  # results/ exists: names are looked up in it
    names = [
        f"{folder}/{'a' * 256}",
        f"{folder}/{'a' * 252}.png",  # the old key pattern's form
        f"{folder}/{'é' * 128}.png",  # 256 bytes
        f"{folder}/{'d' * 256}/x.png",
        f"results/{'r' * 300}.png",
        f"{folder}/" + "/".join(["d" * 200] * 30),
    ]
    for name in names:
        for _ in range(2):
            got = server.client.get(f"/files/{name}")
            assert got.status_code == 404, (name, got.text)
            assert got.json() == {"code": 404, "msg": "Not Found", "data": None}
    assert not [r for r in server_log if r.exc_info or r.levelno >= logging.ERROR], server_log


# -- a full disk (issue 13 #4) -------------------------------------------------------------------
def test_an_upload_on_a_full_disk_says_storage_is_full_and_leaves_nothing(
    tmp_path: Path, server_log: list[logging.LogRecord]
) -> None:
    if os.geteuid() != 0:
        # Not root: the same test as root of a user namespace of its own, where mounting a
        # tmpfs needs no privilege (CI runs as root and takes the branch below).
        _rerun_in_user_namespace(
            "test_an_upload_on_a_full_disk_says_storage_is_full_and_leaves_nothing"
        )
        return
    from conftest import make_settings, serve_in_thread

    settings = make_settings(tmp_path)
    files = settings.files_dir
    files.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(files)], check=True)
    try:
        with serve_in_thread(settings) as server:
            key, _ = server.add_key()
            big = os.urandom(600_000)  # two do not fit in 1 MiB
            first = _ok(_upload_stream(server, key, big, uploadPath="full", fileName="a.bin"))
            full = server.client.post(
                "/api/file-stream-upload",
                files={"file": ("b.bin", big, "application/octet-stream")},
                data={"uploadPath": "full", "fileName": "b.bin"},
                headers=auth(key),
            )
            assert full.status_code == 500
            assert full.json() == {
                "success": False,
                "code": 500,
                "msg": "Storage is full: the server cannot store files right now; try again later",
            }
            folder = files / first["filePath"].rsplit("/", 1)[0]
            assert sorted(p.name for p in folder.iterdir()) == ["a.bin"]  # no half-written file
            # space back (retention, an operator): uploads work again
            (folder / "a.bin").unlink()
            _ok(_upload_stream(server, key, big, uploadPath="full", fileName="b.bin"))
    finally:
        subprocess.run(["umount", "-l", str(files)], check=False)
    assert not [r for r in server_log if r.exc_info], "a full disk is no traceback"


def _rerun_in_user_namespace(test: str) -> None:
    done = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            "-m",
            "pytest",
            f"{__file__}::{test}",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
