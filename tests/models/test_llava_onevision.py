"""LLaVA-OneVision against transformers' LlavaOnevisionForConditionalGeneration on a tiny random checkpoint.

The tiny SigLIP tower sees 28 px crops (patch 7: a 4x4 grid, 16 tokens per crop); pinpoints go up to 3x3 crops
and the checkpoint uses anyres_max_4, so a 3x3 grid (12x12 features) is shrunk while a 1x2 grid is not. Inputs
are tensors fed directly, with placeholder counts taken from transformers' own feature functions.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from llavakit import AutoConfig, AutoModel, AutoModelForImageTextToText, LlavaForConditionalGeneration, anyres
from llavakit.config import LlavaOnevisionConfig
from llavakit.models.llava_onevision import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel, pool_frames
from tests import assets
from tests.parity import IMAGE, PAD, assert_close, generate_both, left_pad, run_both
from tests.reference import image_features, video_features

VIDEO = assets.VIDEO
PINPOINTS = assets.ONEVISION_PINPOINTS
WIDE, SQUARE, SMALL = (30, 70), (90, 80), (20, 20)  # 1x3 grid (no shrink), 3x3 grid (shrunk), a single crop


@pytest.fixture(scope="module")
def pair(tiny_llava_onevision_dir):
    hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir).eval()
    return hf, LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir)


def images(sizes: list[tuple[int, int]], seed: int = 0) -> dict:
    """pixel_values (n, max_crops, 3, 28, 28) padded like the processor's, and image_sizes (n, 2)."""
    counts = [anyres.image_size_to_num_patches(s, PINPOINTS, 28) for s in sizes]
    gen = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(len(sizes), max(counts), 3, 28, 28, generator=gen),
            "image_sizes": torch.tensor(sizes)}


def videos(n: int, frames: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, frames, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def image_lengths(hf, inputs: dict, batch_num_images=None) -> list[int]:
    """Tokens of each image, as transformers packs them (hf: its generation or base model)."""
    with torch.no_grad():
        out = getattr(hf, "model", hf).get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                          batch_num_images=batch_num_images)
    return [f.shape[0] for f in out.pooler_output]


def video_length(hf, pixel_values_videos: torch.Tensor) -> int:
    """Tokens of one video, as transformers computes them."""
    with torch.no_grad():
        return getattr(hf, "model", hf).get_video_features(pixel_values_videos[:1]).pooler_output.shape[1]


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

def test_config_reads_the_tiny_checkpoint(pair):
    hf, ours = pair
    config = ours.config
    assert type(config) is LlavaOnevisionConfig and config.model_type == "llava_onevision"
    assert config.vision_config.model_type == "siglip_vision_model" and config.text_config.model_type == "qwen2"
    assert (config.image_token_index, config.video_token_index, config.video_token_id) == (IMAGE, VIDEO, VIDEO)
    assert config.vision_aspect_ratio == "anyres_max_4" and config.image_grid_pinpoints == PINPOINTS
    assert (config.vision_feature_select_strategy, config.vision_feature_layer) == ("full", -1)
    keys = set(ours.state_dict())
    assert {"image_newline", "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "language_model.lm_head.weight", "multi_modal_projector.linear_1.weight"} <= keys
    assert not any("resampler" in k for k in keys)
    assert torch.equal(ours.image_newline, hf.model.image_newline)


def test_auto_classes_dispatch_on_onevision(tiny_llava_onevision_dir):
    assert type(AutoConfig.from_pretrained(tiny_llava_onevision_dir)) is LlavaOnevisionConfig
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_onevision_dir)
    assert type(model) is LlavaOnevisionForConditionalGeneration
    assert type(AutoModel.from_pretrained(tiny_llava_onevision_dir)) is LlavaOnevisionModel


# ---- images -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [WIDE, SQUARE, SMALL])
def test_one_image_matches_transformers(pair, size):
    hf, ours = pair
    inputs = images([size])
    n, = image_lengths(hf, inputs)
    ids = torch.tensor([prompt([3, ("image", n), 4])])
    a, b = run_both(hf, ours, input_ids=ids, **inputs, output_hidden_states=True)
    assert_close(b.logits, a.logits)
    assert image_features(b).shape == (n, 64)
    assert_close(image_features(b), image_features(a))
    for x, y in zip(b.hidden_states, a.hidden_states, strict=True):
        assert_close(x, y)


