"""Encoders and post-processing workers for outputs (issue 18), on the stand-in's pictures.

1. Each encoder on one 4096x4096 photo-like picture (the stand-in's 1024x1024 picture,
   Lanczos-resized): time (best of ``--repeat``) and size. Pillow's JPEG and PNG (zlib, adaptive
   filters) and seedbed's fast PNG (Up filter + ISA-L) always; simplejpeg, imagecodecs and
   PyTurboJPEG where importable (``pip install --target DIR`` them and put DIR on PYTHONPATH:
   they are not dependencies).
2. Post-processing of ``--jobs`` 4K outputs (resize from 1024x1024, encode) on a thread pool
   against a process pool of the same size (the CPU count): threads share the pictures, a
   process pool pickles each one across.
3. One output alone, after an idle gap of ``--gap`` seconds (the CPU idles while a device
   renders): its post-processing on one thread against in strips shared by one thread per
   core (``seedbed.strips``, as the worker makes it), alternating; p50 of ``--samples`` and
   the ratio, at 512 JPEG and the Seedream sizes (2K and 4K, JPEG and PNG).

The machine may be shared: compare within one run. Usage: ``python bench/encoder_bench.py``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from seedbed import images
from seedbed.engines.standin import _picture


def _pillow(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _encoders(big: Image.Image) -> dict[str, Callable[[], bytes]]:
    pixels = np.asarray(big)
    out: dict[str, Callable[[], bytes]] = {
        "jpeg pillow q90 (4:2:0)": partial(_pillow, big, "JPEG", quality=90),
    }
    try:
        import simplejpeg

        out["jpeg simplejpeg q90 (4:2:0)"] = partial(
            simplejpeg.encode_jpeg, pixels, quality=90, colorspace="RGB", colorsubsampling="420"
        )
    except ImportError:
        print("simplejpeg: not importable")
    try:
        import imagecodecs

        out["jpeg imagecodecs jpeg8 q90"] = partial(imagecodecs.jpeg8_encode, pixels, level=90)
        out["png imagecodecs (libpng) level 1"] = partial(imagecodecs.png_encode, pixels, level=1)
    except ImportError:
        print("imagecodecs: not importable")
    try:
        import turbojpeg

        jpeg = turbojpeg.TurboJPEG()
        out["jpeg PyTurboJPEG q90"] = partial(jpeg.encode, pixels, quality=90)
    except Exception as exc:  # the wheel needs the system's libturbojpeg
        print(f"PyTurboJPEG: {exc}")
    for level in (1, 6, 9):
        out[f"png pillow (zlib) level {level}"] = partial(_pillow, big, "PNG", compress_level=level)
    for level in (1, 2, 3):
        out[f"png seedbed fast (ISA-L) level {level}"] = partial(
            lambda lv: images.encode(big, "png", encoding=images.Encoding(lv)).data, level
        )
    return out


def _finish(picture: Image.Image, size: int, fmt: str) -> int:
    return len(images.finish(picture, size, size, fmt).data)  # type: ignore[arg-type]


def _pool_run(pool: Executor, picture: Image.Image, jobs: int, fmt: str) -> float:
    start = time.perf_counter()
    list(pool.map(_finish, [picture] * jobs, [4096] * jobs, [fmt] * jobs))
    return time.perf_counter() - start


def _alone(picture: Image.Image, size: int, fmt: str, encoding: images.Encoding) -> float:
    start = time.perf_counter()
    images.finish(picture, size, size, fmt, encoding=encoding)  # type: ignore[arg-type]
    return time.perf_counter() - start


def strips(native: Image.Image, gap: float, samples: int) -> None:
    """Section 3: one output alone, on one thread against in strips on every core."""
    cores = os.cpu_count() or 1
    with ThreadPoolExecutor(cores) as pool:
        shared = images.Encoding(helpers=pool, threads=cores)
        print(f"one output alone after {gap:g} s idle, p50 of {samples}: one thread / strips")
        for size, fmt in [
            (512, "jpeg"),
            (2048, "jpeg"),
            (2048, "png"),
            (4096, "jpeg"),
            (4096, "png"),
        ]:
            times: dict[str, list[float]] = {"one": [], "strips": []}
            for sample in range(samples):
                for name in ("one", "strips") if sample % 2 else ("strips", "one"):
                    time.sleep(gap)
                    encoding = shared if name == "strips" else images.DEFAULT_ENCODING
                    times[name].append(_alone(native, size, fmt, encoding))
            one, split = (statistics.median(times[name]) for name in ("one", "strips"))
            print(
                f"  {size}x{size} {fmt:4s} one thread {one * 1000:7.1f} ms   strips on {cores} "
                f"cores {split * 1000:7.1f} ms   ratio {split / one:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--gap", type=float, default=1.0, help="idle seconds before each output")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--only-strips", action="store_true", help="section 3 alone")
    args = parser.parse_args()
    if args.only_strips:
        strips(_picture(1024, 1024, 0), args.gap, args.samples)
        return
    native = _picture(1024, 1024, 0)
    start = time.perf_counter()
    big = native.resize((4096, 4096), Image.Resampling.LANCZOS)
    print(f"Lanczos 1024x1024 -> 4096x4096: {time.perf_counter() - start:.3f} s")
    for name, encode in _encoders(big).items():
        best, size = float("inf"), 0
        for _ in range(args.repeat if "level 9" not in name else 1):
            start = time.perf_counter()
            size = len(encode())
            best = min(best, time.perf_counter() - start)
        print(f"{name:38s} {best:7.3f} s  {size / 1e6:6.2f} MB")
    workers = os.cpu_count() or 1
    for fmt in ("jpeg", "png"):
        with ThreadPoolExecutor(workers) as threads, ProcessPoolExecutor(workers) as processes:
            _pool_run(processes, native, workers, fmt)  # start the processes
            t = _pool_run(threads, native, args.jobs, fmt)
            p = _pool_run(processes, native, args.jobs, fmt)
        print(
            f"{args.jobs} x 4K {fmt} post-processing on {workers} workers: threads {t:.2f} s, "
            f"processes {p:.2f} s"
        )
    strips(native, args.gap, args.samples)


if __name__ == "__main__":
    main()
