"""LlavaImageProcessor (do_pad: pad to a square with the mean colour) against transformers' PIL backend."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from llavakit import AutoImageProcessor, LlavaImageProcessor
from llavakit.processing.image import CLIPImageProcessor
from llavakit.processing.image_llava import pad_colour, pad_to_square

SETTINGS = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "camera", "horse"])
@pytest.mark.parametrize("do_pad", [True, False])
def test_matches_transformers_on_photos(photos, name, do_pad):
    image = PIL.Image.open(photos[name])
    expected = LlavaImageProcessorPil(do_pad=do_pad, **SETTINGS)(image, return_tensors="pt")["pixel_values"]
    ours = LlavaImageProcessor(do_pad=do_pad, **SETTINGS)(image, return_tensors="pt")["pixel_values"]
    assert ours.shape == expected.shape == (1, 3, 336, 336)
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


def test_padding_changes_non_square_photos_only(photos):
    rocket = PIL.Image.open(photos["rocket"])  # 427 x 640: not square
    assert rocket.size[0] != rocket.size[1]
    padded = LlavaImageProcessor(do_pad=True, **SETTINGS)(rocket)["pixel_values"][0]
    cropped = LlavaImageProcessor(do_pad=False, **SETTINGS)(rocket)["pixel_values"][0]
    assert not np.allclose(padded, cropped)
    square = PIL.Image.open(photos["astronaut"])  # 512 x 512
    np.testing.assert_array_equal(LlavaImageProcessor(do_pad=True, **SETTINGS)(square)["pixel_values"][0],
                                  CLIPImageProcessor(**SETTINGS)(square)["pixel_values"][0])


def test_pad_to_square_geometry_and_colour():
    image = np.full((3, 2, 5), 7, dtype=np.uint8)  # wide: rows added above (1) and below (2)
    out = pad_to_square(image, pad_colour([0.48145466, 0.4578275, 0.40821073], 3))
    assert out.shape == (3, 5, 5)
    assert out[:, 0, 0].tolist() == [122, 116, 104]
    assert (out[:, 1:3] == 7).all() and (out[:, 3:] != 7).all()
    tall = pad_to_square(np.ones((1, 4, 1), dtype=np.uint8), [9])
    assert tall[0].tolist() == [[9, 1, 9, 9]] * 4
    with pytest.raises(ValueError, match="3 values but the image has 1 channel"):
        pad_to_square(np.ones((1, 4, 1), dtype=np.uint8), [1, 2, 3])


def test_call_override_and_float_images(photos):
    image = PIL.Image.open(photos["coffee"])
    processor = LlavaImageProcessor(**SETTINGS)  # do_pad defaults to False, as in transformers
    assert not processor.do_pad
    padded = processor(image, do_pad=True)["pixel_values"][0]
    np.testing.assert_array_equal(padded, LlavaImageProcessor(do_pad=True, **SETTINGS)(image)["pixel_values"][0])
    as_float = np.asarray(image.convert("RGB"), dtype=np.float32) / 255  # same picture on a [0, 1] scale
    from_float = processor(as_float, do_pad=True, do_rescale=False)["pixel_values"][0]
    np.testing.assert_allclose(from_float, padded, atol=1e-5)


def test_config_round_trip_and_transformers_reads_it(tmp_path, photos):
    LlavaImageProcessor(do_pad=True, **SETTINGS).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "LlavaImageProcessor" and saved["do_pad"] is True
    for loaded in (AutoImageProcessor.from_pretrained(tmp_path), CLIPImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is LlavaImageProcessor and loaded.do_pad
    image = PIL.Image.open(photos["chelsea"])
    reference = LlavaImageProcessorPil.from_pretrained(tmp_path)
    assert reference.do_pad
    torch.testing.assert_close(AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"],
                               reference(image, return_tensors="pt")["pixel_values"], atol=0, rtol=0)
