"""Configs read config.json exactly as transformers does: sparse sub-configs, old/new key names, errors."""

import json

import pytest
import transformers

from llavakit import AutoConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig, MistralConfig

# The shape of llava-hf/llava-1.5-7b-hf's config.json: only non-default sub-config keys.
LLAVA_15_7B = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}

TEXT_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
               "eos_token_id", "tie_word_embeddings", "attention_bias", "mlp_bias"]
VISION_FIELDS = ["hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps"]
TOP_FIELDS = ["image_token_index", "projector_hidden_act", "vision_feature_select_strategy", "vision_feature_layer",
              "image_seq_length", "multimodal_projector_bias", "tie_word_embeddings"]


def assert_same_as_transformers(ours: LlavaConfig, theirs) -> None:
    for name in TOP_FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    for name in TEXT_FIELDS:
        if hasattr(theirs.text_config, name):  # Mistral has no bias flags
            assert getattr(ours.text_config, name) == getattr(theirs.text_config, name), f"text_config.{name}"
    assert ours.text_config.rope_theta == theirs.text_config.rope_parameters["rope_theta"]
    for name in VISION_FIELDS:
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), f"vision_config.{name}"


@pytest.mark.parametrize("data", [
    LLAVA_15_7B,
    {"model_type": "llava"},  # everything from LLaVA's own defaults (CLIP-L/336 + Llama-2-7B)
    {"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"}},  # CLIP's own defaults
    {"model_type": "llava", "text_config": {"model_type": "mistral"}, "vision_feature_layer": [-2, -5],
     "vision_feature_select_strategy": "full", "image_token_id": 7},
], ids=["llava-1.5-7b-hf", "empty", "clip-defaults", "mistral-list-layers"])
def test_sparse_configs_resolve_like_transformers(data):
    ours = LlavaConfig.from_dict(data)
    theirs = transformers.LlavaConfig.from_dict(data)
    assert_same_as_transformers(ours, theirs)


def test_sparse_sub_config_takes_the_class_defaults_not_llava_defaults():
    config = LlavaConfig.from_dict({"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"}})
    assert (config.vision_config.hidden_size, config.vision_config.image_size) == (768, 224)
    assert LlavaConfig().vision_config.image_size == 336


def test_hub_fixture_config(tiny_llava_hub_dir):
    data = json.loads((tiny_llava_hub_dir / "config.json").read_text())
    ours = AutoConfig.from_pretrained(tiny_llava_hub_dir)
    assert isinstance(ours, LlavaConfig) and ours.dtype == "float32"
    assert_same_as_transformers(ours, transformers.LlavaConfig.from_dict(data))


def test_old_and_new_key_names():
    new = LlavaConfig.from_dict({"image_token_id": 5, "dtype": "bfloat16",
                                 "text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}})
    old = LlavaConfig.from_dict({"image_token_index": 5, "torch_dtype": "bfloat16",
                                 "text_config": {"rope_theta": 5e5}})
    for config in (new, old):
        assert config.image_token_index == config.image_token_id == 5
        assert config.dtype == "bfloat16"
        assert config.text_config.rope_theta == 5e5


def test_llama3_rope_scaling_from_legacy_keys():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = LlamaConfig.from_dict({"rope_theta": 500000.0, "rope_scaling": scaling,
                                    "max_position_embeddings": 131072})
    assert config.rope_parameters == {**scaling, "rope_theta": 500000.0}
    saved = config.to_dict()
    assert saved["rope_theta"] == 500000.0 and saved["rope_scaling"] == scaling
    theirs = transformers.LlamaConfig.from_dict(saved)
    assert theirs.rope_parameters == config.rope_parameters


def test_mistral_defaults_match_transformers():
    ours, theirs = MistralConfig(), transformers.MistralConfig()
    for name in TEXT_FIELDS + ["sliding_window"]:
        if hasattr(theirs, name):
            assert getattr(ours, name) == getattr(theirs, name), name
    assert MistralConfig.from_dict({"sliding_window": None}).sliding_window is None


def test_unknown_keys_survive_a_round_trip(tmp_path):
    config = LlavaConfig.from_dict(LLAVA_15_7B)
    assert config.ignore_index == -100 and config.pad_token_id == 32001
    config.save_pretrained(tmp_path)
    again = LlavaConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert again.pad_token_id == 32001 and again.text_config._name_or_path == "lmsys/vicuna-7b-v1.5"
    # transformers reads what we write and sees the same model
    assert_same_as_transformers(again, transformers.LlavaConfig.from_pretrained(tmp_path))


def test_attributes_set_later_are_saved():
    config = CLIPVisionConfig()
    config.my_note = "hello"
    assert config.to_dict()["my_note"] == "hello"


@pytest.mark.parametrize("data, message", [
    ({"model_type": "llava", "text_config": {"model_type": "gemma"}}, "unsupported text_config model_type 'gemma'"),
    ({"model_type": "llava", "vision_config": {"model_type": "dinov2"}}, "unsupported vision_config"),
    ({"model_type": "llava", "vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
    ({"model_type": "llava", "vision_feature_layer": 40}, "vision_feature_layer 40 is out of range"),
    ({"model_type": "llava", "text_config": {"num_attention_heads": 32, "num_key_value_heads": 5}},
     "multiple of num_key_value_heads"),
    ({"model_type": "llava", "text_config": {"hidden_size": -4}}, "hidden_size must be a positive integer"),
    ({"model_type": "llava", "text_config": {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}},
     "rope_type 'yarn' is not supported"),
    ({"model_type": "llava", "vision_config": {"hidden_size": 30, "num_attention_heads": 4}}, "divisible"),
])
def test_invalid_configs_get_clear_errors(data, message):
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_dict(data)


def test_unsupported_model_type():
    with pytest.raises(ValueError, match="unsupported model_type 'blip2'.*supports"):
        AutoConfig.from_dict({"model_type": "blip2"})
    with pytest.raises(ValueError, match="expects model_type 'llava'"):
        LlavaConfig.from_dict({"model_type": "mistral"})
