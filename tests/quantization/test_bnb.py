"""bitsandbytes through from_pretrained: same layers and logits as transformers + bitsandbytes, on CPU
(bitsandbytes >= 0.50 runs 4-bit and LLM.int8 layers on CPU), with the vision tower and projector kept."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

import transformers  # noqa: E402

from llavakit import LlavaForConditionalGeneration  # noqa: E402
from llavakit.quantization import BitsAndBytesConfig  # noqa: E402
from tests.parity import image_prompt, random_pixels  # noqa: E402

# transformers' skip patterns match from the start of its names (`model.vision_tower...`); by default it
# quantizes the vision tower and projector too, so its side names them. llavakit keeps them by default.
THEIR_SKIP = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
CASES = {"nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
         "fp4-double-quant": dict(load_in_4bit=True, bnb_4bit_use_double_quant=True),
         "int8": dict(load_in_8bit=True)}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers_bitsandbytes(tiny_llava_dir, case):
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(
        tiny_llava_dir, device_map="cpu",
        quantization_config=transformers.BitsAndBytesConfig(llm_int8_skip_modules=THEIR_SKIP, **CASES[case]))
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, quantization_config=BitsAndBytesConfig(
        **CASES[case]))
    full = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    layer_class = bnb.nn.Linear4bit if "load_in_4bit" in CASES[case] else bnb.nn.Linear8bitLt
    assert type(ours.language_model.model.layers[1].self_attn.k_proj) is layer_class
    assert type(ours.vision_tower.vision_model.encoder.layers[0].self_attn.q_proj) is nn.Linear
    assert type(ours.multi_modal_projector.linear_2) is nn.Linear

    ids, pixels = torch.tensor([image_prompt(1)]), random_pixels(1)
    with torch.no_grad():
        expected = theirs(input_ids=ids, pixel_values=pixels).logits
        got = ours(input_ids=ids, pixel_values=pixels).logits
        plain = full(input_ids=ids, pixel_values=pixels).logits
        assert (got - plain).abs().max() > 1e-3  # the layers really are quantized
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        kwargs = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
        assert torch.equal(ours.generate(**kwargs), theirs.generate(**kwargs))


def test_transformers_config_object_is_accepted(tiny_llava_dir):
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, quantization_config=config)
    layer = model.language_model.model.layers[0].mlp.up_proj
    assert type(layer) is bnb.nn.Linear4bit and layer.compute_dtype == torch.bfloat16
    assert model.is_loaded_in_4bit and model.quantization_config.bnb_4bit_quant_type == "nf4"
    assert type(model.vision_tower.vision_model.encoder.layers[0].mlp.fc1) is nn.Linear


def test_missing_bitsandbytes_is_a_clear_error(tiny_llava_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(ImportError, match="needs bitsandbytes: pip install 'llavakit\\[quant\\]'"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, quantization_config="nf4")


def test_cpu_offload_is_refused(tiny_llava_dir):
    with pytest.raises(ValueError, match="llm_int8_enable_fp32_cpu_offload is not supported"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, quantization_config=BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=True))
