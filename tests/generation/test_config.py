"""GenerationConfig: defaults, explicit-vs-default tracking, file round trip, model-config fallback, errors."""

import json

import pytest
import transformers

from llavakit.config.llava import LlavaConfig
from llavakit.generation.config import GenerationConfig


def test_defaults_match_transformers_generate_defaults():
    ours = GenerationConfig()
    theirs = transformers.GenerationConfig._get_default_generation_params()
    for name in ("max_length", "min_length", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                 "num_beams", "use_cache", "return_dict_in_generate", "output_scores"):
        assert getattr(ours, name) == theirs[name], name
    assert ours.max_new_tokens is None and ours.eos_token_id is None and ours.stop_strings is None


def test_explicit_options_are_tracked():
    config = GenerationConfig(max_new_tokens=5, temperature=0.7)
    assert config.is_set("max_new_tokens") and config.is_set("temperature")
    assert not config.is_set("max_length")
    config.max_length = 30
    assert config.is_set("max_length")
    assert config.to_diff_dict() == {"max_new_tokens": 5, "temperature": 0.7, "max_length": 30}


def test_from_pretrained_reads_transformers_file_and_keeps_unknown_keys(tmp_path, tiny_llava_dir):
    config = GenerationConfig.from_pretrained(tiny_llava_dir)
    theirs = transformers.GenerationConfig.from_pretrained(tiny_llava_dir)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "use_cache"):
        assert getattr(config, name) == getattr(theirs, name), name
    assert config.transformers_version == transformers.__version__  # an unknown key, kept
    assert not config.is_set("max_length")

    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    original = json.loads((tiny_llava_dir / "generation_config.json").read_text())
    assert saved == original  # nothing added (no default max_length=20 written), nothing lost
    reread = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert reread.max_length is None and reread.pad_token_id == 32001


def test_from_pretrained_overrides_and_null_means_unset(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"max_length": None, "do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [2, 7]}))
    config = GenerationConfig.from_pretrained(tmp_path, top_p=0.5)
    assert config.max_length == 20 and not config.is_set("max_length")
    assert config.do_sample and config.temperature == 0.6 and config.top_p == 0.5
    assert config.eos_token_id == [2, 7]


def test_from_pretrained_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="generation_config.json"):
        GenerationConfig.from_pretrained(tmp_path)


def test_from_model_config_takes_ids_from_config_then_text_config():
    config = LlavaConfig.from_dict({"pad_token_id": 32001, "text_config": {"model_type": "llama", "eos_token_id": 5,
                                                                          "bos_token_id": 1}})
    generation_config = GenerationConfig.from_model_config(config)
    assert (generation_config.bos_token_id, generation_config.eos_token_id, generation_config.pad_token_id) \
        == (1, 5, 32001)
    theirs = transformers.GenerationConfig.from_model_config(transformers.LlavaConfig(
        pad_token_id=32001, text_config={"model_type": "llama", "eos_token_id": 5, "bos_token_id": 1}))
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (1, 5, 32001)
    as_dict = GenerationConfig.from_model_config({"text_config": {"eos_token_id": [2, 3]}})
    assert as_dict.eos_token_id == [2, 3] and as_dict.bos_token_id is None


def test_update_returns_unused_kwargs_and_none_means_off():
    config = GenerationConfig()
    unused = config.update(max_new_tokens=3, do_sample=True, top_k=None, temperature=None, pixel_values="x")
    assert unused == {"pixel_values": "x"}
    assert config.max_new_tokens == 3 and config.do_sample and config.top_k is None and config.temperature == 1.0
    config.update(max_length=None)
    assert not config.is_set("max_length")


def test_merged_with_defaults_fills_only_unset_options():
    model_defaults = GenerationConfig(eos_token_id=2, pad_token_id=0, max_new_tokens=50, temperature=0.3)
    merged = GenerationConfig(max_new_tokens=4).merged_with_defaults(model_defaults)
    assert merged.max_new_tokens == 4 and merged.eos_token_id == 2 and merged.pad_token_id == 0
    assert merged.temperature == 0.3


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 1, got -1"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_length=0), "max_length"),
    (dict(min_new_tokens=-2), "min_new_tokens"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when do_sample=True, got 0.0"),
    (dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\] \(1.0 = off\), got 1.5"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(top_k=-3), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(max_time=-1), "max_time"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(eos_token_id="2"), "eos_token_id"),
    (dict(stop_strings=""), "stop_strings"),
    (dict(stop_strings=["ok", 3]), "stop_strings"),
])
def test_nonsense_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_update_validates_and_unsupported_transformers_options_error():
    config = GenerationConfig()
    with pytest.raises(ValueError, match="top_p"):
        config.update(do_sample=True, top_p=2.0)
    with pytest.raises(ValueError, match="token_healing=True is a transformers generation option"):
        GenerationConfig.from_dict({"token_healing": True})
    with pytest.raises(ValueError, match="penalty_alpha=0.6 selects contrastive search, which transformers moved out"):
        GenerationConfig.from_dict({"penalty_alpha": 0.6})
    assert GenerationConfig.from_dict({"penalty_alpha": 0.0}).penalty_alpha == 0.0  # the "off" value is fine
    assert GenerationConfig.from_dict({"typical_p": 0.5}).typical_p == 0.5  # supported now


def test_greedy_ignores_sampling_values():
    # Files often carry sampling values with do_sample=false; greedy decoding does not use them.
    config = GenerationConfig.from_dict({"do_sample": False, "temperature": 0.0, "top_p": 0.0})
    assert config.temperature == 0.0


def test_new_options_round_trip_through_json(tmp_path):
    from llavakit.generation.watermark import WatermarkingConfig

    config = GenerationConfig(num_beams=4, num_return_sequences=2, early_stopping="never", length_penalty=0.7,
                              sequence_bias={(5, 6): -2.0}, watermarking_config=WatermarkingConfig(bias=3.0),
                              no_repeat_ngram_size=3, min_p=0.1)
    config.save_pretrained(tmp_path)
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded.num_beams == 4 and loaded.early_stopping == "never" and loaded.min_p == 0.1
    assert loaded.sequence_bias == [[[5, 6], -2.0]] and loaded.watermarking_config["bias"] == 3.0
