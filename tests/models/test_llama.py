"""Llama / Mistral decoders against transformers on tiny random models with perturbed weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from llavakit.config import LlamaConfig, MistralConfig
from llavakit.models.cache import DynamicCache
from llavakit.models.llama import LlamaForCausalLM, LlamaModel, MistralForCausalLM
from tests.assets import perturb_
from tests.parity import assert_close, run_both
from tests.reference import cache_kwargs, output_cache

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
ATOL = 1e-5


def make_pair(family: str = "llama", attn: str = "sdpa", seed: int = 0, **overrides):
    """(transformers model, llavakit model) with the same perturbed random weights."""
    kwargs = dict(TINY, **overrides)
    if family == "llama":
        hf_config, ours_cls, ours_config_cls = transformers.LlamaConfig(**kwargs), LlamaForCausalLM, LlamaConfig
        hf_cls = transformers.LlamaForCausalLM
    else:
        hf_config, ours_cls, ours_config_cls = transformers.MistralConfig(**kwargs), MistralForCausalLM, MistralConfig
        hf_cls = transformers.MistralForCausalLM
    torch.manual_seed(seed)
    hf = hf_cls(hf_config).eval()
    perturb_(hf, seed)
    hf.set_attn_implementation(attn)
    config = ours_config_cls.from_dict(hf_config.to_dict())
    config._attn_implementation = attn
    ours = ours_cls(config).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


def left_padded(batch: int = 2, seq: int = 12, pad: tuple[int, ...] = (0, 4), vocab: int = 128, seed: int = 0):
    """Token ids, a left-padding 0/1 mask, and the mask-derived position ids generate() would use."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
        ids[row, :n] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids






@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_transformers(attn):
    hf, ours = make_pair(attn=attn)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padding_matches_transformers_without_nan(attn):
    hf, ours = make_pair(attn=attn)
    ids, mask, pos = left_padded(pad=(0, 5))
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    assert not torch.isnan(b.logits).any()
    assert_close(b.logits, a.logits)
    assert len(b.hidden_states) == len(a.hidden_states) == TINY["num_hidden_layers"] + 1
    for x, y in zip(b.hidden_states, a.hidden_states):
        assert_close(x, y)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bfloat16_matches_transformers(attn, tmp_path):
    # Loaded in bf16, as users do. (transformers' `model.to(bf16)` would also round its RoPE inv_freq
    # buffer to bf16; llavakit keeps RoPE frequencies in float32 however the model is cast.)
    hf, _ = make_pair(attn=attn)
    hf.save_pretrained(tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation=attn)
    ours = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation=attn)
    ids, mask, pos = left_padded(pad=(0, 3))
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos)
    assert b.logits.dtype == torch.bfloat16
    assert_close(b.logits.float(), a.logits.float(), atol=1e-3)


def test_padding_changes_the_result():
    """The mask is used: the unpadded row is unaffected by padding elsewhere, the padded one differs."""
    _, ours = make_pair()
    ids, mask, pos = left_padded(pad=(0, 4))
    with torch.no_grad():
        padded = ours(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        alone = ours(input_ids=ids[1:, 4:]).logits
        unmasked = ours(input_ids=ids, position_ids=pos).logits
    assert_close(padded[1, 4:], alone[0])
    assert (padded[1, 4:] - unmasked[1, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mistral_sliding_window_matches_transformers(attn):
    hf, ours = make_pair("mistral", attn=attn, sliding_window=8)
    assert ours.config.sliding_window == 8
    ids, mask, pos = left_padded(seq=20, pad=(0, 3))
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos)
    assert_close(b.logits, a.logits)
    a, b = run_both(hf, ours, input_ids=ids[:1])  # no padding: the window alone needs a mask
    assert_close(b.logits, a.logits)
    # the window matters: without it the late positions differ
    _, full = make_pair("mistral", attn=attn, sliding_window=None)
    with torch.no_grad():
        no_window = full(input_ids=ids[:1]).logits
    assert (no_window[0, 10:] - b.logits[0, 10:]).abs().max() > 1e-3


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


@pytest.mark.parametrize("name", sorted(ROPE_SCALINGS))
def test_rope_scaling_matches_transformers(name):
    rope = dict(ROPE_SCALINGS[name], rope_theta=10000.0)
    max_pos = 16 if name == "dynamic" else 64  # dynamic only acts past max_position_embeddings
    hf, ours = make_pair(rope_parameters=rope, max_position_embeddings=max_pos)
    assert ours.config.rope_parameters["rope_type"] == name
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(2))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)
    _, plain = make_pair(max_position_embeddings=64)  # same weights (same seed), default RoPE
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - b.logits).abs().max() > 1e-4


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_query_attention(kv_heads):
    for attn in ("sdpa", "eager"):
        hf, ours = make_pair(attn=attn, num_key_value_heads=kv_heads)
        ids, mask, pos = left_padded(pad=(2, 0))
        a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos)
        assert_close(b.logits, a.logits)


