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
metadata and the same PNG/JPEG settings; :func:`finish` is the post-processing of one engine
output (to the contract's size, then encoded), which the worker runs off the device.

Encoders were chosen by measurement (``bench/encoder_bench.py``, docs/dependencies.md). JPEG:
Pillow's own (libjpeg-turbo), which no other wheel beat. PNG at levels 1-3: the rows with PNG's
"Up" filter (one vectorised subtraction) deflated by ISA-L (``isal``), several times faster than
Pillow's zlib with its adaptive filters for a few per cent more bytes; levels 0 and 4-9, or
without numpy and ``isal`` (the ``fast`` extra; GPU installs have numpy already), Pillow. Every
step releases the GIL, so post-processing threads use every core. numpy is imported only where
it is used: the core install (``make serve``) does without it.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, ImageFile, ImageOps
from PIL.PngImagePlugin import PngInfo

from seedbed.catalogue.base import ImageInputRule
from seedbed.engines.base import Artifact
from seedbed.errors import InputImageError
from seedbed.strips import Rows, share

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "PNG_COMPRESS_LEVEL",
    "Encoding",
    "decode_input",
    "encode",
    "finish",
    "resize_exact",
    "resize_tensor",
    "sniff_format",
    "to_image",
]

#: the default compression level of output PNGs. Outputs are big (4K is 16.8 MP) and served
#: once: level 1 is the fast one (docs/benchmarks.md has each level's time and size).
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class Encoding:
    """How outputs are made: the ``png_compress_level`` setting, and the threads that may
    share one output's resize and PNG (:mod:`seedbed.strips`)."""

    #: 0 stores, 1-3 the fast deflate (ISA-L where installed), 4-9 zlib's smaller, slower ones
    png_compress_level: int = PNG_COMPRESS_LEVEL
    #: threads that take strips of an output while they are idle (the worker's post-processing
    #: threads); None: every output is made by its calling thread alone
    helpers: Executor | None = field(default=None, compare=False, repr=False)
    #: how many threads (the caller's included) may work on one output at once
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError("png_compress_level must be 0 to 9")


DEFAULT_ENCODING = Encoding()

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
    encoding: Encoding = DEFAULT_ENCODING,
) -> Artifact:
    """Encode one output image; ``text`` goes into PNG text chunks or a JPEG comment.

    PNG keeps an alpha channel (layers need it) at ``encoding.png_compress_level``. JPEG has no
    alpha, so a transparent image is flattened onto white rather than letting hidden colours show.
    """
    buf = io.BytesIO()
    if fmt == "png":
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        level = encoding.png_compress_level
        if _fast_png_fits(image, encoding):
            data = _fast_png(Rows(image, image.width, image.height), text or {}, encoding)
        else:
            info = PngInfo()
            for key, value in (text or {}).items():
                info.add_text(key, value)  # falls back to iTXt where the value is not Latin-1
            image.save(buf, "PNG", pnginfo=info, compress_level=level)
            data = buf.getvalue()
        return Artifact(
            data=data,
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
    return Rows(image, width, height).whole()


# --- post-processing ---------------------------------------------------------------------------


def to_image(picture: Image.Image | NDArray[Any]) -> Image.Image:
    """An engine's picture as a Pillow image: PIL as it is; an ``HxWx3``/``HxWx4`` array of
    ``uint8`` (or floats in 0..1, as pipelines return them) as RGB/RGBA."""
    if isinstance(picture, Image.Image):
        return picture
    import numpy as np  # an engine that returns arrays has numpy

    array = np.asarray(picture)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"a picture array must be HxWx3 or HxWx4, not {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")


def finish(
    picture: Image.Image | NDArray[Any],
    width: int,
    height: int,
    fmt: Literal["png", "jpeg"],
    *,
    text: Mapping[str, str] | None = None,
    encoding: Encoding = DEFAULT_ENCODING,
) -> Artifact:
    """Post-processing of one output: to exactly ``width`` x ``height`` (Lanczos), encoded.

    Both steps are made in strips shared with ``encoding.helpers`` while they are idle
    (:mod:`seedbed.strips`); a fast PNG's strips go from resize to deflate on one thread.
    """
    image = to_image(picture)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    rows = Rows(image, width, height)
    if fmt == "png" and _fast_png_fits(image, encoding):
        data = _fast_png(rows, text or {}, encoding)
        return Artifact(
            data=data, content_type="image/png", extension="png", width=width, height=height
        )
    if image.size != (width, height):  # at its size already (resized on a GPU): no copy
        image = rows.whole(encoding.helpers, encoding.threads)
    return encode(image, fmt, text=text, encoding=encoding)


