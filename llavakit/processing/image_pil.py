"""The fast path of the image processors: a PIL image stays in Pillow (convert, pad, resize) and the uint8
result goes through one table lookup per channel that gives the final floats.

transformers' PIL backend converts to numpy and back to PIL for each resize, then rescales and normalizes
in float64/float32 passes over the whole image. Every output value depends on one uint8 input value only,
so a 256-entry table per channel, built by running those same rescale/normalize functions on 0..255,
gives bit-identical numbers (`value_table` in image.py) in a single pass (`lookup`).
"""

from __future__ import annotations

import numpy as np
import PIL.Image


def rgb_pil(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image in mode RGB; transparency is composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def as_rgb_pil(image: object, do_convert_rgb: bool) -> PIL.Image.Image | None:
    """An RGB PIL image for the fast path, or None when the image must take the numpy path."""
    if not isinstance(image, PIL.Image.Image):
        return None
    if do_convert_rgb:
        return rgb_pil(image)
    return image if image.mode == "RGB" else None


def resize_pil(image: PIL.Image.Image, height: int, width: int, resample: int) -> PIL.Image.Image:
    """Pillow resize to (height, width); the same size is returned as is (Pillow would copy it unchanged)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=resample)


def paste_centered(image: PIL.Image.Image, height: int, width: int, top: int, left: int,
                   colour: tuple[int, ...] | int = 0) -> PIL.Image.Image:
    """A (height, width) canvas of `colour` with the image pasted at (top, left)."""
    canvas = PIL.Image.new(image.mode, (width, height), colour)
    canvas.paste(image, (left, top))
    return canvas


def tiles(image: PIL.Image.Image, crop: int) -> list[PIL.Image.Image]:
    """Row-major crop x crop tiles (the last row/column is narrower when the size is not a multiple of crop)."""
    width, height = image.size
    return [image.crop((left, top, min(left + crop, width), min(top + crop, height)))
            for top in range(0, height, crop) for left in range(0, width, crop)]


def lookup(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 -> a new (C, H, W) array of table[c][value] for each channel c; table is (C, 256)."""
    if image.shape[0] != table.shape[0]:
        raise ValueError(f"the image has {image.shape[0]} channel(s) but the value table has {table.shape[0]}")
    out = np.empty(image.shape, dtype=table.dtype)  # (C, H, W)
    for c in range(image.shape[0]):
        np.take(table[c], image[c], out=out[c], mode="clip")  # uint8 indices are always in range
    return out
