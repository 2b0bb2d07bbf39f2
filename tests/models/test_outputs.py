"""Output dataclasses behave like transformers' ModelOutput."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast as HFCausalLMOutput

from llavakit.models.outputs import CausalLMOutputWithPast, LlavaCausalLMOutputWithPast


def test_access_matches_transformers_model_output():
    logits, loss = torch.ones(1, 2), torch.tensor(0.5)
    ours, ref = CausalLMOutputWithPast(loss=loss, logits=logits), HFCausalLMOutput(loss=loss, logits=logits)
    assert ours.keys() == list(ref.keys()) == ["loss", "logits"]
    assert list(ours) == list(ref)  # iterating yields keys, as an OrderedDict does
    assert ours[0] is ref[0] is loss and ours[1] is ref[1] is logits
    assert ours["logits"] is ref["logits"]
    assert ours.to_tuple() == ref.to_tuple()
    assert len(ours) == len(ref) == 2
    assert ("logits" in ours) and ("attentions" not in ours)


def test_none_fields_are_skipped_and_missing_keys_raise():
    out = LlavaCausalLMOutputWithPast(logits=torch.zeros(1), image_hidden_states=torch.ones(2, 3))
    assert out.keys() == ["logits", "image_hidden_states"]
    assert out[1] is out.image_hidden_states
    logits, features = out.to_tuple()
    assert features.shape == (2, 3)
    with pytest.raises(KeyError):
        out["loss"]
    with pytest.raises(IndexError):
        out[2]
    out["loss"] = torch.tensor(1.0)
    assert out.loss is not None and out.keys()[0] == "loss"
    with pytest.raises(KeyError, match="no field 'bogus'"):
        out["bogus"] = 1
