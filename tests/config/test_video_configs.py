"""LlavaOnevisionConfig and LlavaNextVideoConfig: transformers' defaults (the llava-hf config.json files rely on
them), sparse configs, round trips through transformers, and validation."""

from __future__ import annotations

import json

import pytest
import transformers

from llavakit import AutoConfig
from llavakit.config import LlavaNextVideoConfig, LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

SHARED = ("image_token_index", "video_token_index", "projector_hidden_act", "vision_feature_select_strategy",
          "vision_feature_layer", "multimodal_projector_bias", "tie_word_embeddings", "image_grid_pinpoints")


def test_onevision_defaults_match_transformers():
    ours, theirs = LlavaOnevisionConfig(), transformers.LlavaOnevisionConfig()
    for name in SHARED + ("vision_aspect_ratio",):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours.image_grid_pinpoints) == 36 and ours.image_grid_pinpoints[-1] == [2304, 2304]
    assert isinstance(ours.vision_config, SiglipVisionConfig) and isinstance(ours.text_config, Qwen2Config)
    for name in ("hidden_size", "intermediate_size", "patch_size", "image_size", "num_hidden_layers",
                 "num_attention_heads", "vision_use_head"):
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), name
    assert ours.text_config.vocab_size == theirs.text_config.vocab_size
    assert ours.image_token_id == 151646 and ours.video_token_id == 151647


def test_next_video_defaults_match_transformers():
    ours, theirs = LlavaNextVideoConfig(), transformers.LlavaNextVideoConfig()
    for name in SHARED + ("spatial_pool_mode", "spatial_pool_stride", "image_seq_length", "video_seq_length"):
        assert getattr(ours, name) == getattr(theirs, name), name
    for name in ("hidden_size", "image_size", "patch_size", "num_hidden_layers"):
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), name


@pytest.mark.parametrize("model_type, theirs_cls", [("llava_onevision", transformers.LlavaOnevisionConfig),
                                                    ("llava_next_video", transformers.LlavaNextVideoConfig)])
def test_sparse_config_and_round_trip_through_transformers(tmp_path, model_type, theirs_cls):
    """A config.json with only the sub-configs' model types and a few sizes: both libraries agree, and what
    llavakit writes reads back in transformers with the same values."""
    vision = "siglip_vision_model" if model_type == "llava_onevision" else "clip_vision_model"
    text = "qwen2" if model_type == "llava_onevision" else "llama"
    sparse = {"model_type": model_type, "vision_config": {"model_type": vision, "hidden_size": 48},
              "text_config": {"model_type": text, "hidden_size": 64, "tie_word_embeddings": True},
              "video_token_id": 7, "image_grid_pinpoints": [[28, 56], [56, 28]]}
    ours = AutoConfig.from_dict(sparse)
    theirs = theirs_cls.from_dict(sparse)
    assert type(ours).model_type == model_type and ours.video_token_index == 7 == theirs.video_token_index
    for name in SHARED:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.tie_word_embeddings is True  # copied from the text config, as transformers does for these two
    ours.save_pretrained(tmp_path)
    reread = theirs_cls.from_pretrained(tmp_path)
    for name in SHARED:
        assert getattr(reread, name) == getattr(ours, name), name
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="vision_aspect_ratio must look like 'anyres_max_9'"):
        LlavaOnevisionConfig(vision_aspect_ratio="anyres_max_0")
    with pytest.raises(ValueError, match="unsupported vision_config model_type 'vit'"):
        LlavaOnevisionConfig(vision_config={"model_type": "vit"})
    with pytest.raises(ValueError, match="spatial_pool_mode must be one of"):
        LlavaNextVideoConfig(spatial_pool_mode="bilinear")
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        LlavaNextVideoConfig(image_grid_pinpoints=[[0, 10]])
