"""Image helpers shared by the worker and every engine: safe decoding and output encoding.

Input images come from strangers, so :func:`decode_input` never trusts a file name or a
``Content-Type``: it sniffs the real format from the bytes, and it checks the pixel size that the
header *claims* before a single pixel is decoded. That order is the decompression-bomb guard: a
40 kB PNG can claim 40000x40000 pixels and would take gigabytes to decode.

Pillow has its own bomb guard (``Image.MAX_IMAGE_PIXELS``), but it is a process-wide global that
warns (an error under ``pytest -W error``) or raises from inside ``Image.open`` without saying the
image's size. The task's own rule (:class:`~seedbed.catalogue.base.ImageInputRule`) is what
decides here, so the header is read through Pillow's format plugins directly (no global check),
and ``MAX_IMAGE_PIXELS`` is never touched: several worker threads decode at once. Pillow's
``DecompressionBombWarning`` is ignored inside ``warnings.catch_warnings()``; on Python 3.11 that
swaps the process's filter list, so two threads racing could leave or drop that one "ignore"
filter for a moment. That is harmless: within every rule (36 MP at most) Pillow does not warn
(its threshold is 89 MP), so the filter only matters for headers that are refused anyway.

:func:`encode` is the one place outputs become bytes, so every engine's files carry the same
metadata and the same PNG/JPEG settings.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from collections.abc import Mapping
from typing import Literal

from PIL import Image, ImageFile, ImageOps
from PIL.PngImagePlugin import PngInfo

from seedbed.catalogue.base import ImageInputRule
from seedbed.engines.base import Artifact
from seedbed.errors import InputImageError

__all__ = ["PNG_COMPRESS_LEVEL", "decode_input", "encode", "resize_exact", "sniff_format"]

#: zlib level for output PNGs. Outputs are big (4K is 16.8 MP) and served once. On photo-like
#: 4096x4096 content level 1 took 0.9 s against 4.4 s for Pillow's default 6, for files about
#: 30% larger; level 0 is no faster and stores 48 MiB uncompressed.
PNG_COMPRESS_LEVEL = 1

#: formats whose headers are sniffed, most likely first. Only these (plus whatever a rule names)
#: are recognised: headerless formats such as TGA would "recognise" arbitrary bytes.
_SNIFF_FORMATS = (
    "PNG",
    "JPEG",
    "WEBP",
    "GIF",
    "BMP",
    "TIFF",
    "AVIF",
    "HEIF",
    "JPEG2000",
    "ICO",
    "PSD",
    "QOI",
    "PPM",
)

#: how formats are named to people, in the order they are suggested
_DISPLAY = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "GIF": "GIF",
}

#: a JPEG with a multi-picture extension (many phone cameras) opens as MPO; it is still a JPEG
_ALIASES = {"MPO": "JPEG"}

#: what Pillow's plugins raise on bad data, besides ``OSError`` and ``ValueError``
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    Image.DecompressionBombError,
    MemoryError,
)

_MB = 1024 * 1024


def _where(field: str, index: int) -> str:
    """``input.image_url`` for the one-image field, ``input.image_urls[i]`` for a list."""
    if field == "image_url":
        return f"input.{field}"
    return f"input.{field}[{index}]"


def _megabytes(n: int) -> str:
    text = f"{n / _MB:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _too_big_message(size: int, limit: int) -> str:
    shown, allowed = _megabytes(size), _megabytes(limit)
    if shown == allowed:  # just over: rounding would read "30 MB, more than the 30 MB allowed"
        return f"file is {size:,} bytes, more than the {limit:,} bytes ({allowed} MB) allowed"
    return f"file is {shown} MB, more than the {allowed} MB allowed"


def _format_list(formats: frozenset[str]) -> str:
    order = list(_DISPLAY)
    names = sorted(formats, key=lambda f: (order.index(f) if f in order else len(order), f))
    shown = [_DISPLAY.get(f, f) for f in names]
    if len(shown) <= 1:
        return "".join(shown)
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def _kind(fmt: str) -> str:
    """The MIME type people know a format by (``image/gif``), else its Pillow name."""
    return Image.MIME.get(fmt) or f"{fmt} image"


@functools.cache
def _plugins_ready() -> bool:
    Image.init()  # registers every plugin once; idempotent
    return True


def _sniff(data: bytes, extra: frozenset[str]) -> ImageFile.ImageFile | None:
    """Open ``data`` lazily (header only) with the first plugin whose magic matches.

    This mirrors what ``Image.open`` does, minus its global ``MAX_IMAGE_PIXELS`` check, so the
    caller sees the claimed size of any image, bomb or not, and can refuse it by its own rule.
    Returns ``None`` for data no plugin recognises; raises ``_Broken`` for data whose magic
    matched but whose header could not be parsed.
    """
    _plugins_ready()
    prefix = data[:16]
    candidates = list(_SNIFF_FORMATS) + sorted(f for f in extra if f not in _SNIFF_FORMATS)
    reason = ""
    for fmt in candidates:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        if accept is None:  # no magic to match: only tried where a rule names the format
            if fmt not in extra:
                continue
        else:
            result = accept(prefix)
            if isinstance(result, str) or not result:  # a str is Pillow's "almost" warning
                continue
        try:
            return factory(io.BytesIO(data), "")
        except Image.DecompressionBombError:  # a plugin's own check, e.g. a GIF frame's extent
            raise _Broken(_BOMB) from None
        except _DECODE_ERRORS:
            reason = "image could not be decoded"
    if reason:
        raise _Broken(reason)
    return None


class _Broken(Exception):
    """The data looked like an image format but its header was unreadable (or a bomb)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_BOMB = "image claims more pixels than can be decoded safely"


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, or RGBA where the image has transparency; 16-bit and float greys scaled, not clipped."""
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        image = image.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.has_transparency_data:
        return image.convert("RGBA")
    return image.convert("RGB")


def sniff_format(data: bytes) -> str | None:
    """The image format ``data`` really is (Pillow's name: ``PNG``, ``JPEG``, ...), from its
    magic bytes and a readable header; None for anything else. Decodes no pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = _sniff(data, frozenset())
        except _Broken:
            return None
        if image is None:
            return None
        try:
            fmt = image.format or ""
        finally:
            image.close()
    return _ALIASES.get(fmt, fmt) or None


def decode_input(data: bytes, rule: ImageInputRule, *, index: int, field: str) -> Image.Image:
    """Decode one fetched input image after checking it against ``rule``.

    Checks, in order: byte size, real format (sniffed), claimed pixel count and aspect (from the
    header only), then decodes the first frame, applies EXIF orientation and converts to RGB (RGBA
    when the image has transparency). Every refusal is an :class:`~seedbed.errors.InputImageError`
    whose message names the field and index, e.g. ``input.image_urls[1]: not an image
    (unrecognised data)``.
    """
    where = _where(field, index)

    def refuse(reason: str) -> InputImageError:
        return InputImageError(f"{where}: {reason}")

    def check_size(size: tuple[int, int]) -> None:
        reason = _size_problem(size, rule)
        if reason is not None:
            raise refuse(reason)

    if len(data) > rule.max_bytes:
        raise refuse(_too_big_message(len(data), rule.max_bytes))
    if not data:
        raise refuse("not an image (empty file)")

    with warnings.catch_warnings():
        # Pillow's global guard is not the rule here: sizes are checked against ``rule`` (from the
        # header, before decoding), so its warning is noise, and never an error under ``-W error``
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = _sniff(data, rule.formats)
        except _Broken as exc:
            raise refuse(exc.reason) from None
        if image is None:
            raise refuse("not an image (unrecognised data)")
        try:
            fmt = image.format or ""
            if fmt not in rule.formats and _ALIASES.get(fmt) not in rule.formats:
                raise refuse(f"{_kind(fmt)} is not accepted; use {_format_list(rule.formats)}")
            check_size(image.size)
            try:
                image.seek(0)  # animated GIF/WebP, MPO: the first frame
                image.load()
                check_size(image.size)  # belt and braces: a GIF frame may outgrow its screen
                return _to_rgb(ImageOps.exif_transpose(image))
            except Image.DecompressionBombError:
                raise refuse(_BOMB) from None
            except _DECODE_ERRORS:
                raise refuse("image could not be decoded") from None
        finally:
            image.close()


def _size_problem(size: tuple[int, int], rule: ImageInputRule) -> str | None:
    """Why a (claimed) pixel size breaks ``rule``, or ``None`` when it is fine."""
    width, height = size
    if width <= 0 or height <= 0:
        return "image could not be decoded (no pixels)"
    pixels = width * height
    if pixels > rule.max_pixels:
        return f"image is {width}x{height} pixels, more than the {rule.max_pixels:,} allowed"
    if pixels < rule.min_pixels:
        return f"image is {width}x{height} pixels, fewer than the {rule.min_pixels:,} required"
    if rule.max_aspect is not None:
        aspect = max(width, height) / min(width, height)
        if aspect > rule.max_aspect:
            return (
                f"image is {width}x{height} pixels, an aspect ratio of {aspect:.3g}:1, "
                f"more than the {rule.max_aspect:g}:1 allowed"
            )
    return None


def encode(
    image: Image.Image,
    fmt: Literal["png", "jpeg"],
    *,
    text: Mapping[str, str] | None = None,
    quality: int = 90,
) -> Artifact:
    """Encode one output image; ``text`` goes into PNG text chunks or a JPEG comment.

    PNG keeps an alpha channel (layers need it) and uses :data:`PNG_COMPRESS_LEVEL`. JPEG has no
    alpha, so a transparent image is flattened onto white rather than letting hidden colours show.
    """
    buf = io.BytesIO()
    if fmt == "png":
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        info = PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)  # falls back to iTXt where the value is not Latin-1
        image.save(buf, "PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
        return Artifact(
            data=buf.getvalue(),
            content_type="image/png",
            extension="png",
            width=image.width,
            height=image.height,
        )
    if fmt == "jpeg":
        if image.mode != "RGB":
            if image.has_transparency_data:
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                image = flat
            else:
                image = image.convert("RGB")
        options: dict[str, object] = {"quality": quality}
        if text:
            comment = "\n".join(f"{k}={v}" for k, v in text.items()).encode()
            options["comment"] = comment[:65000]  # a COM segment holds at most 65533 bytes
        image.save(buf, "JPEG", **options)
        return Artifact(
            data=buf.getvalue(),
            content_type="image/jpeg",
            extension="jpg",
            width=image.width,
            height=image.height,
        )
    raise ValueError(f"unknown output format {fmt!r}")


def resize_exact(image: Image.Image, width: int, height: int) -> Image.Image:
    """Lanczos resize to exactly ``width`` x ``height`` (the contract's size, whatever rendered).

    Aspect is not preserved: the plan's size is the contract, and engines render at (nearly) the
    plan's aspect already. RGBA is resized premultiplied by Pillow, so edges do not fringe.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot resize to {width}x{height}")
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), Image.Resampling.LANCZOS)