def test_many_tiles_are_shrunk_to_the_anyres_max(pair):
    """A 3x3 grid unpads to 12x12 = 144 features; anyres_max_4 allows 64, so it is shrunk by 1.5 to 8x8."""
    hf, ours = pair
    inputs = images([(80, 80)])
    assert anyres.get_anyres_image_grid_shape((80, 80), PINPOINTS, 28) == (3, 3)
    with torch.no_grad():
        packed, = ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        unshrunk, = ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                            vision_aspect_ratio="anyres_max_9").pooler_output
    assert packed.shape[0] == 16 + 8 * (8 + 1) and unshrunk.shape[0] == 16 + 12 * (12 + 1)
    newlines = packed[16:].view(8, 9, 64)[:, -1]  # the newline still ends every (shrunk) row
    assert torch.equal(newlines, ours.image_newline.expand(8, 64))
    assert image_lengths(hf, inputs) == [packed.shape[0]]
    assert_close(packed, image_features(run_both(hf, ours, input_ids=torch.tensor(
        [prompt([2, ("image", packed.shape[0])])]), **inputs)[0]))


def test_multi_image_prompt_reads_base_views_and_matches_transformers(pair):
    """batch_num_images [2, 1]: the first prompt's two images give base view + newline each; the third is tiled."""
    hf, ours = pair
    inputs = images([SQUARE, WIDE, SQUARE])
    batch_num_images = torch.tensor([2, 1])
    lengths = image_lengths(hf, inputs, batch_num_images)
    assert lengths[:2] == [17, 17] and lengths[2] > 17
    prompts = [prompt([2, ("image", 17), 3, ("image", 17), 2]), prompt([5, ("image", lengths[2]), 1], seed=1)]
    inputs = padded(prompts, **inputs, batch_num_images=batch_num_images)
    a, b = run_both(hf, ours, **inputs)
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))
    with torch.no_grad():
        first, second = ours.get_image_features(inputs["pixel_values"][:2], inputs["image_sizes"][:2],
                                                batch_num_images=[2]).pooler_output
    assert torch.equal(first[-1], ours.image_newline) and first.shape == (17, 64) == second.shape


def test_left_padded_image_batch_matches_transformers(pair):
    hf, ours = pair
    inputs = images([WIDE, SQUARE])
    n1, n2 = image_lengths(hf, inputs)
    batch = padded([prompt([2, ("image", n1), 6]), prompt([1, ("image", n2), 1], seed=2)], **inputs)
    assert (batch["attention_mask"] == 0).any()
    a, b = run_both(hf, ours, **batch)
    assert_close(b.logits, a.logits)


# ---- videos -------------------------------------------------------------------------------------------

def test_video_features_pool_each_frame_and_end_with_one_newline(pair):
    hf, ours = pair
    clip = videos(2, frames=3)
    with torch.no_grad():
        features = ours.get_video_features(clip).pooler_output
        theirs = hf.model.get_video_features(clip).pooler_output
    assert features.shape == (2, 3 * 2 * 2 + 1, 64)  # 4x4 patches pooled to 2x2 per frame, plus the newline
    assert torch.equal(features[:, -1], ours.image_newline.expand(2, 64))
    assert_close(features, theirs)
    grid = torch.arange(2 * 16 * 1, dtype=torch.float32).view(2, 16, 1)  # two 4x4 single-channel frames
    assert torch.equal(pool_frames(grid, 4), torch.nn.functional.interpolate(
        grid.view(2, 4, 4, 1).permute(0, 3, 1, 2), size=[2, 2], mode="bilinear").permute(0, 2, 3, 1).reshape(2, 4, 1))


def test_one_video_matches_transformers(pair):
    hf, ours = pair
    clip = videos(1, frames=4)
    n = video_length(hf, clip)
    ids = torch.tensor([prompt([3, ("video", n), 5])])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values_videos=clip)
    assert_close(b.logits, a.logits)
    assert b.image_outputs is None and b.video_outputs.pooler_output.shape == (1, n, 64)
    assert_close(video_features(b), video_features(a))


