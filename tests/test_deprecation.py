"""Old transformers names (llavakit.deprecation.RENAMED) keep working, with a FutureWarning, on every forward and output."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from llavakit.deprecation import RENAMED
from llavakit.models.cache import DynamicCache
from llavakit.models.heads import LlavaForSequenceClassification
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel
from llavakit.models.outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from tests.parity import assert_close, image_prompt, random_pixels
from tests.reference import CACHE_RENAMED, output_cache


@pytest.fixture(scope="module")
def model(tiny_llava_dir):
    return LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)


def test_the_table_names_the_release_that_removes_each_name():
    assert RENAMED["past_key_values"] == ("cache", "5.40.0")


@torch.no_grad()
def test_forward_takes_past_key_values_as_cache_with_a_warning(model):
    ids = torch.tensor([image_prompt(1)])
    prefix = model(input_ids=ids[:, :-2], pixel_values=random_pixels(1), use_cache=True)
    new = model(input_ids=ids[:, -2:], cache=prefix.cache)
    prefix = model(input_ids=ids[:, :-2], pixel_values=random_pixels(1), use_cache=True)
    with pytest.warns(FutureWarning, match=r"`past_key_values` is deprecated .* 5\.40\.0 .*"
                                           r"LlavaForConditionalGeneration\.forward.* Use `cache`"):
        old = model(input_ids=ids[:, -2:], past_key_values=prefix.cache)
    assert_close(old.logits, new.logits)
    assert old.cache.get_seq_length() == ids.shape[1]


@torch.no_grad()
def test_both_names_given_the_new_one_wins(model):
    ids = torch.tensor([[1, 5, 6, 7]])
    filled = model(input_ids=ids[:, :2], use_cache=True).cache
    with pytest.warns(FutureWarning):
        out = model(input_ids=ids[:, 2:], cache=filled, past_key_values=DynamicCache())
    assert out.cache is filled and filled.get_seq_length() == 4


@torch.no_grad()
@pytest.mark.parametrize("part", ["base", "decoder", "head"])
def test_every_forward_accepts_the_old_name(model, tiny_llava_dir, part):
    ids = torch.tensor([[1, 5, 6, 7]])
    if part == "base":
        forward = LlavaModel.from_pretrained(tiny_llava_dir)
    elif part == "decoder":
        forward = model.language_model
    else:
        forward = LlavaForSequenceClassification.from_pretrained(tiny_llava_dir, num_labels=2)
    with pytest.warns(FutureWarning, match="Use `cache` instead"):
        out = forward(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    assert out.cache.get_seq_length() == 4


def test_output_reads_the_old_name_with_a_warning():
    cache = DynamicCache()
    out = CausalLMOutputWithPast(logits=torch.zeros(1), cache=cache)
    assert out.keys() == ["logits", "cache"]
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        assert out.past_key_values is cache
    with pytest.warns(FutureWarning):
        assert out["past_key_values"] is cache
    with pytest.warns(FutureWarning):
        assert "past_key_values" in out
    with pytest.warns(FutureWarning):
        assert out.get("past_key_values") is cache
    replacement = DynamicCache()
    with pytest.warns(FutureWarning):
        out["past_key_values"] = replacement
    assert out.cache is replacement
    with pytest.warns(FutureWarning):
        out.past_key_values = cache
    assert out.cache is cache and "past_key_values" not in vars(out)


def test_output_constructor_takes_the_old_name():
    cache = DynamicCache()
    with pytest.warns(FutureWarning):
        out = BaseModelOutputWithPast(last_hidden_state=torch.zeros(1), past_key_values=cache)
    assert out.cache is cache and out.keys() == ["last_hidden_state", "cache"]
    with pytest.raises(AttributeError, match="no attribute 'cache_params'"):
        out.cache_params


def test_the_output_layout_matches_the_installed_transformers():
    """Same keys as transformers' output; with a release before 5.24 the reference still says past_key_values."""
    cache = DynamicCache()
    theirs = transformers.modeling_outputs.CausalLMOutputWithPast(logits=torch.zeros(1), **(
        {"cache": cache} if CACHE_RENAMED else {"past_key_values": cache}))
    ours = CausalLMOutputWithPast(logits=torch.zeros(1), cache=cache)
    assert output_cache(theirs) is output_cache(ours) is cache
    if CACHE_RENAMED:
        assert ours.keys() == list(theirs.keys())


def test_generate_and_internal_calls_raise_no_deprecation_warning(model):
    ids = torch.tensor([image_prompt(1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model.generate(input_ids=ids, pixel_values=random_pixels(1), max_new_tokens=3, prefix_cache=False)
        model.generate(input_ids=ids, pixel_values=random_pixels(1), max_new_tokens=3, cache_implementation="dynamic",
                       prefix_cache=False)
