"""Constrained decoding (llguidance): a JSON-schema logits processor for generate, and masks that hold on
both vocabulary kinds the families use (SentencePiece byte-fallback and GPT-2 byte-level BPE)."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from llavakit.generation.structured import Constraint, GrammarMatcher, JSONSchemaLogitsProcessor  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3}}}


@pytest.fixture(scope="module")
def tiny(tiny_llava_dir):
    from llavakit import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava_dir), AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A byte-level BPE (the Qwen2 / Llama 3 kind) trained here with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    text = ['{"name": "Ada", "age": 36, "pets": ["cat"]}', "Hello world, the quick brown fox. Ünïcödé ✓ 12345",
            "jumps over the lazy dog; {}[]:,\" true false null"] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text, trainer)
    return tokenizer


def _random_decode(matcher: GrammarMatcher, vocab_size: int, eos: int, seed: int, limit: int = 200) -> list[int]:
    """Pick tokens from random logits under the mask until EOS: the worst case of a model."""
    gen = torch.Generator().manual_seed(seed)
    tokens = []
    for _ in range(limit):
        scores = matcher.mask(torch.randn(vocab_size, generator=gen))
        token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))
        if token == eos:
            return tokens
        matcher.advance(token)
        tokens.append(token)
    raise AssertionError("the constraint did not end within the limit")


def test_generate_with_the_processor_batched_greedy_and_sampled(tiny):
    processor, model = tiny
    constrain = JSONSchemaLogitsProcessor(SCHEMA, processor.tokenizer, model)
    prompts = ["USER: Who are you? ASSISTANT:", "USER: Describe a person as JSON, with pets ASSISTANT:"]
    inputs = processor(text=prompts, return_tensors="pt", padding=True, padding_side="left")
    n = inputs["input_ids"].shape[1]
    for sample in (False, True):
        torch.manual_seed(0)
        out = model.generate(**inputs, max_new_tokens=80, do_sample=sample, logits_processor=[constrain])
        for row in out[:, n:]:
            assert processor.tokenizer.eos_token_id in row.tolist()  # it finished, it was not cut
            jsonschema.validate(json.loads(processor.decode(row, skip_special_tokens=True)), SCHEMA)
    # greedy batched == each prompt alone (left padding keeps rows independent, the processor too)
    batched = model.generate(**inputs, max_new_tokens=80, do_sample=False, logits_processor=[constrain])
    for i, prompt in enumerate(prompts):
        alone = processor(text=prompt, return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=80, do_sample=False, logits_processor=[constrain])
        assert processor.decode(single[0, alone["input_ids"].shape[1]:], skip_special_tokens=True) == \
            processor.decode(batched[i, n:], skip_special_tokens=True)


@pytest.mark.parametrize("constraint, check", [
    (Constraint("json_schema", SCHEMA), lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
    (Constraint("regex", r"\d{3}-[A-Z]{2}( ok)?"), lambda text: re.fullmatch(r"\d{3}-[A-Z]{2}( ok)?", text)),
    (Constraint("choice", ["ünïcödé ✓", "plain"]), lambda text: text in ("ünïcödé ✓", "plain")),
    (Constraint("grammar", 'root ::= "[" item ("," item)? ("," item)? "]"\nitem ::= [a-z] [a-z]?'),
     lambda text: re.fullmatch(r"\[[a-z]{1,2}(,[a-z]{1,2}){0,2}\]", text)),
])
def test_masks_hold_on_both_vocabulary_kinds(tiny, byte_level_tokenizer, constraint, check):
    sentencepiece = tiny[0].tokenizer  # Mistral's byte-fallback SentencePiece vocabulary, as llava-1.5 uses
    for tokenizer, vocab_size, eos in ((sentencepiece, 32064, sentencepiece.eos_token_id),
                                       (byte_level_tokenizer, 400, byte_level_tokenizer.token_to_id("<|endoftext|>"))):
        for seed in range(3):
            matcher = GrammarMatcher(constraint, tokenizer, vocab_size, [eos])
            tokens = _random_decode(matcher, vocab_size, eos, seed)
            text = tokenizer.decode(tokens)
            assert check(text), (type(tokenizer).__name__, text)


def test_bad_constraints_are_value_errors(tiny):
    tokenizer = tiny[0].tokenizer
    with pytest.raises(ValueError, match="minimum"):
        GrammarMatcher(Constraint("json_schema", {"type": "integer", "minimum": 3, "maximum": 1}), tokenizer, 32064,
                       [2])
    with pytest.raises(ValueError, match="cannot be satisfied"):
        GrammarMatcher(Constraint("regex", r"[^\s\S]"), tokenizer, 32064, [2])
    with pytest.raises(ValueError, match="not valid JSON"):
        JSONSchemaLogitsProcessor("{nope", tokenizer, tiny[1])
    with pytest.raises(ValueError, match="unknown constraint kind"):
        Constraint("xml", "<a/>").grammar()