def test_image_and_video_in_one_prompt_match_transformers(pair):
    hf, ours = pair
    inputs = images([WIDE])
    clip = videos(1, frames=2)
    n_image, = image_lengths(hf, inputs)
    ids = torch.tensor([prompt([2, ("video", video_length(hf, clip)), 3, ("image", n_image), 2])])
    a, b = run_both(hf, ours, input_ids=ids, **inputs, pixel_values_videos=clip)
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))
    assert_close(video_features(b), video_features(a))


def test_left_padded_batch_of_videos_matches_transformers(pair):
    hf, ours = pair
    clip = videos(2, frames=3)
    n = video_length(hf, clip)
    batch = padded([prompt([6, ("video", n), 4]), prompt([1, ("video", n), 1], seed=3)], pixel_values_videos=clip)
    a, b = run_both(hf, ours, **batch)
    assert_close(b.logits, a.logits)
    with torch.no_grad():  # the padded row alone gives the same logits
        alone = ours(input_ids=torch.tensor([prompt([1, ("video", n), 1], seed=3)]),
                     pixel_values_videos=clip[1:]).logits
    assert_close(b.logits[1, -alone.shape[1]:], alone[0])


def test_loss_matches_transformers(pair):
    hf, ours = pair
    inputs = images([SQUARE])
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("image", image_lengths(hf, inputs)[0]), 1, ("video", video_length(hf, clip)), 6])])
    labels = ids.masked_fill((ids == IMAGE) | (ids == VIDEO), -100)
    a, b = run_both(hf, ours, input_ids=ids, **inputs, pixel_values_videos=clip, labels=labels)
    assert b.loss.ndim == 0
    assert_close(b.loss, a.loss)


def test_outputs_follow_the_transformers_5_25_layout(pair):
    """`image_outputs` / `video_outputs` hold the tower outputs with the projected features as `pooler_output`;
    `video_hidden_states` is a deprecated view of the video features; `return_dict=False` nests them."""
    _, ours = pair
    inputs = images([WIDE])
    clip = videos(1, frames=2)
    with torch.no_grad():
        n = ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0].shape[0]
        ids = torch.tensor([prompt([1, ("image", n), 2, ("video", 9)])])
        out = ours(input_ids=ids, **inputs, pixel_values_videos=clip)
        flat = ours(input_ids=ids, **inputs, pixel_values_videos=clip, return_dict=False)
    assert type(out).__name__ == "LlavaOnevisionCausalLMOutputWithPast"
    assert out.keys() == ["logits", "cache", "image_outputs", "video_outputs"]
    assert isinstance(out.image_outputs.pooler_output, list) and out.image_outputs.pooler_output[0].shape == (n, 64)
    assert out.video_outputs.last_hidden_state.shape == (2, 16, 32)  # the tower's output over both frames
    with pytest.warns(FutureWarning, match="video_outputs.pooler_output"):
        assert out.video_hidden_states is out.video_outputs.pooler_output
    assert torch.equal(flat[0], out.logits) and torch.equal(flat[-1][1], out.video_outputs.pooler_output)


def test_inputs_embeds_find_image_and_video_positions(pair):
    hf, ours = pair
    inputs = images([WIDE])
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("image", image_lengths(hf, inputs)[0]), ("video", video_length(hf, clip)), 2])])
    embeds = ours.get_input_embeddings()(ids)
    a, b = run_both(hf, ours, inputs_embeds=embeds, **inputs, pixel_values_videos=clip)
    with torch.no_grad():
        by_ids = ours(input_ids=ids, **inputs, pixel_values_videos=clip).logits
    assert_close(b.logits, a.logits)
    assert_close(b.logits, by_ids)


def test_base_model_matches_transformers(tiny_llava_onevision_dir):
    hf = transformers.LlavaOnevisionModel.from_pretrained(tiny_llava_onevision_dir).eval()
    ours = LlavaOnevisionModel.from_pretrained(tiny_llava_onevision_dir)
    assert "language_model.embed_tokens.weight" in ours.state_dict()
    inputs = images([SQUARE])
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("image", image_lengths(hf, inputs)[0]), ("video", video_length(hf, clip)), 2])])
    a, b = run_both(hf, ours, input_ids=ids, **inputs, pixel_values_videos=clip)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(image_features(b), image_features(a))


