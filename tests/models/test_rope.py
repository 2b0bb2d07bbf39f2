"""RoPE frequencies and rotation against transformers' rope init functions and rotary embedding."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llavakit.config import LlamaConfig
from llavakit.models.rope import RotaryEmbedding, apply_rotary, rope_inv_freq

BASE = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=32)
ROPES = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "default", "rope_theta": 500000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8},
]


@pytest.mark.parametrize("rope", ROPES, ids=lambda r: f"{r['rope_type']}-{r['rope_theta']:g}")
def test_inv_freq_matches_transformers(rope):
    hf_config = transformers.LlamaConfig(**BASE, rope_parameters=dict(rope))
    ours = rope_inv_freq(LlamaConfig(**BASE, rope_parameters=dict(rope)))
    if rope["rope_type"] == "default":
        expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config)
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_config)
    assert ours.dtype == torch.float32 and ours.shape == (8,)
    assert torch.equal(ours, expected)


def test_dynamic_frequencies_grow_past_the_trained_length():
    rope = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    hf_config = transformers.LlamaConfig(**BASE, rope_parameters=dict(rope))
    config = LlamaConfig(**BASE, rope_parameters=dict(rope))
    expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_config, seq_len=torch.tensor(50))
    torch.testing.assert_close(rope_inv_freq(config, 50), expected, atol=0, rtol=1e-6)
    assert not torch.allclose(rope_inv_freq(config, 50), rope_inv_freq(config))


def test_cos_sin_and_rotation_match_transformers():
    hf_config = transformers.LlamaConfig(**BASE)
    ref = LlamaRotaryEmbedding(hf_config)
    ours = RotaryEmbedding(LlamaConfig(**BASE))
    x = torch.randn(2, 5, 64)
    position_ids = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    cos, sin = ours(x, position_ids)
    ref_cos, ref_sin = ref(x, position_ids)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16)
    for got, want in zip(apply_rotary(q, k, cos, sin), apply_rotary_pos_emb(q, k, ref_cos, ref_sin)):
        assert torch.equal(got, want)
    assert list(ours.named_buffers()) == []
