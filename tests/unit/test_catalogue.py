"""The model catalogue: ids, input validation and its messages, output sizes, prices."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from catalogue_cases import (
    DEFAULTS,
    LAYER_IDS,
    MAX_IMAGE_URLS,
    MINIMAL,
    PROMPT,
    PROMPT_LIMITS,
    URL,
    invalid_cases,
)
from seedbed import catalogue, errors
from seedbed.catalogue import common, sizes
from seedbed.catalogue.base import Capability, ModelSpec

# kie-api-reference §1.1, in order
IDS = [
    "bytedance/seedream",
    "bytedance/seedream-v4-text-to-image",
    "bytedance/seedream-v4-edit",
    "seedream/4.5-text-to-image",
    "seedream/4.5-edit",
    "seedream/5-lite-text-to-image",
    "seedream/5-lite-image-to-image",
    "seedream/5-pro-text-to-image",
    "seedream/5-pro-image-to-image",
    "seedream/5-pro-layer-decomposition",
    "seedream/5-flash-text-to-image",
    "seedream/5-flash-image-to-image",
    "seedream/5-flash-layer-decomposition",
]

TITLES = [
    "Seedream3.0 - Text to Image",
    "Seedream4.0 - Text to Image",
    "Seedream4.0 - Edit",
    "Seedream4.5 - Text to Image",
    "Seedream4.5 - Edit",
    "Seedream5.0 Lite - Text to Image",
    "Seedream5.0 Lite - Image to Image",
    "Seedream5.0 Pro - Text to Image",
    "Seedream5.0 Pro - Image to Image",
    "Seedream 5.0 Pro - Layer Decomposition",
    "Seedream5.0 Flash - Text to Image",
    "Seedream5.0 Flash - Image to Image",
    "Seedream5.0 Flash - Layer Decomposition",
]

# The pixel tables of kie-api-reference §1.10, typed again here so the tests do not check the
# catalogue against itself. Columns: ratio, 4.0 1K, 4.0 2K, 4.5 2K, 4.5 4K, 5.0 3K.
REFERENCE = """
1:1   1024x1024 2048x2048 2048x2048 4096x4096 3072x3072
4:3   1152x864  2304x1728 2304x1728 4704x3520 3456x2592
3:4   864x1152  1728x2304 1728x2304 3520x4704 2592x3456
16:9  1280x720  2560x1440 2848x1600 5504x3040 4096x2304
9:16  720x1280  1440x2560 1600x2848 3040x5504 2304x4096
3:2   1248x832  2496x1664 2496x1664 4992x3328 3744x2496
2:3   832x1248  1664x2496 1664x2496 3328x4992 2496x3744
21:9  1512x648  3024x1296 3136x1344 6240x2656 4704x2016
"""
COLUMNS = ["v4_1K", "v4_2K", "v45_2K", "v45_4K", "v5_3K"]


def _parse(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


TABLE: dict[str, dict[str, tuple[int, int]]] = {column: {} for column in COLUMNS}
for _line in REFERENCE.strip().splitlines():
    _ratio, *_cells = _line.split()
    for _column, _cell in zip(COLUMNS, _cells, strict=True):
        TABLE[_column][_ratio] = _parse(_cell)

RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16", "2:3", "3:2", "21:9"]
FAL = {
    "square": (512, 512),
    "square_hd": (1024, 1024),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
IMAGE_SIZE_RATIO = {
    "square": "1:1",
    "square_hd": "1:1",
    "portrait_4_3": "3:4",
    "portrait_3_2": "2:3",
    "portrait_16_9": "9:16",
    "landscape_4_3": "4:3",
    "landscape_3_2": "3:2",
    "landscape_16_9": "16:9",
    "landscape_21_9": "21:9",
}


def validate(model_id: str, **fields: Any) -> Any:
    return catalogue.validate_input(catalogue.get(model_id), {**MINIMAL[model_id], **fields})


def plan_size(model_id: str, input_sizes: Any = (), **fields: Any) -> tuple[int, int]:
    spec = catalogue.get(model_id)
    plan = spec.plan(validate(model_id, **fields), input_sizes)
    return plan.width, plan.height


def rejection(model_id: str, raw: Any) -> str:
    with pytest.raises(errors.ValidationFailed) as info:
        catalogue.validate_input(catalogue.get(model_id), raw)
    assert info.value.code == 422
    return info.value.msg


# --- the catalogue itself ------------------------------------------------------------------


def test_all_thirteen_ids_in_reference_order_with_titles() -> None:
    assert list(catalogue.CATALOGUE) == IDS
    assert [spec.title for spec in catalogue.CATALOGUE.values()] == TITLES
    assert all(spec.id == key for key, spec in catalogue.CATALOGUE.items())


def test_capabilities_and_image_rules() -> None:
    for model_id, spec in catalogue.CATALOGUE.items():
        rule = spec.image_input
        if model_id in LAYER_IDS:
            assert spec.capability is Capability.LAYERS
            assert spec.max_layers == 8
            assert rule is not None and rule.field == "image_url" and rule.max_items == 1
            assert rule.max_bytes == 30 * 1024 * 1024
            assert rule.formats == {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
            assert (rule.min_pixels, rule.max_pixels, rule.max_aspect) == (262144, 36000000, 16)
        elif model_id in MAX_IMAGE_URLS:
            assert spec.capability is Capability.EDIT
            assert rule is not None and rule.field == "image_urls"
            assert rule.max_items == MAX_IMAGE_URLS[model_id]
            assert rule.max_bytes == 10 * 1024 * 1024
            assert rule.formats == {"JPEG", "PNG", "WEBP"}
            assert rule.max_pixels == 6000 * 6000
        else:
            assert spec.capability is Capability.TEXT_TO_IMAGE
            assert rule is None


@pytest.mark.parametrize("model_id", IDS)
def test_get_returns_the_spec(model_id: str) -> None:
    spec = catalogue.get(model_id)
    assert isinstance(spec, ModelSpec)
    assert spec is catalogue.CATALOGUE[model_id]


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        (None, "model: is required"),
        ("", "model: is required"),
        (5, "model: must be a string"),
        (["bytedance/seedream"], "model: must be a string"),
        ("seedream/6", "model: unknown model 'seedream/6'; see GET /api/v1/models"),
        ("Bytedance/Seedream", "model: unknown model 'Bytedance/Seedream'; see GET /api/v1/models"),
    ],
)
def test_get_rejects(model_id: object, message: str) -> None:
    with pytest.raises(errors.ValidationFailed) as info:
        catalogue.get(model_id)
    assert info.value.msg == message


def test_get_truncates_a_long_unknown_id() -> None:
    with pytest.raises(errors.ValidationFailed) as info:
        catalogue.get("x" * 10_000)
    assert len(info.value.msg) < 200


@pytest.mark.parametrize("model_id", IDS)
def test_input_schema_is_json(model_id: str) -> None:
    schema = catalogue.input_schema(catalogue.get(model_id))
    text = json.dumps(schema)
    assert schema["type"] == "object"
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{model_id}: {name} has no description"
    assert "prompt" in schema["properties"]
    assert "Input should" not in text


# --- defaults and accepted input -----------------------------------------------------------


@pytest.mark.parametrize("model_id", IDS)
def test_defaults_applied(model_id: str) -> None:
    inp = validate(model_id)
    dumped = inp.model_dump()
    for name, value in DEFAULTS[model_id].items():
        assert dumped[name] == value, name
    if "nsfw_checker" in type(inp).model_fields:
        assert dumped["nsfw_checker"] is None


@pytest.mark.parametrize("model_id", IDS)
def test_unknown_keys_ignored(model_id: str) -> None:
    inp = validate(model_id, enable_safety_checker=True, foo={"bar": 1})
    assert not hasattr(inp, "enable_safety_checker")
    assert "foo" not in inp.model_dump()


@pytest.mark.parametrize("model_id", [i for i in IDS if i != "bytedance/seedream"])
def test_nsfw_checker_accepted(model_id: str) -> None:
    assert validate(model_id, nsfw_checker=True).nsfw_checker is True


def test_prompt_keeps_spaces_and_counts_characters() -> None:
    prompt = "  雪の中の狐 🦊  "
    assert validate("seedream/4.5-text-to-image", prompt=prompt).prompt == prompt
    # 3000 characters of 3 bytes each are fine: the limit counts characters
    assert validate("seedream/4.5-text-to-image", prompt="狐" * 3000)
    # 3 characters is the minimum, even where each is a space
    assert validate("seedream/5-lite-text-to-image", prompt="   ")


def test_int_accepted_for_number_and_kept_as_float() -> None:
    inp = validate("bytedance/seedream", guidance_scale=3)
    assert inp.guidance_scale == 3.0
    assert validate("bytedance/seedream", guidance_scale=1)
    assert validate("bytedance/seedream", guidance_scale=10.0)


@pytest.mark.parametrize("seed", [0, -1, 2**63 - 1, -(2**63)])
def test_seed_range(seed: int) -> None:
    for model_id in ("bytedance/seedream", "bytedance/seedream-v4-edit"):
        assert validate(model_id, seed=seed).seed == seed


def test_urls_kept_exactly_as_given() -> None:
    urls = ["HTTPS://Example.COM/a%20b.png?x=1&y=2#frag", "http://10.0.0.1:8080/x", "http://h"]
    inp = validate("seedream/4.5-edit", image_urls=urls)
    assert inp.image_urls == urls
    layer = validate("seedream/5-pro-layer-decomposition", image_url=urls[0])
    assert layer.image_url == urls[0]


@pytest.mark.parametrize(("model_id", "limit"), MAX_IMAGE_URLS.items())
def test_image_urls_at_the_limit(model_id: str, limit: int) -> None:
    assert len(validate(model_id, image_urls=[URL] * limit).image_urls) == limit


def test_layer_prompts() -> None:
    assert validate(LAYER_IDS[0], prompt="").prompt == ""
    assert validate(LAYER_IDS[0], prompt="x" * 5000).prompt == "x" * 5000
    assert validate(LAYER_IDS[1], prompt="abc").prompt == "abc"
    assert validate(LAYER_IDS[1], prompt=None).prompt is None


# --- rejected input and its messages -------------------------------------------------------


def test_contract_message_examples() -> None:
    assert (
        rejection("seedream/4.5-text-to-image", {"prompt": "x", "aspect_ratio": "5:4"})
        == "input.aspect_ratio: must be one of 1:1, 4:3, 3:4, 16:9, 9:16, 2:3, 3:2, 21:9"
    )
    assert rejection("seedream/4.5-text-to-image", {}) == "input.prompt: is required"
    assert (
        rejection("seedream/4.5-text-to-image", {"prompt": "x" * 3001})
        == "input.prompt: must be at most 3000 characters"
    )
    assert (
        rejection("seedream/5-lite-text-to-image", {"prompt": "ab"})
        == "input.prompt: must be at least 3 characters"
    )
    v4 = "bytedance/seedream-v4-text-to-image"
    assert (
        rejection(v4, {"prompt": "x", "max_images": "5"}) == "input.max_images: must be an integer"
    )
    assert rejection(v4, {"prompt": "x", "max_images": 7}) == "input.max_images: must be <= 6"
    assert rejection(v4, {"prompt": "x", "max_images": 0}) == "input.max_images: must be >= 1"
    assert (
        rejection("bytedance/seedream", {"prompt": "x", "guidance_scale": "2"})
        == "input.guidance_scale: must be a number"
    )
    assert (
        rejection("seedream/4.5-edit", {"prompt": "x", "image_urls": [URL] * 15})
        == "input.image_urls: must have at most 14 items"
    )
    assert (
        rejection("seedream/4.5-edit", {"prompt": "x", "image_urls": [URL, URL, "ftp://a/b"]})
        == "input.image_urls[2]: must be an http(s) URL"
    )
    for raw in ([], "text", 5, ["a"], True):
        assert rejection("seedream/4.5-edit", raw) == "input: must be a JSON object"
    assert rejection("seedream/4.5-edit", None) == "input: is required"


def test_several_errors_joined_at_most_five() -> None:
    msg = rejection(
        "seedream/5-lite-image-to-image",
        {
            "prompt": 1,
            "aspect_ratio": "x",
            "quality": "x",
            "output_format": "gif",
            "nsfw_checker": "yes",
            "image_urls": [],
        },
    )
    parts = msg.split("; ")
    assert parts == [
        "input.prompt: must be a string",
        "input.aspect_ratio: must be one of 1:1, 4:3, 3:4, 16:9, 9:16, 2:3, 3:2, 21:9",
        "input.quality: must be one of basic, high, ultra",
        "input.output_format: must be one of png, jpeg",
        "input.nsfw_checker: must be a boolean",
    ]


def test_bool_is_not_an_integer_or_number() -> None:
    v4 = "bytedance/seedream-v4-text-to-image"
    assert rejection(v4, {"prompt": "x", "max_images": True}) == (
        "input.max_images: must be an integer"
    )
    assert rejection(v4, {"prompt": "x", "seed": False}) == "input.seed: must be an integer"
    assert rejection("bytedance/seedream", {"prompt": "x", "guidance_scale": True}) == (
        "input.guidance_scale: must be a number"
    )


INVALID = invalid_cases()


@pytest.mark.parametrize(
    ("model_id", "fields", "field"),
    INVALID,
    ids=[f"{m}-{f}-{i}" for i, (m, _, f) in enumerate(INVALID)],
)
def test_invalid_field(model_id: str, fields: dict[str, Any], field: str) -> None:
    msg = rejection(model_id, {**MINIMAL[model_id], **fields})
    assert msg.startswith(f"input.{field}: "), msg
    assert ";" not in msg, msg
    assert "Input should" not in msg and "pydantic" not in msg


@pytest.mark.parametrize(
    ("model_id", "field"),
    [(m, "prompt") for m in PROMPT_LIMITS]
    + [(m, "image_urls") for m in MAX_IMAGE_URLS]
    + [(m, "image_url") for m in LAYER_IDS],
)
def test_missing_required(model_id: str, field: str) -> None:
    raw = {k: v for k, v in MINIMAL[model_id].items() if k != field}
    assert rejection(model_id, raw) == f"input.{field}: is required"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///tmp/a.png",
        "data:image/png;base64,AAAA",
        "//example.com/a.png",
        "/a.png",
        "http://",
        "https:///path",
        "http://exa mple.com/a.png",
        "http://example.com/a.png\n",
        "http://[::1/a.png",
        "http://example.com:99999/a.png",
        "javascript:alert(1)",
        "",
    ],
)
def test_bad_urls(url: str) -> None:
    msg = rejection("seedream/5-flash-image-to-image", {"prompt": PROMPT, "image_urls": [url]})
    assert msg == "input.image_urls[0]: must be an http(s) URL"


# --- output plans --------------------------------------------------------------------------


def test_size_tables_match_the_reference() -> None:
    assert sizes.SEEDREAM_4_0["1K"] == TABLE["v4_1K"]
    assert sizes.SEEDREAM_4_0["2K"] == TABLE["v4_2K"]
    assert sizes.SEEDREAM_4_5["2K"] == TABLE["v45_2K"]
    assert sizes.SEEDREAM_4_5["4K"] == TABLE["v45_4K"]
    assert sizes.SEEDREAM_5_0["3K"] == TABLE["v5_3K"]
    assert sizes.FAL_PRESETS == FAL
    assert sizes.IMAGE_SIZE_RATIO == IMAGE_SIZE_RATIO
    assert list(common.ASPECT_RATIOS) == RATIOS


def _flash_1_5k(ratio: str) -> tuple[int, int]:
    width, height = TABLE["v4_1K"][ratio]
    # nearest multiple of 16, halves up
    return int(width * 1.5 / 16 + 0.5) * 16, int(height * 1.5 / 16 + 0.5) * 16


def _size_cases() -> list[tuple[str, dict[str, str], tuple[int, int]]]:
    """Every enum value of every size field, with the size CONTRACT §2 gives it."""
    cases: list[tuple[str, dict[str, str], tuple[int, int]]] = []
    for image_size, size in FAL.items():
        cases.append(("bytedance/seedream", {"image_size": image_size}, size))
    columns = {"1K": "v4_1K", "2K": "v4_2K", "4K": "v45_4K"}
    for model_id in ("bytedance/seedream-v4-text-to-image", "bytedance/seedream-v4-edit"):
        for image_size, ratio in IMAGE_SIZE_RATIO.items():
            for resolution, column in columns.items():
                fields = {"image_size": image_size, "image_resolution": resolution}
                cases.append((model_id, fields, TABLE[column][ratio]))
    families = {
        "seedream/4.5": ("quality", {"basic": "v45_2K", "high": "v45_4K"}),
        "seedream/5-lite": ("quality", {"basic": "v45_2K", "high": "v5_3K", "ultra": "v45_4K"}),
        "seedream/5-pro": ("quality", {"basic": "v4_1K", "high": "v45_2K"}),
        "seedream/5-flash": ("size", {"1K": "v4_1K", "1.5K": "flash", "2K": "v45_2K"}),
    }
    for prefix, (name, values) in families.items():
        model_ids = [m for m in IDS if m.startswith(prefix) and "layer" not in m]
        assert len(model_ids) == 2
        for model_id in model_ids:
            for value, column in values.items():
                for ratio in RATIOS:
                    expected = _flash_1_5k(ratio) if column == "flash" else TABLE[column][ratio]
                    cases.append((model_id, {name: value, "aspect_ratio": ratio}, expected))
    return cases


SIZES = _size_cases()


@pytest.mark.parametrize(
    ("model_id", "fields", "expected"),
    SIZES,
    ids=[f"{m}-{'-'.join(f.values())}" for m, f, _ in SIZES],
)
def test_output_size(model_id: str, fields: dict[str, str], expected: tuple[int, int]) -> None:
    assert plan_size(model_id, **fields) == expected


@pytest.mark.parametrize(
    ("model_id", "fields", "expected"),
    [
        # by hand from kie-api-reference §1.10 and CONTRACT §2
        ("bytedance/seedream", {"image_size": "portrait_16_9"}, (576, 1024)),
        ("bytedance/seedream", {}, (1024, 1024)),
        (
            "bytedance/seedream-v4-text-to-image",
            {"image_size": "landscape_4_3", "image_resolution": "4K"},
            (4704, 3520),
        ),
        (
            "bytedance/seedream-v4-edit",
            {"image_size": "landscape_16_9", "image_resolution": "2K"},
            (2560, 1440),
        ),
        ("bytedance/seedream-v4-text-to-image", {"image_size": "portrait_3_2"}, (832, 1248)),
        ("bytedance/seedream-v4-text-to-image", {}, (1024, 1024)),
        ("seedream/4.5-text-to-image", {"aspect_ratio": "16:9"}, (2848, 1600)),
        ("seedream/4.5-edit", {"quality": "high", "aspect_ratio": "21:9"}, (6240, 2656)),
        (
            "seedream/5-lite-text-to-image",
            {"quality": "high", "aspect_ratio": "16:9"},
            (4096, 2304),
        ),
        ("seedream/5-lite-image-to-image", {"quality": "ultra"}, (4096, 4096)),
        ("seedream/5-pro-text-to-image", {"aspect_ratio": "9:16"}, (720, 1280)),
        ("seedream/5-pro-image-to-image", {"quality": "high", "aspect_ratio": "3:2"}, (2496, 1664)),
        ("seedream/5-flash-text-to-image", {}, (1024, 1024)),
        ("seedream/5-flash-text-to-image", {"size": "1.5K"}, (1536, 1536)),
        # 1280x720 x 1.5 = 1920x1080; 1080 is no multiple of 16, so it rounds to 1088
        ("seedream/5-flash-text-to-image", {"size": "1.5K", "aspect_ratio": "16:9"}, (1920, 1088)),
        ("seedream/5-flash-image-to-image", {"size": "1.5K", "aspect_ratio": "4:3"}, (1728, 1296)),
        ("seedream/5-flash-text-to-image", {"size": "1.5K", "aspect_ratio": "21:9"}, (2272, 976)),
        ("seedream/5-flash-image-to-image", {"size": "2K", "aspect_ratio": "3:4"}, (1728, 2304)),
    ],
)
def test_output_size_by_hand(
    model_id: str, fields: dict[str, str], expected: tuple[int, int]
) -> None:
    assert plan_size(model_id, **fields) == expected


@pytest.mark.parametrize("model_id", LAYER_IDS)
@pytest.mark.parametrize(
    ("size", "input_size", "expected"),
    [
        ("auto", (3000, 2000), (3000, 2000)),
        ("auto", (517, 9001), (517, 9001)),
        ("1K", (3000, 2000), (1024, 683)),
        ("1K", (2000, 3000), (683, 1024)),
        ("1.5K", (3000, 2000), (1536, 1024)),
        ("2K", (3000, 2000), (2048, 1365)),
        ("2K", (512, 512), (2048, 2048)),
        ("1K", (1000, 1000), (1024, 1024)),
        ("1K", (16000, 1000), (1024, 64)),
        ("1K", (20000, 10), (1024, 1)),
        ("1.5K", (600, 500), (1536, 1280)),
    ],
)
def test_layer_size(
    model_id: str, size: str, input_size: tuple[int, int], expected: tuple[int, int]
) -> None:
    spec = catalogue.get(model_id)
    plan = spec.plan(validate(model_id, size=size), [input_size])
    assert (plan.width, plan.height) == expected
    assert plan.layers is True
    assert plan.max_images == 9
    assert plan.format == "jpeg"


@pytest.mark.parametrize("model_id", LAYER_IDS)
def test_layer_plan_needs_the_input_size(model_id: str) -> None:
    with pytest.raises(ValueError):
        catalogue.get(model_id).plan(validate(model_id), [])


def test_layer_size_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        sizes.layer_size((0, 10), "1K")
    with pytest.raises(ValueError):
        sizes.layer_size((10, 10), "3K")


@pytest.mark.parametrize("model_id", IDS)
def test_plan_format_and_count(model_id: str) -> None:
    spec = catalogue.get(model_id)
    input_sizes = [(1024, 1024)]
    plan = spec.plan(validate(model_id), input_sizes)
    family_default = "jpeg" if model_id.startswith(("bytedance/", "seedream/4.5")) else "png"
    if model_id in LAYER_IDS:
        family_default = "jpeg"
    assert plan.format == family_default
    assert plan.max_images == (9 if model_id in LAYER_IDS else 1)
    assert plan.layers is (model_id in LAYER_IDS)
    if "output_format" in spec.input_model.model_fields:
        other = "png" if family_default == "jpeg" else "jpeg"
        assert spec.plan(validate(model_id, output_format=other), input_sizes).format == other


def test_v4_max_images_in_plan() -> None:
    for model_id in ("bytedance/seedream-v4-text-to-image", "bytedance/seedream-v4-edit"):
        spec = catalogue.get(model_id)
        assert spec.plan(validate(model_id, max_images=4), []).max_images == 4


def test_plan_refuses_another_models_input() -> None:
    with pytest.raises(TypeError):
        catalogue.get("seedream/4.5-text-to-image").plan(validate("bytedance/seedream"), [])


# --- prices --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "fields", "price"),
    [
        ("bytedance/seedream", {}, "3.5"),
        ("bytedance/seedream-v4-text-to-image", {}, "5"),
        ("bytedance/seedream-v4-edit", {"image_urls": [URL] * 3}, "5"),
        ("seedream/4.5-text-to-image", {"quality": "basic"}, "6.5"),
        ("seedream/4.5-edit", {"quality": "high"}, "6.5"),
        ("seedream/5-lite-text-to-image", {"quality": "ultra"}, "5.5"),
        ("seedream/5-lite-image-to-image", {"quality": "high"}, "5.5"),
        ("seedream/5-pro-text-to-image", {}, "7"),
        ("seedream/5-pro-text-to-image", {"quality": "high"}, "14"),
        ("seedream/5-pro-image-to-image", {}, "7"),
        ("seedream/5-pro-image-to-image", {"image_urls": [URL] * 3}, "8"),
        ("seedream/5-pro-image-to-image", {"quality": "high", "image_urls": [URL] * 10}, "18.5"),
        ("seedream/5-flash-text-to-image", {"size": "1.5K"}, "3.24"),
        ("seedream/5-flash-image-to-image", {"size": "2K", "image_urls": [URL] * 4}, "3.24"),
    ],
)
def test_price_of_one_image(model_id: str, fields: dict[str, Any], price: str) -> None:
    spec = catalogue.get(model_id)
    inp = validate(model_id, **fields)
    assert spec.price(inp, 1) == Decimal(price)
    assert spec.max_price(inp) == Decimal(price)


def test_v4_max_price_covers_max_images() -> None:
    spec = catalogue.get("bytedance/seedream-v4-text-to-image")
    inp = validate(spec.id, max_images=6)
    assert spec.max_price(inp) == Decimal(30)
    assert spec.price(inp, 2) == Decimal(10)


@pytest.mark.parametrize(("model_id", "per_layer"), [(LAYER_IDS[0], "7"), (LAYER_IDS[1], "3.24")])
def test_layer_prices(model_id: str, per_layer: str) -> None:
    spec = catalogue.get(model_id)
    inp = validate(model_id)
    assert spec.max_price(inp) == Decimal(per_layer) * 8
    assert spec.price(inp, 3) == Decimal(per_layer) * 3


def test_tiers_allow_overrides() -> None:
    lite = catalogue.get("seedream/5-lite-text-to-image")
    pricing = lite.pricing.with_overrides({"ultra": Decimal(9)})
    assert lite.price(validate(lite.id, quality="ultra"), 1, pricing) == Decimal(9)
    assert lite.price(validate(lite.id, quality="basic"), 1, pricing) == Decimal("5.5")
    v45 = catalogue.get("seedream/4.5-edit")
    assert v45.tier(validate(v45.id, quality="high")) == "high"
    flash = catalogue.get("seedream/5-flash-text-to-image")
    assert flash.tier(validate(flash.id, size="1.5K")) == "1.5K"


@pytest.mark.parametrize("model_id", IDS)
def test_every_tier_has_a_price(model_id: str) -> None:
    spec = catalogue.get(model_id)
    fields = spec.input_model.model_fields
    for name in ("quality", "size"):
        if name in fields and model_id not in LAYER_IDS:
            for value in _literal_values(spec.input_model, name):
                assert spec.tier(validate(model_id, **{name: value})) in spec.pricing.per_output


def _literal_values(model: type[BaseModel], name: str) -> list[str]:
    schema = model.model_json_schema()["properties"][name]
    return list(schema["enum"])


def test_modules_declare_all() -> None:
    from seedbed.catalogue import (
        seedream3,
        seedream4,
        seedream5_flash,
        seedream5_lite,
        seedream5_pro,
        seedream45,
        validation,
    )

    for module in (
        catalogue,
        common,
        sizes,
        validation,
        seedream3,
        seedream4,
        seedream45,
        seedream5_lite,
        seedream5_pro,
        seedream5_flash,
    ):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
