"""The slow-tokenizer methods of the old API page on our tokenizer, against transformers 5's LlamaTokenizer.

transformers 5 dropped build_inputs_with_special_tokens / create_token_type_ids_from_sequences from its fast
tokenizers and has get_special_tokens_mask only for formatted ids, so the reference for a pair is what its
encoding returns: `tokenizer(a, b, return_token_type_ids=True, return_special_tokens_mask=True)`.
"""

from __future__ import annotations

import pytest
import transformers

from llavakit import LlaVaTokenizer, PreTrainedTokenizerFast
from llavakit.processing.tokenizer import AutoTokenizer

PAIRS = [("hello world", None), ("What is in the image?", "A cat on a sofa."), ("<image>\nDescribe", "Short")]


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dir):
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir), AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def bos_eos_dir(tmp_path_factory, tokenizer_dir):
    """The same tokenizer whose post-processor adds both `<s>` and `</s>` (`<s> A </s> <s> B </s>` for pairs)."""
    ours = AutoTokenizer.from_pretrained(tokenizer_dir)
    ours.add_eos_token = True
    out = tmp_path_factory.mktemp("bos-eos")
    ours.save_pretrained(out)
    return out


def _reference(theirs, a: str, b: str | None) -> dict[str, list[int]]:
    return theirs(a, b, return_token_type_ids=True, return_special_tokens_mask=True)


def _plain(tokenizer, text: str | None) -> list[int] | None:
    return None if text is None else tokenizer(text, add_special_tokens=False)["input_ids"]


def _check_against(theirs, ours) -> None:
    for a, b in PAIRS:
        expected = _reference(theirs, a, b)
        ids_a, ids_b = _plain(ours, a), _plain(ours, b)
        assert ours.build_inputs_with_special_tokens(ids_a, ids_b) == expected["input_ids"], (a, b)
        assert ours.get_special_tokens_mask(ids_a, ids_b) == expected["special_tokens_mask"], (a, b)
        assert ours.create_token_type_ids_from_sequences(ids_a, ids_b) == expected["token_type_ids"], (a, b)


def test_methods_match_transformers_encoding(tokenizers):
    _check_against(*tokenizers)


def test_methods_follow_a_bos_and_eos_template(bos_eos_dir):
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(bos_eos_dir)
    ours = PreTrainedTokenizerFast.from_pretrained(bos_eos_dir)
    assert ours.build_inputs_with_special_tokens([5, 6], [7]) == [1, 5, 6, 2, 1, 7, 2]
    _check_against(theirs, ours)


def test_llama_layout_by_hand(tokenizers):
    _, ours = tokenizers
    assert ours.build_inputs_with_special_tokens([5, 6]) == [1, 5, 6]
    assert ours.build_inputs_with_special_tokens([5, 6], [7]) == [1, 5, 6, 1, 7]
    assert ours.get_special_tokens_mask([5, 6], [7]) == [1, 0, 0, 1, 0]
    assert ours.create_token_type_ids_from_sequences([5, 6], [7]) == [0, 0, 0, 1, 1]


def test_special_tokens_mask_of_formatted_ids_matches_transformers(tokenizers):
    theirs, ours = tokenizers
    ids = theirs("<image>\nhi there", "x")["input_ids"] + [0, 2, 32001, 32000]
    assert ours.get_special_tokens_mask(ids, already_has_special_tokens=True) == \
        theirs.get_special_tokens_mask(ids, already_has_special_tokens=True)
    with pytest.raises(ValueError, match="second sequence"):
        ours.get_special_tokens_mask(ids, [1], already_has_special_tokens=True)


def test_save_vocabulary_writes_a_loadable_tokenizer_json(tokenizers, tmp_path):
    _, ours = tokenizers
    (path,) = ours.save_vocabulary(tmp_path, filename_prefix="llava")
    assert path == str(tmp_path / "llava-tokenizer.json")
    reloaded = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
    text = "A <image> photo of a cat, 12 ünïcode"
    assert reloaded(text)["input_ids"] == ours(text)["input_ids"]
    with pytest.raises(ValueError, match="existing directory"):
        ours.save_vocabulary(tmp_path / "missing")


def test_old_page_tokenizer_names(tokenizer_dir, tokenizers):
    theirs, _ = tokenizers
    tok = LlaVaTokenizer.from_pretrained(tokenizer_dir)
    assert tok("USER: hi")["input_ids"] == theirs("USER: hi")["input_ids"]
    assert tok.build_inputs_with_special_tokens(tok.encode("hi", add_special_tokens=False)) == tok.encode("hi")
