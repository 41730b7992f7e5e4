"""Input decoding must be strict and bomb-proof; output encoding must carry the right metadata."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from images_util import pixel, png_text
from seedbed.catalogue.base import ImageInputRule
from seedbed.errors import InputImageError
from seedbed.images import decode_input, encode, resize_exact

EDIT = ImageInputRule(
    field="image_urls",
    max_items=10,
    max_bytes=10 * 1024 * 1024,
    formats=frozenset({"JPEG", "PNG", "WEBP"}),
    max_pixels=6000 * 6000,
)
LAYERS = ImageInputRule(
    field="image_url",
    max_items=1,
    max_bytes=30 * 1024 * 1024,
    formats=frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}),
)


def _picture(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A non-uniform picture, so orientation and frame checks can tell pixels apart."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    if mode == "RGB":
        image.paste((255, 0, 0), (0, 0, size[0] // 4, size[1] // 4))  # red top-left corner
    return image


def _bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed)."""
    data = bytearray(_bytes(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
    ],
)
def test_every_accepted_format_decodes(fmt: str, options: dict[str, object]) -> None:
    data = _bytes(_picture(), fmt, **options)
    image = decode_input(data, LAYERS, index=0, field="image_url")
    assert image.size == (64, 48)
    assert image.mode == "RGB"
    assert pixel(image, 2, 2)[0] > 200  # the red corner survived


def test_sniffing_ignores_what_the_name_or_type_claims() -> None:
    # the bytes decide: PNG data fetched from "photo.jpg" served as image/jpeg is a PNG
    data = _bytes(_picture(), "PNG")
    only_png = ImageInputRule(
        field="image_urls", max_items=1, max_bytes=1 << 20, formats=frozenset({"PNG"})
    )
    assert decode_input(data, only_png, index=0, field="image_urls").size == (64, 48)
    jpeg = _bytes(_picture(), "JPEG")
    with pytest.raises(InputImageError) as err:
        decode_input(jpeg, only_png, index=0, field="image_urls")
    assert err.value.fail_msg == "input.image_urls[0]: image/jpeg is not accepted; use PNG"


def test_gif_refused_for_edit_but_accepted_for_layers() -> None:
    data = _bytes(_picture(), "GIF")
    with pytest.raises(InputImageError) as err:
        decode_input(data, EDIT, index=0, field="image_urls")
    assert err.value.fail_msg == (
        "input.image_urls[0]: image/gif is not accepted; use JPEG, PNG or WebP"
    )
    assert err.value.fail_code == "400"
    assert decode_input(data, LAYERS, index=0, field="image_url").size == (64, 48)


def test_animated_gif_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = decode_input(buf.getvalue(), LAYERS, index=0, field="image_url")
    r, _, b = pixel(image, 8, 8)
    assert r > 200 and b < 50


def test_animated_webp_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    image = decode_input(buf.getvalue(), EDIT, index=0, field="image_urls")
    assert pixel(image, 8, 8) == (0, 255, 0)


def test_multi_picture_jpeg_counts_as_jpeg() -> None:
    buf = io.BytesIO()
    _picture().save(buf, "MPO", save_all=True, append_images=[_picture()])
    assert decode_input(buf.getvalue(), EDIT, index=0, field="image_urls").size == (64, 48)


def test_transparency_kept_as_rgba() -> None:
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    decoded = decode_input(_bytes(image, "PNG"), EDIT, index=0, field="image_urls")
    assert decoded.mode == "RGBA"
    assert pixel(decoded, 0, 0)[3] == 0


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey = Image.new("I;16", (4, 4), 32768)
    decoded = decode_input(_bytes(grey, "PNG"), EDIT, index=0, field="image_urls")
    assert decoded.mode == "RGB"
    assert 120 <= pixel(decoded, 0, 0)[0] <= 135


