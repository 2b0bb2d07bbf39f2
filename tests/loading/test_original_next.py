"""Original LLaVA-NeXT checkpoints (liuhaotian/llava-v1.6-*) load into the same model as transformers'.

The originals are written from tiny random transformers LlavaNext models (llama = vicuna, mistral, and a
64000-token llama = Yi-34B) in the original layout: model.* / model.mm_projector.{0,2} / model.image_newline /
model.vision_tower.vision_tower.vision_model.* (llava-v1.6 ships its fine-tuned tower), with the original
config keys (image_aspect_ratio "anyres", mm_patch_merge_type "spatial_unpad", image_grid_pinpoints).
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest
import torch
import transformers
from safetensors.torch import save_file

from llavakit import AutoModelForImageTextToText, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from llavakit.loading import original
from tests import assets
from tests.loading.test_original import (OLD_VOCAB, TOWER_REPO, _edited_copy, fake_hub_cache, fill_new_rows_,
                                         original_config, original_state, write_tower)
from tests.reference import hf_processor

YI_VOCAB = 64000  # Nous-Hermes-2-Yi-34B, the llava-v1.6-34b decoder
MISTRAL_ROPE = 1_000_000.0  # Mistral-7B-Instruct-v0.2's rope_theta


def tiny_next_reference(text_type: str = "llama", seed: int = 0, old_vocab: int = OLD_VOCAB):
    """A tiny random transformers LlavaNext whose rows past the original vocab hold the embedding mean."""
    torch.manual_seed(seed)
    text = dict(assets.TINY_TEXT, model_type=text_type, vocab_size=original.padded_vocab(old_vocab))
    if text_type == "mistral":
        text.update(sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": MISTRAL_ROPE})
    config = transformers.LlavaNextConfig(vision_config=dict(assets.TINY_VISION), text_config=text,
                                          image_token_index=old_vocab, pad_token_id=old_vocab + 1,
                                          image_grid_pinpoints=assets.NEXT_PINPOINTS)
    model = transformers.LlavaNextForConditionalGeneration(config)
    assets.perturb_(model, seed)
    fill_new_rows_(model, old_vocab)
    return model.eval()


def next_original_config(text_type: str = "llama", tower: str = TOWER_REPO, old_vocab: int = OLD_VOCAB,
                         **changes) -> dict:
    """config.json as liuhaotian/llava-v1.6-{vicuna,mistral,34b} write it (the keys that matter)."""
    data = original_config("llava", tower)
    data.update(vocab_size=old_vocab, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                image_grid_pinpoints=assets.NEXT_PINPOINTS, image_crop_resolution=224, image_split_resolution=224,
                mm_resampler_type=None, unfreeze_mm_vision_tower=True, tie_word_embeddings=False,
                torch_dtype="float32")
    if text_type == "mistral":
        data.update(architectures=["LlavaMistralForCausalLM"], model_type="llava_mistral", sliding_window=None,
                    rope_theta=MISTRAL_ROPE, _name_or_path="mistralai/Mistral-7B-Instruct-v0.2")
    data.update(changes)
    return data


def write_next_original(out: Path, model, text_type: str = "llama", old_vocab: int = OLD_VOCAB, **changes) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    state = original_state(model, old_vocab=old_vocab)
    assert "model.image_newline" in state and "model.mm_projector.0.weight" in state
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = next_original_config(text_type, old_vocab=old_vocab, **changes)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def next_inputs(processor, photos, image_token: int = OLD_VOCAB) -> dict[str, torch.Tensor]:
    """A left-padded batch of two prompts with a wide and a tall image, from transformers' LlavaNextProcessor."""
    wide = PIL.Image.open(photos["rocket"])
    tall = PIL.Image.open(photos["astronaut"]).crop((100, 0, 260, 400))
    prompts = ["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nDescribe the picture in detail. ASSISTANT:"]
    batch = dict(processor(images=[wide, tall], text=prompts, padding=True, return_tensors="pt"))
    assert batch["image_sizes"].tolist() != [batch["image_sizes"][0].tolist()] * 2
    batch["input_ids"] = torch.where(batch["input_ids"] == OLD_VOCAB, image_token, batch["input_ids"])
    return batch