@pytest.fixture(scope="module")
def multi_layer_dir(tmp_path_factory):
    return assets.build_tiny_llava_onevision(tmp_path_factory.mktemp("onevision-multilayer"), seed=2,
                                             vision_feature_layer=[-3, -1])


def test_feature_layer_list_matches_transformers(multi_layer_dir):
    hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(multi_layer_dir).eval()
    ours = LlavaOnevisionForConditionalGeneration.from_pretrained(multi_layer_dir)
    assert ours.multi_modal_projector.linear_1.in_features == 2 * 32
    inputs = images([WIDE])
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("image", image_lengths(hf, inputs)[0]), ("video", video_length(hf, clip))])])
    a, b = run_both(hf, ours, input_ids=ids, **inputs, pixel_values_videos=clip)
    assert_close(b.logits, a.logits)


# ---- checkpoints ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["hub", "in_memory"])
def test_both_weight_layouts_load(pair, tiny_llava_onevision_dir, tmp_path, layout):
    """llava-hf files (`language_model.model.*`, `vision_tower.vision_model.*`) and transformers-5 in-memory names
    (`model.language_model.*`, `model.vision_tower.*`, `lm_head.*`) give the same model."""
    hf, ours = pair
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}  # in-memory names
    if layout == "hub":
        state = {k.replace("model.language_model.", "language_model.model.").replace(
            "model.vision_tower.", "vision_tower.vision_model.").replace("model.multi_modal_projector.",
                                                                        "multi_modal_projector.").replace(
            "model.image_newline", "image_newline").replace("lm_head.", "language_model.lm_head."): v
            for k, v in state.items()}
        assert "language_model.model.embed_tokens.weight" in state
    else:
        assert "model.language_model.embed_tokens.weight" in state
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((tiny_llava_onevision_dir / "config.json").read_text())
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_sparse_hub_config_relies_on_class_defaults(pair, tiny_llava_onevision_dir, tmp_path):
    """The llava-hf config.json leaves out defaults (strategy, layer, aspect ratio, token ids): both libraries
    fill in the same ones."""
    full = json.loads((tiny_llava_onevision_dir / "config.json").read_text())
    sparse = {k: full[k] for k in ("model_type", "text_config", "vision_config", "image_grid_pinpoints")}
    sparse["vision_config"] = {k: v for k, v in full["vision_config"].items() if k not in ("vision_use_head",)}
    theirs = transformers.LlavaOnevisionConfig.from_dict(sparse)
    ours = AutoConfig.from_dict(sparse)
    for name in ("image_token_index", "video_token_index", "vision_feature_select_strategy", "vision_feature_layer",
                 "vision_aspect_ratio", "projector_hidden_act", "multimodal_projector_bias", "tie_word_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.vision_config.vision_use_head == theirs.vision_config.vision_use_head


def test_save_pretrained_is_read_back_by_transformers(pair, tmp_path):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llava_onevision" and saved["vision_aspect_ratio"] == "anyres_max_4"
    reloaded = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path).eval()
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("video", video_length(hf, clip)), 2])])
    a, b = run_both(reloaded, hf, input_ids=ids, pixel_values_videos=clip)
    assert_close(a.logits, b.logits, atol=0)


# ---- generate -----------------------------------------------------------------------------------------

def test_greedy_generate_image_matches_transformers(pair):
    hf, ours = pair
    inputs = images([SQUARE])
    ids = torch.tensor([prompt([2, ("image", image_lengths(hf, inputs)[0]), 3])])
    generate_both(hf, ours, dict(input_ids=ids, **inputs))


def test_greedy_generate_image_and_video_matches_transformers(pair):
    hf, ours = pair
    inputs = images([WIDE])
    clip = videos(1, frames=3)
    ids = torch.tensor([prompt([1, ("image", image_lengths(hf, inputs)[0]), ("video", video_length(hf, clip)), 3])])
    generate_both(hf, ours, dict(input_ids=ids, **inputs, pixel_values_videos=clip))


def test_greedy_generate_left_padded_videos_matches_transformers(pair):
    hf, ours = pair
    clip = videos(2, frames=2, seed=5)
    n = video_length(hf, clip)
    batch = padded([prompt([1, ("video", n), 7]), prompt([2, ("video", n), 1], seed=4)], pixel_values_videos=clip)
    del batch["position_ids"]
    generate_both(hf, ours, batch)


