"""Stopping criteria: max length, EOS ids, and stop strings matched exactly as transformers matches them."""

import pytest
import torch
import transformers
from transformers.generation import stopping_criteria as tsc

from llavakit.generation.stopping import (EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList,
                                          StopStringCriteria, TokenBytes, gpt2_bytes_to_unicode)

TEXTS = [
    "USER: What is shown? ASSISTANT: A cat on a stop sign.\nStop here, stopper!",
    "The answer is 42.\n\nUSER: and then? ASSISTANT: Café crème, naïve façade — 東京 😀 done",
    "stopstop st op sto pped las topper</s> end",
]
STOP_STRINGS = ["stop", "USER:", "\n", "é", "東京", " done", "a", "42.\n", "😀"]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def test_token_bytes_match_transformers_clean_vocabulary(tokenizer):
    mode = tsc.StopStringCriteria._get_stop_string_matching_mode(tokenizer)
    assert mode == "byte_fallback"
    tokens, ids = tsc.StopStringCriteria.clean_tokenizer_vocab(tokenizer, stop_string_matching_mode=mode)
    pieces = TokenBytes(tokenizer)
    mismatched = [i for token, i in zip(tokens, ids) if pieces(i) != token][:5]
    assert not mismatched, [(i, tokenizer.convert_ids_to_tokens(i), pieces(i)) for i in mismatched]
    assert pieces(tokenizer.convert_tokens_to_ids("<0x0A>")) == b"\n"


@pytest.mark.parametrize("stop", STOP_STRINGS + [["stop", "USER:"], ["x y z", "ASSISTANT"]])
def test_stop_strings_agree_with_transformers_at_every_step(tokenizer, stop):
    ours, theirs = StopStringCriteria(tokenizer, stop), tsc.StopStringCriteria(tokenizer, stop)
    rows = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in TEXTS]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # (3, T) left-padded with <unk>
    hits = 0
    for t in range(1, width + 1):
        expected = theirs(ids[:, :t], None)
        assert torch.equal(ours(ids[:, :t], None), expected), (stop, t, tokenizer.decode(ids[0, :t]))
        hits += int(expected.sum())
    assert hits > 0  # each stop string occurs in the texts


def test_stop_string_must_end_in_the_newest_token(tokenizer):
    criterion = StopStringCriteria(tokenizer, "stop")
    ids = tokenizer("a stop sign", add_special_tokens=False)["input_ids"]
    done = [bool(criterion(torch.tensor([ids[:t]]))[0]) for t in range(1, len(ids) + 1)]
    stop_end = next(t for t in range(1, len(ids) + 1) if "stop" in tokenizer.decode(ids[:t]))
    assert done == [t == stop_end for t in range(1, len(ids) + 1)]


def test_stop_strings_validation(tokenizer):
    with pytest.raises(ValueError, match="stop_strings must be non-empty strings"):
        StopStringCriteria(tokenizer, [""])


def test_max_length_and_eos():
    ids = torch.tensor([[5, 6, 2], [5, 6, 7], [5, 6, 9]])
    assert MaxLengthCriteria(3)(ids).tolist() == [True] * 3
    assert MaxLengthCriteria(4)(ids).tolist() == [False] * 3
    assert EosTokenCriteria(2)(ids).tolist() == [True, False, False]
    assert EosTokenCriteria([2, 9])(ids).tolist() == [True, False, True]
    both = StoppingCriteriaList([MaxLengthCriteria(10), EosTokenCriteria(torch.tensor([7]))])
    assert both(ids).tolist() == [False, True, False]
    assert torch.equal(EosTokenCriteria([2, 9])(ids), tsc.EosTokenCriteria([2, 9])(ids, None))


def test_gpt2_byte_map_matches_transformers():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert gpt2_bytes_to_unicode() == bytes_to_unicode()


def test_byte_level_tokenizer_agrees_with_transformers():
    """A GPT-2 style byte-level BPE (as Llama 3 / Qwen use), trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TEXTS * 3, trainer=trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend)
    for stop in (["stop", "é", "東京", "😀"], " done"):
        ours, theirs = StopStringCriteria(tokenizer, stop), tsc.StopStringCriteria(tokenizer, stop)
        assert ours.pieces.byte_level
        ids = torch.tensor([tokenizer(TEXTS[1] + " stop", add_special_tokens=False)["input_ids"]])
        hits = 0
        for t in range(1, ids.shape[1] + 1):
            expected = theirs(ids[:, :t], None)
            assert torch.equal(ours(ids[:, :t], None), expected), (stop, t)
            hits += int(expected.sum())
        assert hits > 0
