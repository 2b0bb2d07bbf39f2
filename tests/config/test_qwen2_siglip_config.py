"""Qwen2Config and SiglipVisionConfig read and write config.json like transformers, alone and inside LlavaConfig."""

from __future__ import annotations

import json

import pytest
import transformers

from llavakit.config import AutoConfig, LlavaConfig, Qwen2Config, SiglipVisionConfig

# The interleave-qwen-0.5b config.json as the Hub has it (sparse sub-configs, legacy rope_theta).
INTERLEAVE = {
    "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 151646,
    "projector_hidden_act": "gelu", "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
    "torch_dtype": "float16",
    "text_config": {"model_type": "qwen2", "hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16,
                    "num_hidden_layers": 24, "num_key_value_heads": 16, "rope_theta": 1000000.0,
                    "tie_word_embeddings": True, "vocab_size": 152000, "max_window_layers": 21,
                    "sliding_window": 32768, "use_sliding_window": False, "eos_token_id": 151645},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
                      "patch_size": 14, "vision_use_head": False},
}
KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "sliding_window",
        "use_sliding_window", "max_window_layers", "layer_types", "bos_token_id", "eos_token_id", "rope_parameters")


def test_qwen2_defaults_match_transformers():
    theirs, mine = transformers.Qwen2Config().to_dict(), Qwen2Config().to_dict()
    mine["rope_parameters"] = {"rope_type": "default", "rope_theta": mine.pop("rope_theta")}
    for key in KEYS:
        assert mine[key] == theirs[key], key


@pytest.mark.parametrize("kwargs", [{}, {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2},
                                    {"rope_theta": 1e6, "tie_word_embeddings": True, "num_hidden_layers": 4}])
def test_qwen2_round_trips_through_transformers(kwargs, tmp_path):
    theirs = transformers.Qwen2Config(**kwargs)
    mine = Qwen2Config.from_dict(theirs.to_dict())
    assert mine.layer_types == theirs.layer_types and mine.sliding_window == theirs.sliding_window
    assert mine.rope_theta == theirs.rope_parameters["rope_theta"]
    mine.save_pretrained(tmp_path)
    back = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(back) is transformers.Qwen2Config
    for key in KEYS:
        assert getattr(back, key) == getattr(theirs, key), key


def test_siglip_round_trips_through_transformers(tmp_path):
    theirs = transformers.SiglipVisionConfig(**INTERLEAVE["vision_config"])
    mine = SiglipVisionConfig.from_dict(theirs.to_dict())
    mine.save_pretrained(tmp_path)
    back = transformers.AutoConfig.from_pretrained(tmp_path)
    for key in ("hidden_size", "image_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "patch_size", "vision_use_head", "hidden_act", "layer_norm_eps"):
        assert getattr(back, key) == getattr(theirs, key) == getattr(mine, key), key
    assert AutoConfig.from_pretrained(tmp_path).model_type == "siglip_vision_model"


def test_full_siglip_config_gives_its_vision_part():
    full = transformers.SiglipConfig(vision_config={"hidden_size": 48, "num_attention_heads": 4}).to_dict()
    assert SiglipVisionConfig.from_dict(full).hidden_size == 48


def test_interleave_hub_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(INTERLEAVE))
    mine = AutoConfig.from_pretrained(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(mine, LlavaConfig)
    assert isinstance(mine.vision_config, SiglipVisionConfig) and isinstance(mine.text_config, Qwen2Config)
    # the text config ties, so the llava config ties too (transformers 5 forwards it)
    assert mine.tie_word_embeddings is True and theirs.tie_word_embeddings is True
    assert mine.text_config.sliding_window is None and theirs.text_config.sliding_window is None
    assert mine.text_config.rope_theta == theirs.text_config.rope_parameters["rope_theta"] == 1e6
    assert mine.vision_config.layer_norm_eps == theirs.vision_config.layer_norm_eps == 1e-6
    assert mine.vision_config.vision_use_head is False
    assert (mine.vision_config.image_size // mine.vision_config.patch_size) ** 2 == 729
    assert mine.vision_feature_layer == -1 and mine.vision_feature_select_strategy == "full"
    mine.save_pretrained(tmp_path / "again")
    back = transformers.AutoConfig.from_pretrained(tmp_path / "again")
    assert back.text_config.model_type == "qwen2" and back.vision_config.model_type == "siglip_vision_model"
    assert back.text_config.hidden_size == 1024 and back.vision_config.hidden_size == 1152


def test_untied_text_config_keeps_llava_untied():
    config = LlavaConfig(text_config={"model_type": "qwen2", "tie_word_embeddings": False})
    assert config.tie_word_embeddings is False
