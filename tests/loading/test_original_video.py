"""Original lmms-lab LLaVA-OneVision (llava_qwen) and LLaVA-NeXT-Video checkpoints load into the same model as
transformers' converters would produce.

The originals are written from tiny random transformers models by inverting the converter's renames: model.* /
model.mm_projector.{0,2} / model.image_newline / model.vision_tower.vision_tower.vision_model.*, with the original
config keys (llava_qwen + anyres_max_N + a grid string for OneVision; mm_resampler_type "spatial_pool" for
NeXT-Video). OneVision's original SigLIP tower has its last layer and head removed; a separately stored tower
still has them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from llavakit import AutoModelForImageTextToText, anyres
from llavakit.loading import original
from llavakit.models.llava_next_video import LlavaNextVideoForConditionalGeneration
from llavakit.models.llava_onevision import LlavaOnevisionForConditionalGeneration
from tests import assets
from tests.loading.test_original import LLAVA_INVERSE, OLD_VOCAB, fill_new_rows_, original_config

QWEN_ROPE = 1_000_000.0
INVERSE = [("model.image_newline", "model.image_newline")] + LLAVA_INVERSE


def tiny_onevision_reference(seed: int = 0):
    """A tiny transformers OneVision as the converter would write it from a 32000-token original (tied head)."""
    torch.manual_seed(seed)
    text = dict(assets.TINY_TEXT, model_type="qwen2", vocab_size=original.padded_vocab(OLD_VOCAB),
                tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": QWEN_ROPE})
    config = transformers.LlavaOnevisionConfig(
        vision_config=dict(assets.TINY_SIGLIP), text_config=text, image_token_index=OLD_VOCAB,
        video_token_index=OLD_VOCAB + 1, image_grid_pinpoints=assets.ONEVISION_PINPOINTS,
        vision_aspect_ratio=assets.ONEVISION_ASPECT, tie_word_embeddings=True)
    model = transformers.LlavaOnevisionForConditionalGeneration(config)
    assets.perturb_(model, seed)
    fill_new_rows_(model)
    return model.eval()


def tiny_next_video_reference(seed: int = 0):
    torch.manual_seed(seed)
    text = dict(assets.TINY_TEXT, model_type="llama", vocab_size=original.padded_vocab(OLD_VOCAB, n_new=3))
    config = transformers.LlavaNextVideoConfig(
        vision_config=dict(assets.TINY_VISION), text_config=text, video_token_index=OLD_VOCAB,
        image_token_index=OLD_VOCAB + 1, pad_token_id=OLD_VOCAB + 2, image_grid_pinpoints=assets.NEXT_PINPOINTS)
    model = transformers.LlavaNextVideoForConditionalGeneration(config)
    assets.perturb_(model, seed)
    fill_new_rows_(model)
    return model.eval()


def original_state(model, with_tower: bool = True) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.vision_tower.") and not with_tower:
            continue
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # a tied original stores only the embedding
        key = next(new + key[len(old):] for old, new in INVERSE if key.startswith(old))
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:OLD_VOCAB]
        state[key] = value.clone().contiguous()
    return state


def write_original(out: Path, model, config: dict, with_tower: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file(original_state(model, with_tower), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def onevision_original_config(**changes) -> dict:
    """config.json as lmms-lab/llava-onevision-qwen2-*-ov writes it (the keys that matter)."""
    data = original_config("llava", original.SIGLIP_SO400M)
    data.update(architectures=["LlavaQwenForCausalLM"], model_type="llava_qwen", rope_theta=QWEN_ROPE,
                tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768, bos_token_id=None,
                image_aspect_ratio=assets.ONEVISION_ASPECT, image_grid_pinpoints="(1x1),...,(3x3)",
                mm_patch_merge_type="spatial_unpad", mm_spatial_pool_mode="bilinear", mm_spatial_pool_stride=2,
                mm_newline_position="one_token", mm_resampler_type=None,
                mm_hidden_size=assets.TINY_SIGLIP["hidden_size"], _name_or_path="Qwen/Qwen2-0.5B-Instruct")
    data.update(changes)
    return data


def next_video_original_config(**changes) -> dict:
    """config.json as lmms-lab/LLaVA-NeXT-Video-7B writes it (the keys that matter)."""
    data = original_config("llava", "test-org/tiny-clip")
    data.update(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad", mm_resampler_type="spatial_pool",
                mm_spatial_pool_mode="average", mm_spatial_pool_stride=2,
                mm_spatial_pool_out_channels=assets.TINY_VISION["hidden_size"],
                image_grid_pinpoints=assets.NEXT_PINPOINTS, tie_word_embeddings=False)
    data.update(changes)
    return data


def siglip_tower_dir(out: Path, reference) -> Path:
    """The full SigLIP tower the original started from: one more layer and the pooling head, as on the Hub."""
    config = transformers.SiglipVisionConfig(**dict(assets.TINY_SIGLIP, num_hidden_layers=4, vision_use_head=True))
    tower = transformers.SiglipVisionModel(config)
    state = {k.removeprefix("model.vision_tower."): v for k, v in reference.state_dict().items()
             if k.startswith("model.vision_tower.")}
    missing, unexpected = tower.load_state_dict(state, strict=False)
    assert not unexpected and all(".layers.3." in k or k.startswith("head.") for k in missing)
    tower.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    reference = tiny_onevision_reference()
    root = tmp_path_factory.mktemp("onevision-original")
    tower = siglip_tower_dir(root / "tower", reference)
    return reference, tower, write_original(root / "original", reference, onevision_original_config())


@pytest.fixture(scope="module")
def next_video(tmp_path_factory):
    reference = tiny_next_video_reference()
    root = tmp_path_factory.mktemp("next-video-original")
    tower = root / "tower"
    clip = transformers.CLIPVisionModel(reference.config.vision_config)
    clip.load_state_dict({k.removeprefix("model.vision_tower."): v for k, v in reference.state_dict().items()
                          if k.startswith("model.vision_tower.")})
    clip.save_pretrained(tower)
    return reference, tower, write_original(root / "original", reference, next_video_original_config())


def onevision_inputs(reference) -> dict:
    """One 3x3-grid image (shrunk by anyres_max_4) and a two-frame video, placeholders counted by transformers."""
    gen = torch.Generator().manual_seed(0)
    pixel_values, sizes = torch.randn(1, 10, 3, 28, 28, generator=gen), torch.tensor([[80, 80]])
    video = torch.randn(1, 2, 3, 28, 28, generator=gen)
    with torch.no_grad():
        n_image = reference.model.get_image_features(pixel_values, sizes).pooler_output[0].shape[0]
        n_video = reference.model.get_video_features(video).pooler_output.shape[1]
    ids = [1, 400, 500] + [OLD_VOCAB] * n_image + [600] + [OLD_VOCAB + 1] * n_video + [700, 800]
    return dict(input_ids=torch.tensor([ids]), pixel_values=pixel_values, image_sizes=sizes, pixel_values_videos=video)


def next_video_inputs() -> dict:
    gen = torch.Generator().manual_seed(0)
    crops = anyres.image_size_to_num_patches((30, 70), assets.NEXT_PINPOINTS, 28)
    pixel_values, sizes = torch.randn(1, crops, 3, 28, 28, generator=gen), torch.tensor([[30, 70]])
    video = torch.randn(1, 2, 3, 28, 28, generator=gen)
    return dict(pixel_values=pixel_values, image_sizes=sizes, pixel_values_videos=video)


def assert_same_logits(reference, ours, inputs: dict) -> None:
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---- OneVision ------------------------------------------------------------------------------------------

def swapped(pinpoints: list[list[int]]) -> list[list[int]]:
    """An original config's pinpoints as llavakit holds them: the original code reads each pair as (width,
    height), so a directly loaded original tiles as the original does (see loading/original.py)."""
    return [[w, h] for h, w in pinpoints]

def test_onevision_original_is_detected_and_configured(onevision):
    reference, tower, path = onevision
    data = json.loads((path / "config.json").read_text())
    assert original.is_original_config(data) and original.family(data) == "llava_onevision"
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, vision_tower=tower)
    config = model.config
    assert config.vision_config.num_hidden_layers == 3 and config.vision_config.vision_use_head is False
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "full")
    assert (config.image_token_index, config.video_token_index) == (OLD_VOCAB, OLD_VOCAB + 1)
    assert config.vision_aspect_ratio == "anyres_max_4" and config.image_grid_pinpoints == swapped(assets.ONEVISION_PINPOINTS)
    assert config.text_config.model_type == "qwen2" and config.text_config.rope_theta == QWEN_ROPE
    assert config.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert config.text_config.vocab_size == reference.config.text_config.vocab_size == 32064


def test_onevision_original_gives_the_converted_logits(onevision):
    reference, tower, path = onevision
    ours = LlavaOnevisionForConditionalGeneration.from_pretrained(path, vision_tower=tower)
    assert_same_logits(reference, ours, onevision_inputs(reference))
    auto = AutoModelForImageTextToText.from_pretrained(path, vision_tower=tower)
    assert type(auto) is LlavaOnevisionForConditionalGeneration


def test_onevision_tower_stored_separately_loses_its_last_layer_and_head(onevision, tmp_path):
    reference, tower, _ = onevision
    path = write_original(tmp_path, reference, onevision_original_config(), with_tower=False)
    ours = LlavaOnevisionForConditionalGeneration.from_pretrained(path, vision_tower=tower)
    assert len(ours.vision_tower.vision_model.encoder.layers) == 3
    assert_same_logits(reference, ours, onevision_inputs(reference))


def test_onevision_original_with_a_clip_tower_is_refused(onevision, next_video, tmp_path):
    reference, _, path = onevision
    _, clip_tower, _ = next_video
    with pytest.raises(ValueError, match="OneVision checkpoints use a SigLIP vision tower"):
        LlavaOnevisionForConditionalGeneration.from_pretrained(path, vision_tower=clip_tower)
    bad = write_original(tmp_path, reference, onevision_original_config(mm_patch_merge_type="flat"))
    with pytest.raises(ValueError, match="need 'anyres_max_N' with 'spatial_unpad'"):
        LlavaOnevisionForConditionalGeneration.from_pretrained(bad, vision_tower=onevision[1])


# ---- NeXT-Video -----------------------------------------------------------------------------------------

def test_next_video_original_is_detected_and_configured(next_video):
    reference, tower, path = next_video
    data = json.loads((path / "config.json").read_text())
    assert original.family(data) == "llava_next_video"
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(path, vision_tower=tower)
    config = model.config
    assert (config.video_token_index, config.image_token_index, config.pad_token_id) == (32000, 32001, 32002)
    assert (config.spatial_pool_mode, config.spatial_pool_stride) == ("average", 2)
    assert config.text_config.vocab_size == 32064 and config.image_grid_pinpoints == swapped(assets.NEXT_PINPOINTS)


def test_next_video_original_gives_the_converted_logits(next_video):
    reference, tower, path = next_video
    ours = AutoModelForImageTextToText.from_pretrained(path, vision_tower=tower)
    assert type(ours) is LlavaNextVideoForConditionalGeneration
    media = next_video_inputs()
    with torch.no_grad():
        n_image = reference.model.get_image_features(media["pixel_values"], media["image_sizes"]).pooler_output[0]
    ids = [1, 400] + [OLD_VOCAB + 1] * n_image.shape[0] + [500] + [OLD_VOCAB] * 8 + [600]
    assert_same_logits(reference, ours, dict(media, input_ids=torch.tensor([ids])))


def test_next_video_conv_pooling_original_is_refused(next_video, tmp_path):
    reference, tower, _ = next_video
    path = write_original(tmp_path, reference, next_video_original_config(mm_spatial_pool_mode="conv"))
    with pytest.raises(ValueError, match="mm_spatial_pool_mode='conv' is not supported"):
        LlavaNextVideoForConditionalGeneration.from_pretrained(path, vision_tower=tower)
