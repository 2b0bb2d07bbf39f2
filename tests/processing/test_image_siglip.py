"""SiglipImageProcessor against transformers' (PIL backend) on real photos: the same pixel_values, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import transformers

from llavakit.processing.auto import AutoImageProcessor
from llavakit.processing.image_siglip import SiglipImageProcessor
from tests.reference import hf_image_processor

SIZES = [{"height": 384, "width": 384}, {"height": 30, "width": 44}]


@pytest.fixture(scope="module")
def images(photos):
    return {name: PIL.Image.open(path) for name, path in photos.items()}


@pytest.mark.parametrize("size", SIZES, ids=["384", "30x44"])
def test_photos_match_transformers(images, size):
    theirs = transformers.SiglipImageProcessorPil(size=size)
    mine = SiglipImageProcessor(size=size)
    names = sorted(images)  # includes greyscale (camera) and RGBA (horse)
    a = theirs([images[n] for n in names], return_tensors="pt")["pixel_values"]
    b = mine([images[n] for n in names], return_tensors="pt")["pixel_values"]
    assert tuple(b.shape) == (len(names), 3, size["height"], size["width"])
    assert (a == b).all()


def test_defaults_and_no_crop(images):
    mine, theirs = SiglipImageProcessor(), transformers.SiglipImageProcessorPil()
    chelsea = images["chelsea"]  # 451 x 300: a crop would cut it, SigLIP squeezes it
    a = theirs(chelsea, return_tensors="np")["pixel_values"]
    b = mine(chelsea, return_tensors="np")["pixel_values"]
    assert b.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(a, b)
    assert mine.image_mean == mine.image_std == [0.5, 0.5, 0.5]
    assert -1.0 <= b.min() and b.max() <= 1.0


def test_numpy_and_float_inputs_match_transformers(images):
    size = {"height": 32, "width": 32}
    array = np.array(images["astronaut"].convert("RGB"))
    floats = array.astype(np.float32) / 255
    for image in (array, floats):
        a = transformers.SiglipImageProcessorPil(size=size)(image, return_tensors="np")["pixel_values"]
        b = SiglipImageProcessor(size=size)(image, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(a, b)


def test_config_files_round_trip_with_transformers(tmp_path, images):
    transformers.SiglipImageProcessorPil(size={"height": 40, "width": 40}).save_pretrained(tmp_path / "hf")
    mine = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert type(mine) is SiglipImageProcessor and mine.size == {"height": 40, "width": 40}
    assert mine.do_center_crop is False

    mine.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SiglipImageProcessor" and "crop_size" not in saved
    back = hf_image_processor(tmp_path / "ours")
    assert type(back).__name__.startswith("SiglipImageProcessor")
    a = back(images["coffee"], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(a, mine(images["coffee"], return_tensors="np")["pixel_values"])


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="size"):
        SiglipImageProcessor(size={"height": 0, "width": 10})
