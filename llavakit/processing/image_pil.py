"""The fast path of the image processors: a PIL image stays in Pillow (convert, pad, resize) and the uint8
result goes through one table lookup per channel that gives the final floats.

transformers' PIL backend converts to numpy and back to PIL for each resize, then rescales and normalizes
in float64/float32 passes over the whole image. Every output value depends on one uint8 input value only,
so a 256-entry table per channel, built by running those same rescale/normalize functions on 0..255,
gives bit-identical numbers (`value_table` in image.py) in a single pass (`lookup`).

Large resizes and lookups run on a few threads (Pillow and numpy release the GIL). Pillow resizes in two
separable passes (rounding to uint8 in between), and in a horizontal pass each output row depends on one
source row only (a column, in a vertical pass). So running the two passes as separate one-dimensional
resizes, in Pillow's order, each over strips of its input, gives Pillow's own result bit for bit.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from typing import Callable, Sequence, TypeVar

import numpy as np
import PIL.Image

PARALLEL_MIN_PIXELS = 128 * 128  # below this a resize or lookup is cheaper than handing it to threads
MAX_THREADS = 4
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
T = TypeVar("T")


def threads() -> int:
    """Threads the image work may use: the CPUs this process may run on, at most MAX_THREADS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def _parallel(work: Callable[[T], object], items: Sequence[T]) -> list:
    """work(item) for each item, on the shared pool when there is more than one item (results in order)."""
    global _pool
    if len(items) < 2:
        return [work(item) for item in items]
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="llavakit-image")
    return list(_pool.map(work, items))


def _spans(length: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges cutting range(length) into `parts` nearly equal pieces (none empty)."""
    parts = max(1, min(parts, length))
    cuts = [length * i // parts for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


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
    """Pillow resize to (height, width), the same pixels as `image.resize`; the same size is returned as is.

    Large images are resized on several threads, one separable pass at a time (see the module docstring).
    """
    if image.size == (width, height):
        return image
    parts = threads()
    if parts < 2 or max(image.width * image.height, width * height) < PARALLEL_MIN_PIXELS or not _passes_match():
        return image.resize((width, height), resample=resample)
    return _two_passes(image, width, height, resample, parts)


def _vertical_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Whether Pillow runs the vertical pass first for this resize.

    Pillow 13 does so when the height shrinks by more than twice what the width loses (read off its
    output over thousands of sizes and all filters); `_passes_match` checks this on the Pillow installed.
    """
    return new_height < height and 2 * (width - new_width) < height - new_height


def _two_passes(image: PIL.Image.Image, width: int, height: int, resample: int, parts: int) -> PIL.Image.Image:
    """The resize as two one-dimensional Pillow resizes in Pillow's order, each cut into `parts` strips."""

    def horizontal(source: PIL.Image.Image) -> PIL.Image.Image:  # each output row from the same source row
        if source.width == width:
            return source
        strips = _parallel(lambda rows: source.crop((0, rows[0], source.width, rows[1])).resize(
            (width, rows[1] - rows[0]), resample=resample), _spans(source.height, parts))
        return _join(strips, (width, source.height), below=True)

    def vertical(source: PIL.Image.Image) -> PIL.Image.Image:  # each output column from the same source column
        if source.height == height:
            return source
        strips = _parallel(lambda cols: source.crop((cols[0], 0, cols[1], source.height)).resize(
            (cols[1] - cols[0], height), resample=resample), _spans(source.width, parts))
        return _join(strips, (source.width, height), below=False)

    if _vertical_first(image.width, image.height, width, height):
        return horizontal(vertical(image))
    return vertical(horizontal(image))


@functools.cache
def _passes_match() -> bool:
    """Whether `_two_passes` gives this Pillow's own pixels (checked once, on a small noise image)."""
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # (H, W, 3)
    image = PIL.Image.fromarray(noise)
    for size in ((45, 17), (20, 30), (60, 22), (30, 60)):  # vertical first, then horizontal first
        for resample in (PIL.Image.Resampling.BILINEAR, PIL.Image.Resampling.BICUBIC):
            ours = _two_passes(image, size[0], size[1], resample, parts=1)
            if not np.array_equal(np.asarray(ours), np.asarray(image.resize(size, resample=resample))):
                return False
    return True


def _join(strips: list[PIL.Image.Image], size: tuple[int, int], below: bool) -> PIL.Image.Image:
    """Paste strips side by side (or each below the previous) into one image of `size`."""
    if len(strips) == 1:
        return strips[0]
    joined = PIL.Image.new(strips[0].mode, size)
    offset = 0
    for strip in strips:
        joined.paste(strip, (0, offset) if below else (offset, 0))
        offset += strip.height if below else strip.width
    return joined


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
    C, H, W = image.shape
    parts = threads() if H * W >= PARALLEL_MIN_PIXELS else 1
    jobs = [(c, rows) for c in range(C) for rows in _spans(H, -(-parts // C))]  # at least `parts` jobs

    def take(job: tuple[int, tuple[int, int]]) -> None:
        c, (top, bottom) = job
        np.take(table[c], image[c, top:bottom], out=out[c, top:bottom], mode="clip")  # uint8: always in range

    if parts > 1:
        _parallel(take, jobs)
    else:
        for job in jobs:
            take(job)
    return out
