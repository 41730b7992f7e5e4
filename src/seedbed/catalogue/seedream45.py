"""Seedream 4.5: ``seedream/4.5-text-to-image`` and ``seedream/4.5-edit``.

``quality`` basic is the 4.5 table's 2K column, high its 4K column (CONTRACT §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from seedbed.catalogue import common, sizes
from seedbed.catalogue.base import Capability, ModelSpec, Pricing
from seedbed.engines.base import OutputPlan

__all__ = ["SPECS", "Quality45", "Seedream45EditInput", "Seedream45Input"]

Quality45 = Literal["basic", "high"]

FAMILY = "Seedream 4.5"
MAX_INPUT_IMAGES = 14
#: kie charges the same for both qualities; the tiers let an operator price them apart
PRICES = {"basic": Decimal("6.5"), "high": Decimal("6.5")}
_RESOLUTION = {"basic": "2K", "high": "4K"}


class Seedream45Input(common.KieInput):
    """Seedream 4.5 text to image."""

    prompt: str = Field(
        min_length=1, max_length=3000, description="The text prompt (up to 3000 characters)."
    )
    aspect_ratio: common.AspectRatio = Field("1:1", description=common.ASPECT_RATIO_DESCRIPTION)
    quality: Quality45 = Field(
        "basic", description="basic: 2K output (e.g. 2048x2048); high: 4K (e.g. 4096x4096)."
    )
    nsfw_checker: bool | None = Field(None, description=common.NSFW_CHECKER_DESCRIPTION)


class Seedream45EditInput(Seedream45Input):
    """Seedream 4.5 edit: images and a prompt saying how to change them."""

    image_urls: list[common.HttpUrl] = Field(
        min_length=1, max_length=MAX_INPUT_IMAGES, description=common.IMAGE_URLS_DESCRIPTION
    )


def _tier(inp: BaseModel) -> str:
    return common.as_input(inp, Seedream45Input).quality


def _plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    v45 = common.as_input(inp, Seedream45Input)
    width, height = sizes.SEEDREAM_4_5[_RESOLUTION[v45.quality]][v45.aspect_ratio]
    return OutputPlan(width=width, height=height, format="jpeg")


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="seedream/4.5-text-to-image",
        family=FAMILY,
        title="Seedream4.5 - Text to Image",
        capability=Capability.TEXT_TO_IMAGE,
        input_model=Seedream45Input,
        pricing=Pricing(per_output=PRICES),
        tier=_tier,
        plan=_plan,
    ),
    ModelSpec(
        id="seedream/4.5-edit",
        family=FAMILY,
        title="Seedream4.5 - Edit",
        capability=Capability.EDIT,
        input_model=Seedream45EditInput,
        pricing=Pricing(per_output=PRICES),
        image_input=common.edit_image_rule(MAX_INPUT_IMAGES),
        tier=_tier,
        plan=_plan,
    ),
)
