"""Property tests (hypothesis): whatever JSON a client sends, parsing and every model's input
validation either accept it or answer kie's 422 naming the field, and what createTask does next
with an accepted input (price, stored form, URL checks) never raises."""

from __future__ import annotations

import json
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalogue_cases import MINIMAL
from seedbed import catalogue, errors, netguard
from seedbed.api.body import MAX_JSON_DEPTH, parse_json_object
from seedbed.catalogue.base import ModelSpec
from seedbed.links import Links

#: ``make fuzz`` raises the example counts (FUZZ_EXAMPLES); ``make test`` keeps them short
SCALE = max(1, int(os.environ.get("FUZZ_EXAMPLES", "0")) // 50)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,  # no .hypothesis/ folder in the working tree
        suppress_health_check=[HealthCheck.too_slow],
    )


#: text as JSON can carry it (no lone surrogates)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
HOSTS = st.sampled_from(
    [
        "example.com",
        "127.0.0.1",
        "10.0.0.1",
        "0x7f.1",
        "2130706433",
        "[::1]",
        "[fe80::1%25eth0]",
        "[::ffff:169.254.169.254]",
        "[v1.x]",
        "a..b",
        "xn--80ak6aa92e.com",
        "ex ample.com",
        "",
        "user:pw@example.com",
        "[",
        "]",
    ]
)
PORTS = st.sampled_from(["", ":80", ":0", ":65535", ":65536", ":-1", ":x", ":99999999999999999999"])
URLS = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTP", "ftp", "file", "javascript", ""]),
    HOSTS,
    PORTS,
    st.sampled_from(["", "/", "/a.png", "/files/results/x/y.png", "/../..", "/%00", "?a=b#c"]),
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | URLS
    | st.sampled_from(["1:1", "21:9", "1K", "2K", "4K", "basic", "high", "png", "jpeg", "auto"])
)
#: any JSON value (bounded in size; nesting within the body's limit)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=20,
)

SPECS = list(catalogue.CATALOGUE.values())


def _fields(spec: ModelSpec) -> list[str]:
    return list(spec.input_model.model_fields)


def _after_validation(spec: ModelSpec, raw: dict[str, Any]) -> None:
    """What createTask does with an input: validate, then use what was accepted."""
    inp = catalogue.validate_input(spec, raw)  # ValidationFailed: the caller judges it
    spec.max_price(inp)
    orjson.dumps(inp.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    policy = netguard.NetPolicy.from_cidrs([])
    for url in spec.image_urls(inp):
        Links.parse(url)
        try:
            netguard.check_url(url, policy)
        except netguard.UrlRefused:
            pass


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.id)
@_settings(100)
@given(data=st.data())
def test_any_value_in_any_field_is_accepted_or_a_422_naming_it(
    spec: ModelSpec, data: st.DataObject
) -> None:
    field = data.draw(st.sampled_from(_fields(spec)), label="field")
    value = data.draw(JSON | URLS | st.lists(URLS, max_size=3), label="value")
    raw = {**MINIMAL[spec.id], field: value}
    try:
        _after_validation(spec, raw)
    except errors.ValidationFailed as exc:
        assert exc.code == 422
        assert exc.msg.startswith(f"input.{field}"), exc.msg


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.id)
@_settings(30)
@given(data=st.data())
def test_any_input_object_is_accepted_or_a_422_naming_a_field(
    spec: ModelSpec, data: st.DataObject
) -> None:
    # several fields at once, known names mostly, some unknown (ignored, as kie does)
    names = st.sampled_from(_fields(spec)) | TEXT
    extra = data.draw(st.dictionaries(names, JSON, max_size=4), label="fields")
    raw = {**MINIMAL[spec.id], **extra}
    gone = data.draw(st.lists(st.sampled_from(_fields(spec)), max_size=2), label="dropped")
    for name in gone:
        raw.pop(name, None)
    try:
        _after_validation(spec, raw)
    except errors.ValidationFailed as exc:
        assert exc.msg.startswith("input."), exc.msg


@_settings(100)
@given(value=JSON)
def test_an_input_that_is_not_an_object_is_a_422(value: Any) -> None:
    spec = SPECS[0]
    if isinstance(value, dict):
        return
    with pytest.raises(errors.ValidationFailed) as caught:
        catalogue.validate_input(spec, value)
    assert caught.value.msg in ("input: must be a JSON object", "input: is required")


def _nest(depth: int) -> st.SearchStrategy[Any]:
    """Values exactly ``depth`` arrays/objects deep."""
    if depth == 0:
        return SCALARS
    return _nest(depth - 1).flatmap(
        lambda inner: st.sampled_from([[inner], {"k": inner}, [1, inner, None]])
    )


@_settings(100)
@given(depth=st.integers(min_value=0, max_value=MAX_JSON_DEPTH + 40), data=st.data())
def test_parsed_bodies_are_within_the_depth_limit_and_always_serialise(
    depth: int, data: st.DataObject
) -> None:
    value = data.draw(_nest(depth), label="value")
    raw = b'{"model": "m", "input": %s}' % _dumps_deep(value)
    try:
        body = parse_json_object(raw)
    except errors.ValidationFailed as exc:
        assert depth + 1 > MAX_JSON_DEPTH
        assert exc.msg.startswith("input: nested too deeply"), exc.msg
        return
    assert depth + 1 <= MAX_JSON_DEPTH
    # what createTask serialises: the idempotency hash's form and the stored param
    orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    orjson.dumps(body["input"])


def _dumps_deep(value: Any) -> bytes:
    """JSON text of ``value`` at any depth (orjson itself stops at 254 levels)."""
    if isinstance(value, list):
        return b"[" + b",".join(_dumps_deep(v) for v in value) + b"]"
    if isinstance(value, dict):
        return (
            b"{"
            + b",".join(orjson.dumps(k) + b":" + _dumps_deep(v) for k, v in value.items())
            + b"}"
        )
    return json.dumps(value).encode()  # orjson refuses integers past 64 bits; JSON has them
