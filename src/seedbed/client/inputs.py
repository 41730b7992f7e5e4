"""Typed ``input`` models for every Seedream model: the very classes the server validates with.

They come from ``seedbed.catalogue`` (not a copy), so a field the server would refuse fails
here first, before any request is sent, with the server's own message
(``input.aspect_ratio: must be one of 1:1, 4:3, ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from seedbed import catalogue
from seedbed import errors as server_errors
from seedbed.catalogue.seedream3 import Seedream3Input
from seedbed.catalogue.seedream4 import Seedream4EditInput, Seedream4Input
from seedbed.catalogue.seedream5_flash import (
    Seedream5FlashEditInput,
    Seedream5FlashInput,
    Seedream5FlashLayerInput,
)
from seedbed.catalogue.seedream5_lite import Seedream5LiteEditInput, Seedream5LiteInput
from seedbed.catalogue.seedream5_pro import (
    Seedream5ProEditInput,
    Seedream5ProInput,
    Seedream5ProLayerInput,
)
from seedbed.catalogue.seedream45 import Seedream45EditInput, Seedream45Input
from seedbed.client.errors import ValidationError

__all__ = [
    "INPUT_MODELS",
    "MODELS",
    "Seedream3Input",
    "Seedream4EditInput",
    "Seedream4Input",
    "Seedream5FlashEditInput",
    "Seedream5FlashInput",
    "Seedream5FlashLayerInput",
    "Seedream5LiteEditInput",
    "Seedream5LiteInput",
    "Seedream5ProEditInput",
    "Seedream5ProInput",
    "Seedream5ProLayerInput",
    "Seedream45EditInput",
    "Seedream45Input",
    "image_field",
    "prepare_input",
]

#: every Seedream model id, in kie's order
MODELS: tuple[str, ...] = tuple(catalogue.CATALOGUE)

#: model id -> the pydantic class of its ``input``
INPUT_MODELS: Mapping[str, type[BaseModel]] = {
    spec.id: spec.input_model for spec in catalogue.CATALOGUE.values()
}


def image_field(model: str) -> str | None:
    """Where ``model`` takes input images: ``image_urls``, ``image_url``, or ``None``."""
    spec = catalogue.CATALOGUE.get(model)
    if spec is None or spec.image_input is None:
        return None
    return spec.image_input.field


def prepare_input(
    model: str, value: Mapping[str, Any] | BaseModel, *, validate: bool = True
) -> dict[str, Any]:
    """``value`` as the JSON object to send as createTask's ``input``.

    A mapping is checked against the model's schema and sent as given (defaults are the
    server's business, unknown keys pass through as kie allows); a model instance is sent with
    its fields filled in. With ``validate=False`` nothing is checked, for model ids this
    client does not know (kie.ai serves many more than Seedream).

    Raises ``ValidationError`` (422) naming the field and the rule, as the server would.
    """
    if not validate:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json", exclude_none=True)
        return dict(value)
    try:
        spec = catalogue.get(model)
    except server_errors.ValidationFailed as exc:
        raise ValidationError(exc.msg) from None
    if isinstance(value, BaseModel):
        if not isinstance(value, spec.input_model):
            raise ValidationError(
                f"input: {model} takes {spec.input_model.__name__}, not {type(value).__name__}"
            )
        return value.model_dump(mode="json", exclude_none=True)
    try:
        catalogue.validate_input(spec, dict(value) if isinstance(value, Mapping) else value)
    except server_errors.ValidationFailed as exc:
        raise ValidationError(exc.msg) from None
    return dict(value)
