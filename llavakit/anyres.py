"""LLaVA-NeXT "anyres" geometry: which grid an image is cut into and how much of the feature map is
padding. Plain integer arithmetic shared by the image processor (token counts) and the model (unpacking).

Sizes are always (height, width). The float expressions follow transformers exactly, so both sides
agree on every size (a one-token difference breaks the `<image>` count).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

Size = tuple[int, int]

# (height, width) canvases of llava-v1.6 at 336 px crops: 1x2, 2x1, 2x2, 1x3 and 3x1 grids.
DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def as_size(value: Any, name: str = "image size") -> Size:
    """A (height, width) pair of positive ints from a list, tuple, tensor or array."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a (height, width) pair, got {value!r}")
    if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) or x <= 0 for x in value):
        raise ValueError(f"{name} must be two positive integers (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def check_pinpoints(pinpoints: Any) -> list[list[int]]:
    """`image_grid_pinpoints` as a non-empty list of [height, width] lists of positive ints."""
    if not isinstance(pinpoints, (list, tuple)) or not pinpoints:
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [height, width] pairs, got {pinpoints!r}")
    return [list(as_size(p, "each image_grid_pinpoints entry")) for p in pinpoints]


def select_best_resolution(original_size: Sequence[int], possible_resolutions: Sequence[Sequence[int]]) -> Size:
    """The (height, width) canvas an image of `original_size` is resized and padded onto.

    Each candidate scales the image to fit (aspect kept); the one keeping the most original pixels wins,
    then the one wasting the least area, then the earliest in the list.
    """
    height, width = as_size(original_size)
    best, best_kept, best_wasted = None, 0, math.inf
    for cand_h, cand_w in possible_resolutions:
        scale = min(cand_w / width, cand_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_h * cand_w - kept
        if kept > best_kept or (kept == best_kept and wasted < best_wasted):
            best, best_kept, best_wasted = (cand_h, cand_w), kept, wasted
    if best is None:
        raise ValueError(f"no usable resolution among image_grid_pinpoints {list(possible_resolutions)!r}")
    return best


def get_anyres_image_grid_shape(image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]],
                                crop_size: int) -> Size:
    """(rows, cols) of `crop_size` crops the image's best canvas is divided into."""
    best_h, best_w = select_best_resolution(image_size, grid_pinpoints)
    return best_h // crop_size, best_w // crop_size


def image_size_to_num_patches(image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]],
                              crop_size: int) -> int:
    """Crops the processor makes for one image: the grid (partial crops count) plus the base image."""
    best_h, best_w = select_best_resolution(image_size, grid_pinpoints)
    return math.ceil(best_h / crop_size) * math.ceil(best_w / crop_size) + 1


def unpadded_size(original_size: Sequence[int], current_size: Sequence[int]) -> Size:
    """(height, width) of a (current_h, current_w) feature map once the letterbox padding is cut off.

    The image was fitted to the canvas along its relatively longer side; the other side is trimmed by
    the same number of rows (or columns) at both ends, so an odd remainder keeps one padded line.
    """
    height, width = as_size(original_size)
    cur_h, cur_w = as_size(current_size, "feature map size")
    if width / height > cur_w / cur_h:  # wider than the canvas: padding at top and bottom
        new_h = int(round(height * (cur_w / width), 7))
        return cur_h - 2 * ((cur_h - new_h) // 2), cur_w
    new_w = int(round(width * (cur_h / height), 7))
    return cur_h, cur_w - 2 * ((cur_w - new_w) // 2)
