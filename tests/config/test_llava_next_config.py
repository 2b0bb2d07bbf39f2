"""LlavaNextConfig reads and writes config.json like transformers: pinpoints, old Hub extras, tying, errors."""

import json

import pytest
import transformers

from llavakit import AutoConfig, CLIPVisionConfig, LlavaConfig, LlavaNextConfig, MistralConfig

TINY_VISION = {"model_type": "clip_vision_model", "hidden_size": 32, "num_hidden_layers": 3,
               "num_attention_heads": 4, "intermediate_size": 64, "image_size": 28, "patch_size": 7}

# The shape of llava-hf/llava-v1.6-mistral-7b-hf's config.json (transformers 4.x), with its old extras.
LLAVA_V16_MISTRAL = {
    "architectures": ["LlavaNextForConditionalGeneration"],
    "ignore_index": -100,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_token_index": 32000,
    "model_type": "llava_next",
    "projector_hidden_act": "gelu",
    "text_config": {"architectures": ["MistralForCausalLM"], "intermediate_size": 14336,
                    "max_position_embeddings": 32768, "model_type": "mistral", "num_key_value_heads": 8,
                    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
                    "torch_dtype": "bfloat16", "vocab_size": 32064},
    "torch_dtype": "float16",
    "use_image_newline_parameter": True,
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}


def test_defaults_match_transformers():
    ours, theirs = LlavaNextConfig(), transformers.LlavaNextConfig()
    assert ours.model_type == theirs.model_type == "llava_next"
    for name in ("image_grid_pinpoints", "image_token_index", "projector_hidden_act", "vision_feature_layer",
                 "vision_feature_select_strategy", "image_seq_length", "multimodal_projector_bias",
                 "tie_word_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name
    for name in ("hidden_size", "image_size", "patch_size", "num_hidden_layers", "intermediate_size"):
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), name
    assert isinstance(ours, LlavaConfig) and isinstance(ours.vision_config, CLIPVisionConfig)
    assert LlavaNextConfig(image_grid_pinpoints=None).image_grid_pinpoints == theirs.image_grid_pinpoints


def test_hub_config_with_old_extras():
    config = AutoConfig.from_dict(LLAVA_V16_MISTRAL)
    assert type(config) is LlavaNextConfig
    assert isinstance(config.text_config, MistralConfig) and config.text_config.sliding_window is None
    assert config.image_grid_pinpoints == LLAVA_V16_MISTRAL["image_grid_pinpoints"]
    assert config.use_image_newline_parameter is True and config.ignore_index == -100  # kept as unknown keys
    saved = config.to_dict()
    assert saved["use_image_newline_parameter"] is True and saved["model_type"] == "llava_next"
    theirs = transformers.LlavaNextConfig.from_dict(LLAVA_V16_MISTRAL)
    assert saved["image_grid_pinpoints"] == theirs.image_grid_pinpoints


def test_tie_word_embeddings_is_not_taken_from_the_text_config():
    text = {"model_type": "llama", "tie_word_embeddings": True}
    ours, theirs = LlavaNextConfig(text_config=text), transformers.LlavaNextConfig(text_config=text)
    assert ours.tie_word_embeddings is theirs.tie_word_embeddings is False
    assert ours.text_config.tie_word_embeddings is True
    assert LlavaConfig(text_config=text).tie_word_embeddings is True  # LLaVA does copy it
    assert LlavaNextConfig(text_config=text, tie_word_embeddings=True).tie_word_embeddings is True


def test_saved_config_is_read_back_by_transformers(tmp_path):
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    ours = LlavaNextConfig(vision_config=TINY_VISION, image_grid_pinpoints=pinpoints, vision_feature_layer=[-2, -1])
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(theirs) is transformers.LlavaNextConfig
    assert theirs.image_grid_pinpoints == pinpoints and list(theirs.vision_feature_layer) == [-2, -1]
    again = LlavaNextConfig.from_pretrained(tmp_path)
    assert again.to_dict() == ours.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["image_grid_pinpoints"] == pinpoints


def test_tuples_are_stored_as_lists():
    config = LlavaNextConfig(image_grid_pinpoints=((336, 672), (672, 336)))
    assert config.image_grid_pinpoints == [[336, 672], [672, 336]]


@pytest.mark.parametrize("pinpoints, message", [
    ([], "non-empty list"),
    ("336x672", "non-empty list"),
    ([[336, 672], [672]], r"\(height, width\) pair"),
    ([[336, 0]], "positive integers"),
    ([[336, 67.2]], "positive integers"),
    ([336, 672], r"\(height, width\) pair"),
])
def test_bad_pinpoints_are_rejected(pinpoints, message):
    with pytest.raises(ValueError, match=message):
        LlavaNextConfig(image_grid_pinpoints=pinpoints)


def test_llava_checks_still_apply():
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        LlavaNextConfig(vision_feature_select_strategy="cls")
    with pytest.raises(ValueError, match="expects model_type 'llava_next'"):
        LlavaNextConfig.from_dict({"model_type": "llava"})
