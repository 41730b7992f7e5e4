"""The sandbox engine: no model, instant, and honest about being fake.

It exists so the whole server (API, queue, storage, callbacks, billing) can be run and tested on
any machine, and so a client can be developed against seedbed without a GPU. Its outputs obey the
same contract as a real engine's: exactly the plan's pixel size, format and image count, layer
decomposition's base plus RGBA layers. Every image says on its face and in its metadata that it is
a sandbox render, so it can never be mistaken for a model's output.

With ``step_seconds`` it stands in for a model on a device: its steps hold the worker's device
slot, and its drawing and encoding are the job's post-processing (``Pictures``), done on the
worker's post-processing threads while the next job's steps run.

Renders are deterministic: the same job (model, input, seed, input images) gives byte-identical
files, and a different seed gives a different picture, which is what client tests need. They are
fast even at 4K and 6240x2656: the gradient is built at 256x256 and upscaled, text is drawn once,
and nothing loops over pixels in Python.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import threading
from collections.abc import Sequence
from functools import partial
from typing import TypeAlias

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from seedbed.engines.base import Artifact, EngineJob, EngineLimits, Pictures, ProgressFn
from seedbed.errors import EngineFailure
from seedbed.images import DEFAULT_ENCODING, Encoding, encode, resize_exact

__all__ = ["SANDBOX_LABEL", "SandboxEngine"]

#: drawn on every image; an ASCII hyphen because Pillow's built-in font has no em dash
SANDBOX_LABEL = "SANDBOX RENDER - not a real model"
_SOFTWARE = "seedbed sandbox engine (not a real model)"
_LAYER_NAMES = ("background", "subject", "text")
_PROMPT_META_CHARS = 1000
_PROMPT_LINES = 4

Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: typographic characters people paste into prompts, spelled with glyphs the font has
_ASCII_FOR = str.maketrans(
    {
        "\u2014": "-",
        "\u2013": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
        "\u00a0": " ",
    }
)


class SandboxEngine:
    """A fake :class:`~seedbed.engines.base.Engine` that serves every model id.

    ``step_seconds`` x ``steps`` is how long a job pretends to work (0 by default); the wait
    is on the cancel event, so cancelling interrupts it at once.
    """

    name = "sandbox"
    limits = EngineLimits()

    def __init__(self, *, step_seconds: float = 0.0, steps: int = 4) -> None:
        if step_seconds < 0 or not math.isfinite(step_seconds):
            raise ValueError("step_seconds must be a finite number >= 0")
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.step_seconds = step_seconds
        self.steps = steps

    def serves(self, model: str) -> bool:
        return True

    def load(self) -> None:
        """Nothing to load: the sandbox has no weights."""

    def run(self, job: EngineJob, progress: ProgressFn, cancel: threading.Event) -> Pictures:
        """Pretend to work for ``steps`` steps; the rendering is left to post-processing.

        Progress stays below 100 (the worker reports 100 once every file is encoded). Cancel is
        checked before and after every step, and raises ``EngineFailure("canceled")`` like a
        real engine stopping early.
        """
        reported = -1

        def report(percent: int) -> None:
            nonlocal reported
            if percent > reported:
                reported = percent
                progress(percent)

        def check_cancel() -> None:
            if cancel.is_set():
                raise EngineFailure("canceled")

        for i in range(self.steps):
            check_cancel()
            if self.step_seconds > 0:
                cancel.wait(self.step_seconds)
                check_cancel()
            # 100 is reserved for "every file encoded"
            report(min(99, int((i + 1) * 100 / self.steps)))
        check_cancel()
        if job.plan.layers:
            return Pictures([partial(_render_layers, job)])
        count = max(1, job.plan.max_images)
        return Pictures([partial(_render_one, job, index, count) for index in range(count)])

    def render(self, job: EngineJob, encoding: Encoding = DEFAULT_ENCODING) -> list[Artifact]:
        """Every file of ``job`` at once, as the worker's post-processing makes them."""
        return [
            a
            for step in self.run(job, lambda _: None, threading.Event()).outputs
            for a in step(encoding)
        ]


# --- rendering -------------------------------------------------------------------------------


def _prompt(job: EngineJob) -> str:
    value = job.input.get("prompt")
    return value if isinstance(value, str) else ""


def _digest(job: EngineJob, index: int) -> bytes:
    return hashlib.sha256(f"{_prompt(job)}\x00{job.seed}\x00{index}".encode()).digest()


