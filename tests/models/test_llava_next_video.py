"""LLaVA-NeXT-Video against transformers' LlavaNextVideoForConditionalGeneration on tiny random checkpoints.

The tiny CLIP tower sees 28 px frames (patch 7: 4x4 patches); the resampler pools them with stride 2 to 2x2, so a
frame gives 4 tokens. Images use the LLaVA-NeXT test pinpoints. Inputs are tensors fed directly, with
placeholder counts taken from transformers' own feature functions.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from llavakit import AutoConfig, AutoModel, AutoModelForImageTextToText, anyres
from llavakit.config import LlavaNextVideoConfig
from llavakit.models.llava_next_video import (LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel,
                                              LlavaNextVideoPooler)
from tests import assets
from tests.parity import IMAGE, assert_close, generate_both, left_pad, run_both
from tests.reference import image_features, video_features

VIDEO = assets.VIDEO
PINPOINTS = assets.NEXT_PINPOINTS


@pytest.fixture(scope="module")
def pair(tiny_llava_next_video_dir):
    hf = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(tiny_llava_next_video_dir).eval()
    return hf, LlavaNextVideoForConditionalGeneration.from_pretrained(tiny_llava_next_video_dir)


def images(sizes: list[tuple[int, int]], seed: int = 0) -> dict:
    """pixel_values (n, max_crops, 3, 28, 28) padded like the processor's, and image_sizes (n, 2)."""
    counts = [anyres.image_size_to_num_patches(s, PINPOINTS, 28) for s in sizes]
    gen = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(len(sizes), max(counts), 3, 28, 28, generator=gen),
            "image_sizes": torch.tensor(sizes)}


