"""LlavaOnevisionProcessor against transformers': token counts, images + videos, chat templates with an mp4,
both saved layouts, errors."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from llavakit import AutoProcessor, AutoTokenizer, LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, \
    LlavaOnevisionVideoProcessor, LlavaProcessor
from tests import assets

needs_torchcodec = pytest.mark.skipif(not assets.transformers_decodes_video(),
                                      reason="transformers decodes video files with torchcodec")

IMAGE, VIDEO = 32000, assets.VIDEO_TOKEN


def assert_same(got, expected):
    """Same keys in the same order and identical values (tensors, lists of tensors or arrays, plain lists)."""
    assert list(got) == list(expected)
    for key, value in expected.items():
        ours = got[key]
        if isinstance(value, torch.Tensor):
            assert ours.dtype == value.dtype and torch.equal(ours, value), key
        elif isinstance(value, list) and value and isinstance(value[0], (torch.Tensor, np.ndarray)):
            assert len(ours) == len(value), key
            for a, b in zip(ours, value):
                same = torch.equal(a, b) if isinstance(b, torch.Tensor) else np.array_equal(a, b)
                assert same and a.dtype == b.dtype, key
        else:
            assert [list(map(int, v)) if hasattr(v, "__len__") else v for v in ours] == \
                [list(map(int, v)) if hasattr(v, "__len__") else v for v in value], key


@pytest.fixture(scope="module")
def ref(video_tokenizer_dir):
    transformers.logging.set_verbosity_error()
    return assets.onevision_processor(video_tokenizer_dir)


@pytest.fixture(scope="module", params=["transformers5", "hub-video-file", "hub-preprocessor-only"])
def pair(request, ref, onevision_processor_dir, tmp_path_factory):
    """(llavakit, transformers) loaded from the same folder, in each saved layout."""
    if request.param == "transformers5":
        folder = onevision_processor_dir
    else:
        folder = assets.save_processor_hub_layout(ref, tmp_path_factory.mktemp("ov-hub"),
                                                  video_file=request.param == "hub-video-file")
    return LlavaOnevisionProcessor.from_pretrained(folder), pil_images(transformers.AutoProcessor.from_pretrained(folder))


def pil_images(processor):
    """transformers loads its torchvision image backend by default; llavakit gives the PIL backend's numbers."""
    processor.image_processor = LlavaOnevisionImageProcessorPil.from_dict(processor.image_processor.to_dict())
    return processor


@pytest.fixture(scope="module")
def images(photos):
    opened = {name: PIL.Image.open(path) for name, path in photos.items()}
    return {**opened, "strip": opened["astronaut"].crop((0, 0, 512, 30)), "1x1": PIL.Image.new("RGB", (1, 1))}


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (4, 60, 90, 3), dtype=np.uint8), rng.integers(0, 256, (6, 40, 30, 3), dtype=np.uint8)]


# ---- token counts ---------------------------------------------------------------------------------
SIDES = [1, 7, 20, 99, 224, 300, 384, 385, 480, 640, 768, 1000, 1080, 1920, 2304, 4000]


