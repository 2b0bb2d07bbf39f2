"""SigLIP vision tower against transformers' SiglipVisionModel on tiny random towers with perturbed weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from llavakit.config import SiglipVisionConfig
from llavakit.models.auto import AutoModel
from llavakit.models.siglip import SiglipVisionModel
from tests.assets import perturb_
from tests.parity import assert_close

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
            patch_size=7)
ATOL = 1e-5




@pytest.fixture(scope="module", params=[True, False], ids=["head", "no-head"])
def saved(request, tmp_path_factory):
    """A tiny tower saved by transformers 5 (keys without `vision_model.`), and the transformers model."""
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY, vision_use_head=request.param))
    perturb_(hf.eval())
    path = tmp_path_factory.mktemp("siglip")
    hf.save_pretrained(path)
    return path, hf


def pixels(n: int = 2, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_loads_transformers_save_with_checkpoint_names(saved):
    path, hf = saved
    ours = SiglipVisionModel.from_pretrained(path)
    keys = set(ours.state_dict())
    assert "vision_model.embeddings.patch_embedding.bias" in keys
    assert "vision_model.embeddings.position_embedding.weight" in keys
    assert "vision_model.post_layernorm.weight" in keys
    assert ("vision_model.head.probe" in keys) == hf.config.vision_use_head
    assert len(keys) == len(hf.state_dict())


def test_all_outputs_match_transformers(saved):
    path, hf = saved
    ours = SiglipVisionModel.from_pretrained(path)
    x = pixels()
    with torch.no_grad():
        a, b = hf(x, output_hidden_states=True), ours(x, output_hidden_states=True)
    assert len(b.hidden_states) == len(a.hidden_states) == TINY["num_hidden_layers"] + 1
    for theirs, mine in zip(a.hidden_states, b.hidden_states):
        assert_close(mine, theirs)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    if hf.config.vision_use_head:
        assert_close(b.pooler_output, a.pooler_output)
    else:
        assert a.pooler_output is None and b.pooler_output is None


def test_last_hidden_state_is_post_layernormed_but_hidden_states_are_not(saved):
    path, _ = saved
    ours = SiglipVisionModel.from_pretrained(path)
    x = pixels()
    with torch.no_grad():
        out = ours(x, output_hidden_states=True)
        raw_last = ours.encode_layers(x, [-1]).hidden_states[-1]
        first, _, middle, _ = ours.encode_layers(x, [0, 2]).hidden_states
    assert_close(raw_last, out.hidden_states[-1])
    assert_close(ours.vision_model.post_layernorm(raw_last), out.last_hidden_state)
    assert (raw_last - out.last_hidden_state).abs().max() > 1e-2
    assert_close(first, out.hidden_states[0])
    assert_close(middle, out.hidden_states[2])
    assert raw_last.shape == (2, 16, 32)  # no class token: (28 / 7)^2 patches


def test_hub_layout_and_auto_model(saved, tmp_path):
    """The older layout (`vision_model.` prefix) loads too, and AutoModel picks the class."""
    path, hf = saved
    tensors = {"vision_model." + k: v for k, v in load_file(path / "model.safetensors").items()}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ours = AutoModel.from_pretrained(tmp_path)
    assert type(ours) is SiglipVisionModel
    x = pixels(1, seed=3)
    with torch.no_grad():
        assert_close(ours(x).last_hidden_state, hf(x).last_hidden_state)


def test_eager_attentions_match_transformers(saved):
    path, _ = saved
    hf = transformers.SiglipVisionModel.from_pretrained(path, attn_implementation="eager").eval()
    ours = SiglipVisionModel.from_pretrained(path, attn_implementation="eager")
    x = pixels(seed=1)
    with torch.no_grad():
        a, b = hf(x, output_attentions=True), ours(x, output_attentions=True)
    assert len(b.attentions) == len(a.attentions) == TINY["num_hidden_layers"]
    for theirs, mine in zip(a.attentions, b.attentions):
        assert_close(mine, theirs)


def test_interpolated_positions_match_transformers(saved):
    path, hf = saved
    ours = SiglipVisionModel.from_pretrained(path)
    x = pixels(1, size=42, seed=2)
    with torch.no_grad():
        a = hf(x, interpolate_pos_encoding=True).last_hidden_state
        b = ours(x, interpolate_pos_encoding=True).last_hidden_state
    assert b.shape == (1, 36, 32)
    assert_close(b, a)


def test_bad_inputs_raise_clear_errors(saved):
    path, _ = saved
    ours = SiglipVisionModel.from_pretrained(path)
    with pytest.raises(ValueError, match="doesn't match model"):
        ours(pixels(1, size=35))
    with pytest.raises(ValueError, match="out of range"):
        ours.encode_layers(pixels(1), [4])
    with pytest.raises(ValueError, match="num_images, 3"):
        ours(torch.zeros(3, 28, 28))


def test_config_defaults_and_validation():
    config = SiglipVisionConfig()
    assert (config.hidden_act, config.layer_norm_eps, config.vision_use_head) == ("gelu_pytorch_tanh", 1e-6, True)
    with pytest.raises(ValueError, match="divisible"):
        SiglipVisionConfig(hidden_size=30, num_attention_heads=4)
