"""Small images made in memory for tests."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, PngImagePlugin


def png_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims a huge image (IHDR patched, CRC fixed)."""
    data = bytearray(png_bytes(8, 8))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    struct.pack_into(">II", data, ihdr + 8, width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    struct.pack_into(">I", data, ihdr + 8 + 13, crc)
    return bytes(data)


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    """One pixel of a multi-band image, typed."""
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def png_text(image: Image.Image) -> dict[str, str]:
    """A PNG's text chunks."""
    assert isinstance(image, PngImagePlugin.PngImageFile)
    return dict(image.text)