def test_greedy_generate_multi_image_matches_transformers(pair):
    hf, ours = pair
    inputs = images([SQUARE, WIDE])
    ids = torch.tensor([prompt([1, ("image", 17), 2, ("image", 17), 2])])
    generate_both(hf, ours, dict(input_ids=ids, **inputs, batch_num_images=torch.tensor([2])))


# ---- errors -------------------------------------------------------------------------------------------

def test_placeholder_mismatches_are_clear_errors(pair):
    hf, ours = pair
    clip = videos(1, frames=2)
    n = video_length(hf, clip)
    two_videos = torch.tensor([prompt([1, ("video", n), 1, ("video", n)])])
    with pytest.raises(ValueError, match=f"Video features and video tokens do not match: tokens: {2 * n}, "
                                         f"features: {n}. The 1 videos"):
        ours(input_ids=two_videos, pixel_values_videos=clip)
    with pytest.raises(ValueError, match=r"tokens: 0, features: \d+"):  # a video with no placeholder
        ours(input_ids=torch.tensor([[1, 400]]), pixel_values_videos=clip)
    inputs = images([WIDE])
    with pytest.raises(ValueError, match="Image features and image tokens do not match: tokens: 3"):
        ours(input_ids=torch.tensor([[1] + [IMAGE] * 3]), **inputs)
    with pytest.raises(ValueError, match=r"pixel_values_videos must be \(num_videos, frames, 3, H, W\)"):
        ours(input_ids=two_videos, pixel_values_videos=clip[0])
    with pytest.raises(ValueError, match=r"batch_num_images \[2\] must count the 1 images"):
        ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"], batch_num_images=[2])
    with pytest.raises(ValueError, match="vision_aspect_ratio must look like 'anyres_max_9'"):
        ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"], vision_aspect_ratio="anyres")
    with pytest.raises(ValueError, match="OneVision pools"):
        ours.get_video_features(clip, vision_feature_select_strategy="default")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="vision_aspect_ratio"):
        LlavaOnevisionConfig(vision_aspect_ratio="max_9")
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        LlavaOnevisionConfig(image_grid_pinpoints=[])


def test_a_video_for_a_model_without_video_support_is_a_clear_error(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    with pytest.raises(ValueError, match=r"pixel_values_videos"):
        model.generate(input_ids=torch.tensor([[1, 400]]), pixel_values_videos=videos(1), max_new_tokens=2)


def test_cache_argument_and_its_deprecated_name(pair):
    """`cache=` (transformers 5.24+) continues a prompt; `past_key_values=` still works with a FutureWarning."""
    _, ours = pair
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("video", 9), 3])])
    with torch.no_grad():
        full = ours(input_ids=ids, pixel_values_videos=clip).logits
        first = ours(input_ids=ids[:, :-1], pixel_values_videos=clip, use_cache=True)
        step = ours(input_ids=ids[:, -1:], cache=first.cache, position_ids=torch.tensor([[ids.shape[1] - 1]]))
        assert_close(step.logits[:, -1], full[:, -1])
        first = ours(input_ids=ids[:, :-1], pixel_values_videos=clip, use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            old = ours(input_ids=ids[:, -1:], past_key_values=first.cache,
                       position_ids=torch.tensor([[ids.shape[1] - 1]]))
    assert_close(old.logits, step.logits)


def test_bfloat16_matches_transformers(tiny_llava_onevision_dir):
    hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir,
                                                                            dtype=torch.bfloat16).eval()
    ours = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_llava_onevision_dir, dtype=torch.bfloat16)
    assert ours.image_newline.dtype == torch.bfloat16
    inputs = images([SQUARE])
    clip = videos(1, frames=2)
    ids = torch.tensor([prompt([2, ("image", image_lengths(hf, inputs)[0]), ("video", video_length(hf, clip)), 2])])
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    a, b = run_both(hf, ours, input_ids=ids, **inputs, pixel_values_videos=clip.to(torch.bfloat16))
    assert b.logits.dtype == torch.bfloat16
    assert_close(b.logits.float(), a.logits.float(), atol=1e-3)