def _colours(digest: bytes) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two distinct, mid-dark colours (white text with a dark outline reads on both)."""
    hue = digest[0] / 256
    hue2 = (hue + 0.2 + digest[1] / 256 * 0.4) % 1.0

    def rgb(h: float, s_byte: int, v_byte: int) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(h, 0.45 + s_byte / 255 * 0.45, 0.35 + v_byte / 255 * 0.45)
        return round(r * 255), round(g * 255), round(b * 255)

    return rgb(hue, digest[2], digest[3]), rgb(hue2, digest[4], digest[5])


@functools.cache
def _diagonal() -> Image.Image:
    """A 256x256 "L" ramp from the top-left corner (0) to the bottom-right (255)."""
    ramp = Image.linear_gradient("L")
    return Image.blend(ramp, ramp.transpose(Image.Transpose.ROTATE_270), 0.5)


def _background(width: int, height: int, digest: bytes) -> Image.Image:
    black, white = _colours(digest)
    flip = bool(digest[6] & 1)
    # Scaling the one-channel mask once per size and colouring it per image costs a fraction
    # of colouring the small ramp and scaling the result in RGB; masks up to 4 MP are kept.
    mask = (
        _mask(width, height, flip) if width * height <= 4_194_304 else _scaled(width, height, flip)
    )
    return ImageOps.colorize(mask, black=black, white=white)


def _scaled(width: int, height: int, flip: bool) -> Image.Image:
    """The diagonal ramp at ``width`` x ``height``, mirrored when ``flip``."""
    mask = _diagonal()
    if flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return mask.resize((width, height), Image.Resampling.BILINEAR)


_mask = functools.lru_cache(maxsize=8)(_scaled)


_fonts = threading.local()


def _font(size: int) -> Font:
    # One set of faces per thread: a FreeType face must not be shared by threads rendering at
    # once, and loading Pillow's built-in font decodes it from base64 each time.
    cache: dict[int, Font] = _fonts.__dict__.setdefault("by_size", {})
    font = cache.get(size)
    if font is None:
        font = cache[size] = ImageFont.load_default(size=size)
    return font


_glyph_lock = threading.Lock()


def _glyph_pixels(font: Font, char: str) -> bytes:
    probe = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(probe).text((4, 4), char, font=font, fill=255)
    return probe.tobytes()


@functools.cache
def _glyph_probe() -> tuple[Font, bytes]:
    font = _font(24)
    return font, _glyph_pixels(font, "\U0010fffd")  # a private-use point: the "missing" box


@functools.cache
def _has_glyph(char: str) -> bool:
    """Whether Pillow's built-in font draws ``char`` as itself rather than a box."""
    with _glyph_lock:
        font, missing = _glyph_probe()
        return _glyph_pixels(font, char) != missing


def _printable(text: str) -> str:
    """``text`` with controls as spaces and characters the font lacks as ``?`` (not boxes)."""
    text = text.translate(_ASCII_FOR)
    return "".join(
        " " if not c.isprintable() else c if c == " " or _has_glyph(c) else "?" for c in text
    )


