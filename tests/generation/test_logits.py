"""Logits processors give bit-identical scores to transformers' processors of the same name."""

import pytest
import torch
from transformers.generation import logits_process as tlp

from llavakit.generation import logits as ours

V = 300


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, V, generator=gen) * 3  # (B, V)
    scores[1, :10] = scores[1, 10]  # ties at the top-k / top-p borders
    input_ids = torch.randint(0, V + 20, (4, 12), generator=gen)  # some ids beyond the vocabulary
    return input_ids, scores


def assert_same(a, b):
    assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("temperature", [0.3, 1.7, 2])
def test_temperature(batch, temperature):
    ids, scores = batch
    assert_same(ours.TemperatureLogitsWarper(temperature)(ids, scores.clone()),
                tlp.TemperatureLogitsWarper(float(temperature))(ids, scores.clone()))


@pytest.mark.parametrize("top_k, keep", [(1, 1), (5, 1), (50, 1), (V + 10, 1), (2, 3)])
def test_top_k(batch, top_k, keep):
    ids, scores = batch
    result = ours.TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(ids, scores.clone())
    assert_same(result, tlp.TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(ids, scores.clone()))
    assert (result > -float("inf")).sum(-1).min() >= min(max(top_k, keep), V)


@pytest.mark.parametrize("top_p, keep", [(0.0, 1), (0.1, 1), (0.5, 1), (0.9, 1), (0.999, 1), (1.0, 1), (0.3, 4)])
def test_top_p(batch, top_p, keep):
    ids, scores = batch
    result = ours.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(ids, scores.clone())
    assert_same(result, tlp.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(ids, scores.clone()))


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2])
@pytest.mark.parametrize("ignore", [None, 3, "per_row"])
def test_repetition_penalty(batch, penalty, ignore):
    ids, scores = batch
    if ignore == "per_row":
        ignore = torch.tensor([0, 2, 5, 12])
    result = ours.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=ignore)(ids, scores.clone())
    reference = tlp.RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=ignore)(ids, scores.clone())
    assert_same(result, reference)
    assert not torch.equal(result, scores)


def test_repetition_penalty_rejects_bad_values():
    with pytest.raises(ValueError, match="repetition penalty must be a number > 0, got 0"):
        ours.RepetitionPenaltyLogitsProcessor(0)
    with pytest.raises(ValueError, match="4 rows but the batch has 2"):
        ours.RepetitionPenaltyLogitsProcessor(1.2, torch.zeros(4, dtype=torch.long))(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, V))


@pytest.mark.parametrize("eos", [2, [2, 7], torch.tensor([7, 3])])
@pytest.mark.parametrize("min_length", [5, 12, 13])
def test_min_length(batch, eos, min_length):
    ids, scores = batch
    result = ours.MinLengthLogitsProcessor(min_length, eos)(ids, scores.clone())
    assert_same(result, tlp.MinLengthLogitsProcessor(min_length, eos)(ids, scores.clone()))


@pytest.mark.parametrize("eos", [2, [2, 7]])
@pytest.mark.parametrize("prompt_len, min_new", [(10, 1), (10, 2), (10, 3), (12, 0)])
def test_min_new_tokens(batch, eos, prompt_len, min_new):
    ids, scores = batch
    result = ours.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos)(ids, scores.clone())
    reference = tlp.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos)(ids, scores.clone())
    assert_same(result, reference)
    banned = ids.shape[1] - prompt_len < min_new
    assert bool(torch.isinf(result[:, 2]).all()) == banned


def test_full_sampling_chain_matches_and_samples_the_same_tokens(batch):
    ids, scores = batch
    chain = ours.LogitsProcessorList([ours.RepetitionPenaltyLogitsProcessor(1.2), ours.TemperatureLogitsWarper(0.8),
                                      ours.TopKLogitsWarper(20), ours.TopPLogitsWarper(0.9)])
    reference = tlp.LogitsProcessorList([tlp.RepetitionPenaltyLogitsProcessor(1.2), tlp.TemperatureLogitsWarper(0.8),
                                         tlp.TopKLogitsWarper(20), tlp.TopPLogitsWarper(0.9)])
    a, b = chain(ids, scores.clone()), reference(ids, scores.clone())
    assert_same(a, b)
    torch.manual_seed(3)
    first = torch.multinomial(a.softmax(-1), 1)
    torch.manual_seed(3)
    assert torch.equal(first, torch.multinomial(b.softmax(-1), 1))


@pytest.mark.parametrize("make, message", [
    (lambda: ours.TemperatureLogitsWarper(0.0), "For greedy decoding set do_sample=False"),
    (lambda: ours.TopKLogitsWarper(0), "top_k must be a positive integer, got 0"),
    (lambda: ours.TopPLogitsWarper(1.5), r"top_p must be in \[0, 1\], got 1.5"),
    (lambda: ours.MinLengthLogitsProcessor(-1, 2), "min_length must be an integer >= 0, got -1"),
])
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
