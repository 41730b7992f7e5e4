"""Seedream 5.0 Pro: text to image, image to image and layer decomposition.

``quality`` basic is 1K (4.0 table), high 2K (4.5 table) (CONTRACT §2). Image to image costs
0.5 credits more per input image after the first (reference §7).
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
    "QualityPro",
    "Seedream5ProEditInput",
    "Seedream5ProInput",
    "Seedream5ProLayerInput",
    "size_for",
]

QualityPro = Literal["basic", "high"]

FAMILY = "Seedream 5.0 Pro"
MAX_INPUT_IMAGES = 10
PRICES = {"basic": Decimal(7), "high": Decimal(14)}
EXTRA_INPUT_PRICE = Decimal("0.5")
#: kie publishes no price for Pro layer decomposition; assumed equal to a basic Pro image
LAYER_PRICE = Decimal(7)


class Seedream5ProInput(common.KieInput):
    """Seedream 5.0 Pro text to image."""

    prompt: str = Field(
        min_length=3, max_length=5000, description="The text prompt (3 to 5000 characters)."
    )
    aspect_ratio: common.AspectRatio = Field("1:1", description=common.ASPECT_RATIO_DESCRIPTION)
    quality: QualityPro = Field(
        "basic", description="basic: 1K output (e.g. 1024x1024); high: 2K (e.g. 2048x2048)."
    )
    output_format: common.OutputFormat = Field("png", description="Output image format.")
    nsfw_checker: bool | None = Field(None, description=common.NSFW_CHECKER_DESCRIPTION)


class Seedream5ProEditInput(Seedream5ProInput):
    """Seedream 5.0 Pro image to image; each input image after the first costs extra."""

    image_urls: list[common.HttpUrl] = Field(
        min_length=1, max_length=MAX_INPUT_IMAGES, description=common.IMAGE_URLS_DESCRIPTION
    )


class Seedream5ProLayerInput(common.LayerInputBase):
    """Seedream 5.0 Pro layer decomposition: one image in, a base image and layers out."""


def size_for(quality: str, aspect_ratio: str) -> sizes.Size:
    """The contract's pixel size for a ``quality`` and ``aspect_ratio``."""
    if quality == "high":
        return sizes.SEEDREAM_4_5["2K"][aspect_ratio]
    return sizes.SEEDREAM_4_0["1K"][aspect_ratio]


def _tier(inp: BaseModel) -> str:
    return common.as_input(inp, Seedream5ProInput).quality


def _plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    pro = common.as_input(inp, Seedream5ProInput)
    width, height = size_for(pro.quality, pro.aspect_ratio)
    return OutputPlan(width=width, height=height, format=pro.output_format)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="seedream/5-pro-text-to-image",
        family=FAMILY,
        title="Seedream5.0 Pro - Text to Image",
        capability=Capability.TEXT_TO_IMAGE,
        input_model=Seedream5ProInput,
        pricing=Pricing(per_output=PRICES),
        tier=_tier,
        plan=_plan,
    ),
    ModelSpec(
        id="seedream/5-pro-image-to-image",
        family=FAMILY,
        title="Seedream5.0 Pro - Image to Image",
        capability=Capability.EDIT,
        input_model=Seedream5ProEditInput,
        pricing=Pricing(per_output=PRICES, per_extra_input=EXTRA_INPUT_PRICE),
        image_input=common.edit_image_rule(MAX_INPUT_IMAGES),
        tier=_tier,
        plan=_plan,
    ),
    common.layer_spec(
        id="seedream/5-pro-layer-decomposition",
        family=FAMILY,
        title="Seedream 5.0 Pro - Layer Decomposition",
        input_model=Seedream5ProLayerInput,
        price_per_layer=LAYER_PRICE,
    ),
)