def test_decompression_bomb_refused_from_the_header_alone() -> None:
    data = _png_claiming(40000, 40000)
    assert len(data) < 100
    before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(InputImageError) as err:
        decode_input(data, EDIT, index=2, field="image_urls")
    assert time.perf_counter() - start < 0.5
    assert err.value.fail_msg == (
        "input.image_urls[2]: image is 40000x40000 pixels, more than the 36,000,000 allowed"
    )
    assert Image.MAX_IMAGE_PIXELS == before  # no global was touched


def test_size_between_pillows_warning_and_error_refused_without_warning() -> None:
    # 144 MP is over Pillow's warning threshold; pytest turns warnings into errors, so this
    # also proves nothing leaks out of decode_input
    with pytest.raises(InputImageError) as err:
        decode_input(_png_claiming(12000, 12000), EDIT, index=2, field="image_urls")
    assert err.value.fail_msg == (
        "input.image_urls[2]: image is 12000x12000 pixels, more than the 36,000,000 allowed"
    )


def test_rule_governs_not_pillows_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # an image within the rule decodes silently even over Pillow's process-wide warning
    # threshold (1600 pixels here; its hard error is at twice the threshold)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for fmt in ("PNG", "GIF", "TIFF", "JPEG"):
        data = _bytes(_picture((40, 40)), fmt)
        assert decode_input(data, LAYERS, index=0, field="image_url").size == (40, 40)


def test_too_few_pixels_and_extreme_aspect_refused() -> None:
    rule = ImageInputRule(
        field="image_urls",
        max_items=4,
        max_bytes=1 << 20,
        formats=frozenset({"PNG"}),
        min_pixels=14 * 14,
        max_aspect=3.0,
    )
    with pytest.raises(InputImageError, match=r"image is 10x10 pixels, fewer than the 196"):
        decode_input(_bytes(_picture((10, 10)), "PNG"), rule, index=0, field="image_urls")
    with pytest.raises(InputImageError) as err:
        decode_input(_bytes(_picture((100, 20)), "PNG"), rule, index=1, field="image_urls")
    assert err.value.fail_msg == (
        "input.image_urls[1]: image is 100x20 pixels, an aspect ratio of 5:1, "
        "more than the 3:1 allowed"
    )


def test_over_max_bytes_refused() -> None:
    rule = ImageInputRule(
        field="image_url", max_items=1, max_bytes=30 * 1024 * 1024, formats=frozenset({"PNG"})
    )
    data = b"\x89PNG\r\n\x1a\n" + bytes(int(31.5 * 1024 * 1024))
    with pytest.raises(InputImageError) as err:
        decode_input(data, rule, index=0, field="image_url")
    assert err.value.fail_msg == "input.image_url: file is 31.5 MB, more than the 30 MB allowed"


def test_just_over_max_bytes_names_the_bytes() -> None:
    rule = ImageInputRule(
        field="image_urls", max_items=1, max_bytes=1024 * 1024, formats=frozenset({"PNG"})
    )
    with pytest.raises(InputImageError, match=r"file is 1,048,577 bytes, more than the 1,048,576"):
        decode_input(bytes(1024 * 1024 + 1), rule, index=0, field="image_urls")


