"""kie's upload endpoints, download links and own files as task inputs, on a real server."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import pytest
from PIL import Image

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
    second = _ok(_upload_stream(server, key, png_bytes(20, 20), uploadPath="/a/", fileName="x.png"))
    assert first["downloadUrl"] == second["downloadUrl"] and first["fileName"] == "x.png"
    assert server.client.get(second["downloadUrl"]).content == png_bytes(20, 20)
    # the content decides the type, not the name or the declared type
    jpeg = _ok(_upload_stream(server, key, jpeg_bytes(), uploadPath="a", fileName="photo.JPEG"))
    assert (jpeg["fileName"], jpeg["mimeType"]) == ("photo.jpeg", "image/jpeg")
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
    _refused(
        _upload_stream(server, key, png, uploadPath="a", fileName="x.jpg"),
        400,
        "fileName: the extension .jpg does not match the content (image/png)",
    )
    _refused(_upload_stream(server, key, png, uploadPath="a", fileName="../x.png"), 400, "fileName")
    _refused(
        _upload_stream(server, key, b"<html><script>alert(1)</script>", uploadPath="a"),
        400,
        "file: not an image",
    )
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
