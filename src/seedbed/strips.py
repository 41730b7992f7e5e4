"""One output made in strips of rows, on as many threads as are free: its resize and its PNG.

A single task's post-processing is mostly one Lanczos resize (1024x1024 to 512x512 is ~10 ms
of the ~10.5 ms after the model, 1024x1024 to 4096x4096 ~170 ms) and, for a PNG, the rows'
copy, filter and deflate (~200 ms at 4K). Each is a function of a band of rows, so with idle
cores a task need not wait for one core to do them all: the output is cut into strips, the
calling thread works through them, and idle helper threads (the worker's post-processing
threads) take strips beside it. A helper that starts late finds none left and returns; the
caller never waits for a helper that has not begun, so sharing the post-processing threads
cannot deadlock, and under a backlog (every thread busy with its own task) the caller simply
makes all its strips itself.

The result does not depend on how many strips there are. Pillow's one-call resize picks the
order of its two passes by cost, which differs between a strip and the whole picture (and
rounding between the passes makes the orders differ by a grey level or two), so both passes
are made here explicitly, horizontal first (Pillow's choice for whole pictures of these sizes):
the horizontal pass of the source rows a strip needs (each row alone, so exact), then the
vertical pass with a box whose edges fall on whole source rows, where every coefficient is
the one the whole picture's pass computes. Strip edges are placed where the output row's
source position is a whole number; a size with no such place resizes as one strip.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

from PIL import Image

__all__ = ["Rows", "share", "strip_edges"]

T = TypeVar("T")

#: the fewest output pixels in a strip (about 5 ms of Lanczos): below this a strip's own costs
#: outweigh what it saves. A helper idle for a while wakes ~2 ms late on a shared host, and a
#: 512x512 output split in two was slower there (bench/encoder_bench.py), 2K and 4K faster.
MIN_PIXELS = 1 << 19

#: the fewest output rows in a strip (its horizontal pass repeats a few rows of each neighbour's)
MIN_ROWS = 64

#: Lanczos's support, in source pixels at a scale of 1 (Pillow's ``LANCZOS`` filter)
_SUPPORT = 3.0


def strip_edges(height: int, width: int, source_height: int, threads: int) -> list[int]:
    """Where to cut ``height`` output rows of ``width`` pixels into at most ``threads`` strips
    of ``MIN_ROWS`` rows and ``MIN_PIXELS`` pixels or more: ``[0, ..., height]``. When the rows
    are resized from ``source_height`` rows, edges fall only on output rows whose source
    position is a whole number (see the module's docstring)."""
    count = min(threads, height // MIN_ROWS, height * width // MIN_PIXELS)
    if count < 2:
        return [0, height]
    step = height // math.gcd(height, source_height) if source_height != height else 1
    size = -(-height // count)  # rows per strip, rounded up to a whole number of steps
    size = -(-size // step) * step
    if size >= height:
        return [0, height]
    return [*range(0, height, size), height]


class Rows:
    """Bands of rows of ``image`` resized (Lanczos) to ``width`` x ``height``, or of ``image``
    itself at its size; any band can be made on any thread, in any order."""

    def __init__(self, image: Image.Image, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"cannot resize to {width}x{height}")
        self.mode = image.mode
        self.width, self.height = width, height
        self._horizontal = image.width != width
        self._vertical = image.height != height
        # Pillow resizes RGBA premultiplied (so edges do not fringe), converting the whole
        # picture on every call: converted once here, back per band
        premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
        self._source = (
            image.convert(premultiplied)
            if premultiplied and (self._horizontal or self._vertical)
            else image
        )
        self._source.load()  # a lazily opened picture is loaded here, not by threads at once

    def edges(self, helpers: Executor | None, threads: int) -> list[int]:
        """How to cut this output into strips for ``threads`` threads, the caller's and
        ``helpers``' (:func:`strip_edges`); one strip without helpers."""
        alone = helpers is None
        return strip_edges(self.height, self.width, self._source.height, 1 if alone else threads)

    def band(self, top: int, bottom: int) -> Image.Image:
        """Output rows ``top`` to ``bottom`` (excluded), in the source's mode (all the rows of
        a picture at its size are the picture itself, not a copy)."""
        source = self._source
        if not self._vertical:
            whole = (top, bottom) == (0, source.height)
            rows = source if whole else source.crop((0, top, source.width, bottom))
            if self._horizontal:
                rows = rows.resize((self.width, bottom - top), Image.Resampling.LANCZOS)
            return self._back(rows)
        scale = source.height / self.height
        # where the strip's edges fall in the source: whole numbers (strip_edges), computed
        # as one exact division each
        begin, end = top * source.height / self.height, bottom * source.height / self.height
        # the source rows the vertical pass reads for these output rows (Pillow's window:
        # ``support`` either side of each row's centre, rounded), plus one for the rounding
        support = _SUPPORT * max(scale, 1.0)
        first = max(0, math.floor(begin - support) - 1)
        last = min(source.height, math.ceil(end + support) + 1)
        rows = source
        if (first, last) != (0, source.height):
            rows = source.crop((0, first, source.width, last))
        if self._horizontal:  # horizontal only: its height is the rows' own
            rows = rows.resize((self.width, last - first), Image.Resampling.LANCZOS)
        # vertical only, over the box of these output rows: its edges are whole numbers, so
        # exact in Pillow's float32, and its scale is the whole picture's
        box = (0.0, begin - first, float(rows.width), end - first)
        band = rows.resize((self.width, bottom - top), Image.Resampling.LANCZOS, box=box)
        return self._back(band)

    def whole(self, helpers: Executor | None = None, threads: int = 1) -> Image.Image:
        """The whole output, its strips shared with ``helpers`` (see :func:`share`)."""
        if not (self._horizontal or self._vertical):
            return self._source.copy()
        edges = self.edges(helpers, threads)
        if len(edges) == 2:
            return self.band(0, self.height)
        out = Image.new(self.mode, (self.width, self.height), None)  # None: not cleared

        def make(index: int) -> None:
            # pasted by the thread that made it (rows apart, so threads never meet): the copy
            # and the first touch of the new picture's memory are shared out too
            out.paste(self.band(edges[index], edges[index + 1]), (0, edges[index]))

        share(len(edges) - 1, make, helpers, threads)
        return out

    def _back(self, band: Image.Image) -> Image.Image:
        return band.convert(self.mode) if band.mode != self.mode else band


def share(
    count: int,
    make: Callable[[int], T],
    helpers: Executor | None,
    threads: int,
) -> list[T]:
    """``[make(0), ..., make(count - 1)]``, made by the calling thread and by up to
    ``threads - 1`` of ``helpers``' threads that are idle now.

    Each thread takes the next index not taken yet. Jobs still queued when the calling thread
    has taken the last index are canceled (one that starts anyway finds nothing to do): the
    caller waits only for indices being made, never for a busy pool. The first error any
    index raised is raised here, once every index taken has ended.
    """
    if count <= 0:
        return []
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()
    taken = 0
    left = count
    ended = threading.Event()

    def work() -> None:
        nonlocal taken, left
        while True:
            with lock:
                index = taken
                taken += 1
            if index >= count:
                return
            try:
                results[index] = make(index)
            except BaseException as exc:  # raised in the caller, after every band has ended
                errors.append(exc)
            with lock:
                left -= 1
                if left == 0:
                    ended.set()

    jobs: list[Future[None]] = []
    if helpers is not None:
        for _ in range(min(count, threads) - 1):
            try:
                jobs.append(helpers.submit(work))
            except RuntimeError:  # the pool is shutting down: the caller makes the rest
                break
    work()
    for job in jobs:
        job.cancel()
    ended.wait()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every index was made
