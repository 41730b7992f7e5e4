"""Seedream 5.0 Flash: text to image, image to image and layer decomposition.

``size`` 1K is the 4.0 table, 2K the 4.5 table, 1.5K the 1K size times 1.5 rounded to multiples
of 16 (CONTRACT §2). One price at every size; the tier is the size so an operator can split it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from seedbed.catalogue import common, sizes
from seedbed.catalogue.base import Capability, ModelSpec, Pricing
from seedbed.engines.base import OutputPlan

__all__ = [
    "SPECS",
    "FlashSize",
    "Seedream5FlashEditInput",
    "Seedream5FlashInput",
    "Seedream5FlashLayerInput",
    "size_for",
]

FlashSize = Literal["1K", "1.5K", "2K"]

FAMILY = "Seedream 5.0 Flash"
MAX_INPUT_IMAGES = 10
PRICES = {"1K": Decimal("3.24"), "1.5K": Decimal("3.24"), "2K": Decimal("3.24")}
LAYER_PRICE = Decimal("3.24")


class Seedream5FlashInput(common.KieInput):
    """Seedream 5.0 Flash text to image."""

    prompt: str = Field(
        min_length=3, max_length=5000, description="The text prompt (3 to 5000 characters)."
    )
    aspect_ratio: common.AspectRatio = Field("1:1", description=common.ASPECT_RATIO_DESCRIPTION)
    size: FlashSize = Field(
        "1K",
        description="Output size: 1K (e.g. 1024x1024), 1.5K (1536x1536) or 2K (2048x2048).",
    )
    output_format: common.OutputFormat = Field("png", description="Output image format.")
    nsfw_checker: bool | None = Field(None, description=common.NSFW_CHECKER_DESCRIPTION)


class Seedream5FlashEditInput(Seedream5FlashInput):
    """Seedream 5.0 Flash image to image: images and a prompt saying what to make of them."""

    image_urls: list[common.HttpUrl] = Field(
        min_length=1, max_length=MAX_INPUT_IMAGES, description=common.IMAGE_URLS_DESCRIPTION
    )


class Seedream5FlashLayerInput(common.LayerInputBase):
    """Seedream 5.0 Flash layer decomposition: one image in, a base image and layers out."""

    prompt: str | None = Field(
        None,
        min_length=3,
        max_length=5000,
        description=(
            "Which elements to separate (optional; 3 to 5000 characters when given); may "
            "contain <bbox>x1 y1 x2 y2</bbox> with coordinates normalised to 0-1000."
        ),
    )


def size_for(size: str, aspect_ratio: str) -> sizes.Size:
    """The contract's pixel size for a ``size`` and ``aspect_ratio``."""
    if size == "1.5K":
        return sizes.FLASH_1_5K[aspect_ratio]
    if size == "2K":
        return sizes.SEEDREAM_4_5["2K"][aspect_ratio]
    return sizes.SEEDREAM_4_0["1K"][aspect_ratio]


def _tier(inp: BaseModel) -> str:
    return common.as_input(inp, Seedream5FlashInput).size


def _plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    flash = common.as_input(inp, Seedream5FlashInput)
    width, height = size_for(flash.size, flash.aspect_ratio)
    return OutputPlan(width=width, height=height, format=flash.output_format)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="seedream/5-flash-text-to-image",
        family=FAMILY,
        title="Seedream5.0 Flash - Text to Image",
        capability=Capability.TEXT_TO_IMAGE,
        input_model=Seedream5FlashInput,
        pricing=Pricing(per_output=PRICES),
        tier=_tier,
        plan=_plan,
    ),
    ModelSpec(
        id="seedream/5-flash-image-to-image",
        family=FAMILY,
        title="Seedream5.0 Flash - Image to Image",
        capability=Capability.EDIT,
        input_model=Seedream5FlashEditInput,
        pricing=Pricing(per_output=PRICES),
        image_input=common.edit_image_rule(MAX_INPUT_IMAGES),
        tier=_tier,
        plan=_plan,
    ),
    common.layer_spec(
        id="seedream/5-flash-layer-decomposition",
        family=FAMILY,
        title="Seedream5.0 Flash - Layer Decomposition",
        input_model=Seedream5FlashLayerInput,
        price_per_layer=LAYER_PRICE,
    ),
)
