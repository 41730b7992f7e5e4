"""What a stored file really is, from its first bytes: the MIME type uploads report and serve.

Uploads accept any bytes (kie's do), so the type shown in an upload's ``mimeType`` and sent as
``Content-Type`` by ``/files/`` comes from the content, never from the file's name or a declared
type. Sniffing reads only the first :data:`HEAD_BYTES`: signatures ("magic numbers") of the
common formats, then whether the bytes are UTF-8 text, and whether that text is markup.

``passive`` says whether a browser may be handed the file as its own type: images, audio,
video, plain text and JSON cannot run anything (with ``X-Content-Type-Options: nosniff`` a
browser neither renders text as HTML nor executes it as a script). Everything else (HTML, SVG,
XML, PDF, archives, unknown bytes) is served as an ``application/octet-stream`` attachment.

Unlike :func:`seedbed.images.sniff_format`, nothing here decodes a header: a PNG that Pillow
cannot open is still ``image/png`` (kie says so too); whether a file is a usable image is
decided when a task uses it as an input.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass

__all__ = ["HEAD_BYTES", "OCTET_STREAM", "Sniffed", "sniff"]

#: how much of a file is looked at (the WHATWG sniffing algorithm reads 1445 bytes)
HEAD_BYTES = 8192


@dataclass(frozen=True)
class Sniffed:
    #: the MIME type, as an upload's ``mimeType`` shows it
    mime: str
    #: the extension an automatic file name gets (no dot)
    extension: str
    #: safe to serve as its own type (cannot run as active content in a browser)
    passive: bool

    @property
    def content_type(self) -> str:
        """What ``/files/`` sends as ``Content-Type``."""
        if not self.passive:
            return OCTET_STREAM
        if self.mime.startswith("text/"):
            return f"{self.mime}; charset=utf-8"  # text is only called text when it is UTF-8
        return self.mime


OCTET_STREAM = "application/octet-stream"
_UNKNOWN = Sniffed(OCTET_STREAM, "bin", passive=False)

#: fixed signatures at offset 0, most common first
_SIGNATURES: tuple[tuple[bytes, Sniffed], ...] = (
    (b"\x89PNG\r\n\x1a\n", Sniffed("image/png", "png", passive=True)),
    (b"\xff\xd8\xff", Sniffed("image/jpeg", "jpg", passive=True)),
    (b"GIF87a", Sniffed("image/gif", "gif", passive=True)),
    (b"GIF89a", Sniffed("image/gif", "gif", passive=True)),
    (b"II*\x00", Sniffed("image/tiff", "tiff", passive=True)),
    (b"MM\x00*", Sniffed("image/tiff", "tiff", passive=True)),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", Sniffed("image/jp2", "jp2", passive=True)),
    (b"8BPS", Sniffed("image/vnd.adobe.photoshop", "psd", passive=False)),
    (b"%PDF-", Sniffed("application/pdf", "pdf", passive=False)),  # viewers run its scripts
    (b"PK\x03\x04", Sniffed("application/zip", "zip", passive=False)),
    (b"PK\x05\x06", Sniffed("application/zip", "zip", passive=False)),
    (b"\x1f\x8b", Sniffed("application/gzip", "gz", passive=False)),
    (b"7z\xbc\xaf\x27\x1c", Sniffed("application/x-7z-compressed", "7z", passive=False)),
    (b"Rar!\x1a\x07", Sniffed("application/vnd.rar", "rar", passive=False)),
    (b"ID3", Sniffed("audio/mpeg", "mp3", passive=True)),
    (b"OggS", Sniffed("audio/ogg", "ogg", passive=True)),
    (b"fLaC", Sniffed("audio/flac", "flac", passive=True)),
    (b"\x1a\x45\xdf\xa3", Sniffed("video/webm", "webm", passive=True)),
    (b"\x00asm", Sniffed("application/wasm", "wasm", passive=False)),
)

#: ``RIFF<size><form>`` containers, by form type
_RIFF = {
    b"WEBP": Sniffed("image/webp", "webp", passive=True),
    b"WAVE": Sniffed("audio/wav", "wav", passive=True),
    b"AVI ": Sniffed("video/x-msvideo", "avi", passive=True),
}

#: ISO base media files (``<size>ftyp<brand>``), by major brand
_FTYP = {
    b"avif": Sniffed("image/avif", "avif", passive=True),
    b"avis": Sniffed("image/avif", "avif", passive=True),
    b"heic": Sniffed("image/heic", "heic", passive=True),
    b"heix": Sniffed("image/heic", "heic", passive=True),
    b"mif1": Sniffed("image/heif", "heif", passive=True),
    b"msf1": Sniffed("image/heif", "heif", passive=True),
    b"qt  ": Sniffed("video/quicktime", "mov", passive=True),
    b"M4A ": Sniffed("audio/mp4", "m4a", passive=True),
}
_MP4 = Sniffed("video/mp4", "mp4", passive=True)

#: the sizes of the BMP info headers that exist (12: OS/2 1.x ... 124: V5)
_BMP_HEADERS = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

#: bytes that never occur in text (the WHATWG "binary data bytes")
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")

_PLAIN = Sniffed("text/plain", "txt", passive=True)
_JSON = Sniffed("application/json", "json", passive=True)
_HTML = Sniffed("text/html", "html", passive=False)
_XML = Sniffed("application/xml", "xml", passive=False)
_SVG = Sniffed("image/svg+xml", "svg", passive=False)

#: tags that make a text HTML when it opens with one (WHATWG MIME sniffing, §7.1), and those
#: that make it HTML wherever they appear in the head (a browser told "text/html" would run them)
_HTML_START = re.compile(
    rb"<(?:!doctype\s+html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p"
    rb"|!--)[\s>/]",
    re.I,
)
_HTML_ANYWHERE = re.compile(rb"<(?:script|iframe|object|embed|html|body|svg)[\s>/]", re.I)
_SVG_TAG = re.compile(rb"<svg[\s>/]", re.I)


def sniff(data: bytes) -> Sniffed:
    """The type of ``data``, from its first :data:`HEAD_BYTES` (empty data is unknown)."""
    head = data[:HEAD_BYTES]
    for signature, found in _SIGNATURES:
        if head.startswith(signature):
            return found
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        return _FTYP.get(head[8:12], _MP4)
    if _is_bmp(head):
        return Sniffed("image/bmp", "bmp", passive=True)
    if head[:4] == b"\x00\x00\x01\x00" and len(head) >= 22 and head[4:6] != b"\x00\x00":
        return Sniffed("image/x-icon", "ico", passive=True)
    if head and _is_text(head, complete=len(data) <= HEAD_BYTES):
        return _text_kind(head, whole=data if len(data) <= HEAD_BYTES else None)
    return _UNKNOWN


def _is_bmp(head: bytes) -> bool:
    # "BM" alone starts many texts: the info header's size must be one that exists too
    return (
        len(head) >= 26
        and head[:2] == b"BM"
        and int.from_bytes(head[14:18], "little") in _BMP_HEADERS
    )


def _is_text(head: bytes, *, complete: bool) -> bool:
    """UTF-8 without binary bytes; a character cut at the end of the head is allowed."""
    if _BINARY.search(head):
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def _text_kind(head: bytes, *, whole: bytes | None) -> Sniffed:
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\n\r\x0c")
    if text.startswith(b"<"):
        if _SVG_TAG.search(head):
            return _SVG
        if text[:5].lower() == b"<?xml":
            return _XML
    if _HTML_START.match(text) or _HTML_ANYWHERE.search(head):
        return _HTML
    if whole is not None and text[:1] in (b"{", b"["):
        try:
            json.loads(whole)
        except ValueError:
            return _PLAIN
        return _JSON
    return _PLAIN
