"""The Seedream model catalogue: the only place that knows a model id.

``CATALOGUE`` maps each of kie's 13 Seedream model ids to its ``ModelSpec`` (input schema,
defaults, output size rule, price), in the order of kie's model list. ``get`` finds a spec and
``validate_input`` checks a createTask ``input`` against it; both raise
``errors.ValidationFailed`` (422) with a message naming the field and the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from seedbed import errors
from seedbed.catalogue import (
    seedream3,
    seedream4,
    seedream5_flash,
    seedream5_lite,
    seedream5_pro,
    seedream45,
    validation,
)
from seedbed.catalogue.base import Capability, ImageInputRule, ModelSpec, Pricing

__all__ = [
    "CATALOGUE",
    "Capability",
    "ImageInputRule",
    "ModelSpec",
    "Pricing",
    "get",
    "input_schema",
    "validate_input",
]

#: model id -> spec, in the order of kie's model list (reference §1.1)
CATALOGUE: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.id: spec
        for spec in (
            *seedream3.SPECS,
            *seedream4.SPECS,
            *seedream45.SPECS,
            *seedream5_lite.SPECS,
            *seedream5_pro.SPECS,
            *seedream5_flash.SPECS,
        )
    }
)

#: an unknown model id is echoed in the error message up to this many characters
_ECHO_LIMIT = 100


def get(model_id: object) -> ModelSpec:
    """The spec of ``model_id`` (createTask's ``model``), or ``ValidationFailed``."""
    if model_id is None or model_id == "":
        raise errors.ValidationFailed("model: is required")
    if not isinstance(model_id, str):
        raise errors.ValidationFailed("model: must be a string")
    spec = CATALOGUE.get(model_id)
    if spec is None:
        shown = model_id if len(model_id) <= _ECHO_LIMIT else model_id[:_ECHO_LIMIT] + "..."
        raise errors.ValidationFailed(f"model: unknown model '{shown}'; see GET /api/v1/models")
    return spec


def validate_input(spec: ModelSpec, raw: object) -> BaseModel:
    """``raw`` (createTask's ``input``) validated by ``spec``, with defaults applied.

    Raises ``errors.ValidationFailed`` naming each bad field and its rule, e.g.
    ``input.prompt: must be at most 3000 characters``.
    """
    if raw is None:
        raise errors.ValidationFailed("input: is required")
    if not isinstance(raw, dict):
        raise errors.ValidationFailed("input: must be a JSON object")
    try:
        return spec.input_model.model_validate(raw)
    except ValidationError as exc:
        message = validation.format_errors(exc, spec.input_model)
        raise errors.ValidationFailed(message) from exc


def input_schema(spec: ModelSpec) -> dict[str, Any]:
    """The JSON Schema of ``spec``'s ``input`` (for ``GET /api/v1/models``)."""
    return spec.input_model.model_json_schema()
