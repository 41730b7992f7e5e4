"""pydantic's validation errors in the contract's words: ``input.<field>: <rule>``.

pydantic's own messages ("Input should be ...") never reach a client: each error type has its
rule written here, and an unknown type says only that the value is invalid.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["MAX_ERRORS", "describe_error", "format_errors", "location"]

#: at most this many errors are named in one message
MAX_ERRORS = 5

#: error types raised by seedbed's own validators carry a message written for clients
CUSTOM_PREFIX = "seedbed_"

_FIXED: Mapping[str, str] = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be a boolean",
    "list_type": "must be an array",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "finite_number": "must be a finite number",
    "none_required": "must be null",
}


def _plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_BOUNDS: Mapping[str, tuple[str, str]] = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}

_LENGTHS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "string_too_short": lambda ctx: f"must be at least {_plural(ctx['min_length'], 'character')}",
    "string_too_long": lambda ctx: f"must be at most {_plural(ctx['max_length'], 'character')}",
    "too_short": lambda ctx: f"must have at least {_plural(ctx['min_length'], 'item')}",
    "too_long": lambda ctx: f"must have at most {_plural(ctx['max_length'], 'item')}",
}


def location(loc: tuple[int | str, ...], root: str = "input") -> str:
    """``("image_urls", 2)`` as ``input.image_urls[2]``; the empty location as ``input``."""
    text = root
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _literal_values(annotation: Any) -> Iterator[Any]:
    origin = get_origin(annotation)
    if origin is Literal:
        yield from get_args(annotation)
    elif origin is Union or origin is types.UnionType:
        for arg in get_args(annotation):
            yield from _literal_values(arg)


def _choices(error: ErrorDetails, model: type[BaseModel] | None) -> list[str]:
    """The allowed values of a Literal field, in their declared order."""
    loc = error["loc"]
    if model is not None and len(loc) == 1 and isinstance(loc[0], str):
        field = model.model_fields.get(loc[0])
        if field is not None:
            values = [str(v) for v in _literal_values(field.annotation)]
            if values:
                return values
    # fallback: pydantic's "'a', 'b' or 'c'"
    return re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))


def describe_error(error: ErrorDetails, model: type[BaseModel] | None = None) -> str:
    """The rule one pydantic error broke, in the contract's words (without the location)."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind.startswith(CUSTOM_PREFIX):
        return error["msg"]
    if kind in _FIXED:
        return _FIXED[kind]
    if kind == "literal_error" or kind == "enum":
        return "must be one of " + ", ".join(_choices(error, model))
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        if key in ctx:
            return f"must be {op} {_number(ctx[key])}"
    if kind in _LENGTHS:
        try:
            return _LENGTHS[kind](ctx)
        except KeyError:
            pass
    return "is invalid"


def format_errors(
    exc: ValidationError,
    model: type[BaseModel] | None = None,
    *,
    root: str = "input",
    limit: int = MAX_ERRORS,
) -> str:
    """Every error of ``exc`` as ``<root>.<field>: <rule>``, the first ``limit`` joined by "; ".

    Parameters
    ----------
    exc
        The error from ``model.model_validate``.
    model
        The model validated against; it supplies the allowed values of enum fields.
    root
        The name the locations hang from (``input`` for createTask's ``input``).
    limit
        How many distinct errors to name at most.
    """
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        text = f"{location(error['loc'], root)}: {describe_error(error, model)}"
        if text not in parts:
            parts.append(text)
        if len(parts) >= limit:
            break
    return "; ".join(parts) or f"{root}: is invalid"
