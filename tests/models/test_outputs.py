"""Output dataclasses behave like transformers' ModelOutput."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast as HFCausalLMOutput

from llavakit.models.outputs import (BaseModelOutputWithPooling, CausalLMOutputWithPast, LlavaCausalLMOutputWithPast,
                                     LlavaModelOutputWithPast, MultimodalBaseModelOutputWithPast,
                                     MultimodalCausalLMOutputWithPast, merged_features)


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
    image_outputs = BaseModelOutputWithPooling(last_hidden_state=torch.ones(1, 3, 4), pooler_output=[torch.ones(2, 3)])
    out = LlavaCausalLMOutputWithPast(logits=torch.zeros(1), image_outputs=image_outputs)
    assert out.keys() == ["logits", "image_outputs"]
    assert out["image_outputs"] is out.image_outputs and out[1] == out.image_outputs.to_tuple()  # as in 5.24+
    logits, (last, features) = out.to_tuple()  # an encoder output appears as its own tuple
    assert last.shape == (1, 3, 4) and features[0].shape == (2, 3)
    with pytest.raises(KeyError):
        out["loss"]
    with pytest.raises(IndexError):
        out[2]
    out["loss"] = torch.tensor(1.0)
    assert out.loss is not None and out.keys()[0] == "loss"
    with pytest.raises(KeyError, match="no field 'bogus'"):
        out["bogus"] = 1


def test_image_hidden_states_is_a_deprecated_view_of_image_outputs():
    features = [torch.ones(2, 3), torch.zeros(1, 3)]
    out = LlavaModelOutputWithPast(last_hidden_state=torch.zeros(1),
                                   image_outputs=BaseModelOutputWithPooling(pooler_output=features))
    with pytest.warns(FutureWarning, match=r"image_outputs\.pooler_output"):
        assert out.image_hidden_states is features
    assert "image_hidden_states" not in out and "image_hidden_states" not in out.keys()
    with pytest.raises(TypeError, match="image_hidden_states"):
        LlavaCausalLMOutputWithPast(logits=torch.zeros(1), image_hidden_states=torch.ones(2, 3))
    with pytest.warns(FutureWarning):
        assert LlavaCausalLMOutputWithPast(logits=torch.zeros(1)).image_hidden_states is None


def test_multimodal_outputs_have_a_field_per_encoder():
    fields = [f.name for f in dataclasses.fields(MultimodalCausalLMOutputWithPast)]
    assert fields == ["loss", "logits", "cache", "hidden_states", "attentions", "image_outputs", "video_outputs",
                      "audio_outputs"]
    fields = [f.name for f in dataclasses.fields(MultimodalBaseModelOutputWithPast)]
    assert fields == ["last_hidden_state", "cache", "hidden_states", "attentions", "image_outputs", "video_outputs",
                      "audio_outputs"]
    video = BaseModelOutputWithPooling(last_hidden_state=torch.ones(1), pooler_output=torch.ones(4, 3))
    out = MultimodalCausalLMOutputWithPast(logits=torch.zeros(1), video_outputs=video)
    assert out.keys() == ["logits", "video_outputs"]
    assert out.to_tuple()[1] == video.to_tuple()


def test_merged_features_gives_what_the_decoder_received():
    assert merged_features(None) is None
    assert merged_features(BaseModelOutputWithPooling(last_hidden_state=torch.ones(1))) is None
    per_image = BaseModelOutputWithPooling(pooler_output=[torch.ones(2, 3), torch.zeros(5, 3)])
    assert merged_features(per_image).shape == (7, 3)
    stacked = BaseModelOutputWithPooling(pooler_output=torch.ones(2, 4, 3))  # ViP: (N, P, H)
    assert merged_features(stacked).shape == (8, 3)
