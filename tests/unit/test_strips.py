"""One output in strips on several threads (issue 18, ``seedbed.strips``): the same pixels
as one thread and as Pillow's resize, a valid PNG from pieces deflated apart, and helpers that
share the work when idle and are never waited for when busy."""

from __future__ import annotations

import io
import itertools
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from seedbed import images, strips
from seedbed.engines.standin import _picture, native_size
from seedbed.strips import MIN_PIXELS, MIN_ROWS, Rows, share, strip_edges


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=7) as executor:
        yield executor


@pytest.fixture
def small_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips down to ``MIN_ROWS`` rows whatever their width: small pictures cut as many
    ways as large ones, so every edge rule is met in a test's time."""
    monkeypatch.setattr(strips, "MIN_PIXELS", 1)


# native sizes of a 1024x1024-area model for the catalogue's aspects and a few odd ones; the
# outputs include upscales by 2, 4, 15/8 and odd downscales (777 rows from 896: step 111)
CASES = [
    (512, 512),
    (2048, 2048),
    (2560, 1440),
    (1440, 2560),
    (3024, 4032),
    (4704, 3520),
    (6240, 2656),
    (1248, 832),
    (999, 777),
]


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize(("width", "height"), CASES)
@pytest.mark.usefixtures("small_strips")
def test_strips_give_pillows_resize_exactly(
    pool: ThreadPoolExecutor, mode: str, width: int, height: int
) -> None:
    picture = _picture(*native_size(width, height, 512), 1)
    if mode == "RGBA":  # a varying alpha: the premultiplied resize must be kept too
        picture = picture.copy()
        picture.putalpha(Image.linear_gradient("L").resize(picture.size))
    expected = np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS))
    rows = Rows(picture, width, height)
    for threads in (1, 2, 3, 8):
        made = rows.whole(pool, threads)
        assert (made.mode, made.size) == (mode, (width, height))
        assert np.array_equal(np.asarray(made), expected), threads


def test_strip_edges_fall_on_whole_source_rows() -> None:
    for height, source in [(4096, 1024), (1440, 768), (777, 896), (2048, 2048), (1000, 1024)]:
        for threads in (2, 3, 5, 16):
            edges = strip_edges(height, 4096, source, threads)
            assert edges[0] == 0 and edges[-1] == height
            assert len(edges) - 1 <= threads
            cuts = list(itertools.pairwise(edges))
            assert all(bottom - top >= MIN_ROWS for top, bottom in cuts[:-1])
            assert all((bottom - top) * 4096 >= MIN_PIXELS for top, bottom in cuts[:-1])
            assert all(top * source % height == 0 for top in edges)
    # no whole source row short of the end: one strip
    assert strip_edges(1021, 4096, 1024, 8) == [0, 1021]
    assert strip_edges(100, 8192, 100, 8) == [0, 100]  # too few rows to cut
    assert strip_edges(512, 512, 1024, 8) == [0, 512]  # too few pixels to share
    assert strip_edges(4096, 4096, 1024, 1) == [0, 4096]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(body, zlib.crc32(kind)), kind
        chunks.append((kind, body))
        at += 12 + length
    return chunks


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.usefixtures("small_strips")
def test_a_png_deflated_in_strips_is_one_valid_stream(pool: ThreadPoolExecutor, mode: str) -> None:
    picture = _picture(512, 512, 2).convert(mode)
    one = images.finish(picture, 1024, 768, "png", text={"a": "b"})
    many = images.finish(
        picture,
        1024,
        768,
        "png",
        text={"a": "b"},
        encoding=images.Encoding(helpers=pool, threads=4),
    )
    chunks = _png_chunks(many.data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[2][1])  # checks the combined Adler-32
    channels = len(mode)
    assert len(raw) == 768 * (1024 * channels + 1)
    filters = {raw[row * (1024 * channels + 1)] for row in range(768)}
    assert filters == {1, 2}  # Up, and Sub at each later strip's first row
    decoded_one, decoded_many = Image.open(io.BytesIO(one.data)), Image.open(io.BytesIO(many.data))
    assert decoded_many.mode == mode and decoded_many.size == (1024, 768)
    assert np.array_equal(np.asarray(decoded_one), np.asarray(decoded_many))
    expected = picture.resize((1024, 768), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(decoded_many), np.asarray(expected))


@pytest.mark.usefixtures("small_strips")
def test_a_jpeg_from_strips_is_the_same_file(pool: ThreadPoolExecutor) -> None:
    picture = _picture(512, 512, 3)
    one = images.finish(picture, 1024, 1024, "jpeg")
    many = images.finish(
        picture, 1024, 1024, "jpeg", encoding=images.Encoding(helpers=pool, threads=4)
    )
    assert many.data == one.data


def test_adler32_combine_matches_zlibs() -> None:
    rng = np.random.default_rng(5)
    for first_len, second_len in [(0, 10), (10, 0), (1, 1), (65521, 3), (100_000, 200_001)]:
        first = rng.integers(0, 256, first_len, dtype=np.uint8).tobytes()
        second = rng.integers(0, 256, second_len, dtype=np.uint8).tobytes()
        combined = images._adler32_combine(zlib.adler32(first), zlib.adler32(second), second_len)
        assert combined == zlib.adler32(first + second)


def test_idle_helpers_work_beside_the_caller(pool: ThreadPoolExecutor) -> None:
    """Two strips that can only end together (a barrier of two): only a helper working at the
    same time as the caller lets them."""
    meet = threading.Barrier(2, timeout=10)
    workers: set[int] = set()

    def make(index: int) -> int:
        workers.add(threading.get_ident())
        meet.wait()
        return index * 10

    assert share(2, make, pool, 2) == [0, 10]
    assert len(workers) == 2


def test_a_busy_pool_is_never_waited_for() -> None:
    """Every helper thread is held by other work: the caller makes every strip itself and
    returns at once (it does not wait for the queued helper job)."""
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as busy, ThreadPoolExecutor(max_workers=1) as caller:
        busy.submit(release.wait)  # held until the test ends
        try:
            made: list[int] = []
            sharing = caller.submit(share, 4, lambda i: made.append(i) or i, busy, 4)
            # a share that waited for its queued helper job would still be waiting here
            assert sharing.result(timeout=10) == [0, 1, 2, 3]
            assert made == [0, 1, 2, 3]
        finally:
            release.set()


def test_an_error_in_any_strip_is_raised_after_every_strip_ends(
    pool: ThreadPoolExecutor,
) -> None:
    ended: list[int] = []

    def make(index: int) -> int:
        if index == 1:
            raise ValueError("strip 1 broke")
        ended.append(index)
        return index

    with pytest.raises(ValueError, match="strip 1 broke"):
        share(6, make, pool, 3)
    assert sorted(ended) == [0, 2, 3, 4, 5]


def test_a_pool_shut_down_leaves_the_caller_to_make_them(pool: ThreadPoolExecutor) -> None:
    pool.shutdown()
    assert share(3, lambda i: i + 1, pool, 4) == [1, 2, 3]
