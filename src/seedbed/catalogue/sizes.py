"""Output pixel sizes: the tables of kie-api-reference §1.10 and the rules of CONTRACT §2.

Every table maps an aspect ratio (``"16:9"``: width to height) to ``(width, height)`` in pixels.
Which table a model uses for which enum value is decided in the model's own module; this module
only holds the numbers and the two computed rules (Flash 1.5K and layer decomposition).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType

__all__ = [
    "FAL_PRESETS",
    "FLASH_1_5K",
    "IMAGE_SIZE_RATIO",
    "LAYER_LONG_SIDE",
    "SEEDREAM_4_0",
    "SEEDREAM_4_5",
    "SEEDREAM_5_0",
    "Size",
    "layer_size",
    "round_to_multiple",
    "scale_size",
]

#: (width, height) in pixels
Size = tuple[int, int]

#: ByteDance's Seedream 4.0 recommended sizes, by resolution then ratio (reference §1.10)
SEEDREAM_4_0: Mapping[str, Mapping[str, Size]] = MappingProxyType(
    {
        "1K": MappingProxyType(
            {
                "1:1": (1024, 1024),
                "4:3": (1152, 864),
                "3:4": (864, 1152),
                "16:9": (1280, 720),
                "9:16": (720, 1280),
                "3:2": (1248, 832),
                "2:3": (832, 1248),
                "21:9": (1512, 648),
            }
        ),
        "2K": MappingProxyType(
            {
                "1:1": (2048, 2048),
                "4:3": (2304, 1728),
                "3:4": (1728, 2304),
                "16:9": (2560, 1440),
                "9:16": (1440, 2560),
                "3:2": (2496, 1664),
                "2:3": (1664, 2496),
                "21:9": (3024, 1296),
            }
        ),
    }
)

#: ByteDance's Seedream 4.5 recommended sizes, by resolution then ratio (reference §1.10)
SEEDREAM_4_5: Mapping[str, Mapping[str, Size]] = MappingProxyType(
    {
        "2K": MappingProxyType(
            {
                "1:1": (2048, 2048),
                "4:3": (2304, 1728),
                "3:4": (1728, 2304),
                "16:9": (2848, 1600),
                "9:16": (1600, 2848),
                "3:2": (2496, 1664),
                "2:3": (1664, 2496),
                "21:9": (3136, 1344),
            }
        ),
        "4K": MappingProxyType(
            {
                "1:1": (4096, 4096),
                "4:3": (4704, 3520),
                "3:4": (3520, 4704),
                "16:9": (5504, 3040),
                "9:16": (3040, 5504),
                "3:2": (4992, 3328),
                "2:3": (3328, 4992),
                "21:9": (6240, 2656),
            }
        ),
    }
)

#: Seedream 5.0 (Lite) 3K sizes (reference §1.10); its 2K table equals the 4.5 2K table
SEEDREAM_5_0: Mapping[str, Mapping[str, Size]] = MappingProxyType(
    {
        "3K": MappingProxyType(
            {
                "1:1": (3072, 3072),
                "4:3": (3456, 2592),
                "3:4": (2592, 3456),
                "16:9": (4096, 2304),
                "9:16": (2304, 4096),
                "3:2": (3744, 2496),
                "2:3": (2496, 3744),
                "21:9": (4704, 2016),
            }
        ),
    }
)

#: Seedream 3.0's ``image_size`` values are fal.ai presets with fixed sizes (CONTRACT §2)
FAL_PRESETS: Mapping[str, Size] = MappingProxyType(
    {
        "square": (512, 512),
        "square_hd": (1024, 1024),
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
    }
)

#: Seedream 4.0's ``image_size`` values name an aspect ratio (reference §1.10)
IMAGE_SIZE_RATIO: Mapping[str, str] = MappingProxyType(
    {
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
)

#: layer decomposition: the long side of the base image for each ``size`` but ``auto``
LAYER_LONG_SIDE: Mapping[str, int] = MappingProxyType({"1K": 1024, "1.5K": 1536, "2K": 2048})


def round_to_multiple(value: Fraction | int, multiple: int) -> int:
    """``value`` rounded to the nearest multiple of ``multiple``, halves rounding up."""
    return math.floor(Fraction(value) / multiple + Fraction(1, 2)) * multiple


def scale_size(size: Size, factor: Fraction, multiple: int = 16) -> Size:
    """Each side of ``size`` times ``factor``, rounded to a multiple of ``multiple``."""
    width, height = size
    return (
        round_to_multiple(width * factor, multiple),
        round_to_multiple(height * factor, multiple),
    )


#: Seedream 5.0 Flash ``1.5K``: the 4.0 table's 1K size times 1.5, each side rounded to a
#: multiple of 16 (CONTRACT §2). 16:9 gives 1920x1088, since 1080 is no multiple of 16.
FLASH_1_5K: Mapping[str, Size] = MappingProxyType(
    {ratio: scale_size(size, Fraction(3, 2)) for ratio, size in SEEDREAM_4_0["1K"].items()}
)


def layer_size(input_size: Size, size: str) -> Size:
    """The base image's size for layer decomposition's ``size`` on an input of ``input_size``.

    ``auto`` keeps the input's size; ``1K``/``1.5K``/``2K`` scale the long side to
    1024/1536/2048 and the short side in proportion, rounded to the nearest pixel (at least 1).
    """
    width, height = input_size
    if width < 1 or height < 1:
        raise ValueError(f"input size must be positive, got {width}x{height}")
    if size == "auto":
        return (width, height)
    try:
        long_side = LAYER_LONG_SIDE[size]
    except KeyError:
        raise ValueError(f"unknown layer decomposition size {size!r}") from None
    if width >= height:
        return (long_side, _scaled_short(height, long_side, width))
    return (_scaled_short(width, long_side, height), long_side)


def _scaled_short(short: int, target_long: int, long: int) -> int:
    return max(1, math.floor(Fraction(short * target_long, long) + Fraction(1, 2)))
