"""Reading request bodies with a size cap, and parsing JSON into kie's 422s.

A parsed body is also held to a nesting depth (``MAX_JSON_DEPTH``): orjson parses up to 1,024
levels but serialises only up to 254, and createTask serialises what it accepts (the stored
``param``, the idempotency hash). Refusing deep bodies at parse time keeps every later
``orjson.dumps`` of an accepted body from raising.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from seedbed import errors

__all__ = ["MAX_JSON_DEPTH", "parse_json_object", "read_body"]

#: deepest nesting of arrays and objects accepted in a JSON body; the body object is level 1,
#: so createTask's ``input`` may itself be 63 levels deep. orjson serialises up to 254.
MAX_JSON_DEPTH = 64


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise errors.BodyTooLarge(f"Request body too large: limit is {limit} bytes")
    # Straight from the ASGI channel: Starlette's ``request.stream()`` generator costs more
    # than the rest of reading a small body (profiled on createTask).
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.BodyTooLarge(f"Request body too large: limit is {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or ``ValidationFailed`` (422) saying which rule it broke."""
    if not raw.strip():
        raise errors.ValidationFailed("body: a JSON object is required")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg == "depth limit exceeded":  # orjson's own cap, 1,024 levels
            raise errors.ValidationFailed(_too_deep("body")) from exc
        raise errors.ValidationFailed(
            f"body: not valid JSON ({exc.msg} at position {exc.pos})"
        ) from exc
    if not isinstance(value, dict):
        raise errors.ValidationFailed("body: must be a JSON object")
    # Fewer brackets than the limit, inside strings or not, cannot nest deeper than it: the
    # walk runs only for bodies that could (bytes.count is C speed; the walk is Python).
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        for name, field in value.items():
            if _deeper_than(field, MAX_JSON_DEPTH - 1):
                raise errors.ValidationFailed(_too_deep(name))
    return value


def _too_deep(where: str) -> str:
    return (
        f"{where}: nested too deeply: arrays and objects may nest at most {MAX_JSON_DEPTH} "
        "levels deep in a request body"
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` levels deep (a scalar is
    level 0, ``[]`` level 1). Iterative: the depth it looks for is what recursion lacks."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
