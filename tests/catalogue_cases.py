"""Catalogue test cases shared by the unit tests and the API tests over a real server."""

from __future__ import annotations

from typing import Any

from seedbed import catalogue

URL = "https://example.com/a.png"
PROMPT = "a red fox in the snow"

#: the smallest valid input of each model
MINIMAL: dict[str, dict[str, Any]] = {
    "bytedance/seedream": {"prompt": PROMPT},
    "bytedance/seedream-v4-text-to-image": {"prompt": PROMPT},
    "bytedance/seedream-v4-edit": {"prompt": PROMPT, "image_urls": [URL]},
    "seedream/4.5-text-to-image": {"prompt": PROMPT},
    "seedream/4.5-edit": {"prompt": PROMPT, "image_urls": [URL]},
    "seedream/5-lite-text-to-image": {"prompt": PROMPT},
    "seedream/5-lite-image-to-image": {"prompt": PROMPT, "image_urls": [URL]},
    "seedream/5-pro-text-to-image": {"prompt": PROMPT},
    "seedream/5-pro-image-to-image": {"prompt": PROMPT, "image_urls": [URL]},
    "seedream/5-pro-layer-decomposition": {"image_url": URL},
    "seedream/5-flash-text-to-image": {"prompt": PROMPT},
    "seedream/5-flash-image-to-image": {"prompt": PROMPT, "image_urls": [URL]},
    "seedream/5-flash-layer-decomposition": {"image_url": URL},
}

#: the defaults each model applies to MINIMAL
DEFAULTS: dict[str, dict[str, Any]] = {
    "bytedance/seedream": {"image_size": "square_hd", "guidance_scale": 2.5, "seed": None},
    "bytedance/seedream-v4-text-to-image": {
        "image_size": "square_hd",
        "image_resolution": "1K",
        "max_images": 1,
        "seed": None,
        "nsfw_checker": None,
    },
    "bytedance/seedream-v4-edit": {
        "image_size": "square_hd",
        "image_resolution": "1K",
        "max_images": 1,
        "seed": None,
    },
    "seedream/4.5-text-to-image": {"aspect_ratio": "1:1", "quality": "basic"},
    "seedream/4.5-edit": {"aspect_ratio": "1:1", "quality": "basic"},
    "seedream/5-lite-text-to-image": {
        "aspect_ratio": "1:1",
        "quality": "basic",
        "output_format": "png",
    },
    "seedream/5-lite-image-to-image": {
        "aspect_ratio": "1:1",
        "quality": "basic",
        "output_format": "png",
    },
    "seedream/5-pro-text-to-image": {
        "aspect_ratio": "1:1",
        "quality": "basic",
        "output_format": "png",
    },
    "seedream/5-pro-image-to-image": {
        "aspect_ratio": "1:1",
        "quality": "basic",
        "output_format": "png",
    },
    "seedream/5-pro-layer-decomposition": {
        "prompt": None,
        "size": "auto",
        "output_format": "jpeg",
    },
    "seedream/5-flash-text-to-image": {"aspect_ratio": "1:1", "size": "1K", "output_format": "png"},
    "seedream/5-flash-image-to-image": {
        "aspect_ratio": "1:1",
        "size": "1K",
        "output_format": "png",
    },
    "seedream/5-flash-layer-decomposition": {
        "prompt": None,
        "size": "auto",
        "output_format": "jpeg",
    },
}

MAX_IMAGE_URLS = {
    "bytedance/seedream-v4-edit": 10,
    "seedream/4.5-edit": 14,
    "seedream/5-lite-image-to-image": 14,
    "seedream/5-pro-image-to-image": 10,
    "seedream/5-flash-image-to-image": 10,
}

PROMPT_LIMITS = {  # model -> (min, max) characters for a required prompt
    "bytedance/seedream": (1, 5000),
    "bytedance/seedream-v4-text-to-image": (1, 5000),
    "bytedance/seedream-v4-edit": (1, 5000),
    "seedream/4.5-text-to-image": (1, 3000),
    "seedream/4.5-edit": (1, 3000),
    "seedream/5-lite-text-to-image": (3, 3000),
    "seedream/5-lite-image-to-image": (3, 3000),
    "seedream/5-pro-text-to-image": (3, 5000),
    "seedream/5-pro-image-to-image": (3, 5000),
    "seedream/5-flash-text-to-image": (3, 5000),
    "seedream/5-flash-image-to-image": (3, 5000),
}
LAYER_IDS = ["seedream/5-pro-layer-decomposition", "seedream/5-flash-layer-decomposition"]


