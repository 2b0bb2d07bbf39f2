"""Auto classes choose the model class from config.json's model_type."""

from __future__ import annotations

import pytest
import torch
import transformers

from llavakit.config import LlamaConfig, LlavaConfig, MistralConfig
from llavakit.models.auto import (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                                  AutoModelForVision2Seq)
from llavakit.models.clip import CLIPVisionModel
from llavakit.models.llama import LlamaForCausalLM, LlamaModel, MistralForCausalLM
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel
from tests import assets


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**dict(assets.TINY_TEXT, vocab_size=256))
    model = transformers.LlamaForCausalLM(config).eval()
    assets.perturb_(model)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path


def test_image_text_to_text_loads_llava(tiny_llava_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    assert type(model) is LlavaForConditionalGeneration
    assert type(AutoModelForVision2Seq.from_pretrained(tiny_llava_dir)) is LlavaForConditionalGeneration
    assert type(AutoModel.from_pretrained(tiny_llava_dir)) is LlavaModel


def test_auto_model_passes_loading_options(tiny_llava_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.bfloat16,
                                                        attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config.text_config._attn_implementation == "eager"


def test_causal_lm_loads_llama_and_matches_transformers(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert type(model) is LlamaForCausalLM
    assert type(AutoModel.from_pretrained(llama_dir)) is LlamaModel
    reference = transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_unsupported_model_type_lists_the_supported_ones(tiny_llava_dir, llama_dir):
    with pytest.raises(ValueError, match=r"does not support model_type 'llava'; supported: \['llama', 'mistral'"):
        AutoModelForCausalLM.from_pretrained(tiny_llava_dir)
    with pytest.raises(ValueError, match="does not support model_type 'llama'; supported: \\['llava'"):
        AutoModelForImageTextToText.from_pretrained(llama_dir)


def test_from_config_builds_a_random_model():
    config = LlavaConfig(vision_config=dict(assets.TINY_VISION), text_config=dict(assets.TINY_TEXT))
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager")
    assert type(model) is LlavaForConditionalGeneration
    assert model.config.vision_config._attn_implementation == "eager"
    assert type(AutoModelForCausalLM.from_config(LlamaConfig(**assets.TINY_TEXT))) is LlamaForCausalLM
    assert type(AutoModel.from_config(config.vision_config)) is CLIPVisionModel
    assert type(AutoModelForCausalLM.from_config(MistralConfig(**assets.TINY_TEXT))) is MistralForCausalLM
