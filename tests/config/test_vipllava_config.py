"""VipLlavaConfig reads and writes config.json like transformers: both names of the layer list, defaults, errors."""

import json

import pytest
import transformers

from llavakit import AutoConfig, CLIPVisionConfig, LlamaConfig, MistralConfig, VipLlavaConfig

TINY_VISION = {"model_type": "clip_vision_model", "hidden_size": 32, "num_hidden_layers": 3,
               "num_attention_heads": 4, "intermediate_size": 64}

# The shape of llava-hf/vip-llava-7b-hf's config.json (transformers 4.x): the v4 key `vision_feature_layers`.
VIP_LLAVA_7B = {
    "architectures": ["VipLlavaForConditionalGeneration"],
    "image_token_index": 32000,
    "model_type": "vipllava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "projector_layernorm_eps": 1e-05,
    "text_config": {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
                    "vocab_size": 32064, "torch_dtype": "float16"},
    "torch_dtype": "float16",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layers": [-2, -5, -8, -11, 6],
}


def test_defaults_match_transformers():
    ours, theirs = VipLlavaConfig(), transformers.VipLlavaConfig()
    for name in ("image_token_index", "projector_hidden_act", "projector_layernorm_eps", "image_seq_length",
                 "tie_word_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.vision_feature_layers == list(theirs.vision_feature_layer) == [-2, -5, -8, -11, 6]
    assert ours.vision_feature_layer == ours.vision_feature_layers and ours.image_token_id == 32000
    assert not hasattr(ours, "vision_feature_select_strategy")
    assert isinstance(ours.vision_config, CLIPVisionConfig) and isinstance(ours.text_config, LlamaConfig)
    for name in ("hidden_size", "image_size", "patch_size", "num_hidden_layers", "intermediate_size"):
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), name


def test_hub_config_with_the_v4_key_name():
    config = AutoConfig.from_dict(VIP_LLAVA_7B)
    assert type(config) is VipLlavaConfig
    assert config.vision_feature_layers == [-2, -5, -8, -11, 6]
    assert config.text_config.rms_norm_eps == 1e-5 and config.text_config.vocab_size == 32064
    assert config.vision_config.num_hidden_layers == 24 and config.dtype == "float16"
    assert config.pad_token_id == 32001  # unknown keys are kept


@pytest.mark.parametrize("key", ["vision_feature_layers", "vision_feature_layer"])
def test_either_key_name_in_a_dict_and_in_kwargs(key):
    from_dict = VipLlavaConfig.from_dict({"vision_config": TINY_VISION, key: [-2, 1]})
    from_kwargs = VipLlavaConfig(vision_config=TINY_VISION, **{key: [-2, 1]})
    assert from_dict.vision_feature_layers == from_kwargs.vision_feature_layers == [-2, 1]
    assert "vision_feature_layer" not in from_dict.to_dict()


def test_an_override_under_either_name_beats_the_file():
    data = {"vision_config": TINY_VISION, "vision_feature_layers": [-2, 1]}
    assert VipLlavaConfig.from_dict(data, vision_feature_layer=[3]).vision_feature_layers == [3]
    v5 = {"vision_config": TINY_VISION, "vision_feature_layer": [-2, 1]}
    assert VipLlavaConfig.from_dict(v5, vision_feature_layers=[0, 1]).vision_feature_layers == [0, 1]
    with pytest.raises(ValueError, match="two names for the same setting"):
        VipLlavaConfig(vision_config=TINY_VISION, vision_feature_layers=[1], vision_feature_layer=[2])


def test_alias_assignment_and_int_and_tuple_layers():
    config = VipLlavaConfig(vision_config=TINY_VISION, vision_feature_layer=2)
    assert config.vision_feature_layers == [2]  # one layer: a one-item list, same features
    config.vision_feature_layer = (-1, 0)
    assert config.vision_feature_layers == [-1, 0]
    config.image_token_id = 5
    assert config.image_token_index == 5
    saved = config.to_dict()
    assert "vision_feature_layer" not in saved and "image_token_id" not in saved


def test_to_dict_writes_the_v4_name_and_transformers_reads_it(tmp_path):
    config = VipLlavaConfig(vision_config=TINY_VISION, text_config={"model_type": "mistral", "sliding_window": 8},
                            vision_feature_layers=[-1, 1], projector_layernorm_eps=1e-6)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "vipllava" and saved["vision_feature_layers"] == [-1, 1]
    assert "vision_feature_layer" not in saved
    theirs = transformers.VipLlavaConfig.from_pretrained(tmp_path)
    assert list(theirs.vision_feature_layer) == [-1, 1] and theirs.projector_layernorm_eps == 1e-6
    assert theirs.text_config.model_type == "mistral" and theirs.vision_config.hidden_size == 32
    again = AutoConfig.from_pretrained(tmp_path)
    assert type(again) is VipLlavaConfig and isinstance(again.text_config, MistralConfig)
    assert again.to_dict() == config.to_dict()


def test_reads_what_transformers_writes(tmp_path):
    transformers.VipLlavaConfig(vision_config=TINY_VISION, vision_feature_layer=[-3, 2]).save_pretrained(tmp_path)
    assert "vision_feature_layer" in json.loads((tmp_path / "config.json").read_text())
    assert VipLlavaConfig.from_pretrained(tmp_path).vision_feature_layers == [-3, 2]


@pytest.mark.parametrize("layers, message", [
    ([-2, 4], "entry 4 is out of range for a vision tower with 3 layers \\(valid: -4..3\\)"),
    ([-5], "entry -5 is out of range"),
    ([], "non-empty list"),
    (["-2"], "entries must be ints, got '-2'"),
    ([True], "entries must be ints, got True"),
    (7, "entry 7 is out of range"),
])
def test_bad_layer_lists_are_rejected(layers, message):
    with pytest.raises(ValueError, match=message):
        VipLlavaConfig(vision_config=TINY_VISION, vision_feature_layers=layers)


def test_default_layers_need_a_deep_enough_tower():
    with pytest.raises(ValueError, match="entry -5 is out of range for a vision tower with 3 layers"):
        VipLlavaConfig(vision_config=TINY_VISION)


def test_other_bad_values_are_rejected():
    with pytest.raises(ValueError, match="projector_hidden_act"):
        VipLlavaConfig(projector_hidden_act="swish2")
    with pytest.raises(ValueError, match="projector_layernorm_eps must be a positive number, got 0"):
        VipLlavaConfig(projector_layernorm_eps=0)
    with pytest.raises(ValueError, match="expects model_type 'vipllava'"):
        VipLlavaConfig.from_dict({"model_type": "llava"})
