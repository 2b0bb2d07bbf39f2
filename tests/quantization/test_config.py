"""Quantization configs: transformers' field names and defaults, short names, dicts and transformers' objects."""

from __future__ import annotations

import pytest
import torch
import transformers

from llavakit.quantization import BitsAndBytesConfig, WeightOnlyConfig, parse_config
from llavakit.quantization.config import DEFAULT_SKIP
from llavakit.quantization.select import is_skipped


def test_bnb_defaults_match_transformers():
    ours = BitsAndBytesConfig(load_in_4bit=True).to_dict()
    theirs = transformers.BitsAndBytesConfig(load_in_4bit=True).to_dict()
    for key, value in ours.items():
        if key != "quant_method":
            assert theirs[key] == value, key


def test_transformers_objects_and_dicts():
    theirs = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    ours = parse_config(theirs)
    assert isinstance(ours, BitsAndBytesConfig) and ours.load_in_4bit and not ours.load_in_8bit
    assert (ours.bnb_4bit_quant_type, ours.bnb_4bit_compute_dtype, ours.bnb_4bit_use_double_quant) == \
        ("nf4", torch.bfloat16, True)
    assert parse_config({"load_in_8bit": True}).load_in_8bit
    # TorchAoConfig needs torchao installed; its to_dict() shape is what from_pretrained receives
    torchao_like = {"quant_method": "torchao", "quant_type": "int4_weight_only", "quant_type_kwargs": {"group_size": 64}}
    assert parse_config(torchao_like) == WeightOnlyConfig(bits=4, group_size=64)
    assert parse_config("int8_weight_only") == WeightOnlyConfig(bits=8)
    assert parse_config("nf4").bnb_4bit_quant_type == "nf4"


def test_default_skip_and_name_matching():
    assert BitsAndBytesConfig(load_in_8bit=True).skip_modules == DEFAULT_SKIP
    assert BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"]).skip_modules == ("lm_head",)
    skip = ("model.vision_tower", "lm_head")
    assert is_skipped("vision_tower.vision_model.encoder.layers.0.mlp.fc1", skip)
    assert is_skipped("language_model.lm_head", skip)
    assert not is_skipped("language_model.model.layers.0.mlp.up_proj", skip)
    assert is_skipped("language_model.model.layers.1.mlp.up_proj", (r"layers\.1",))
    assert not is_skipped("language_model.model.layers.11.mlp.up_proj", (r"layers\.1",))


@pytest.mark.parametrize("bad, message", [
    (dict(load_in_4bit=True, load_in_8bit=True), "load_in_4bit and load_in_8bit are both True"),
    (dict(), "needs load_in_4bit=True or load_in_8bit=True"),
    (dict(load_in_4bit=True, bnb_4bit_quant_type="int4"), "bnb_4bit_quant_type must be one of"),
    (dict(load_in_4bit=True, bnb_4bit_compute_dtype="float33"), "unknown dtype"),
])
def test_bad_bnb_config(bad, message):
    with pytest.raises(ValueError, match=message):
        BitsAndBytesConfig(**bad)


def test_bad_names_and_methods():
    with pytest.raises(ValueError, match="bits=8 or bits=4"):
        WeightOnlyConfig(bits=3)
    with pytest.raises(ValueError, match="group_size must be one of"):
        WeightOnlyConfig(bits=4, group_size=100)
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        parse_config("int3")
    with pytest.raises(ValueError, match="quant_method 'gptq' is not supported"):
        parse_config({"quant_method": "gptq", "bits": 4})
    with pytest.raises(ValueError, match="torchao quant_type 'int8_dynamic_activation_int8_weight'"):
        parse_config({"quant_method": "torchao", "quant_type": "int8_dynamic_activation_int8_weight"})
    with pytest.raises(TypeError, match="quantization_config must be"):
        parse_config(8)