def test_truncated_data_could_not_be_decoded() -> None:
    data = _bytes(_picture((256, 256)), "PNG")
    with pytest.raises(InputImageError) as err:
        decode_input(data[: len(data) // 2], EDIT, index=3, field="image_urls")
    assert err.value.fail_msg == "input.image_urls[3]: image could not be decoded"
    jpeg = _bytes(_picture((256, 256)), "JPEG")
    with pytest.raises(InputImageError, match=r"could not be decoded"):
        decode_input(jpeg[:200], EDIT, index=3, field="image_urls")


def test_corrupt_header_could_not_be_decoded() -> None:
    data = bytearray(_bytes(_picture(), "PNG"))
    data[20] ^= 0xFF  # IHDR no longer matches its CRC
    with pytest.raises(
        InputImageError, match=r"^input.image_urls\[0\]: image could not be decoded"
    ):
        decode_input(bytes(data), EDIT, index=0, field="image_urls")


@pytest.mark.parametrize(
    "data", [b"<html><body>not found</body></html>", b"GIF", bytes(range(256)) * 4]
)
def test_non_image_refused(data: bytes) -> None:
    with pytest.raises(InputImageError) as err:
        decode_input(data, EDIT, index=1, field="image_urls")
    assert err.value.fail_msg == "input.image_urls[1]: not an image (unrecognised data)"


def test_empty_file_refused() -> None:
    with pytest.raises(InputImageError, match=r"^input.image_url: not an image"):
        decode_input(b"", LAYERS, index=0, field="image_url")


def test_other_real_formats_named_by_type() -> None:
    data = _bytes(_picture((32, 32)), "ICO")
    with pytest.raises(InputImageError) as err:
        decode_input(data, EDIT, index=0, field="image_urls")
    assert err.value.fail_msg.startswith("input.image_urls[0]: image/x-icon is not accepted")


def test_exif_orientation_applied() -> None:
    image = _picture((64, 48))  # red block top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    data = _bytes(image, "JPEG", exif=exif, quality=95)
    upright = decode_input(data, EDIT, index=0, field="image_urls")
    assert upright.size == (48, 64)
    r, g, _ = pixel(upright, 45, 2)
    assert r > 200 and g < 60  # the red corner is now top-right
    r, g, _ = pixel(upright, 2, 2)
    assert abs(r - g) < 30  # and top-left is the grey gradient


def test_encode_png_with_text() -> None:
    art = encode(_picture(), "png", text={"seedbed:engine": "x", "seedbed:prompt": "猫 — café"})
    assert (art.content_type, art.extension, art.width, art.height) == ("image/png", "png", 64, 48)
    with Image.open(io.BytesIO(art.data)) as back:
        assert back.format == "PNG"
        assert png_text(back) == {"seedbed:engine": "x", "seedbed:prompt": "猫 — café"}


def test_encode_png_keeps_alpha() -> None:
    art = encode(Image.new("RGBA", (5, 7), (1, 2, 3, 0)), "png")
    with Image.open(io.BytesIO(art.data)) as back:
        assert back.mode == "RGBA" and back.size == (5, 7)


def test_encode_jpeg_with_comment() -> None:
    art = encode(Image.new("RGBA", (9, 4), (0, 0, 0, 0)), "jpeg", text={"a": "b", "c": "é"})
    assert (art.content_type, art.extension, art.width, art.height) == ("image/jpeg", "jpg", 9, 4)
    with Image.open(io.BytesIO(art.data)) as back:
        assert back.format == "JPEG" and back.mode == "RGB"
        assert back.info["comment"] == "a=b\nc=é".encode()
        assert pixel(back, 4, 2)[0] > 240  # transparent flattened onto white


def test_encode_is_deterministic() -> None:
    assert encode(_picture(), "png").data == encode(_picture(), "png").data
    assert encode(_picture(), "jpeg").data == encode(_picture(), "jpeg").data


def test_resize_exact() -> None:
    assert resize_exact(_picture((64, 48)), 100, 30).size == (100, 30)
    same = _picture((64, 48))
    copy = resize_exact(same, 64, 48)
    assert copy.size == (64, 48) and copy is not same
    with pytest.raises(ValueError):
        resize_exact(same, 0, 10)


def _gif_with_frame(width: int, height: int) -> bytes:
    """A GIF whose screen is 1x1 but whose first frame claims ``width`` x ``height``."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def test_gif_frame_outgrowing_its_screen_is_a_bomb_too() -> None:
    assert decode_input(_gif_with_frame(1, 1), LAYERS, index=0, field="image_url").size == (1, 1)
    with pytest.raises(InputImageError) as err:
        decode_input(_gif_with_frame(12000, 12000), LAYERS, index=0, field="image_url")
    assert err.value.fail_msg == (
        "input.image_url: image is 12000x12000 pixels, more than the 36,000,000 allowed"
    )
    with pytest.raises(InputImageError) as err:
        decode_input(_gif_with_frame(40000, 40000), LAYERS, index=0, field="image_url")
    assert err.value.fail_msg == (
        "input.image_url: image claims more pixels than can be decoded safely"
    )
