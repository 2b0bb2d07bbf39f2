"""Llama-3 and Yi-34B style decoders inside LLaVA (the llava-next-8b / 34b text backbones) against transformers.

Both are the Llama architecture with other numbers: Llama-3 has a 128k vocabulary, rope_theta 500000 with
"llama3" frequency scaling and GQA; Yi has a 64064 vocabulary and rope_theta 5e6. The towers stay tiny.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from llavakit.config import LlamaConfig
from llavakit.models.llava import LlavaForConditionalGeneration
from tests import assets

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# head_dim 8: the four RoPE wavelengths (6, 167, 4443, 118k) hit all three llama3 bands (2048 / 8192 cut-offs)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
             rms_norm_eps=1e-5)
BACKBONES = {
    # name: (text config, image token id, pad id)
    "llama3": (dict(SMALL, vocab_size=128320, max_position_embeddings=131072, rope_parameters=LLAMA3_ROPE,
                    bos_token_id=128000, eos_token_id=128009), 128256, 128257),
    "yi": (dict(SMALL, vocab_size=64064, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0}, bos_token_id=1, eos_token_id=7),
           64000, 64001),
}
N_TOKENS = assets.IMAGE_TOKENS  # 16 per image: tiny CLIP tower, "default" strategy
ATOL = 1e-5


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def case(request, tmp_path_factory):
    """(name, transformers model, our model loaded from its save)."""
    text, image_token, pad = BACKBONES[request.param]
    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=dict(assets.TINY_VISION), text_config=dict(text, model_type="llama"),
                                      image_token_index=image_token, pad_token_id=pad)
    hf = transformers.LlavaForConditionalGeneration(config).eval()
    assets.perturb_(hf, 0)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, LlavaForConditionalGeneration.from_pretrained(path)


def prompts(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two left-padded prompts (one and two images) with ids spread over the whole vocabulary."""
    text, image_token, pad = BACKBONES[name]
    gen = torch.Generator().manual_seed(1)
    words = lambda n: torch.randint(3, image_token, (n,), generator=gen).tolist()  # noqa: E731
    bos = text["bos_token_id"]
    rows = [[bos] + words(3) + [image_token] * N_TOKENS + words(2),
            [bos] + words(2) + [image_token] * N_TOKENS + words(3) + [image_token] * N_TOKENS + words(4)]
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pixels = torch.randn(3, 3, 28, 28, generator=gen)
    return ids, mask, pixels


def test_config_is_read_as_given(case):
    name, hf, ours = case
    text = ours.config.text_config
    assert isinstance(text, LlamaConfig) and text.vocab_size == BACKBONES[name][0]["vocab_size"]
    assert text.rope_parameters == hf.config.text_config.rope_parameters
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (8, 2, 8)


def test_rope_frequencies_match_transformers(case):
    _, hf, ours = case
    theirs = hf.model.language_model.rotary_emb.inv_freq
    position_ids = torch.arange(40)[None]
    x = torch.zeros(1, 40, 64)
    with torch.no_grad():
        cos, sin = ours.language_model.model.rotary_emb(x, position_ids)
        ref_cos, ref_sin = hf.model.language_model.rotary_emb(x, position_ids)
    assert theirs.shape == (4,)
    torch.testing.assert_close(cos, ref_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, ref_sin, atol=1e-6, rtol=0)


def test_left_padded_logits_match_transformers(case):
    name, hf, ours = case
    ids, mask, pixels = prompts(name)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids, pixel_values=pixels)
    with torch.no_grad():
        a, b = hf(**inputs), ours(**inputs)
    assert b.logits.shape == (2, ids.shape[1], BACKBONES[name][0]["vocab_size"])
    torch.testing.assert_close(b.logits, a.logits, atol=ATOL, rtol=0)


def test_greedy_generate_matches_transformers(case):
    name, hf, ours = case
    ids, mask, pixels = prompts(name)
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=8, do_sample=False)
    mine = ours.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert mine.tolist() == theirs.tolist()
