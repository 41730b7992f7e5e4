"""What a stored file is, from its first bytes (``seedbed.sniff``)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

import kie_recorded as rec
from seedbed.sniff import HEAD_BYTES, OCTET_STREAM, sniff


def _image(fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "mime", "extension"),
    [
        (_image("PNG"), "image/png", "png"),
        (_image("JPEG"), "image/jpeg", "jpg"),
        (_image("GIF"), "image/gif", "gif"),
        (_image("WEBP"), "image/webp", "webp"),
        (_image("BMP"), "image/bmp", "bmp"),
        (_image("TIFF"), "image/tiff", "tiff"),
        (_image("ICO"), "image/x-icon", "ico"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "image/avif", "avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heic", "heic"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "video/mp4", "mp4"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg", "mp3"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf", "pdf"),
        (b"PK\x03\x04\x14\x00\x00\x00", "application/zip", "zip"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "application/gzip", "gz"),
        (b"Hello World", "text/plain", "txt"),
        ("Grüße, 写真 🐱\n".encode(), "text/plain", "txt"),
        (b"\xef\xbb\xbfwith a BOM", "text/plain", "txt"),
        (b'{"a": [1, 2, {"b": null}]}', "application/json", "json"),
        (b"{not json", "text/plain", "txt"),
        (b"  <!doctype html><title>x</title>", "text/html", "html"),
        (b"<HTML><BODY>hi", "text/html", "html"),
        (b"<p>para", "text/html", "html"),
        (b"notes\n<script>alert(1)</script>\n", "text/html", "html"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", "svg"),
        (b'<?xml version="1.0"?>\n<!-- x -->\n<svg/>', "image/svg+xml", "svg"),
        (b'<?xml version="1.0"?><feed/>', "application/xml", "xml"),
        (b"BM is how this text starts, and it is no bitmap", "text/plain", "txt"),
        (b"1 < 2 and <3 you", "text/plain", "txt"),
        (bytes(range(256)), OCTET_STREAM, "bin"),
        (b"\x00\x01\x02 binary", OCTET_STREAM, "bin"),
        (b"\xff\xfe\x00\x00 no jpeg", OCTET_STREAM, "bin"),
        (b"", OCTET_STREAM, "bin"),
    ],
)
def test_the_bytes_decide_the_type(data: bytes, mime: str, extension: str) -> None:
    found = sniff(data)
    assert (found.mime, found.extension) == (mime, extension)


def test_kies_recorded_uploads_are_typed_as_kie_typed_them() -> None:
    for request, answer in (
        (rec.UPLOAD_TEXT_REQUEST, rec.UPLOAD_TEXT),
        (rec.UPLOAD_PNG_REQUEST, rec.UPLOAD_BASE64),
    ):
        data = base64.b64decode(json.loads(request)["base64Data"])
        assert sniff(data).mime == json.loads(answer)["data"]["mimeType"]


def test_only_passive_types_are_served_as_themselves() -> None:
    assert sniff(_image("PNG")).content_type == "image/png"
    assert sniff(b"words").content_type == "text/plain; charset=utf-8"
    assert sniff(b"[1]").content_type == "application/json"
    for active in (b"<html>", b"<svg/>", b"<?xml version='1.0'?><a/>", b"%PDF-1.4", b"\x00"):
        found = sniff(active)
        assert not found.passive and found.content_type == OCTET_STREAM, active


def test_text_cut_inside_a_character_at_the_head_is_still_text() -> None:
    # the head ends inside a 3-byte character: the file is text all the same, whether the
    # whole file or only its head (as /files/ reads it) is sniffed
    data = b"a" * (HEAD_BYTES - 1) + "写".encode() + b" more"
    assert sniff(data).mime == "text/plain"
    assert sniff(data[: HEAD_BYTES + 1]).mime == "text/plain"
    assert sniff(b"a" * 10 + "写".encode()[:2]).mime == OCTET_STREAM  # cut at the very end