@pytest.mark.parametrize("strategy", ["full", "default"])
def test_token_counts_match_transformers(video_tokenizer_dir, strategy):
    """At the real size (384-px views, 729 patches, 6x6 pinpoints) and the tiny one, over many image sizes."""
    tokenizer = AutoTokenizer.from_pretrained(video_tokenizer_dir)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(video_tokenizer_dir)
    for size, tokens, pinpoints in ((384, 729, None), (28, 16, assets.OV_PINPOINTS)):
        settings = dict(size={"height": size, "width": size}, image_grid_pinpoints=pinpoints) if pinpoints else {}
        ours = LlavaOnevisionProcessor(LlavaOnevisionImageProcessor(**settings), tokenizer, num_image_tokens=tokens,
                                       vision_feature_select_strategy=strategy)
        ref = transformers.LlavaOnevisionProcessor(LlavaOnevisionImageProcessorPil(**settings), hf_tokenizer,
                                                   transformers.LlavaOnevisionVideoProcessor(),
                                                   num_image_tokens=tokens, vision_feature_select_strategy=strategy)
        drop = 1 if strategy == "default" else 0
        for height in SIDES:
            for width in SIDES:
                expected = ref._get_number_of_features(height, width, size, size) - drop
                assert ours.num_image_tokens_for(height, width) == expected, (height, width, size)
        assert ours.num_image_tokens_for(5, 5, multi_image=True) == tokens + 1 - drop
        video = ref._get_num_multimodal_tokens(video_sizes=[(8, 384, 384), (1, 384, 384)])["num_video_tokens"]
        assert [ours.num_video_tokens(8), ours.num_video_tokens(1)] == video
    assert ours.num_video_tokens(8) == 8 * 2 * 2 + 1  # the tiny one: 4x4 patches pool to 2x2, + a newline


def test_worked_examples(video_tokenizer_dir):
    real = LlavaOnevisionProcessor(LlavaOnevisionImageProcessor(), AutoTokenizer.from_pretrained(video_tokenizer_dir),
                                   num_image_tokens=729, vision_feature_select_strategy="full")
    assert real.num_video_tokens(8) == 8 * 196 + 1  # 27x27 patches pool to 14x14 per frame, + one newline
    # 384x384: the 1x1 grid, 27x27 map + 27 newlines + 729 base
    assert real.num_image_tokens_for(384, 384) == 27 * 27 + 27 + 729
    # 2304x2304: a 6x6 grid is 162x162 patches, shrunk by ratio 2 (> 1.1) to 81x81, + 81 newlines + 729 base
    assert real.num_image_tokens_for(2304, 2304) == 81 * 81 + 81 + 729


# ---- calls --------------------------------------------------------------------------------------
def test_images_match(pair, images):
    ours, ref = pair
    cases = [dict(images=images["chelsea"], text="<image>\nWhat is this?"),
             dict(images=[[images["astronaut"], images["strip"]], [images["1x1"]]],
                  text=["Compare <image> and <image>.", "<image> describe"], padding=True),
             dict(images=[images["rocket"], images["camera"], images["horse"]],
                  text=["<image> one", "<image> two", "three <image>"], padding=True, padding_side="left")]
    for case in cases:
        for return_tensors in ("pt", None):
            assert_same(ours(**case, return_tensors=return_tensors), ref(**case, return_tensors=return_tensors))
    got = ours(**cases[1], return_tensors="pt")
    assert list(got) == ["input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"]
    # the 2-image sample: each image is its base view + a newline (16 + 1); the single image gets anyres tokens
    assert (got["input_ids"][0] == IMAGE).sum() == 2 * 17
    assert (got["input_ids"][1] == IMAGE).sum() == ours.num_image_tokens_for(1, 1)


def test_videos_match(pair, clips, images):
    ours, ref = pair
    cases = [dict(videos=clips[0], text="<video>\nWhat happens?"),
             dict(videos=clips, text=["<video> a", "b <video>"], padding=True),
             dict(images=[[images["chelsea"]], [images["rocket"], images["coffee"]]], videos=clips,
                  text=["<image> then <video>", "<video> <image><image>"], padding=True),
             dict(videos=[PIL.Image.fromarray(frame) for frame in clips[1]], text="<video>")]
    for case in cases:
        for return_tensors in (("pt", None) if case["videos"] is not clips else (None,)):
            assert_same(ours(**case, return_tensors=return_tensors), ref(**case, return_tensors=return_tensors))
    with pytest.raises(ValueError, match="'pixel_values_videos': its items have different shapes"):
        ours(**cases[1], return_tensors="pt")  # 4 and 6 frames (transformers raises too)
    same_length = dict(videos=[clips[0], clips[1][:4]], text=["<video> a", "b <video>"], padding=True,
                       return_tensors="pt")
    assert_same(ours(**same_length), ref(**same_length))
    got = ours(**cases[1], return_tensors=None)
    assert [v.shape for v in got["pixel_values_videos"]] == [(4, 3, 28, 28), (6, 3, 28, 28)]
    assert [row.count(VIDEO) for row in got["input_ids"]] == [4 * 4 + 1, 6 * 4 + 1]
    sampled = dict(videos=clips[1], text="<video>", do_sample_frames=True, num_frames=3, return_tensors="pt")
    assert_same(ours(**sampled), ref(**sampled))


