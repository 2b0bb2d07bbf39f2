"""The whole video path, each library with its own parts: a real H.264 clip and a real photo go through llavakit's
processor and model, and through transformers' processor and model, on the tiny OneVision and NeXT-Video
checkpoints (their processor files next to the weights). Token ids, greedy tokens and logits must agree."""

from __future__ import annotations

import shutil

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from llavakit import AutoModelForImageTextToText, AutoProcessor
from llavakit.processing.video import load_video
from tests import assets
from tests.parity import assert_close

FAMILIES = {"onevision": "tiny_llava_onevision_dir", "next_video": "tiny_llava_next_video_dir"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory, video_tokenizer_dir):
    """Weights plus transformers' tiny processor in one folder, as a llava-hf repo has them (OneVision's processor
    with the checkpoint's anyres_max_4, so a real photo takes the shrink path)."""
    folder = tmp_path_factory.mktemp(request.param)
    for path in request.getfixturevalue(FAMILIES[request.param]).iterdir():
        shutil.copy(path, folder / path.name)
    if request.param == "onevision":
        processor = assets.onevision_processor(video_tokenizer_dir, vision_aspect_ratio=assets.ONEVISION_ASPECT)
    else:
        processor = assets.next_video_processor(video_tokenizer_dir)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def media(h264_clip, photos):
    frames, _ = load_video(h264_clip, num_frames=4)  # (4, 64, 96, 3) uint8
    assert frames.shape == (4, 64, 96, 3) and frames.dtype == np.uint8
    return frames, PIL.Image.open(photos["chelsea"]).convert("RGB")


def hf_processor_with_pil_images(folder):
    """transformers' processor with the PIL image backend the files were saved with (AutoProcessor would pick
    the torchvision one, whose resize differs slightly from Pillow's, which llavakit follows)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil

    config = transformers.AutoConfig.from_pretrained(folder)
    pil = LlavaOnevisionImageProcessorPil if config.model_type == "llava_onevision" else LlavaNextImageProcessorPil
    return transformers.AutoProcessor.from_pretrained(folder, image_processor=pil.from_pretrained(folder))


def conversation(with_image: bool) -> list[dict]:
    content = [{"type": "video"}, {"type": "text", "text": "What happens in this clip?"}]
    if with_image:
        content.insert(0, {"type": "image"})
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("with_image", [False, True])
def test_processor_and_model_match_transformers(checkpoint, media, with_image):
    frames, photo = media
    hf_processor = hf_processor_with_pil_images(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    prompt = processor.apply_chat_template(conversation(with_image), add_generation_prompt=True)
    assert prompt == hf_processor.apply_chat_template(conversation(with_image), add_generation_prompt=True)
    images = [photo] if with_image else None
    ours_inputs = processor(text=prompt, images=images, videos=[frames], return_tensors="pt")
    hf_inputs = hf_processor(text=prompt, images=images, videos=[frames], return_tensors="pt")
    assert torch.equal(ours_inputs["input_ids"], hf_inputs["input_ids"])
    for key in ("pixel_values_videos", "pixel_values") if with_image else ("pixel_values_videos",):
        assert_close(ours_inputs[key], hf_inputs[key])

    hf = transformers.AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    ours = AutoModelForImageTextToText.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = hf(**hf_inputs).logits
        got = ours(**ours_inputs).logits
        theirs = hf.generate(**hf_inputs, max_new_tokens=6, do_sample=False)
    assert_close(got, expected)
    mine = ours.generate(**ours_inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(mine, theirs) and mine.shape[1] > ours_inputs["input_ids"].shape[1]