def assert_same_next_logits(hf, ours, batch: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        expected = hf(**batch).logits
        got = ours(**batch).logits
    keep = batch["attention_mask"].bool()  # (B, T): padded positions are not compared
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def next_processor(tiny_llava_next_dir):
    return hf_processor(tiny_llava_next_dir)


@pytest.fixture(scope="module")
def vicuna():
    return tiny_next_reference("llama", seed=1)


@pytest.fixture(scope="module")
def vicuna_dir(tmp_path_factory, vicuna):
    return write_next_original(tmp_path_factory.mktemp("llava-v1.6-vicuna-7b"), vicuna)


@pytest.fixture(scope="module")
def vicuna_tower(tmp_path_factory, vicuna):
    return write_tower(tmp_path_factory.mktemp("tower"), vicuna)


# ---- config ---------------------------------------------------------------------------------------
def test_config_follows_the_converter(vicuna_dir, vicuna_tower):
    model = LlavaNextForConditionalGeneration.from_pretrained(vicuna_dir, vision_tower=vicuna_tower)
    config = model.config
    assert config.model_type == "llava_next"
    assert config.image_grid_pinpoints == [[w, h] for h, w in assets.NEXT_PINPOINTS]  # tiles as the original
    assert config.image_token_index == OLD_VOCAB and config.pad_token_id == OLD_VOCAB + 1
    assert config.text_config.vocab_size == 32064 and config.tie_word_embeddings is False
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert model.image_newline.shape == (assets.TINY_TEXT["hidden_size"],)


@pytest.mark.parametrize("value, expected", [
    ([[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],  # llava-v1.6, read as (width, height)
     [[672, 336], [336, 672], [672, 672], [336, 1008], [1008, 336]]),
    ([[672, 336], [1008, 336]], [[336, 672], [336, 1008]]),  # (width, height) -> (height, width)
    ("(1x1),(1x2),(2x1)", [[28, 28], [56, 28], [28, 56]]),
    ("(1x1),...,(2x3)", [[28, 28], [56, 28], [84, 28], [28, 56], [56, 56], [84, 56]]),  # a range, swapped
    ("[(28, 56), (56, 28)]", [[56, 28], [28, 56]]),
])
def test_grid_pinpoints_forms(value, expected):
    assert original.grid_pinpoints(value, 28) == expected
    assert original.written_pinpoints(value, 28) == [[w, h] for h, w in expected]


@pytest.mark.parametrize("value", ["anyres", [[336, 0]], [], [[336]], [[True, 336]], "[[336, 'a']]", "(1x1),(x)",
                                   "(1x1),...,(2x2),(3x3)"])
def test_bad_grid_pinpoints(value):
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        original.grid_pinpoints(value, 336)


# ---- round trips ------------------------------------------------------------------------------------
def test_vicuna_round_trip(vicuna, vicuna_dir, vicuna_tower, next_processor, photos):
    ours = LlavaNextForConditionalGeneration.from_pretrained(vicuna_dir, vision_tower=vicuna_tower)
    batch = next_inputs(next_processor, photos)
    assert_same_next_logits(vicuna, ours, batch)
    expected = vicuna.generate(**batch, max_new_tokens=5, do_sample=False)
    assert ours.generate(**batch, max_new_tokens=5, do_sample=False).tolist() == expected.tolist()


def test_mistral_round_trip_through_the_auto_class(tmp_path, next_processor, photos):
    reference = tiny_next_reference("mistral", seed=2)
    folder = write_next_original(tmp_path / "llava-v1.6-mistral-7b", reference, "mistral")
    cache = fake_hub_cache(tmp_path / "cache", write_tower(tmp_path / "tower", reference))
    ours = AutoModelForImageTextToText.from_pretrained(folder, cache_dir=str(cache), local_files_only=True)
    assert type(ours) is LlavaNextForConditionalGeneration
    assert ours.config.text_config.model_type == "mistral"
    assert ours.config.text_config.rope_theta == MISTRAL_ROPE
    assert_same_next_logits(reference, ours, next_inputs(next_processor, photos))


def test_yi_34b_round_trip(tmp_path, next_processor, photos):
    """llava-v1.6-34b: a llama-architecture decoder with 64000 tokens, so `<image>` is 64000."""
    reference = tiny_next_reference("llama", seed=3, old_vocab=YI_VOCAB)
    folder = write_next_original(tmp_path / "llava-v1.6-34b", reference, old_vocab=YI_VOCAB,
                                 _name_or_path="NousResearch/Nous-Hermes-2-Yi-34B")
    tower = write_tower(tmp_path / "tower", reference)
    ours = LlavaNextForConditionalGeneration.from_pretrained(folder, vision_tower=tower)
    assert ours.config.image_token_index == YI_VOCAB and ours.config.text_config.vocab_size == 64064
    assert_same_next_logits(reference, ours, next_inputs(next_processor, photos, image_token=YI_VOCAB))


# ---- errors -----------------------------------------------------------------------------------------
def test_wrong_class_names_the_right_one(vicuna_dir, vicuna_tower):
    with pytest.raises(ValueError, match="LlavaNextForConditionalGeneration"):
        LlavaForConditionalGeneration.from_pretrained(vicuna_dir, vision_tower=vicuna_tower)


@pytest.mark.parametrize("changes, message", [
    ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type='flat'"),
    ({"mm_patch_merge_type": None}, "mm_patch_merge_type=None"),
    # anyres_max / llava_qwen make it a OneVision checkpoint (tests/loading/test_original_video.py), which
    # needs a SigLIP tower and anyres_max_N
    ({"image_aspect_ratio": "anyres_max_9", "mm_patch_merge_type": "spatial_unpad_anyres_max_9"},
     "OneVision checkpoints use a SigLIP vision tower"),
    ({"image_aspect_ratio": "pad"}, "image_aspect_ratio='pad' with mm_patch_merge_type='spatial_unpad'"),
    ({"image_grid_pinpoints": "(1x1),(x)"}, "cannot read image_grid_pinpoints"),
    ({"architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen"}, "image_aspect_ratio='anyres' with"),
    ({"architectures": ["LlavaGemmaForCausalLM"]}, "'LlavaGemmaForCausalLM'"),
    ({"architectures": None, "model_type": "llava_gemma"}, "'llava_gemma'"),
])
def test_unsupported_next_variants(tmp_path, vicuna_dir, vicuna_tower, changes, message):
    folder = _edited_copy(vicuna_dir, tmp_path / "x", **changes)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AutoModelForImageTextToText.from_pretrained(folder, vision_tower=vicuna_tower)
