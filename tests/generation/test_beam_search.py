"""Beam search and beam sampling give transformers' sequences, scores and beam indices on the tiny LLaVA."""

import pytest
import torch

from tests import reference
from tests.generation.test_generate import (PROMPT, TEXT_ONLY, assert_same_tokens, batch_of_three,  # noqa: F401
                                            images, llava, processor)


def generate_both(llava, inputs, seed=None, **kwargs):
    ours, theirs = llava
    if seed is not None:
        torch.manual_seed(seed)
    a = ours.generate(**inputs, **kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    b = theirs.generate(**inputs, **kwargs)
    return a, b


def assert_same_beam_outputs(ours, theirs):
    assert_same_tokens(ours.sequences, theirs.sequences)
    assert torch.equal(ours.beam_indices.long(), theirs.beam_indices.long())
    torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, rtol=1e-4, atol=1e-4)
    assert len(ours.scores) == len(theirs.scores)
    for a, b in zip(ours.scores, theirs.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options", [
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=3, length_penalty=0.5),
    dict(num_beams=2, early_stopping=True, length_penalty=2.0),
    dict(num_beams=3, early_stopping="never", num_return_sequences=2),
])
def test_beam_search_single_image(llava, processor, images, options):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    ours, theirs = generate_both(llava, inputs, max_new_tokens=8, **options)
    assert ours.shape[0] == options.get("num_return_sequences", 1)
    assert_same_tokens(ours, theirs)


def test_beam_search_left_padded_batch_with_scores(llava, processor, images):
    inputs = batch_of_three(processor, images)
    ours, theirs = generate_both(llava, inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2,
                                 return_dict_in_generate=True, output_scores=True)
    assert ours.sequences.shape[0] == 6
    assert_same_beam_outputs(ours, theirs)


def test_beam_search_stops_at_eos(llava, processor, images):
    # An EOS id the beams actually produce early, so finished hypotheses and padding are exercised.
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    beams = llava[0].generate(**inputs, max_new_tokens=6, num_beams=3)
    eos = [int(beams[0, -5]), 7]
    ours, theirs = generate_both(llava, inputs, max_new_tokens=10, num_beams=3, num_return_sequences=3,
                                 eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    assert bool((ours.beam_indices == -1).any())  # a returned hypothesis finished before max_new_tokens
    assert_same_beam_outputs(ours, theirs)


@pytest.mark.parametrize("options", [dict(), dict(top_k=20, temperature=0.7, num_return_sequences=2)])
def test_beam_sampling_draws_the_same_tokens(llava, processor, images, options):
    if not reference.BEAM_SAMPLING_SORTS_CANDIDATES:
        pytest.skip("transformers < 5.24 keeps sampled beam candidates in draw order; llavakit sorts them as 5.24+")
    inputs = batch_of_three(processor, images)
    ours, theirs = generate_both(llava, inputs, seed=3, max_new_tokens=6, num_beams=2, do_sample=True,
                                 return_dict_in_generate=True, output_scores=True, **options)
    assert_same_beam_outputs(ours, theirs)


def test_beam_search_text_only_with_processors(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    ours, theirs = generate_both(llava, inputs, max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2,
                                 repetition_penalty=1.3)
    assert_same_tokens(ours, theirs)
