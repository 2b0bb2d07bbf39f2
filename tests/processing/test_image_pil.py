"""The Pillow fast path of the image processors: the same numbers as the numpy path, bit for bit.

The processors take it for PIL inputs; feeding the same pixels as a numpy array takes the numpy path
(transformers' steps), so the two can be compared directly. transformers parity is in test_image*.py.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from llavakit.processing.image import CLIPImageProcessor, normalize, rescale, value_table
from llavakit.processing.image_llava import LlavaImageProcessor
from llavakit.processing.image_next import LlavaNextImageProcessor, anyres_views, anyres_views_pil
from llavakit.processing.image_pil import as_rgb_pil, lookup, paste_centered, tiles
from llavakit.processing.image_siglip import SiglipImageProcessor

CASES = {
    "clip": lambda: CLIPImageProcessor(size={"shortest_edge": 48}, crop_size=48),
    "clip_crop_pads": lambda: CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 50, "width": 41}),
    "clip_no_normalize": lambda: CLIPImageProcessor(size={"shortest_edge": 40}, crop_size=40, do_normalize=False),
    "clip_uint8": lambda: CLIPImageProcessor(size=40, crop_size=40, do_rescale=False, do_normalize=False),
    "clip_bilinear": lambda: CLIPImageProcessor(size={"shortest_edge": 40}, crop_size=40, resample=None),
    "siglip": lambda: SiglipImageProcessor(size={"height": 52, "width": 52}),
    "llava_pad": lambda: LlavaImageProcessor(size={"shortest_edge": 36}, crop_size=36, do_pad=True),
    "next": lambda: LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size=28,
                                            image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [84, 28]]),
}


@pytest.fixture(scope="module")
def rgb_photos(photos):
    return {name: PIL.Image.open(photos[name]).convert("RGB") for name in ("astronaut", "chelsea", "rocket")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_equals_numpy_path(rgb_photos, name):
    processor = CASES[name]()
    for photo in rgb_photos.values():
        fast = processor(photo, return_tensors="np")
        slow = processor(np.array(photo), return_tensors="np")  # an array takes the numpy path
        assert fast["pixel_values"].dtype == slow["pixel_values"].dtype, name
        np.testing.assert_array_equal(fast["pixel_values"], slow["pixel_values"])
        if "image_sizes" in slow:
            np.testing.assert_array_equal(fast["image_sizes"], slow["image_sizes"])


def test_value_table_is_the_pipeline_on_every_uint8_value():
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    table = value_table(3, True, 1 / 255, True, mean, std)
    assert table.shape == (3, 256) and table.dtype == np.float32
    ramp = np.tile(np.arange(256, dtype=np.uint8), (3, 16, 1))  # (3, 16, 256): every value, many rows
    np.testing.assert_array_equal(lookup(ramp, table), normalize(rescale(ramp, 1 / 255), mean, std))
    assert value_table(3, False, None, False, None, None) is None
    with pytest.raises(ValueError, match="channel"):
        lookup(np.zeros((1, 2, 2), np.uint8), table)


def test_anyres_views_in_pillow_match_numpy(rgb_photos):
    pinpoints = [[28, 56], [56, 28], [56, 56], [84, 28]]
    for photo in rgb_photos.values():
        pil_views = anyres_views_pil(photo, pinpoints, (28, 28), 28, 3)
        array_views = anyres_views(np.moveaxis(np.array(photo), -1, 0), pinpoints, (28, 28), 28, 3)
        assert len(pil_views) == len(array_views) > 1
        for a, b in zip(pil_views, array_views):
            np.testing.assert_array_equal(np.moveaxis(np.array(a), -1, 0), b)


def test_geometry_helpers():
    image = PIL.Image.new("RGB", (5, 3), (1, 2, 3))
    canvas = paste_centered(image, 7, 9, 2, 1, (9, 9, 9))
    pixels = np.array(canvas)
    assert canvas.size == (9, 7) and (pixels[2:5, 1:6] == (1, 2, 3)).all() and (pixels[0] == 9).all()
    assert [t.size for t in tiles(canvas, 4)] == [(4, 4), (4, 4), (1, 4), (4, 3), (4, 3), (1, 3)]
    assert as_rgb_pil(np.zeros((2, 2, 3)), True) is None
    assert as_rgb_pil(PIL.Image.new("L", (2, 2)), False) is None  # grey without conversion: numpy path
    rgba = PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert as_rgb_pil(rgba, True).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
