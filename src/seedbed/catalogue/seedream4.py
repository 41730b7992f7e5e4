"""Seedream 4.0: ``bytedance/seedream-v4-text-to-image`` and ``bytedance/seedream-v4-edit``.

``image_size`` names the aspect ratio and ``image_resolution`` the scale: 1K and 2K come from
ByteDance's 4.0 table, 4K from the 4.5 table's 4K column (CONTRACT §2).
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
    "ImageResolution",
    "ImageSize4",
    "Seedream4EditInput",
    "Seedream4Input",
    "size_for",
]

ImageSize4 = Literal[
    "square",
    "square_hd",
    "portrait_4_3",
    "portrait_3_2",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_3_2",
    "landscape_16_9",
    "landscape_21_9",
]
ImageResolution = Literal["1K", "2K", "4K"]

FAMILY = "Seedream 4.0"
#: kie's price per output image; some sources say 3.5 (reference §7)
PRICE = Decimal(5)
MAX_INPUT_IMAGES = 10


class Seedream4Input(common.KieInput):
    """Seedream 4.0 text to image."""

    prompt: str = Field(
        min_length=1, max_length=5000, description="The text prompt (up to 5000 characters)."
    )
    image_size: ImageSize4 = Field(
        "square_hd",
        description=(
            "Aspect ratio: square and square_hd 1:1, portrait_4_3 3:4, portrait_3_2 2:3, "
            "portrait_16_9 9:16, landscape_4_3 4:3, landscape_3_2 3:2, landscape_16_9 16:9, "
            "landscape_21_9 21:9."
        ),
    )
    image_resolution: ImageResolution = Field(
        "1K", description="Output scale: 1K, 2K or 4K (e.g. 4:3 at 2K is 2304x1728)."
    )
    max_images: int = Field(
        1,
        ge=1,
        le=6,
        description=(
            "Most images to return, 1 to 6 (the prompt should also state how many); billed per "
            "image returned."
        ),
    )
    seed: int | None = Field(
        None, ge=common.INT64_MIN, le=common.INT64_MAX, description=common.SEED_DESCRIPTION
    )
    nsfw_checker: bool | None = Field(None, description=common.NSFW_CHECKER_DESCRIPTION)


class Seedream4EditInput(Seedream4Input):
    """Seedream 4.0 edit: images and a prompt saying how to change them."""

    prompt: str = Field(
        min_length=1,
        max_length=5000,
        description="The text prompt used to edit the images (up to 5000 characters).",
    )
    image_urls: list[common.HttpUrl] = Field(
        min_length=1, max_length=MAX_INPUT_IMAGES, description=common.IMAGE_URLS_DESCRIPTION
    )


def size_for(image_size: str, image_resolution: str) -> sizes.Size:
    """The contract's pixel size for an ``image_size`` and ``image_resolution``."""
    ratio = sizes.IMAGE_SIZE_RATIO[image_size]
    if image_resolution == "4K":
        return sizes.SEEDREAM_4_5["4K"][ratio]
    return sizes.SEEDREAM_4_0[image_resolution][ratio]


def _plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    v4 = common.as_input(inp, Seedream4Input)
    width, height = size_for(v4.image_size, v4.image_resolution)
    return OutputPlan(width=width, height=height, format="jpeg", max_images=v4.max_images)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="bytedance/seedream-v4-text-to-image",
        family=FAMILY,
        title="Seedream4.0 - Text to Image",
        capability=Capability.TEXT_TO_IMAGE,
        input_model=Seedream4Input,
        pricing=Pricing(per_output={"default": PRICE}),
        plan=_plan,
    ),
    ModelSpec(
        id="bytedance/seedream-v4-edit",
        family=FAMILY,
        title="Seedream4.0 - Edit",
        capability=Capability.EDIT,
        input_model=Seedream4EditInput,
        pricing=Pricing(per_output={"default": PRICE}),
        image_input=common.edit_image_rule(MAX_INPUT_IMAGES),
        plan=_plan,
    ),
)
