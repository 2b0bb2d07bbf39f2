"""Qwen2 decoder against transformers' Qwen2ForCausalLM on tiny random models with perturbed weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from llavakit.config import Qwen2Config
from llavakit.models.auto import AutoModel, AutoModelForCausalLM
from llavakit.models.cache import DynamicCache
from llavakit.models.qwen2 import Qwen2ForCausalLM, Qwen2Model
from tests.assets import perturb_
from tests.models.test_llama import assert_close, left_padded, run_both

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1e6)
WINDOW = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)  # layers 1, 2 slide; layer 0 not


def make_pair(attn: str = "sdpa", seed: int = 0, **overrides):
    """(transformers model, llavakit model) with the same perturbed random weights, built from one config."""
    hf_config = transformers.Qwen2Config(**dict(TINY, **overrides))
    torch.manual_seed(seed)
    hf = transformers.Qwen2ForCausalLM(hf_config).eval()
    perturb_(hf, seed)
    hf.set_attn_implementation(attn)
    config = Qwen2Config.from_dict(hf_config.to_dict())
    config._attn_implementation = attn
    ours = Qwen2ForCausalLM(config).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    if config.tie_word_embeddings:
        ours.tie_weights()
    return hf, ours


def test_projection_biases_are_qwen2s():
    _, ours = make_pair()
    attn, mlp = ours.model.layers[0].self_attn, ours.model.layers[0].mlp
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None
    assert mlp.gate_proj.bias is None and mlp.up_proj.bias is None and mlp.down_proj.bias is None
    # the config's Llama-only switches do not change Qwen2's fixed layout
    odd = Qwen2ForCausalLM(Qwen2Config(**TINY, attention_bias=False, mlp_bias=True))
    assert odd.model.layers[0].self_attn.q_proj.bias is not None and odd.model.layers[0].mlp.up_proj.bias is None


def test_q_bias_matters():
    """The biases are read: zeroing them changes the logits (so the parity tests below can fail)."""
    hf, ours = make_pair()
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = ours(ids).logits
        ours.model.layers[0].self_attn.k_proj.bias.zero_()
        ours.model.layers[0].self_attn.q_proj.bias.zero_()
        assert (ours(ids).logits - before).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("window", [False, True])
def test_left_padded_logits_match_transformers(attn, window):
    hf, ours = make_pair(attn, **(WINDOW if window else {}))
    ids, mask, pos = left_padded(seq=12)
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    assert_close(b.logits, a.logits)
    assert len(b.hidden_states) == len(a.hidden_states) == 4
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(y, x)


def test_sliding_window_follows_max_window_layers():
    hf, ours = make_pair(**WINDOW)
    assert ours.config.layer_types == hf.config.layer_types == ["full_attention", "sliding_attention",
                                                                 "sliding_attention"]
    assert [layer.layer_type for layer in ours.model.layers] == ours.config.layer_types
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)
    # the window really cuts attention past 4 tokens: the same weights without it differ after position 4
    plain = Qwen2ForCausalLM(Qwen2Config.from_dict({**ours.config.to_dict(), "use_sliding_window": False,
                                                    "layer_types": None})).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        full = plain(ids).logits
    assert_close(full[:, :4], b.logits[:, :4])
    assert (full[:, 5:] - b.logits[:, 5:]).abs().max() > 1e-4


def test_window_off_unless_use_sliding_window():
    config = Qwen2Config(**TINY, sliding_window=4)  # use_sliding_window defaults to False
    assert config.sliding_window is None and config.layer_types == ["full_attention"] * 3
    config = Qwen2Config(**TINY, use_sliding_window=True, sliding_window=4, max_window_layers=3)
    assert config.sliding_window == 4 and "sliding_attention" not in config.layer_types
    hf, ours = make_pair(use_sliding_window=True, sliding_window=4, max_window_layers=3)
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)


def test_tied_embeddings_save_and_load(tmp_path):
    hf, _ = make_pair(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    ours = Qwen2ForCausalLM.from_pretrained(tmp_path / "hf")
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(4))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)

    ours.save_pretrained(tmp_path / "ours")
    with safe_open(str(tmp_path / "ours" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.layers.0.self_attn.q_proj.bias" in f.keys()
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "qwen2" and saved["tie_word_embeddings"] is True
    assert "attention_bias" not in saved and "mlp_bias" not in saved
    back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert_close(back(ids).logits, a.logits)


def test_untied_head_is_its_own_weight():
    hf, ours = make_pair(tie_word_embeddings=False)
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(5))
    a, b = run_both(hf, ours, input_ids=ids)
    assert_close(b.logits, a.logits)


@pytest.mark.parametrize("window", [False, True])
def test_kv_cache_decode_matches_transformers(window):
    hf, ours = make_pair(**(WINDOW if window else {}))
    ids = torch.randint(3, 128, (2, 14), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = hf(ids).logits
        cache = DynamicCache()
        out = ours(ids[:, :6], cache=cache, use_cache=True)
        steps = [out.logits]
        for t in range(6, 14):
            out = ours(ids[:, t:t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("window", [False, True])
def test_greedy_generate_matches_transformers(window):
    hf, ours = make_pair(tie_word_embeddings=True, **(WINDOW if window else {}))
    ids, mask, _ = left_padded(seq=8, pad=(0, 3))
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        theirs = hf.generate(**kwargs)
    mine = ours.generate(**kwargs)
    assert mine.tolist() == theirs.tolist()


def test_auto_classes_and_base_model(tmp_path):
    hf, _ = make_pair()
    hf.save_pretrained(tmp_path)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(lm) is Qwen2ForCausalLM and type(base) is Qwen2Model
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf.model(ids).last_hidden_state
        assert_close(base(ids).last_hidden_state, ref)
        assert_close(lm(ids).logits, hf(ids).logits)


def test_bad_layer_types_are_rejected():
    with pytest.raises(ValueError, match="layer_types"):
        Qwen2Config(**TINY, layer_types=["full_attention"])
    with pytest.raises(ValueError, match="sliding_window is None"):
        Qwen2Config(**TINY, layer_types=["sliding_attention"] * 3)
