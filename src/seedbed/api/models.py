"""``GET /api/v1/models``: the catalogue, with each model's input JSON Schema and prices."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seedbed import catalogue
from seedbed.api import envelope, openapi, schemas
from seedbed.api.context import context
from seedbed.api.routing import LeanRoute

__all__ = ["router"]

router = APIRouter(tags=["models"], route_class=LeanRoute)


@router.get("/api/v1/models", responses=openapi.answers(schemas.ModelsAnswer))
async def list_models(request: Request) -> Response:
    """Every Seedream model id, whether this server serves it, its input schema and prices."""
    ctx = context(request)
    flags = await ctx.flags.get()
    models: list[dict[str, Any]] = []
    for spec in catalogue.CATALOGUE.values():
        pricing = ctx.pricing(spec)
        engine = ctx.engines.for_model(spec.id)
        rule = spec.image_input
        models.append(
            {
                "id": spec.id,
                "title": spec.title,
                "family": spec.family,
                "capability": spec.capability.value,
                "enabled": spec.id not in flags.disabled_models,
                "engine": engine.name if engine else None,
                "served": engine is not None and spec.id not in flags.disabled_models,
                "prices": {
                    "perOutput": {
                        k: envelope.json_number(v) for k, v in pricing.per_output.items()
                    },
                    "perExtraInputImage": envelope.json_number(pricing.per_extra_input),
                    "unit": "layer" if spec.capability.value == "layer-decomposition" else "image",
                },
                "inputImages": None
                if rule is None
                else {
                    "field": rule.field,
                    "maxItems": rule.max_items,
                    "maxBytes": rule.max_bytes,
                    "formats": sorted(rule.formats),
                },
                "inputSchema": catalogue.input_schema(spec),
            }
        )
    return envelope.ok(models)
