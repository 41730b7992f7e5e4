"""Seedream 3.0: ``bytedance/seedream``, text to image at fal.ai's preset sizes."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from seedbed.catalogue import common, sizes
from seedbed.catalogue.base import Capability, ModelSpec, Pricing
from seedbed.engines.base import OutputPlan

__all__ = ["SPECS", "ImageSize3", "Seedream3Input"]

ImageSize3 = Literal[
    "square", "square_hd", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]


class Seedream3Input(common.KieInput):
    """Seedream 3.0 text to image."""

    prompt: str = Field(
        min_length=1, max_length=5000, description="The text prompt (up to 5000 characters)."
    )
    image_size: ImageSize3 = Field(
        "square_hd",
        description=(
            "Output size preset: square 512x512, square_hd 1024x1024, portrait_4_3 768x1024, "
            "portrait_16_9 576x1024, landscape_4_3 1024x768, landscape_16_9 1024x576."
        ),
    )
    guidance_scale: float = Field(
        2.5,
        ge=1,
        le=10,
        allow_inf_nan=False,
        description="How closely the image follows the prompt, 1 to 10.",
    )
    seed: int | None = Field(
        None, ge=common.INT64_MIN, le=common.INT64_MAX, description=common.SEED_DESCRIPTION
    )


def _plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    v3 = common.as_input(inp, Seedream3Input)
    width, height = sizes.FAL_PRESETS[v3.image_size]
    return OutputPlan(width=width, height=height, format="jpeg")


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="bytedance/seedream",
        family="Seedream 3.0",
        title="Seedream3.0 - Text to Image",
        capability=Capability.TEXT_TO_IMAGE,
        input_model=Seedream3Input,
        pricing=Pricing(per_output={"default": Decimal("3.5")}),
        plan=_plan,
    ),
)
