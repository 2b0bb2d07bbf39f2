"""LlavaOnevisionImageProcessor against transformers' PIL backend: anyres views, multi-image squares, config."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from llavakit import AutoImageProcessor, LlavaOnevisionImageProcessor
from tests.assets import OV_PINPOINTS

SMALL = dict(size={"height": 28, "width": 28}, image_grid_pinpoints=OV_PINPOINTS)


@pytest.fixture(scope="module")
def images(photos):
    opened = {name: PIL.Image.open(path) for name, path in photos.items()}
    astro = opened["astronaut"]
    return {**opened, "strip": astro.crop((0, 0, 512, 30)), "tall": astro.resize((40, 300)),
            "1x1": PIL.Image.new("RGB", (1, 1), (10, 20, 30)), "array": np.asarray(opened["chelsea"]),
            "chw": np.asarray(opened["coffee"]).transpose(2, 0, 1).copy()}


def assert_same(got, expected):
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("settings", [SMALL, {}], ids=["28px", "384px"])
def test_matches_transformers(images, settings):
    ours, ref = LlavaOnevisionImageProcessor(**settings), LlavaOnevisionImageProcessorPil(**settings)
    cases = [images["chelsea"], [images["astronaut"], images["strip"], images["tall"]],
             [[images["rocket"], images["camera"]], [images["horse"]], [images["1x1"], images["coffee"], images["tall"]]],
             images["array"], images["chw"], [[images["chelsea"]], []]]
    for case in cases:
        assert_same(ours(case, return_tensors="pt"), ref(case, return_tensors="pt"))
    got = ours([[images["rocket"], images["camera"]], [images["horse"]]], return_tensors="pt")
    assert got["batch_num_images"].tolist() == [2, 1]
    views = got["pixel_values"].shape[1]
    assert views > 1 and (got["pixel_values"][0, 1:] == 0).all()  # multi-image: one square view, then zero padding


def test_call_kwargs_match_transformers(images):
    ours, ref = LlavaOnevisionImageProcessor(**SMALL), LlavaOnevisionImageProcessorPil(**SMALL)
    for kwargs in [dict(image_grid_pinpoints=[[28, 28], [28, 56]]), dict(do_normalize=False),
                   dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]), dict(do_pad=False)]:
        case = [images["chelsea"], images["tall"]] if kwargs.get("do_pad") is not False else images["chelsea"]
        assert_same(ours(case, return_tensors="pt", **kwargs), ref(case, return_tensors="pt", **kwargs))


def test_config_round_trip(tmp_path, images):
    ref = LlavaOnevisionImageProcessorPil(**SMALL)
    ref.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, LlavaOnevisionImageProcessor)
    assert loaded.to_dict() == {k: list(v) if isinstance(v, tuple) else v for k, v in ref.to_dict().items()}
    assert_same(loaded(images["rocket"], return_tensors="pt"), ref(images["rocket"], return_tensors="pt"))
    assert LlavaOnevisionImageProcessor().to_dict() == {
        k: list(v) if isinstance(v, tuple) else v for k, v in LlavaOnevisionImageProcessorPil().to_dict().items()}


def test_errors(images):
    processor = LlavaOnevisionImageProcessor(**SMALL)
    with pytest.raises(ValueError, match="no images were given"):
        processor([])
    with pytest.raises(ValueError, match="cannot stack images with different numbers of views"):
        processor([images["chelsea"], images["1x1"]], do_pad=False, return_tensors="pt")
    with pytest.raises(TypeError, match="unexpected LlavaOnevisionImageProcessor arguments"):
        processor(images["chelsea"], num_frames=2)