def videos(n: int, frames: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, frames, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def image_lengths(hf, inputs: dict) -> list[int]:
    with torch.no_grad():
        out = getattr(hf, "model", hf).get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    return [f.shape[0] for f in out.pooler_output]


def prompt(parts: list, seed: int = 0) -> list[int]:
    """BOS, then for each part: ("image", n) / ("video", n) placeholders or an int count of random text tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = [1]
    for part in parts:
        if isinstance(part, int):
            ids += torch.randint(3, 31000, (part,), generator=gen).tolist()
        else:
            ids += [IMAGE if part[0] == "image" else VIDEO] * part[1]
    return ids


def padded(prompts: list[list[int]], **media) -> dict:
    ids, mask, positions = left_pad(prompts)
    return dict(input_ids=ids, attention_mask=mask, position_ids=positions, **media)


# ---- config and layout --------------------------------------------------------------------------------

def test_config_and_state_dict(pair):
    hf, ours = pair
    config = ours.config
    assert type(config) is LlavaNextVideoConfig and config.model_type == "llava_next_video"
    assert (config.image_token_index, config.video_token_index) == (IMAGE, VIDEO)
    assert (config.spatial_pool_mode, config.spatial_pool_stride) == ("average", 2)
    assert isinstance(ours.vision_resampler.pool, torch.nn.AvgPool2d)
    keys = set(ours.state_dict())
    assert {"image_newline", "vision_tower.vision_model.embeddings.class_embedding",
            "language_model.lm_head.weight"} <= keys
    assert torch.equal(ours.image_newline, hf.model.image_newline)


def test_auto_classes_dispatch_on_next_video(tiny_llava_next_video_dir):
    assert type(AutoConfig.from_pretrained(tiny_llava_next_video_dir)) is LlavaNextVideoConfig
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_next_video_dir)
    assert type(model) is LlavaNextVideoForConditionalGeneration
    assert type(AutoModel.from_pretrained(tiny_llava_next_video_dir)) is LlavaNextVideoModel


def test_config_defaults_match_transformers():
    ours, theirs = LlavaNextVideoConfig(), transformers.LlavaNextVideoConfig()
    for name in ("image_token_index", "video_token_index", "spatial_pool_mode", "spatial_pool_stride",
                 "vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints",
                 "video_seq_length", "image_seq_length", "tie_word_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.vision_config.image_size == theirs.vision_config.image_size == 336
    assert ours.text_config.model_type == theirs.text_config.model_type == "llama"


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="spatial_pool_mode must be one of"):
        LlavaNextVideoConfig(spatial_pool_mode="mean")
    with pytest.raises(ValueError, match="spatial_pool_stride must be a positive integer"):
        LlavaNextVideoConfig(spatial_pool_stride=0)


# ---- videos -------------------------------------------------------------------------------------------

def test_video_features_match_transformers(pair):
    hf, ours = pair
    clip = videos(2, frames=3)
    with torch.no_grad():
        features = ours.get_video_features(clip).pooler_output
        theirs = hf.model.get_video_features(clip).pooler_output
    assert features.shape == (2, 3 * 4, 64)  # 4x4 patches pooled to 2x2 per frame, no newline
    assert_close(features, theirs)


def test_one_video_matches_transformers(pair):
    hf, ours = pair
    clip = videos(1, frames=4)
    ids = torch.tensor([prompt([3, ("video", 16), 5])])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values_videos=clip, output_hidden_states=True)
    assert_close(b.logits, a.logits)
    assert b.video_outputs.pooler_output.shape == (1, 16, 64)
    assert_close(video_features(b), video_features(a))
    for x, y in zip(b.hidden_states, a.hidden_states, strict=True):
        assert_close(x, y)


@pytest.mark.parametrize("size", [(30, 70), (90, 80)])
def test_one_image_matches_transformers(pair, size):
    hf, ours = pair
    inputs = images([size])
    n, = image_lengths(hf, inputs)
    a, b = run_both(hf, ours, input_ids=torch.tensor([prompt([2, ("image", n), 3])]), **inputs)
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))


def test_image_and_video_in_one_prompt_match_transformers(pair):
    hf, ours = pair
    inputs = images([(30, 70)])
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([1, ("image", image_lengths(hf, inputs)[0]), 2, ("video", 8), 2])])
    a, b = run_both(hf, ours, input_ids=ids, **inputs, pixel_values_videos=clip)
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))
    assert_close(video_features(b), video_features(a))


def test_left_padded_batch_of_videos_matches_transformers(pair):
    hf, ours = pair
    clip = videos(2, frames=3)
    batch = padded([prompt([6, ("video", 12), 4]), prompt([1, ("video", 12), 1], seed=3)], pixel_values_videos=clip)
    a, b = run_both(hf, ours, **batch)
    assert_close(b.logits, a.logits)


def test_loss_matches_transformers(pair):
    hf, ours = pair
    clip = videos(2, frames=2)
    batch = padded([prompt([2, ("video", 8), 6]), prompt([1, ("video", 8), 3], seed=2)], pixel_values_videos=clip)
    ids = batch["input_ids"]
    labels = ids.masked_fill((ids == VIDEO) | (batch["attention_mask"] == 0), -100)
    a, b = run_both(hf, ours, **batch, labels=labels)
    assert_close(b.loss, a.loss)


def test_inputs_embeds_find_the_video_positions(pair):
    hf, ours = pair
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("video", 8), 2])])
    embeds = ours.get_input_embeddings()(ids)
    a, b = run_both(hf, ours, inputs_embeds=embeds, pixel_values_videos=clip)
    assert_close(b.logits, a.logits)


@pytest.mark.parametrize("mode", ["max", "conv"])
def test_other_pool_modes_match_transformers(tmp_path, mode):
    path = assets.build_tiny_llava_next_video(tmp_path, seed=4, spatial_pool_mode=mode)
    hf = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(path).eval()
    ours = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    if mode == "conv":
        assert torch.equal(ours.vision_resampler.pool.weight, hf.model.vision_resampler.pool.weight)
    clip = videos(1, frames=2)
    a, b = run_both(hf, ours, input_ids=torch.tensor([prompt([2, ("video", 8), 2])]), pixel_values_videos=clip)
    assert_close(b.logits, a.logits)


def test_stride_and_feature_layer_list_match_transformers(tmp_path):
    path = assets.build_tiny_llava_next_video(tmp_path, seed=5, spatial_pool_stride=4,
                                              vision_feature_layer=[-3, -1])
    hf = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(path).eval()
    ours = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    clip = videos(1, frames=3)
    a, b = run_both(hf, ours, input_ids=torch.tensor([prompt([2, ("video", 3), 2])]), pixel_values_videos=clip)
    assert_close(b.logits, a.logits)


def test_base_model_matches_transformers(tiny_llava_next_video_dir):
    hf = transformers.LlavaNextVideoModel.from_pretrained(tiny_llava_next_video_dir).eval()
    ours = LlavaNextVideoModel.from_pretrained(tiny_llava_next_video_dir)
    clip = videos(1, frames=2)
    a, b = run_both(hf, ours, input_ids=torch.tensor([prompt([2, ("video", 8), 2])]), pixel_values_videos=clip)
    assert_close(b.last_hidden_state, a.last_hidden_state)


def test_pooler_rejects_a_grid_with_the_cls_token(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="do not form a square patch grid"):
        ours.get_video_features(videos(1), vision_feature_select_strategy="full")
    assert isinstance(ours.vision_resampler, LlavaNextVideoPooler)


# ---- checkpoints ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["hub", "in_memory"])
def test_both_weight_layouts_load(tmp_path, layout):
    """With the conv pooler (the only one with weights): llava-hf names and transformers-5 in-memory names."""
    src = assets.build_tiny_llava_next_video(tmp_path / "src", seed=6, spatial_pool_mode="conv")
    hf = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(src).eval()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.vision_resampler.pool.weight" in state
    if layout == "hub":
        rules = [("model.language_model.", "language_model.model."),
                 ("model.vision_tower.", "vision_tower.vision_model."), ("model.", ""),
                 ("lm_head.", "language_model.lm_head.")]
        state = {next(new + k[len(old):] for old, new in rules + [("", "")] if k.startswith(old)): v
                 for k, v in state.items()}
        assert "vision_resampler.pool.weight" in state and "language_model.model.norm.weight" in state
    dst = tmp_path / "dst"
    dst.mkdir()
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    ours = LlavaNextVideoForConditionalGeneration.from_pretrained(dst)
    clip = videos(1, frames=2)
    a, b = run_both(hf, ours, input_ids=torch.tensor([prompt([2, ("video", 8), 2])]), pixel_values_videos=clip)
    assert_close(b.logits, a.logits)


def test_save_pretrained_is_read_back_by_transformers(pair, tmp_path):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llava_next_video" and saved["video_token_index"] == VIDEO
    reloaded = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(tmp_path).eval()
    clip = videos(1, frames=2)
    a, b = run_both(reloaded, hf, input_ids=torch.tensor([prompt([2, ("video", 8), 2])]), pixel_values_videos=clip)
    assert_close(a.logits, b.logits, atol=0)


# ---- generate -----------------------------------------------------------------------------------------

def test_greedy_generate_video_matches_transformers(pair):
    hf, ours = pair
    generate_both(hf, ours, dict(input_ids=torch.tensor([prompt([2, ("video", 12), 3])]),
                                 pixel_values_videos=videos(1, frames=3)))


def test_greedy_generate_left_padded_videos_and_images_matches_transformers(pair):
    hf, ours = pair
    inputs = images([(90, 80), (30, 70)])
    n1, n2 = image_lengths(hf, inputs)
    batch = padded([prompt([1, ("video", 8), 7, ("image", n1)]), prompt([2, ("image", n2), ("video", 8), 1], seed=4)],
                   **inputs, pixel_values_videos=videos(2, frames=2, seed=5))
    del batch["position_ids"]
    generate_both(hf, ours, batch)


# ---- errors -------------------------------------------------------------------------------------------

def test_placeholder_mismatches_are_clear_errors(pair):
    _, ours = pair
    clip = videos(1, frames=2)
    with pytest.raises(ValueError, match="Video features and video tokens do not match: tokens: 16, features: 8"):
        ours(input_ids=torch.tensor([prompt([1, ("video", 8), 1, ("video", 8)])]), pixel_values_videos=clip)
    with pytest.raises(ValueError, match="Video features and video tokens do not match: tokens: 4, features: 8"):
        ours(input_ids=torch.tensor([prompt([1, ("video", 4)])]), pixel_values_videos=clip)
    with pytest.raises(ValueError, match=r"pixel_values_videos must be \(num_videos, frames, 3, H, W\)"):
        ours(input_ids=torch.tensor([prompt([1, ("video", 8)])]), pixel_values_videos=clip[0])


def test_frames_of_the_wrong_shape_are_clear_errors(pair):
    _, ours = pair
    ids = torch.tensor([prompt([1, ("video", 8)])])
    with pytest.raises(ValueError, match="0 frames"):
        ours(input_ids=ids, pixel_values_videos=torch.randn(1, 0, 3, 28, 28))
    with pytest.raises(ValueError, match=r"Input image size \(32\*32\) doesn't match model \(28\*28\)"):
        ours(input_ids=ids, pixel_values_videos=torch.randn(1, 2, 3, 32, 32))
    with torch.no_grad():  # an empty video batch is no video, as an empty image batch is no image
        out = ours(input_ids=torch.tensor([[1, 400]]), pixel_values_videos=torch.randn(0, 2, 3, 28, 28))
    assert out.video_outputs is None


def test_bfloat16_matches_transformers(tiny_llava_next_video_dir):
    hf = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(tiny_llava_next_video_dir,
                                                                            dtype=torch.bfloat16).eval()
    ours = LlavaNextVideoForConditionalGeneration.from_pretrained(tiny_llava_next_video_dir, dtype=torch.bfloat16)
    clip = videos(1, frames=3).to(torch.bfloat16)
    a, b = run_both(hf, ours, input_ids=torch.tensor([prompt([2, ("video", 12), 2])]), pixel_values_videos=clip)
    assert b.logits.dtype == torch.bfloat16
    assert_close(b.logits.float(), a.logits.float(), atol=1e-3)
