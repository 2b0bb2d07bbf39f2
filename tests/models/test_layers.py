"""Shared layers: RMSNorm, activations, masks, logit slicing and the LM loss against transformers."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from llavakit.models.layers import RMSNorm, activation, causal_lm_loss, causal_mask, keep_positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers(dtype):
    ours, ref = RMSNorm(16, eps=1e-5), LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(2, 3, 16, dtype=dtype)
    assert torch.equal(ours.to(dtype)(x), ref.to(dtype)(x))


@pytest.mark.parametrize("name", ["quick_gelu", "gelu", "gelu_pytorch_tanh", "relu", "silu"])
def test_activations_match_transformers(name):
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(activation(name)(x), ACT2FN[name](x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="activation 'swish2' is not supported"):
        activation("swish2")


def test_loss_matches_transformers():
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :2] = -100
    assert torch.equal(causal_lm_loss(logits, labels), ForCausalLMLoss(logits, labels, vocab_size=11))
    torch.testing.assert_close(causal_lm_loss(logits, labels, num_items_in_batch=4),
                               ForCausalLMLoss(logits, labels, vocab_size=11, num_items_in_batch=4))


def test_causal_mask_patterns():
    padding = torch.tensor([[0, 1, 1, 1, 1]])
    mask = causal_mask(padding, batch_size=1, q_len=5, past_len=0, dtype=torch.float32, device="cpu", eager=False,
                       sliding_window=3)
    expected = torch.tensor([[0, 0, 0, 0, 0],
                             [0, 1, 0, 0, 0],
                             [0, 1, 1, 0, 0],
                             [0, 1, 1, 1, 0],
                             [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    eager = causal_mask(padding, batch_size=1, q_len=1, past_len=4, dtype=torch.float32, device="cpu", eager=True)
    assert eager.shape == (1, 1, 1, 5) and eager[0, 0, 0, 0] == torch.finfo(torch.float32).min
    assert (eager[0, 0, 0, 1:] == 0).all()
    # sdpa without padding uses is_causal instead of a mask
    assert causal_mask(torch.ones(1, 5), batch_size=1, q_len=5, past_len=0, dtype=torch.float32, device="cpu",
                       eager=False) is None


def test_keep_positions():
    hidden = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    assert torch.equal(keep_positions(hidden, 0), hidden)
    assert torch.equal(keep_positions(hidden, 2), hidden[:, 3:])
    assert torch.equal(keep_positions(hidden, torch.tensor([0, 4])), hidden[:, [0, 4]])
    per_row = torch.tensor([[1], [3]])
    assert torch.equal(keep_positions(hidden, per_row), torch.stack([hidden[0, [1]], hidden[1, [3]]]))
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0"):
        keep_positions(hidden, -1)


# ---- flash_attention_2 -------------------------------------------------------------------------
def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(_has_flash_attn() and torch.cuda.is_available(), reason="flash-attn and CUDA are available")
@pytest.mark.parametrize("kwargs", [dict(attn_implementation="flash_attention_2"), dict(use_flash_attention_2=True)])
def test_flash_attention_2_without_flash_attn_is_a_clear_error(tiny_llava_dir, kwargs):
    from llavakit import LlavaForConditionalGeneration

    with pytest.raises(ImportError, match="flash_attention_2 needs the flash-attn package and a CUDA GPU: "
                                          "pip install flash-attn"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, **kwargs)


def test_decode_query_folds_grouped_heads_instead_of_repeating_kv():
    from llavakit.models.layers import attention, repeat_kv

    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 8, 1, 16, generator=gen), torch.randn(2, 2, 9, 16, generator=gen), torch.randn(
        2, 2, 9, 16, generator=gen)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding in the first row
    out, _ = attention(q, k, v, mask, scale=0.25, eager=False)
    reference = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4), attn_mask=mask,
                                                                 scale=0.25).transpose(1, 2)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


@pytest.mark.skipif(not (_has_flash_attn() and torch.cuda.is_available()), reason="needs flash-attn and CUDA")
def test_flash_attention_2_matches_sdpa_on_cuda(tiny_llava_dir):
    from llavakit import LlavaForConditionalGeneration

    ids = torch.randint(3, 31000, (2, 24), device="cuda")
    logits = []
    for impl in ("sdpa", "flash_attention_2"):
        model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation=impl,
                                                              dtype=torch.bfloat16, device_map="cuda")
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits.float())
    torch.testing.assert_close(logits[0], logits[1], atol=5e-2, rtol=5e-2)
