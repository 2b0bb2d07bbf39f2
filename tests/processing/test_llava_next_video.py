"""LlavaNextVideoProcessor against transformers': video token counts, images + videos, an mp4 through the chat
template, both saved layouts, errors."""

import json

import numpy as np
import PIL.Image
import pytest
import transformers
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from llavakit import AutoProcessor, LlavaNextImageProcessor, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor
from tests import assets
from tests.processing.test_llava_onevision import assert_same

needs_torchcodec = pytest.mark.skipif(not assets.transformers_decodes_video(),
                                      reason="transformers decodes video files with torchcodec")

IMAGE, VIDEO = 32000, assets.VIDEO_TOKEN


def pil_images(processor):
    """transformers loads its torchvision image backend by default; llavakit gives the PIL backend's numbers."""
    processor.image_processor = LlavaNextImageProcessorPil.from_dict(processor.image_processor.to_dict())
    return processor


@pytest.fixture(scope="module")
def ref(video_tokenizer_dir):
    transformers.logging.set_verbosity_error()
    return assets.next_video_processor(video_tokenizer_dir)


@pytest.fixture(scope="module", params=["transformers5", "hub"])
def pair(request, ref, next_video_processor_dir, tmp_path_factory):
    """(llavakit, transformers) loaded from the same folder, in each saved layout."""
    folder = next_video_processor_dir if request.param == "transformers5" else \
        assets.save_processor_hub_layout(ref, tmp_path_factory.mktemp("next-video-hub"), video_file=True)
    return LlavaNextVideoProcessor.from_pretrained(folder), pil_images(transformers.AutoProcessor.from_pretrained(folder))


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (4, 60, 90, 3), dtype=np.uint8), rng.integers(0, 256, (4, 90, 40, 3), dtype=np.uint8)]


def test_video_token_count(pair):
    ours, _ = pair
    # 28-px frames, patch 7: a 4x4 map pooled 2x2 -> 4 tokens per frame, no CLS whatever the strategy
    assert ours.num_video_tokens(8, 28, 28) == 8 * 4
    assert ours.num_video_tokens(2, 56, 28) == 2 * (8 * 4 // 4)  # an 8x4 map pools to 4x2


def test_calls_match(pair, clips, photos):
    ours, ref = pair
    chelsea, rocket = PIL.Image.open(photos["chelsea"]), PIL.Image.open(photos["rocket"])
    cases = [dict(videos=clips[0], text="USER: <video>\nWhy is this funny? ASSISTANT:"),
             dict(videos=clips, text=["<video> a", "b <video> c"], padding=True),
             dict(images=[chelsea, rocket], videos=clips[1], text=["<image> and <video>", "<image> only"], padding=True,
                  padding_side="left"),
             dict(images=chelsea, text="<image> what?"),
             dict(videos=[PIL.Image.fromarray(frame) for frame in clips[1]], text="<video>"),
             dict(videos=clips[0], text="<video>", do_sample_frames=True, num_frames=2)]
    for case in cases:
        for return_tensors in ("pt", None):
            assert_same(ours(**case, return_tensors=return_tensors), ref(**case, return_tensors=return_tensors))
    got = ours(**cases[2], return_tensors="pt")
    assert list(got) == ["input_ids", "attention_mask", "pixel_values", "image_sizes", "pixel_values_videos"]
    assert got["pixel_values_videos"].shape == (1, 4, 3, 28, 28)
    assert (got["input_ids"][0] == VIDEO).sum() == 4 * 4
    assert (got["input_ids"][0] == IMAGE).sum() == ours.num_image_tokens(300, 451)


@needs_torchcodec
def test_chat_template_with_a_video_file(pair, h264_clip, photos):
    ours, ref = pair
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(photos["chelsea"])},
                                                 {"type": "video", "path": str(h264_clip)},
                                                 {"type": "text", "text": "Is the cat in the video?"}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    for sampling in [dict(num_frames=5), dict(fps=1.5), {}]:
        assert_same(ours.apply_chat_template(conversation, **kwargs, **sampling),
                    ref.apply_chat_template(conversation, **kwargs, **sampling))
    assert ours.apply_chat_template(conversation, add_generation_prompt=True) == \
        "USER: <image>\n<video>\nIs the cat in the video? ASSISTANT:"
    assert ours.apply_chat_template(conversation, chat_template="llava", add_generation_prompt=True) == \
        "USER: <image>\n<video>\nIs the cat in the video? ASSISTANT:"  # the built-in template agrees


@needs_torchcodec
def test_openai_video_url_parts(pair, h264_clip):
    ours, ref = pair
    openai_style = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(h264_clip)}},
                                                 {"type": "text", "text": "Describe."}]}]
    plain = [{"role": "user", "content": [{"type": "video", "url": str(h264_clip)},
                                          {"type": "text", "text": "Describe."}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", num_frames=3)
    assert_same(ours.apply_chat_template(openai_style, **kwargs), ref.apply_chat_template(plain, **kwargs))


def test_errors(pair, clips, h264_clip):
    ours, _ = pair
    with pytest.raises(ValueError, match="Found total 2 <video> tokens and 1 videos"):
        ours(videos=clips[0], text=["<video>", "<video>"], padding=True)
    with pytest.raises(ValueError, match="Found 1 <video> tokens in the text but no videos were passed"):
        ours(text="<video>")
    with pytest.raises(ValueError, match="patch_size is not set on this LlavaNextVideoProcessor"):
        LlavaNextVideoProcessor(ours.video_processor, ours.image_processor, ours.tokenizer).num_video_tokens(1, 28, 28)
    conversation = [{"role": "user", "content": [{"type": "video", "path": str(h264_clip)},
                                                 {"type": "video", "path": str(h264_clip)},
                                                 {"type": "text", "text": "x"}]}]
    with pytest.raises(ValueError, match="cannot sample num_frames=30 from a video of 25 frames"):
        ours.apply_chat_template(conversation, tokenize=True, num_frames=30)
    with pytest.raises(ValueError, match="mutually exclusive"):
        ours.apply_chat_template(conversation, tokenize=True, num_frames=3, fps=1)


def test_loaded_settings_and_round_trip(pair, clips, tmp_path):
    ours, theirs = pair
    assert (ours.patch_size, ours.vision_feature_select_strategy, ours.num_additional_image_tokens) == (7, "default", 1)
    assert (ours.video_token, ours.video_token_id) == ("<video>", VIDEO)
    assert isinstance(ours.video_processor, LlavaNextVideoVideoProcessor)
    assert isinstance(ours.image_processor, LlavaNextImageProcessor)
    assert ours.model_input_names == theirs.model_input_names
    assert ours.chat_template == theirs.chat_template == assets.NEXT_VIDEO_TEMPLATE
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "LlavaNextVideoProcessor" and config["video_token"] == "<video>"
    reloaded, hf = AutoProcessor.from_pretrained(tmp_path), pil_images(transformers.AutoProcessor.from_pretrained(tmp_path))
    assert isinstance(reloaded, LlavaNextVideoProcessor)
    case = dict(videos=clips, text=["<video> a", "b <video>"], padding=True, return_tensors="pt")
    assert_same(reloaded(**case), hf(**case))
