"""Visual prompts for ViP-LLaVA: draw the markers it was trained on (rectangle, ellipse, triangle, point,
arrow, scribble, mask contour) onto an image, with colour, line width and alpha. Pillow only.

Every function returns a new RGB image; the input is left untouched. Boxes are (x0, y0, x1, y1) in pixels.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageColor, ImageDraw

Box = Sequence[float]
Point = Sequence[float]


def _rgba(color: str | Sequence[int], alpha: float) -> tuple[int, int, int, int]:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = ImageColor.getrgb(color) if isinstance(color, str) else tuple(int(c) for c in color)
    if len(rgb) < 3:
        raise ValueError(f"colour must be a name, '#rrggbb' or an (r, g, b) triple, got {color!r}")
    return int(rgb[0]), int(rgb[1]), int(rgb[2]), round(255 * alpha)


def _check_box(box: Box) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {len(box)} numbers")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {tuple(box)} has x1 < x0 or y1 < y0")
    return x0, y0, x1, y1


def _check_width(width: int) -> int:
    if int(width) < 1:
        raise ValueError(f"width must be >= 1 pixel, got {width}")
    return int(width)


def _compose(image: Image.Image, paint: Any, color: str | Sequence[int], alpha: float) -> Image.Image:
    """Draw with `paint(draw, fill)` on a transparent layer and alpha-blend it over the image."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image, got {type(image).__name__}")
    fill = _rgba(color, alpha)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    paint(ImageDraw.Draw(layer), fill)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def rectangle(image: Image.Image, box: Box, color: str | Sequence[int] = "red", width: int = 3,
              alpha: float = 1.0) -> Image.Image:
    """The outline of a box."""
    box, width = _check_box(box), _check_width(width)
    return _compose(image, lambda d, fill: d.rectangle(box, outline=fill, width=width), color, alpha)


def ellipse(image: Image.Image, box: Box, color: str | Sequence[int] = "red", width: int = 3,
            alpha: float = 1.0) -> Image.Image:
    """The outline of the ellipse inscribed in a box."""
    box, width = _check_box(box), _check_width(width)
    return _compose(image, lambda d, fill: d.ellipse(box, outline=fill, width=width), color, alpha)


def triangle(image: Image.Image, box: Box, color: str | Sequence[int] = "red", width: int = 3,
             alpha: float = 1.0) -> Image.Image:
    """An upward triangle with its base on the box's bottom edge and its apex at the top centre."""
    (x0, y0, x1, y1), width = _check_box(box), _check_width(width)
    corners = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    return _compose(image, lambda d, fill: d.polygon(corners, outline=fill, width=width), color, alpha)


def point(image: Image.Image, xy: Point, color: str | Sequence[int] = "red", radius: int = 4,
          alpha: float = 1.0) -> Image.Image:
    """A filled dot centred on (x, y)."""
    x, y = (float(v) for v in xy)
    r = _check_width(radius)
    return _compose(image, lambda d, fill: d.ellipse((x - r, y - r, x + r, y + r), fill=fill), color, alpha)


def arrow(image: Image.Image, start: Point, end: Point, color: str | Sequence[int] = "red", width: int = 3,
          alpha: float = 1.0, head: float | None = None) -> Image.Image:
    """A line from start to end with a filled arrowhead at end (head length defaults to 4 x width)."""
    width = _check_width(width)
    (sx, sy), (ex, ey) = (tuple(float(v) for v in start), tuple(float(v) for v in end))
    length = head if head is not None else 4.0 * width
    angle = math.atan2(ey - sy, ex - sx)
    wings = [(ex - length * math.cos(angle - s * math.pi / 6), ey - length * math.sin(angle - s * math.pi / 6))
             for s in (1, -1)]

    def paint(d: ImageDraw.ImageDraw, fill: tuple[int, int, int, int]) -> None:
        d.line([(sx, sy), (ex, ey)], fill=fill, width=width)
        d.polygon([(ex, ey), *wings], fill=fill)

    return _compose(image, paint, color, alpha)


def scribble(image: Image.Image, points: Sequence[Point], color: str | Sequence[int] = "red", width: int = 3,
             alpha: float = 1.0) -> Image.Image:
    """A free-hand stroke through the points, in order."""
    width = _check_width(width)
    if len(points) < 2:
        raise ValueError(f"a scribble needs at least 2 points, got {len(points)}")
    path = [(float(x), float(y)) for x, y in points]
    return _compose(image, lambda d, fill: d.line(path, fill=fill, width=width, joint="curve"), color, alpha)


def mask_contour(image: Image.Image, mask: Any, color: str | Sequence[int] = "red", width: int = 3,
                 alpha: float = 1.0) -> Image.Image:
    """The outline of a binary mask (H, W): mask pixels within `width` pixels of a non-mask pixel."""
    width = _check_width(width)
    mask = np.asarray(mask).astype(bool)  # (H, W)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image (height {image.height}, "
                         f"width {image.width})")
    inner = mask.copy()
    for _ in range(width):  # erode by one pixel per step (4-neighbourhood, image border counts as outside)
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = Image.fromarray(((mask & ~inner) * 255).astype(np.uint8), mode="L")

    def paint(d: ImageDraw.ImageDraw, fill: tuple[int, int, int, int]) -> None:
        d.bitmap((0, 0), edge, fill=fill)

    return _compose(image, paint, color, alpha)


SHAPES = {"rectangle": rectangle, "ellipse": ellipse, "triangle": triangle, "point": point, "arrow": arrow,
          "scribble": scribble, "mask_contour": mask_contour}