def resize_tensor(pictures: Any, width: int, height: int) -> NDArray[Any]:
    """Resize a batch of pictures on the device they are on (a CUDA engine's output).

    ``pictures`` is a torch tensor ``NxCxHxW`` of floats in 0..1 (a pipeline's ``output_type=
    "pt"``). Bicubic with antialiasing (torch's Keys kernel, a = -0.5) is the nearest torch has
    to Lanczos: against Pillow's Lanczos it differs by under a grey level on average (PSNR over
    40 dB, tested on CPU torch). Returns ``NxHxWxC`` ``uint8`` on the CPU, ready to encode;
    only the small result crosses to the host.
    """
    import numpy as np
    import torch
    import torch.nn.functional as functional

    with torch.inference_mode():
        resized = functional.interpolate(
            pictures.float(), size=(height, width), mode="bicubic", antialias=True
        )
        out = (resized.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return np.ascontiguousarray(out.cpu().numpy())


# --- the fast PNG writer ---------------------------------------------------------------------


@functools.cache
def _isal() -> Any:
    """ISA-L's zlib (the ``isal`` package), or None where it or numpy is not installed (the
    ``fast`` extra brings both; without them PNGs are Pillow's)."""
    try:
        import numpy  # noqa: F401  (the fast writer's filter)
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - an install without the extra falls back to Pillow
        return None
    return isal_zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(kind))
    return b"".join([struct.pack(">I", len(body)), kind, body, struct.pack(">I", crc)])


def _text_chunk(key: str, value: str) -> bytes:
    """What Pillow's ``PngInfo.add_text`` writes: tEXt where Latin-1 holds it, else iTXt."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, NUL, no compression (flag and method), no language tag and no translated
        # keyword (each NUL-ended), then the UTF-8 text
        body = key.encode("latin-1", "replace") + b"\0" * 5 + value.encode()
        return _chunk(b"iTXt", body)


def _fast_png_fits(image: Image.Image, encoding: Encoding) -> bool:
    """Whether the fast writer makes this PNG: 8-bit RGB/RGBA at levels 1-3, with ``isal``."""
    return (
        1 <= encoding.png_compress_level <= 3
        and image.mode in ("RGB", "RGBA")
        and _isal() is not None
    )


#: a zlib stream's header: deflate with a 32 KiB window, "fastest" (only informative)
_ZLIB_HEADER = b"\x78\x01"

_ADLER_BASE = 65521


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two pieces of data joined, from each piece's (zlib's
    ``adler32_combine``, which Python's zlib and ``isal`` do not offer)."""
    rem = second_length % _ADLER_BASE
    low = first & 0xFFFF
    high = (rem * low) % _ADLER_BASE
    low = (low + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    high = (high + (first >> 16) + (second >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return low | (high << 16)


def _fast_png(rows: Rows, text: Mapping[str, str], encoding: Encoding) -> bytes:
    """An 8-bit RGB/RGBA PNG of ``rows``: its rows filtered with one numpy subtraction, deflated
    by ISA-L at ``encoding.png_compress_level`` (1-3), in strips on several threads.

    Pillow picks a filter per row and deflates with zlib; at 4096x4096 that is seconds. Here
    every row is "Up"-filtered (uint8 arithmetic wraps, as PNG's does) except each strip's
    first, which is "Sub"-filtered so that it needs no row of another strip; each strip is
    deflated on its own into a piece of raw deflate ended by a sync flush (the last by the
    final block), so the pieces joined are one zlib stream, whose Adler-32 and the chunk's
    CRC are combined from the pieces'. Every step releases the GIL.
    """
    import numpy as np

    isal_zlib = _isal()
    level = encoding.png_compress_level
    edges = rows.edges(encoding.helpers, encoding.threads)
    last = len(edges) - 2

    def strip(index: int) -> tuple[bytes, int, int]:
        band = np.asarray(rows.band(edges[index], edges[index + 1]))
        height, width, channels = band.shape
        lines = band.reshape(height, width * channels)
        filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
        if index == 0:
            filtered[0, 0] = 2  # Up: on the picture's first row the row above counts as zeros
            filtered[0, 1:] = lines[0]
        else:
            filtered[0, 0] = 1  # Sub: each byte less the same channel's byte to its left
            filtered[0, 1 : 1 + channels] = lines[0, :channels]
            np.subtract(lines[0, channels:], lines[0, :-channels], out=filtered[0, 1 + channels :])
        filtered[1:, 0] = 2
        np.subtract(lines[1:], lines[:-1], out=filtered[1:, 1:])
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)  # raw deflate
        flush = isal_zlib.Z_FINISH if index == last else isal_zlib.Z_SYNC_FLUSH
        piece = compressor.compress(filtered) + compressor.flush(flush)
        return piece, isal_zlib.adler32(filtered), filtered.size

    pieces = share(len(edges) - 1, strip, encoding.helpers, encoding.threads)
    adler = pieces[0][1]
    for _, checksum, length in pieces[1:]:
        adler = _adler32_combine(adler, checksum, length)
    idat = [_ZLIB_HEADER, *(piece for piece, _, _ in pieces), struct.pack(">I", adler)]
    crc = zlib.crc32(b"IDAT")
    for part in idat:
        crc = isal_zlib.crc32(part, crc)
    header = struct.pack(
        ">IIBBBBB", rows.width, rows.height, 8, 2 if rows.mode == "RGB" else 6, 0, 0, 0
    )
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header)]
    parts.extend(_text_chunk(key, value) for key, value in text.items())
    size = sum(len(part) for part in idat)
    parts += [struct.pack(">I", size), b"IDAT", *idat, struct.pack(">I", crc)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