def invalid_cases() -> list[tuple[str, dict[str, Any], str]]:
    """(model, fields merged into MINIMAL, the field the message must name)."""
    cases: list[tuple[str, dict[str, Any], str]] = []
    enum_fields = {
        "image_size": "landscape_5_4",
        "image_resolution": "8K",
        "aspect_ratio": "5:4",
        "quality": "extreme",
        "size": "3K",
        "output_format": "gif",
    }
    for model_id in catalogue.CATALOGUE:
        fields = catalogue.get(model_id).input_model.model_fields
        for name, bad in enum_fields.items():
            if name in fields:
                cases += [(model_id, {name: bad}, name), (model_id, {name: 1}, name)]
                cases.append((model_id, {name: None}, name))
        if "nsfw_checker" in fields:
            cases += [(model_id, {"nsfw_checker": "true"}, "nsfw_checker")]
            cases += [(model_id, {"nsfw_checker": 1}, "nsfw_checker")]
        if "seed" in fields:
            cases += [(model_id, {"seed": "1"}, "seed"), (model_id, {"seed": 1.5}, "seed")]
            cases += [
                (model_id, {"seed": 2**63}, "seed"),
                (model_id, {"seed": -(2**63) - 1}, "seed"),
            ]
        if model_id in PROMPT_LIMITS:
            low, high = PROMPT_LIMITS[model_id]
            cases += [
                (model_id, {"prompt": "x" * (high + 1)}, "prompt"),
                (model_id, {"prompt": "x" * (low - 1)}, "prompt"),
                (model_id, {"prompt": 42}, "prompt"),
                (model_id, {"prompt": None}, "prompt"),
                (model_id, {"prompt": ["a prompt"]}, "prompt"),
            ]
        if model_id in MAX_IMAGE_URLS:
            limit = MAX_IMAGE_URLS[model_id]
            cases += [
                (model_id, {"image_urls": [URL] * (limit + 1)}, "image_urls"),
                (model_id, {"image_urls": []}, "image_urls"),
                (model_id, {"image_urls": URL}, "image_urls"),
                (model_id, {"image_urls": None}, "image_urls"),
                (model_id, {"image_urls": [URL, "file:///etc/passwd"]}, "image_urls[1]"),
                (model_id, {"image_urls": ["example.com/a.png"]}, "image_urls[0]"),
                (model_id, {"image_urls": [5]}, "image_urls[0]"),
            ]
        if model_id in LAYER_IDS:
            cases += [
                (model_id, {"image_url": "ftp://a/b.png"}, "image_url"),
                (model_id, {"image_url": [URL]}, "image_url"),
                (model_id, {"image_url": None}, "image_url"),
                (model_id, {"prompt": "x" * 5001}, "prompt"),
                (model_id, {"prompt": 3}, "prompt"),
            ]
    cases += [
        ("bytedance/seedream", {"guidance_scale": 0.9}, "guidance_scale"),
        ("bytedance/seedream", {"guidance_scale": 10.1}, "guidance_scale"),
        ("bytedance/seedream", {"guidance_scale": float("nan")}, "guidance_scale"),
        ("bytedance/seedream", {"guidance_scale": None}, "guidance_scale"),
        ("bytedance/seedream", {"image_size": "landscape_21_9"}, "image_size"),
        ("bytedance/seedream-v4-edit", {"max_images": 2.0}, "max_images"),
        ("seedream/4.5-text-to-image", {"quality": "ultra"}, "quality"),
        ("seedream/5-pro-text-to-image", {"quality": "ultra"}, "quality"),
        ("seedream/5-pro-layer-decomposition", {"size": "4K"}, "size"),
        ("seedream/5-flash-layer-decomposition", {"prompt": "ab"}, "prompt"),
    ]
    return cases
