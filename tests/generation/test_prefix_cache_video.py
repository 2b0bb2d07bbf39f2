"""The prefix cache with videos (tiny OneVision): a second generate with the same video reuses its KV prefix or
its cached features, so the vision tower does not run again, and gives the same tokens as a fresh call."""

import pytest
import torch
from PIL import Image

from llavakit import AutoProcessor, LlavaOnevisionForConditionalGeneration
from llavakit.processing.video import load_video
from tests import assets

OPTS = dict(max_new_tokens=5, min_new_tokens=5, return_dict_in_generate=True, output_scores=True, do_sample=False)


@pytest.fixture(scope="module")
def processor(video_tokenizer_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onevision-processor-aspect")
    assets.onevision_processor(video_tokenizer_dir, vision_aspect_ratio=assets.ONEVISION_ASPECT).save_pretrained(folder)
    return AutoProcessor.from_pretrained(folder)


@pytest.fixture
def model(tiny_llava_onevision_dir):
    return LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir).eval()


@pytest.fixture(scope="module")
def clips(h264_clip):
    return {n: load_video(h264_clip, num_frames=n)[0] for n in (4, 3)}  # each (n, H, W, 3)


class TowerCalls:
    """Counts vision encodings: the projector's forward calls (images and videos both go through it)."""

    def __init__(self, model):
        self.n = 0
        model.multi_modal_projector.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def prompt(processor, question, video=None, image=None):
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "video"}] + \
        [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return dict(processor(videos=[video], images=[image] if image is not None else None, text=text,
                          return_tensors="pt"))


def assert_same(a, b, exact=False):
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.scores, b.scores):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_same_video_twice_skips_the_tower(model, processor, clips):
    calls = TowerCalls(model)
    x = prompt(processor, "What happens in this clip?", clips[4])
    assert "pixel_values_videos" in x
    first = model.generate(**x, **OPTS, prefix_cache=True)
    assert calls.n == 1
    second = model.generate(**x, **OPTS, prefix_cache=True)
    assert calls.n == 1 and model.prefix_cache.hits >= 1  # the video tokens came from the reused KV
    assert torch.equal(first.sequences, second.sequences)
    fresh = model.generate(**x, **OPTS, prefix_cache=False)
    assert calls.n == 2
    assert_same(second, fresh)


def test_video_features_cache_alone_is_bit_identical(model, processor, clips):
    """Without KV reuse, another question about the same video takes its features from the feature cache."""
    model.prefix_cache.max_entries = 0
    calls = TowerCalls(model)
    model.generate(**prompt(processor, "What happens in this clip?", clips[4]), **OPTS, prefix_cache=True)
    other = prompt(processor, "Describe the colours.", clips[4])
    cached = model.generate(**other, **OPTS, prefix_cache=True)
    assert calls.n == 1 and model.prefix_cache.features.hits == 1 and len(model.prefix_cache) == 0
    fresh = model.generate(**other, **OPTS, prefix_cache=False)
    assert calls.n == 2
    assert_same(cached, fresh, exact=True)


def test_another_video_is_encoded_again(model, processor, clips):
    calls = TowerCalls(model)
    model.generate(**prompt(processor, "What happens?", clips[4]), **OPTS, prefix_cache=True)
    other = prompt(processor, "What happens?", clips[3])
    cached = model.generate(**other, **OPTS, prefix_cache=True)
    assert calls.n == 2  # different frames: a different key, so the tower ran
    assert_same(cached, model.generate(**other, **OPTS, prefix_cache=False))


def test_image_and_video_features_both_reused(model, processor, clips, photos):
    model.prefix_cache.max_entries = 0
    calls = TowerCalls(model)
    image = Image.open(photos["chelsea"]).convert("RGB")
    model.generate(**prompt(processor, "Compare them.", clips[4], image), **OPTS, prefix_cache=True)
    ran = calls.n
    other = prompt(processor, "What differs?", clips[4], image)
    cached = model.generate(**other, **OPTS, prefix_cache=True)
    assert calls.n == ran and model.prefix_cache.features.hits == 2  # image and video features from the cache
    assert_same(cached, model.generate(**other, **OPTS, prefix_cache=False), exact=True)