def _wrap(text: str, font: Font, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; over ``max_lines`` the last line ends in ``...``."""
    words = _printable(" ".join(text.split())[:600]).split()
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while len(lines) <= max_lines and len(line) > 1 and font.getlength(line) > width:
            # a word wider than the line: cut it at the longest prefix that fits
            lo, hi = 1, len(line) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if font.getlength(line[:mid]) <= width:
                    lo = mid
                else:
                    hi = mid - 1
            lines.append(line[:lo])
            line = line[lo:]
        if len(lines) > max_lines:
            break
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + "..."]
    return lines


class _Page:
    """Text layout for one image: sizes scale with the image's short side."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        short = min(width, height)
        self.title = _font(max(12, short // 20))
        self.body = _font(max(10, short * 7 // 200))
        self.margin = max(8, short // 32)
        self.stroke = max(1, short // 400)

    @staticmethod
    def line_height(font: Font) -> int:
        size = font.size if isinstance(font, ImageFont.FreeTypeFont) else 11
        return math.ceil(size * 1.25)

    def text(self, draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Font) -> None:
        draw.text(
            xy,
            _printable(text),
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=self.stroke,
            stroke_fill=(0, 0, 0, 255),
        )

    def header(self, draw: ImageDraw.ImageDraw, prompt: str) -> int:
        """The label and the wrapped prompt at the top; returns the y below them."""
        y = self.margin
        self.text(draw, (self.margin, y), SANDBOX_LABEL, self.title)
        y += self.line_height(self.title) + self.margin // 2
        for line in _wrap(prompt, self.body, self.width - 2 * self.margin, _PROMPT_LINES):
            self.text(draw, (self.margin, y), line, self.body)
            y += self.line_height(self.body)
        return y

    def footer(self, draw: ImageDraw.ImageDraw, lines: Sequence[str]) -> int:
        """``lines`` at the bottom; returns the y above them."""
        step = self.line_height(self.body)
        y = self.height - self.margin - step * len(lines)
        top = y
        for line in lines:
            self.text(draw, (self.margin, y), line, self.body)
            y += step
        return top


def _footer_lines(job: EngineJob, index: int, count: int, extra: str = "") -> list[str]:
    size = f"{job.plan.width}x{job.plan.height}  seed {job.seed}"
    if count > 1:
        size += f"  image {index + 1}/{count}"
    if extra:
        size += f"  {extra}"
    return [job.model, size]


def _panel(
    canvas: Image.Image, inputs: Sequence[Image.Image], box: tuple[int, int, int, int], gap: int
) -> None:
    """Lay ``inputs`` into ``box`` as a grid of thumbnails, each fitted with ``contain``."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    n = len(inputs)
    if n == 0 or width < 8 or height < 8:
        return
    cols = max(1, min(n, round(math.sqrt(n * width / height))))
    rows = math.ceil(n / cols)
    cols = math.ceil(n / rows)
    cell_w, cell_h = width // cols, height // rows
    draw = ImageDraw.Draw(canvas)
    for i, source in enumerate(inputs):
        fit = (max(1, cell_w - gap), max(1, cell_h - gap))
        factor = min(source.width // fit[0], source.height // fit[1])
        small = source.reduce(factor) if factor >= 2 else source  # cheap box pre-shrink
        thumb = ImageOps.contain(small, fit, method=Image.Resampling.BILINEAR)
        x = left + (i % cols) * cell_w + (cell_w - thumb.width) // 2
        y = top + (i // cols) * cell_h + (cell_h - thumb.height) // 2
        if thumb.mode == "RGBA":
            canvas.paste(thumb.convert("RGB"), (x, y), thumb.getchannel("A"))
        else:
            canvas.paste(thumb.convert("RGB"), (x, y))
        outline = max(1, gap // 6)
        draw.rectangle(
            (
                x - outline,
                y - outline,
                x + thumb.width + outline - 1,
                y + thumb.height + outline - 1,
            ),
            outline=(255, 255, 255),
            width=outline,
        )


def _render_one(
    job: EngineJob, index: int, count: int, encoding: Encoding = DEFAULT_ENCODING
) -> list[Artifact]:
    """Post-processing of output ``index``: drawn and encoded."""
    image = _render_image(job, index, count)
    return [encode(image, job.plan.format, text=_metadata(job, index, count), encoding=encoding)]


def _render_image(job: EngineJob, index: int, count: int) -> Image.Image:
    width, height = job.plan.width, job.plan.height
    canvas = _background(width, height, _digest(job, index))
    page = _Page(width, height)
    draw = ImageDraw.Draw(canvas)
    header_bottom = page.header(draw, _prompt(job))
    inputs = list(job.images)
    extra = f"{len(inputs)} input image{'s' if len(inputs) != 1 else ''}" if inputs else ""
    footer_top = page.footer(draw, _footer_lines(job, index, count, extra))
    if inputs:
        top = max(header_bottom + page.margin, int(height * 0.45))
        box = (page.margin, top, width - page.margin, footer_top - page.margin)
        _panel(canvas, inputs, box, gap=page.margin)
    return canvas


def _flatten(image: Image.Image, under: Image.Image) -> Image.Image:
    """``image`` as RGB, transparent parts showing ``under`` (same size)."""
    if image.mode == "RGB":
        return image
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        out = under.copy()
        out.paste(rgba.convert("RGB"), (0, 0), rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def _render_layers(job: EngineJob, encoding: Encoding = DEFAULT_ENCODING) -> list[Artifact]:
    """Layer decomposition: the base in the plan's format, then background, subject, text."""
    width, height = job.plan.width, job.plan.height
    backdrop = _background(width, height, _digest(job, 0))
    if job.images:
        picture = _flatten(resize_exact(job.images[0], width, height), backdrop)
    else:
        picture = backdrop
    page = _Page(width, height)
    count = 1 + len(_LAYER_NAMES)

    base = picture.copy()
    draw = ImageDraw.Draw(base)
    page.header(draw, _prompt(job))
    page.footer(draw, _footer_lines(job, 0, 1, f"base + {len(_LAYER_NAMES)} layers"))
    artifacts = [encode(base, job.plan.format, text=_metadata(job, 0, count), encoding=encoding)]

    # background: the picture blurred and dimmed, opaque; blurred small so 4K stays fast
    small = picture.resize((max(1, width // 16), max(1, height // 16)), Image.Resampling.BILINEAR)
    small = small.filter(ImageFilter.GaussianBlur(2)).point(lambda v: v * 0.55)
    background = small.resize((width, height), Image.Resampling.BILINEAR).convert("RGBA")

    # subject: transparent except an oval cut from the picture's centre
    subject = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    box = (width // 4, height // 4, width - width // 4, height - height // 4)
    crop = picture.crop(box)
    mask = Image.new("L", crop.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, crop.width - 1, crop.height - 1), fill=255)
    subject.paste(crop, box[:2], mask)

    # text: transparent except the prompt
    text = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(text)
    page.header(draw, _prompt(job))
    page.footer(draw, ["text layer"])

    for number, (name, layer) in enumerate(
        zip(_LAYER_NAMES, (background, subject, text), strict=True), start=1
    ):
        meta = _metadata(job, number, count)
        meta["seedbed:layer"] = name
        artifacts.append(encode(layer, "png", text=meta, encoding=encoding))
    return artifacts


def _metadata(job: EngineJob, index: int, count: int) -> dict[str, str]:
    meta = {
        "seedbed:engine": "sandbox",
        "Software": _SOFTWARE,
        "seedbed:model": job.model,
        "seedbed:seed": str(job.seed),
        "seedbed:prompt": _prompt(job)[:_PROMPT_META_CHARS],
    }
    if count > 1:
        meta["seedbed:image"] = f"{index + 1}/{count}"
    return meta
