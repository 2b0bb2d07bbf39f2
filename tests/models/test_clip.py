"""CLIP vision tower against transformers' CLIPVisionModel on a tiny random model with perturbed weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from llavakit.config import CLIPVisionConfig
from llavakit.models.clip import CLIPVisionModel
from tests.assets import TINY_VISION, perturb_

ATOL = 1e-5


def make_pair(attn: str = "sdpa", seed: int = 0, **overrides):
    """(transformers CLIPVisionModel, ours) with the same perturbed weights."""
    kwargs = {k: v for k, v in dict(TINY_VISION, **overrides).items() if k != "model_type"}
    hf_config = transformers.CLIPVisionConfig(**kwargs)
    torch.manual_seed(seed)
    hf = transformers.CLIPVisionModel(hf_config).eval()
    perturb_(hf, seed)
    hf.set_attn_implementation(attn)
    config = CLIPVisionConfig.from_dict(hf_config.to_dict())
    config._attn_implementation = attn
    ours = CLIPVisionModel(config).eval()
    # transformers 5 drops the `vision_model.` level in memory; checkpoints on the Hub have it
    ours.load_state_dict({f"vision_model.{k}": v for k, v in hf.state_dict().items()}, strict=True)
    return hf, ours


def pixels(n: int = 2, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_outputs_match_transformers_at_every_layer(attn):
    hf, ours = make_pair(attn)
    x = pixels()
    with torch.no_grad():
        a = hf(x, output_hidden_states=True)
        b = ours(x, output_hidden_states=True)
    assert b.last_hidden_state.shape == (2, 17, 32)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(b.pooler_output, a.pooler_output)
    assert len(b.hidden_states) == len(a.hidden_states) == 4
    for x_ours, x_ref in zip(b.hidden_states, a.hidden_states):
        assert_close(x_ours, x_ref)
    assert torch.equal(b.hidden_states[-1], b.last_hidden_state)


def test_attentions_match_transformers():
    hf, ours = make_pair("eager")
    x = pixels()
    with torch.no_grad():
        a = hf(x, output_attentions=True)
        b = ours(x, output_attentions=True)
    assert len(b.attentions) == 3 and b.attentions[0].shape == (2, 4, 17, 17)
    for x_ours, x_ref in zip(b.attentions, a.attentions):
        assert_close(x_ours, x_ref)


def test_hidden_state_zero_is_the_pre_layernormed_embeddings():
    _, ours = make_pair()
    x = pixels(1)
    vm = ours.vision_model
    with torch.no_grad():
        expected = vm.pre_layrnorm(vm.embeddings(x))
        out = ours(x, output_hidden_states=True)
    assert_close(out.hidden_states[0], expected)


@pytest.mark.parametrize("layers", [[-2], [0], [-1, 1], [3, -4, 2]])
def test_encode_layers_keeps_only_the_selected_hidden_states(layers):
    _, ours = make_pair()
    x = pixels()
    with torch.no_grad():
        full = ours(x, output_hidden_states=True)
        selected = ours.encode_layers(x, layers)
    wanted = {i % len(full.hidden_states) for i in layers}
    assert len(selected.hidden_states) == len(full.hidden_states)
    for i, (got, expected) in enumerate(zip(selected.hidden_states, full.hidden_states)):
        if i in wanted:
            assert_close(got, expected)
        else:
            assert got is None
    assert_close(selected.last_hidden_state, full.last_hidden_state)
    assert selected.attentions is None


def test_encode_layers_keeps_all_states_when_asked_and_checks_the_layers():
    _, ours = make_pair()
    with torch.no_grad():
        out = ours.encode_layers(pixels(1), [-3], output_hidden_states=True)
    assert all(state is not None for state in out.hidden_states)
    with pytest.raises(ValueError, match="vision feature layer 4 is out of range"):
        ours.encode_layers(pixels(1), [4])


def test_wrong_image_size_names_both_sizes():
    _, ours = make_pair()
    with pytest.raises(ValueError, match=r"Input image size \(32\*32\) doesn't match model \(28\*28\)"):
        ours(pixels(1, size=32))
    with pytest.raises(ValueError, match=r"pixel_values must be \(num_images, 3, height, width\)"):
        ours(torch.zeros(3, 28, 28))


def test_interpolated_position_embeddings_match_transformers():
    hf, ours = make_pair()
    x = pixels(1, size=42)  # 6x6 patches instead of 4x4
    with torch.no_grad():
        a = hf(x, interpolate_pos_encoding=True)
        b = ours(x, interpolate_pos_encoding=True)
    assert b.last_hidden_state.shape == (1, 37, 32)
    assert_close(b.last_hidden_state, a.last_hidden_state)


def test_return_dict_false_and_layout():
    hf, ours = make_pair()
    x = pixels(1)
    with torch.no_grad():
        ours_tuple = ours(x, output_hidden_states=True, return_dict=False)
        hf_tuple = hf(x, output_hidden_states=True, return_dict=False)
    assert isinstance(ours_tuple, tuple) and len(ours_tuple) == len(hf_tuple) == 3
    assert_close(ours_tuple[1], hf_tuple[1])
    assert all(k.startswith("vision_model.") for k in ours.state_dict())
    assert "vision_model.pre_layrnorm.weight" in ours.state_dict()
    assert list(ours.named_buffers()) == []  # position ids are made at forward time


def test_random_init_is_usable():
    model = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in TINY_VISION.items() if k != "model_type"}))
    out = model(pixels(1))
    assert torch.isfinite(out.last_hidden_state).all()
    assert torch.equal(model.vision_model.post_layernorm.weight, torch.ones(32))
