"""Assisted decoding (prompt lookup, assistant model) returns exactly greedy decoding's tokens, with images."""

import pytest
import torch

from llavakit import LlavaForConditionalGeneration
from llavakit.generation.assisted import PromptLookupDrafter
from tests import assets
from tests.generation.test_generate import (PROMPT, TEXT_ONLY, assert_same_tokens, batch_of_three,  # noqa: F401
                                            images, llava, processor)

REPEATING = "USER: <image>\nRepeat: the cat sat on the mat, the cat sat on the mat, the cat ASSISTANT:"


@pytest.fixture(scope="module")
def other_assistant(tmp_path_factory, tokenizer_dir):
    """A second tiny LLaVA with the same tokenizer and image processor but other weights (mostly wrong drafts)."""
    return LlavaForConditionalGeneration.from_pretrained(
        assets.build_tiny_llava(tmp_path_factory.mktemp("tiny-assistant"), tokenizer_dir, seed=5))


def test_prompt_lookup_drafts_what_followed_the_last_ngram():
    ids = torch.tensor([[5, 6, 7, 8, 9, 5, 6]])
    assert PromptLookupDrafter(3)(ids, limit=10) == [7, 8, 9]
    assert PromptLookupDrafter(3)(ids, limit=2) == [7, 8]
    assert PromptLookupDrafter(3, banned=8)(ids, limit=10) == [7]  # never an image placeholder
    assert PromptLookupDrafter(3)(torch.tensor([[1, 2, 3]]), limit=10) == []


@pytest.mark.parametrize("text", [PROMPT, REPEATING])
def test_prompt_lookup_with_an_image_equals_greedy(llava, processor, images, text):
    inputs = processor(images=images["chelsea"], text=text, return_tensors="pt")
    ours, theirs = llava
    greedy = theirs.generate(**inputs, max_new_tokens=20)
    for n in (1, 3, 10):
        assert_same_tokens(ours.generate(**inputs, max_new_tokens=20, prompt_lookup_num_tokens=n), greedy)


def test_prompt_lookup_text_only_matches_transformers_prompt_lookup(llava, processor):
    inputs = processor(text="USER: a b c d a b c d a b ASSISTANT:", return_tensors="pt")
    ours, theirs = llava
    kwargs = dict(max_new_tokens=15, prompt_lookup_num_tokens=4, repetition_penalty=1.1)
    assert_same_tokens(ours.generate(**inputs, **kwargs), theirs.generate(**inputs, **kwargs))


@pytest.mark.parametrize("which", ["same", "other"])
def test_assistant_model_equals_greedy(llava, processor, images, other_assistant, which):
    ours, theirs = llava
    assistant = ours if which == "same" else other_assistant
    inputs = processor(images=images["coffee"], text=PROMPT, return_tensors="pt")
    greedy = theirs.generate(**inputs, max_new_tokens=16)
    for schedule in ("constant", "heuristic"):
        out = ours.generate(**inputs, max_new_tokens=16, assistant_model=assistant, num_assistant_tokens=5,
                            num_assistant_tokens_schedule=schedule, return_dict_in_generate=True,
                            output_scores=True)
        assert_same_tokens(out.sequences, greedy)
        assert len(out.scores) == 16


def test_assisted_errors(llava, processor, images):
    ours = llava[0]
    with pytest.raises(ValueError, match="one prompt at a time"):
        ours.generate(**batch_of_three(processor, images), max_new_tokens=3, prompt_lookup_num_tokens=3)
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    with pytest.raises(ValueError, match="greedy decoding only"):
        ours.generate(**inputs, max_new_tokens=3, prompt_lookup_num_tokens=3, do_sample=True)
    with pytest.raises(ValueError, match="greedy decoding only"):
        ours.generate(**inputs, max_new_tokens=3, assistant_model=ours, num_beams=2)
