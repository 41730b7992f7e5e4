"""Seedream 5.0 Lite: ``seedream/5-lite-text-to-image`` and ``seedream/5-lite-image-to-image``.

``quality`` basic is 2K (4.5 table), high the 3K table, ultra 4K (4.5 table) (CONTRACT §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from seedbed.catalogue import common, sizes
from seedbed.catalogue.base import Capability, ModelSpec, Pricing
from seedbed.engines.base import OutputPlan

__all__ = ["SPECS", "QualityLite", "Seedream5LiteEditInput", "Seedream5LiteInput", "size_for"]

QualityLite = Literal["basic", "high", "ultra"]

FAMILY = "Seedream 5.0 Lite"
MAX_INPUT_IMAGES = 14
PRICES = {"basic": Decimal("5.5"), "high": Decimal("5.5"), "ultra": Decimal("5.5")}


class Seedream5LiteInput(common.KieInput):
    """Seedream 5.0 Lite text to image."""

    prompt: str = Field(
        min_length=3, max_length=3000, description="The text prompt (3 to 3000 characters)."
    )
    aspect_ratio: common.AspectRatio = Field("1:1", description=common.ASPECT_RATIO_DESCRIPTION)
    quality: QualityLite = Field(
        "basic",
        description=(
            "basic: 2K output (e.g. 2048x2048); high: 3K (e.g. 3072x3072); "
            "ultra: 4K (e.g. 4096x4096)."
        ),
    )
    output_format: common.OutputFormat = Field("png", description="Output image format.")
    nsfw_checker: bool | None = Field(None, description=common.NSFW_CHECKER_DESCRIPTION)


class Seedream5LiteEditInput(Seedream5LiteInput):
    """Seedream 5.0 Lite image to image: images and a prompt saying what to make of them."""

    image_urls: list[common.HttpUrl] = Field(
        min_length=1, max_length=MAX_INPUT_IMAGES, description=common.IMAGE_URLS_DESCRIPTION
    )


def size_for(quality: str, aspect_ratio: str) -> sizes.Size:
    """The contract's pixel size for a ``quality`` and ``aspect_ratio``."""
    if quality == "high":
        return sizes.SEEDREAM_5_0["3K"][aspect_ratio]
    return sizes.SEEDREAM_4_5["4K" if quality == "ultra" else "2K"][aspect_ratio]


def _tier(inp: BaseModel) -> str:
    return common.as_input(inp, Seedream5LiteInput).quality


def _plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    lite = common.as_input(inp, Seedream5LiteInput)
    width, height = size_for(lite.quality, lite.aspect_ratio)
    return OutputPlan(width=width, height=height, format=lite.output_format)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="seedream/5-lite-text-to-image",
        family=FAMILY,
        title="Seedream5.0 Lite - Text to Image",
        capability=Capability.TEXT_TO_IMAGE,
        input_model=Seedream5LiteInput,
        pricing=Pricing(per_output=PRICES),
        tier=_tier,
        plan=_plan,
    ),
    ModelSpec(
        id="seedream/5-lite-image-to-image",
        family=FAMILY,
        title="Seedream5.0 Lite - Image to Image",
        capability=Capability.EDIT,
        input_model=Seedream5LiteEditInput,
        pricing=Pricing(per_output=PRICES),
        image_input=common.edit_image_rule(MAX_INPUT_IMAGES),
        tier=_tier,
        plan=_plan,
    ),
)
