"""Shared by the Seedream catalogue modules: field types, input-image rules, layer decomposition."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from seedbed.catalogue import sizes
from seedbed.catalogue.base import Capability, ImageInputRule, ModelSpec, Pricing
from seedbed.engines.base import OutputPlan

__all__ = [
    "ASPECT_RATIOS",
    "ASPECT_RATIO_DESCRIPTION",
    "EDIT_FORMATS",
    "EDIT_MAX_BYTES",
    "IMAGE_URLS_DESCRIPTION",
    "INT64_MAX",
    "INT64_MIN",
    "LAYER_FORMATS",
    "LAYER_IMAGE_RULE",
    "LAYER_MAX_BYTES",
    "MAX_LAYERS",
    "NSFW_CHECKER_DESCRIPTION",
    "SEED_DESCRIPTION",
    "AspectRatio",
    "HttpUrl",
    "KieInput",
    "LayerInputBase",
    "LayerSize",
    "OutputFormat",
    "as_input",
    "check_http_url",
    "edit_image_rule",
    "layer_plan",
    "layer_spec",
]

#: the 8 ratios of the 4.5 / 5.x models, in kie's order (also the order error messages list)
AspectRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "2:3", "3:2", "21:9"]
ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)

OutputFormat = Literal["png", "jpeg"]
LayerSize = Literal["auto", "1K", "1.5K", "2K"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: an input image larger than this is refused when fetched (edit / image-to-image models)
EDIT_MAX_BYTES = 10 * 1024 * 1024
EDIT_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
LAYER_MAX_BYTES = 30 * 1024 * 1024
LAYER_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"})
#: how many layers (besides the base image) a layer-decomposition engine may return
MAX_LAYERS = 8

ASPECT_RATIO_DESCRIPTION = "Width:height of the output image."
IMAGE_URLS_DESCRIPTION = (
    "Input images: absolute http(s) URLs of JPEG, PNG or WebP files of at most 10 MB each "
    "(e.g. from the file upload API)."
)
NSFW_CHECKER_DESCRIPTION = (
    "Run the engine's safety checker on the output when true; absent or false returns the raw "
    "model output."
)
SEED_DESCRIPTION = "Random seed for reproducible results (a 64-bit signed integer)."


class KieInput(BaseModel):
    """Base of every model's ``input``: strict JSON types, unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


def check_http_url(value: str) -> str:
    """``value`` unchanged if it is an absolute http(s) URL with a host, else a validation error."""
    try:
        parts = urlsplit(value)
        scheme, host = parts.scheme, parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a malformed port)
    except ValueError:
        scheme, host = "", None
    bad_char = any(ch.isspace() or not ch.isprintable() for ch in value)
    if scheme not in ("http", "https") or not host or bad_char:
        # the "seedbed_" prefix tells validation.py to use this message as written
        raise PydanticCustomError("seedbed_url", "must be an http(s) URL")
    return value


#: a URL string, kept exactly as given, checked to be an absolute http(s) URL with a host
HttpUrl = Annotated[
    str,
    AfterValidator(check_http_url),
    WithJsonSchema({"type": "string", "format": "uri"}),
]

M = TypeVar("M", bound=BaseModel)


def as_input(inp: BaseModel, cls: type[M]) -> M:
    """``inp`` as the model's input class (a plan or tier given another model's input is a bug)."""
    if not isinstance(inp, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(inp).__name__}")
    return inp


def edit_image_rule(max_items: int) -> ImageInputRule:
    """The input rule of the edit / image-to-image models: ``image_urls``, JPEG/PNG/WebP, 10 MB."""
    return ImageInputRule(
        field="image_urls",
        max_items=max_items,
        max_bytes=EDIT_MAX_BYTES,
        formats=EDIT_FORMATS,
        max_pixels=6000 * 6000,
    )


LAYER_IMAGE_RULE = ImageInputRule(
    field="image_url",
    max_items=1,
    max_bytes=LAYER_MAX_BYTES,
    formats=LAYER_FORMATS,
    min_pixels=262_144,
    max_pixels=36_000_000,
    max_aspect=16,
)


class LayerInputBase(KieInput):
    """Layer decomposition: split one image into a base image and RGBA layers."""

    image_url: HttpUrl = Field(
        description=(
            "The image to decompose: an absolute http(s) URL of a PNG, JPEG, WebP, BMP, TIFF or "
            "GIF file of at most 30 MB, 262,144 to 36,000,000 pixels, aspect at most 16:1."
        )
    )
    prompt: str | None = Field(
        None,
        max_length=5000,
        description=(
            "Which elements to separate (optional, up to 5000 characters); may contain "
            "<bbox>x1 y1 x2 y2</bbox> with coordinates normalised to 0-1000."
        ),
    )
    size: LayerSize = Field(
        "auto",
        description=(
            "Base image size: auto keeps the input's size; 1K, 1.5K and 2K scale its long side "
            "to 1024, 1536 and 2048 pixels, keeping its aspect."
        ),
    )
    output_format: OutputFormat = Field(
        "jpeg", description="Format of the base image; layers are always PNG."
    )
    nsfw_checker: bool | None = Field(None, description=NSFW_CHECKER_DESCRIPTION)


def layer_plan(inp: BaseModel, input_sizes: Sequence[tuple[int, int]]) -> OutputPlan:
    """The base image's size from the input image's size; then up to ``MAX_LAYERS`` layers."""
    layer_input = as_input(inp, LayerInputBase)
    if not input_sizes:
        raise ValueError("layer decomposition needs the input image's size to plan its output")
    width, height = sizes.layer_size(input_sizes[0], layer_input.size)
    return OutputPlan(
        width=width,
        height=height,
        format=layer_input.output_format,
        max_images=1 + MAX_LAYERS,
        layers=True,
    )


def layer_spec(
    *,
    id: str,
    family: str,
    title: str,
    input_model: type[LayerInputBase],
    price_per_layer: Decimal,
) -> ModelSpec:
    """A layer-decomposition model: one ``image_url`` in, a base image and layers out."""
    return ModelSpec(
        id=id,
        family=family,
        title=title,
        capability=Capability.LAYERS,
        input_model=input_model,
        pricing=Pricing(per_output={"default": price_per_layer}),
        image_input=LAYER_IMAGE_RULE,
        plan=layer_plan,
        max_layers=MAX_LAYERS,
    )
