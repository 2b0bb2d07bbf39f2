"""A video given to a family without a video path is a ValueError naming the model and the families that take one."""

import pytest
import torch

from llavakit import (LlavaForConditionalGeneration, LlavaModel, LlavaNextForConditionalGeneration, LlavaNextModel,
                      VipLlavaForConditionalGeneration, VipLlavaModel)

CASES = [(LlavaForConditionalGeneration, "tiny_llava_dir"), (LlavaModel, "tiny_llava_dir"),
         (LlavaNextForConditionalGeneration, "tiny_llava_next_dir"), (LlavaNextModel, "tiny_llava_next_dir"),
         (VipLlavaForConditionalGeneration, "tiny_vipllava_dir"), (VipLlavaModel, "tiny_vipllava_dir")]


@pytest.mark.parametrize("cls,fixture", CASES, ids=[c.__name__ for c, _ in CASES])
def test_video_to_image_only_model_is_value_error(cls, fixture, request):
    model = cls.from_pretrained(request.getfixturevalue(fixture)).eval()
    ids = torch.tensor([[1, 5, 6, 7]])
    videos = torch.zeros(1, 2, 3, 8, 8)  # (num_videos, frames, 3, H, W)
    with pytest.raises(ValueError, match=rf"{cls.__name__} .*does not take videos.*OneVision.*NeXT-Video"):
        model(input_ids=ids, pixel_values_videos=videos)
    out = model(input_ids=ids, pixel_values_videos=None)  # None is the same as not giving it
    assert out[0].shape[:2] == (1, 4)


def test_generate_with_video_on_image_model_is_value_error(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    with pytest.raises(ValueError, match="does not take videos"):
        model.generate(input_ids=torch.tensor([[1, 5, 6]]), pixel_values_videos=torch.zeros(1, 2, 3, 8, 8),
                       max_new_tokens=2)
