"""LlavaNextImageProcessor against transformers' PIL LlavaNextImageProcessor: anyres views, padding, sizes, config."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from llavakit import AutoImageProcessor, LlavaNextImageProcessor
from llavakit.anyres import DEFAULT_PINPOINTS, select_best_resolution
from llavakit.processing.image_next import fit_size
from tests.reference import hf_image_processor

SMALL = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
             image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]])
REAL = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


@pytest.fixture(scope="module")
def small():
    """(llavakit, transformers) processors with 28-px crops and a 2x2 / 1x3 / 3x1 grid."""
    transformers.logging.set_verbosity_error()
    return LlavaNextImageProcessor(**SMALL), LlavaNextImageProcessorPil(**SMALL)


@pytest.fixture(scope="module")
def real():
    """(llavakit, transformers) processors at the llava-v1.6 size: 336-px crops, default pinpoints."""
    return LlavaNextImageProcessor(**REAL), LlavaNextImageProcessorPil(**REAL)


@pytest.fixture(scope="module")
def images(photos):
    opened = {name: PIL.Image.open(path) for name, path in photos.items()}
    astro = opened["astronaut"]
    return {
        **opened,  # RGB PNGs of different sizes, greyscale L, RGBA, JPEG
        "rotated": opened["coffee"].rotate(37, expand=True),
        "wide_strip": astro.crop((0, 200, 512, 230)),  # 512 x 30
        "tall_strip": opened["chelsea"].crop((100, 0, 118, 300)),  # 18 x 300
        "1x1": PIL.Image.new("RGB", (1, 1), (10, 20, 30)),
        "7x300": astro.resize((7, 300)),
        "300x7": astro.resize((300, 7)),
        "20x20": astro.resize((20, 20)),
    }


def assert_same(got, expected):
    assert sorted(got) == sorted(expected) == ["image_sizes", "pixel_values"]
    sizes, ref_sizes = got["image_sizes"], expected["image_sizes"]
    if isinstance(ref_sizes, torch.Tensor):
        assert sizes.dtype == ref_sizes.dtype == torch.int64 and torch.equal(sizes, ref_sizes)
    else:
        assert [tuple(s) for s in sizes] == [tuple(s) for s in ref_sizes]
    pixels, ref_pixels = got["pixel_values"], expected["pixel_values"]
    if isinstance(ref_pixels, torch.Tensor):
        assert pixels.dtype == ref_pixels.dtype == torch.float32 and pixels.shape == ref_pixels.shape
        assert torch.equal(pixels, ref_pixels)
    else:
        assert len(pixels) == len(ref_pixels)
        for a, b in zip(pixels, ref_pixels):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


# ---- geometry -----------------------------------------------------------------------------------
def test_best_resolution_matches_transformers():
    sizes = [(h, w) for h in (1, 7, 20, 100, 224, 336, 337, 480, 503, 672, 899, 1080, 2000)
             for w in (1, 7, 20, 100, 224, 316, 336, 640, 1000, 1256, 2000)]
    for size in sizes:
        assert select_best_resolution(size, DEFAULT_PINPOINTS) == hf_select_best_resolution(
            size, DEFAULT_PINPOINTS), size
        assert select_best_resolution(size, SMALL["image_grid_pinpoints"]) == hf_select_best_resolution(
            size, SMALL["image_grid_pinpoints"]), size


@pytest.mark.parametrize("size, best, fitted", [
    ((480, 640), (672, 672), (504, 672)), ((899, 1024), (672, 672), (590, 672)), ((336, 336), (336, 672), None),
    ((100, 2000), (336, 1008), (51, 1008)), ((503, 316), (672, 336), (535, 336))])
def test_worked_grid_examples(size, best, fitted):
    assert select_best_resolution(size, DEFAULT_PINPOINTS) == best  # (336, 336): first of a tie
    if fitted is not None:
        assert fit_size(*size, best) == fitted


# ---- pixel values -------------------------------------------------------------------------------
def _cases(images):
    astro = images["astronaut"]
    array = np.array(astro.resize((60, 40)))
    return {
        **{name: (image, {}) for name, image in images.items()},
        "numpy_hwc": (array, {}),
        "numpy_float01": (array.astype(np.float32) / 255, {}),
        "torch_chw": (torch.from_numpy(array.transpose(2, 0, 1).copy()), {}),
        "no_pad": (astro, {"do_pad": False}),
        "pinpoints_override": (astro, {"image_grid_pinpoints": [[28, 28], [56, 84]]}),
        "fixed_size": (astro, {"size": {"height": 28, "width": 28}}),
        "bilinear": (images["rocket"], {"resample": 2}),
        "no_resize": (astro, {"do_resize": False}),
        "no_normalize": (astro, {"do_normalize": False}),
        "scalar_mean_std": (astro, {"image_mean": 0.5, "image_std": 0.5}),
        "grey_without_rgb": (images["camera"], {"do_convert_rgb": False, "image_mean": [0.5], "image_std": [0.5]}),
    }


def test_single_images_match(small, images):
    ours, ref = small
    for name, (image, kwargs) in _cases(images).items():
        for return_tensors in (None, "pt"):
            got = ours(image, return_tensors=return_tensors, **kwargs)
            try:
                assert_same(got, ref(image, return_tensors=return_tensors, **kwargs))
            except AssertionError as err:
                raise AssertionError(f"case {name!r}, return_tensors={return_tensors}: {err}") from None


def test_batch_of_different_sizes_pads_views_with_zeros(small, images):
    ours, ref = small
    batch = [images[n] for n in ("astronaut", "wide_strip", "1x1", "tall_strip", "chelsea", "300x7", "horse")]
    got = ours(batch, return_tensors="pt")
    assert_same(got, ref(batch, return_tensors="pt"))
    # astronaut 512x512 -> 2x2 grid (5 views); the 512x30 strip -> 1x3 (4 views); 1x1 -> 1x2 (3 views)
    assert got["pixel_values"].shape == (7, 5, 3, 28, 28)
    assert got["image_sizes"].tolist() == [[512, 512], [30, 512], [1, 1], [300, 18], [300, 451], [7, 300],
                                           [328, 400]]
    assert torch.all(got["pixel_values"][1, 4:] == 0) and torch.all(got["pixel_values"][2, 3:] == 0)
    assert not torch.all(got["pixel_values"][1, 3] == 0)
    unpadded = ours(batch, do_pad=False)["pixel_values"]
    assert [len(v) for v in unpadded] == [5, 4, 3, 4, 5, 4, 5]


def test_nested_lists_flatten(small, images):
    ours, ref = small
    nested = [[images["coffee"]], [images["camera"], images["rocket"]]]
    assert_same(ours(nested, return_tensors="pt"), ref(nested, return_tensors="pt"))


def test_real_size_matches(real, images):
    ours, ref = real
    batch = [images["chelsea"], images["7x300"], images["astronaut"]]  # few big photos: 336-px views are slowish
    got = ours(batch, return_tensors="pt")
    assert_same(got, ref(batch, return_tensors="pt"))
    # chelsea 300x451 -> (336, 672): 1x2 grid + base; the tiny strip fits every grid, so the first of the tie
    # (336, 672) wins too; astronaut 512x512 -> (672, 672): 2x2 grid + base
    assert got["pixel_values"].shape == (3, 5, 3, 336, 336)
    assert torch.all(got["pixel_values"][:2, 3:] == 0) and not torch.all(got["pixel_values"][2, 4] == 0)


def test_channels_last_output(small, images):
    ours, _ = small
    got = ours(images["astronaut"], data_format="channels_last", return_tensors="np")
    expected = ours(images["astronaut"], return_tensors="np")["pixel_values"]
    assert got["pixel_values"].shape == (1, 5, 28, 28, 3)
    assert np.array_equal(np.moveaxis(got["pixel_values"], -1, 2), expected)


# ---- errors -------------------------------------------------------------------------------------
def test_errors(small, images):
    ours, _ = small
    with pytest.raises(ValueError, match="different numbers of anyres views \\[5, 4\\] with do_pad=False"):
        ours([images["astronaut"], images["wide_strip"]], do_pad=False, return_tensors="pt")
    with pytest.raises(ValueError, match="non-empty list of \\[height, width\\] pairs"):
        LlavaNextImageProcessor(image_grid_pinpoints=[])
    with pytest.raises(ValueError, match="two positive integers \\(height, width\\), got \\[336, 0\\]"):
        LlavaNextImageProcessor(image_grid_pinpoints=[[336, 672], [336, 0]])
    with pytest.raises(ValueError, match="must be a \\(height, width\\) pair, got 336"):
        ours(images["astronaut"], image_grid_pinpoints=[336, 672])
    with pytest.raises(TypeError, match="unexpected LlavaNextImageProcessor arguments \\['do_padd'\\]"):
        ours(images["astronaut"], do_padd=True)
    with pytest.raises(ValueError, match="no images were given"):
        ours([])
    with pytest.raises(ValueError, match="views of a 512x512 image have different processed shapes"):
        ours(images["astronaut"], do_center_crop=False, image_grid_pinpoints=[[40, 40]])


# ---- config -------------------------------------------------------------------------------------
def test_config_matches_transformers(small, real):
    for ours, ref in (small, real, (LlavaNextImageProcessor(), LlavaNextImageProcessorPil())):
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in ref.to_dict().items()}
        assert ours.to_dict() == expected
    assert LlavaNextImageProcessor().image_grid_pinpoints == DEFAULT_PINPOINTS


def test_save_load_round_trip(small, images, tmp_path):
    ours, ref = small
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "LlavaNextImageProcessor"
    assert config["image_grid_pinpoints"] == SMALL["image_grid_pinpoints"]
    theirs = hf_image_processor(tmp_path / "ours")
    assert isinstance(theirs, LlavaNextImageProcessorPil)
    again = AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert isinstance(again, LlavaNextImageProcessor) and again.to_dict() == ours.to_dict()
    batch = [images["rocket"], images["300x7"]]
    assert_same(again(batch, return_tensors="pt"), theirs(batch, return_tensors="pt"))

    ref.save_pretrained(tmp_path / "ref")  # and transformers' file, with an extra hub key, reads back here
    path = tmp_path / "ref" / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "aspect_ratio_setting": "anyres"}))
    loaded = LlavaNextImageProcessor.from_pretrained(tmp_path / "ref")
    assert loaded.to_dict()["aspect_ratio_setting"] == "anyres"
    assert loaded.image_grid_pinpoints == SMALL["image_grid_pinpoints"]
    assert_same(loaded(batch, return_tensors="pt"), ref(batch, return_tensors="pt"))