def test_text_only_and_media_only(pair, clips, images):
    ours, ref = pair
    assert_same(ours(text="hello there", return_tensors="pt"), ref(text="hello there", return_tensors="pt"))
    assert_same(ours(videos=clips[0], return_tensors="pt"), ref(videos=clips[0], return_tensors="pt"))
    assert_same(ours(images=images["rocket"], return_tensors="pt"), ref(images=images["rocket"], return_tensors="pt"))


@needs_torchcodec
def test_chat_template_with_a_video_file(pair, h264_clip, photos):
    ours, ref = pair
    conversation = [{"role": "user", "content": [{"type": "video", "path": str(h264_clip)},
                                                 {"type": "text", "text": "What happens in the video?"}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    for sampling in [dict(num_frames=8), dict(fps=2), {}]:
        got = ours.apply_chat_template(conversation, **kwargs, **sampling)
        assert_same(got, ref.apply_chat_template(conversation, **kwargs, **sampling))
    assert got["pixel_values_videos"].shape == (1, 25, 3, 28, 28)  # no sampling: every frame
    text = ours.apply_chat_template(conversation, add_generation_prompt=True)
    assert text == "<|im_start|>user <video>\nWhat happens in the video?<|im_end|><|im_start|>assistant\n"
    # a batch of two conversations, images and a video together; the second has two images
    batch = [[{"role": "user", "content": [{"type": "image", "path": str(photos["chelsea"])},
                                           {"type": "video", "path": str(h264_clip)},
                                           {"type": "text", "text": "Same animal?"}]}],
             [{"role": "user", "content": [{"type": "image", "path": str(photos["rocket"])},
                                           {"type": "image", "path": str(photos["coffee"])},
                                           {"type": "text", "text": "Compare."}]}]]
    got = ours.apply_chat_template(batch, **kwargs, num_frames=4, padding=True)
    assert_same(got, ref.apply_chat_template(batch, **kwargs, processor_kwargs=dict(num_frames=4, padding=True)))
    assert got["batch_num_images"].tolist() == [1, 2]


@needs_torchcodec
def test_assistant_mask_with_videos(pair, h264_clip):
    ours, ref = pair
    conversation = [{"role": "user", "content": [{"type": "video", "path": str(h264_clip)},
                                                 {"type": "text", "text": "What moves?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "The camera pans."}]}]
    kwargs = dict(tokenize=True, return_dict=True, return_assistant_tokens_mask=True, num_frames=2)
    got, expected = ours.apply_chat_template(conversation, **kwargs), ref.apply_chat_template(conversation, **kwargs)
    assert [list(map(int, m)) for m in got["assistant_masks"]] == \
        [list(map(int, m)) for m in expected["assistant_masks"]]
    mask = got["assistant_masks"][0]
    answer = [t for t, m in zip(got["input_ids"][0], mask) if m]
    # the test tokenizer has no <|im_end|> token, so the answer's last token is ".<"
    assert ours.decode(answer).strip().startswith("The camera pans.")


# ---- errors -------------------------------------------------------------------------------------
def test_errors(pair, clips, images, tiny_llava_dir):
    ours, _ = pair
    with pytest.raises(ValueError, match="Found total 2 <video> tokens and 1 videos"):
        ours(videos=clips[0], text="<video> and <video>")
    with pytest.raises(ValueError, match="Found total 1 <video> tokens and 2 videos"):
        ours(videos=clips, text="<video>")
    with pytest.raises(ValueError, match="Found 1 <video> tokens in the text but no videos were passed"):
        ours(text="<video>")
    with pytest.raises(ValueError, match="Found total 1 <image> tokens and 2 images"):
        ours(images=[images["rocket"], images["coffee"]], text="<image>")
    with pytest.raises(ValueError, match="max_length=10 is too small for the video tokens"):
        ours(videos=clips[0], text="<video> x", truncation=True, max_length=10)
    with pytest.raises(ValueError, match="num_image_tokens is not set"):
        LlavaOnevisionProcessor(ours.image_processor, ours.tokenizer).num_video_tokens(4)
    with pytest.raises(ValueError, match="num_image_tokens must be a positive square int"):
        LlavaOnevisionProcessor(ours.image_processor, ours.tokenizer, num_image_tokens=730)
    with pytest.raises(ValueError, match="vision_aspect_ratio must look like 'anyres_max_9'"):
        LlavaOnevisionProcessor(ours.image_processor, ours.tokenizer, num_image_tokens=16, vision_aspect_ratio="max9")
    with pytest.raises(ValueError, match="the video token '<clip>' is not in the tokenizer's vocabulary"):
        LlavaOnevisionProcessor(ours.image_processor, ours.tokenizer, num_image_tokens=16, video_token="<clip>")
    llava = LlavaProcessor.from_pretrained(tiny_llava_dir)
    with pytest.raises(ValueError, match="LlavaProcessor does not take videos"):
        llava(videos=clips[0], text="hi")
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "x"}]}]
    with pytest.raises(ValueError, match='a {"type": "video"} part needs a "video", "url" or "path"'):
        ours.apply_chat_template(conversation, tokenize=True)


# ---- loading and saving -------------------------------------------------------------------------
def test_loaded_settings(pair, ref):
    ours, theirs = pair
    assert (ours.num_image_tokens, ours.vision_feature_select_strategy, ours.vision_aspect_ratio) == \
        (16, "full", "anyres_max_9")
    assert (ours.image_token, ours.image_token_id, ours.video_token, ours.video_token_id) == \
        ("<image>", IMAGE, "<video>", VIDEO)
    assert isinstance(ours.video_processor, LlavaOnevisionVideoProcessor)
    assert ours.video_processor.size == {"height": 28, "width": 28}
    assert ours.chat_template == theirs.chat_template == assets.ONEVISION_TEMPLATE
    assert ours.model_input_names == theirs.model_input_names


def test_save_and_reload(pair, clips, images, tmp_path):
    ours, _ = pair
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "LlavaOnevisionProcessor"
    assert json.loads((tmp_path / "video_preprocessor_config.json").read_text())["video_processor_type"] == \
        "LlavaOnevisionVideoProcessor"
    theirs, again = transformers.AutoProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "LlavaOnevisionProcessor" and isinstance(again, LlavaOnevisionProcessor)
    case = dict(images=[[images["rocket"]], []], videos=[[], [clips[1]]], text=["<image> a", "b <video>"],
                padding=True, return_tensors="pt")
    assert_same(again(**case), ours(**case))
    assert_same(again(**case), pil_images(theirs)(**case))


def test_auto_processor_by_model_type(pair, tmp_path):
    ours, _ = pair
    ours.tokenizer.save_pretrained(tmp_path)
    ours.image_processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("processor_class", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    loaded = AutoProcessor.from_pretrained(tmp_path, num_image_tokens=16)
    assert isinstance(loaded, LlavaOnevisionProcessor)
    assert isinstance(loaded.video_processor, LlavaOnevisionVideoProcessor)  # from preprocessor_config.json
    assert loaded.num_video_tokens(3) == 3 * 4 + 1
