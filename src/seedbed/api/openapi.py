"""The OpenAPI document's parts that route declarations cannot say by themselves.

* ``bearerAuth``: the ``Authorization: Bearer <key>`` scheme, in the components and required
  by each authenticated operation (``SECURED``), so Swagger UI's "Authorize" and "Try it out"
  send the key. The routes check the key themselves (``api/auth.py``): the scheme is metadata.
* createTask's body: one variant per catalogue model, told apart by ``model`` (a
  discriminator), each linking that model's input schema in the components (the same pydantic
  models that validate ``input``, and that ``GET /api/v1/models`` serves).
* ``answers``: the kie envelope each endpoint answers with, and the few HTTP statuses that are
  not 200.

Everything here is read when the document is built (once, on the first ``/openapi.json``); it
adds nothing to a request.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from seedbed import catalogue
from seedbed.api import schemas

__all__ = [
    "BEARER",
    "CREATE_TASK_BODY",
    "SECURED",
    "answers",
    "install",
    "json_body",
    "model_component",
]

BEARER = "bearerAuth"
#: ``openapi_extra`` of an operation that needs the key
SECURED: dict[str, Any] = {"security": [{BEARER: []}]}

_REF = "#/components/schemas/{model}"
_CREATE_TASK = "CreateTaskRequest"

_STATUS_TEXT = {
    413: "The body is over the server's limit (`max_body_bytes`, `upload_max_bytes`).",
    429: "A rate limit or the key's open-task cap; `Retry-After` says when to try again.",
    500: "A fault of the server (its store or storage failing); the details are in its log.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "whole seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def model_component(model_id: str) -> str:
    """The component name of createTask's body for ``model_id`` (names allow ``[\\w.-]``)."""
    return "CreateTask_" + model_id.replace("/", "_")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a required JSON request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


#: createTask's ``openapi_extra``: the key, and a body that links each model's input schema
CREATE_TASK_BODY: dict[str, Any] = {**SECURED, **json_body(_ref(_CREATE_TASK))}


def answers(
    envelope: type[BaseModel], *statuses: int, error: type[BaseModel] = schemas.ErrorAnswer
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: HTTP 200 with ``envelope`` (successes and kie's business
    errors alike), each of ``statuses`` (413, 429) with ``error``, and 500 with ``error``
    (any route answers it when something underneath fails)."""
    out: dict[int | str, dict[str, Any]] = {
        200: {
            "model": envelope,
            "description": "The kie envelope. `code` 200 is success; any other `code` is a "
            "refusal (HTTP 200 all the same, as kie answers), with `data` null.",
        }
    }
    for status in (*statuses, 500):
        out[status] = {"model": error, "description": _STATUS_TEXT[status]}
        if status == 429:
            out[status]["headers"] = copy.deepcopy(_RETRY_AFTER)  # FastAPI edits it in place
    return out


def install(app: FastAPI) -> None:
    """Add these parts to ``app``'s document, which FastAPI builds (and caches) as usual."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        components = document.setdefault("components", {})
        schemes = components.setdefault("securitySchemes", {})  # beside any FastAPI declared
        if BEARER not in schemes:  # once per built document
            schemes[BEARER] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from `seedbed keys create`.",
            }
            components.setdefault("schemas", {}).update(_create_task_schemas())
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _create_task_schemas() -> dict[str, Any]:
    """createTask's body: a ``oneOf`` over the models, the input models as components."""
    specs = list(catalogue.CATALOGUE.values())
    inputs = {spec.input_model for spec in specs}
    refs, defs = models_json_schema(
        [(model, "validation") for model in sorted(inputs, key=lambda m: m.__name__)],
        ref_template=_REF,
    )
    out: dict[str, Any] = dict(defs.get("$defs", {}))
    for spec in specs:
        out[model_component(spec.id)] = {
            "type": "object",
            "title": spec.title,
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string", "enum": [spec.id]},
                "callBackUrl": {
                    "type": "string",
                    "format": "uri",
                    "description": "Where the finished task is POSTed (optional).",
                },
                "input": refs[spec.input_model, "validation"],
            },
        }
    out[_CREATE_TASK] = {
        "description": "`model` picks the model; `input` follows that model's schema "
        "(also served by `GET /api/v1/models`).",
        "oneOf": [_ref(model_component(spec.id)) for spec in specs],
        "discriminator": {
            "propertyName": "model",
            "mapping": {spec.id: _REF.format(model=model_component(spec.id)) for spec in specs},
        },
    }
    return out