def test_bias_flags_and_explicit_head_dim():
    hf, ours = make_pair(attention_bias=True, mlp_bias=True, head_dim=24)
    assert ours.model.layers[0].self_attn.q_proj.bias is not None
    assert ours.model.layers[0].mlp.up_proj.bias is not None
    assert ours.model.layers[0].self_attn.q_proj.out_features == 4 * 24
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(3))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)


def decode(model, ids, mask, pos, prefill: int):
    """Prefill `prefill` tokens, then feed one token at a time through the cache; return all logits."""
    out = model(input_ids=ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill],
                use_cache=True)
    logits, cache = [out.logits], output_cache(out)
    for t in range(prefill, ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                    use_cache=True, **cache_kwargs(model, cache))
        logits.append(out.logits)
        cache = output_cache(out)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"),
                                         ("mistral", "eager")])
def test_kv_cache_decode_equals_full_forward(family, attn):
    extra = {"sliding_window": 8} if family == "mistral" else {}
    hf, ours = make_pair(family, attn=attn, **extra)
    ids, mask, pos = left_padded(seq=18, pad=(3, 0))
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        stepped, cache = decode(ours, ids, mask, pos, prefill=7)
        reference, _ = decode(hf, ids, mask, pos, prefill=7)
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 18
    real = mask.bool()  # padded slots attend to nothing real; eager spreads them over what is cached
    assert_close(stepped[real], full[real])
    assert_close(stepped, reference)


def test_default_position_ids_continue_from_the_cache():
    _, ours = make_pair()
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = ours(input_ids=ids).logits
        first = ours(input_ids=ids[:, :6], use_cache=True)
        rest = ours(input_ids=ids[:, 6:], cache=first.cache)  # 4 new tokens at once
    assert_close(torch.cat([first.logits, rest.logits], dim=1), full)


def test_tied_embeddings():
    hf, ours = make_pair(tie_word_embeddings=True)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(5))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)
    _, untied = make_pair()
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_logits_to_keep():
    hf, ours = make_pair()
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = ours(input_ids=ids).logits
        for keep in (1, 3):
            kept = ours(input_ids=ids, logits_to_keep=keep).logits
            assert_close(kept, full[:, -keep:])
            assert_close(kept, hf(input_ids=ids, logits_to_keep=keep).logits)
        assert_close(ours(input_ids=ids, num_logits_to_keep=2).logits, full[:, -2:])
        positions = torch.tensor([0, 4, 9])
        assert_close(ours(input_ids=ids, logits_to_keep=positions).logits, full[:, positions])
        assert_close(ours(input_ids=ids, logits_to_keep=positions).logits,
                     hf(input_ids=ids, logits_to_keep=positions).logits)


def test_hidden_states_and_attentions_match_transformers():
    hf, ours = make_pair(attn="eager")
    ids, mask, pos = left_padded(pad=(0, 2))
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                  output_attentions=True)
    a, b = run_both(hf, ours, **kwargs)
    assert len(b.attentions) == len(a.attentions) == TINY["num_hidden_layers"]
    for x, y in zip(b.attentions, a.attentions):
        assert x.shape == (2, 4, 12, 12)
        assert_close(x, y)
    for x, y in zip(b.hidden_states, a.hidden_states):
        assert_close(x, y)
    assert_close(b.hidden_states[-1], ours.model(input_ids=ids, attention_mask=mask,
                                                  position_ids=pos).last_hidden_state)


def test_output_attentions_with_sdpa_uses_the_eager_path():
    _, ours = make_pair(attn="sdpa")
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = ours(input_ids=ids, output_attentions=True)
        plain = ours(input_ids=ids)
    assert len(out.attentions) == 2
    probs = out.attentions[0]
    assert_close(probs.sum(-1), torch.ones(1, 4, 6))
    assert probs[0, :, 0, 1:].abs().max() == 0  # causal
    assert_close(out.logits, plain.logits)


def test_loss_matches_transformers():
    hf, ours = make_pair()
    ids, mask, pos = left_padded(pad=(0, 3))
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, 5] = -100
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels)
    assert b.loss.dtype == torch.float32 and b.loss.ndim == 0
    assert_close(b.loss, a.loss)
    with torch.no_grad():
        summed = ours(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels, num_items_in_batch=7)
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels, num_items_in_batch=7)
    assert_close(summed.loss, expected.loss)


def test_inputs_embeds_equal_input_ids():
    _, ours = make_pair()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        by_ids = ours(input_ids=ids).logits
        by_embeds = ours(inputs_embeds=ours.get_input_embeddings()(ids)).logits
    assert_close(by_embeds, by_ids)


def test_packed_sequences_match_transformers():
    """position_ids restarting inside a row without a mask or cache mean packed sequences (transformers 5)."""
    hf, ours = make_pair()
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(9))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    a, b = run_both(hf, ours, input_ids=ids, position_ids=pos, use_cache=False)
    assert_close(b.logits, a.logits)
    with torch.no_grad():
        second = ours(input_ids=ids[:, 4:7]).logits
    assert_close(b.logits[:, 4:7], second)


def test_return_dict_false_gives_the_non_none_fields():
    hf, ours = make_pair()
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        ours_tuple = ours(input_ids=ids, labels=ids, return_dict=False)
        hf_tuple = hf(input_ids=ids, labels=ids, return_dict=False)
    assert isinstance(ours_tuple, tuple) and len(ours_tuple) == len(hf_tuple) == 3
    assert_close(ours_tuple[0], hf_tuple[0])
    assert_close(ours_tuple[1], hf_tuple[1])
    assert isinstance(ours_tuple[2], DynamicCache)


def test_base_model_output():
    hf, ours = make_pair()
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        out = ours.model(input_ids=ids, use_cache=False)
        ref = hf.model(input_ids=ids, use_cache=False)
    assert isinstance(ours.model, LlamaModel)
    assert out.cache is None and out.keys() == ["last_hidden_state"]
    assert_close(out.last_hidden_state, ref.last_hidden_state)


def test_bad_inputs_raise_clear_errors():
    _, ours = make_pair()
    ids = torch.randint(0, 128, (1, 5))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours(input_ids=ids, inputs_embeds=torch.zeros(1, 5, 64))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours()
    with pytest.raises(ValueError, match="prompt of 70 tokens .* exceeds the model's context of 64"):
        ours(input_ids=torch.zeros(1, 70, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\)"):
        ours(input_ids=ids, attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="token id 128 is outside the vocabulary"):
        ours(input_ids=torch.tensor([[1, 128]]))
    with pytest.raises(ValueError, match="input_ids must be"):
        ours(input_ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="position_ids cover 3 positions"):
        ours(input_ids=ids, position_ids=torch.arange(3))
    with pytest.raises(ValueError, match="logits_to_keep=0"):
        ours(input_ids=ids, labels=ids, logits_to_keep=1)
    cache = ours(input_ids=ids[:, :3]).cache
    with pytest.raises(ValueError, match="prompt of 66 tokens \\(3 cached \\+ 63 new\\)"):
        ours(input_ids=torch.zeros(1, 63, dtype=torch.long), cache=cache)


def test_random_init_and_no_buffers():
    config = LlamaConfig(**TINY)
    model = LlamaForCausalLM(config)
    assert list(model.named_buffers()) == []  # the loader fills parameters only
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert abs(std - config.initializer_range) < 0.005
    with torch.device("meta"):
        on_meta = MistralForCausalLM(MistralConfig(**TINY))
    assert all(p.is_meta for p in on_meta.parameters())
