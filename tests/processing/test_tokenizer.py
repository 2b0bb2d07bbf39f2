"""The tokenizer against transformers' AutoTokenizer on the real Mistral tokenizer, in every fixture layout."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from llavakit import AutoTokenizer, LlamaTokenizerFast, PreTrainedTokenizerFast
from tests.assets import LLAVA_15_TEMPLATE
from tests.reference import EMPTY_BATCH_DECODE

STRINGS = [
    "Hello world", " leading space", "two  spaces", "new\nline\n\n", "emoji 😀🚀 and ünïcödé 漢字",
    "USER: <image>\nWhat is shown? ASSISTANT:", "<image>x<image> y", "a<image>b", "", " ", "\t tab",
    "<s>inline bos</s>", "<pad><unk>", "[INST] <image>\nWhat is shown in this image? [/INST]",
    "It's   don't  I'm , . ! ?", "0123456789 3.14159", "🙂" * 3 + "\u200b zero width",
]
KNOWN_IDS = [1, 733, 16289, 28793, 28705, 32000, 13, 3195, 349, 4894, 297, 456, 3469, 28804, 733, 28748, 16289, 28793]
LAYOUTS = ["tokenizer_dir", "tiny_llava_dir", "tiny_llava_hub_dir"]


@pytest.fixture(scope="module", params=LAYOUTS)
def pair(request):
    """(llavakit tokenizer, transformers tokenizer) loaded from the same folder."""
    transformers.logging.set_verbosity_error()
    folder = request.getfixturevalue(request.param)
    return AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)


def test_class_and_defaults_match(pair):
    ours, ref = pair
    # transformers 5 gives LlamaTokenizer (pads left) for a bare tokenizer folder, but the generic backend
    # (pads right) when config.json says llava; the hub layout sets padding_side explicitly.
    assert isinstance(ours, LlamaTokenizerFast) == (type(ref).__name__ == "LlamaTokenizer")
    assert ours.padding_side == ref.padding_side
    assert ours.model_max_length == ref.model_max_length
    assert ours.clean_up_tokenization_spaces == ref.clean_up_tokenization_spaces


def test_special_tokens_and_vocab_match(pair):
    ours, ref = pair
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(ours, f"{name}_token") == getattr(ref, f"{name}_token")
        assert getattr(ours, f"{name}_token_id") == getattr(ref, f"{name}_token_id")
    assert ours.vocab_size == ref.vocab_size == 32000 and len(ours) == len(ref) == 32002
    assert ours.get_vocab() == ref.get_vocab()
    assert {i: str(t) for i, t in ours.added_tokens_decoder.items()} == \
        {i: str(t) for i, t in ref.added_tokens_decoder.items()}


def test_known_vector(pair):
    ours, _ = pair
    assert ours.encode("[INST] <image>\nWhat is shown in this image? [/INST]") == KNOWN_IDS
    assert ours.add_bos_token and not ours.add_eos_token


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encoding_matches(pair, add_special_tokens):
    ours, ref = pair
    for text in STRINGS:
        expected = ref(text, add_special_tokens=add_special_tokens)
        got = ours(text, add_special_tokens=add_special_tokens)
        assert dict(got) == dict(expected), text
        assert ours.tokenize(text) == ref.tokenize(text), text
        assert ours.encode(text, add_special_tokens=add_special_tokens) == \
            ref.encode(text, add_special_tokens=add_special_tokens), text


def test_pairs_match(pair):
    ours, ref = pair
    assert dict(ours("question?", "answer.")) == dict(ref("question?", "answer."))
    assert dict(ours(["a b", "c"], ["d", "e f"])) == dict(ref(["a b", "c"], ["d", "e f"]))
    words = [["Hello", "world"], ["a"]]
    assert dict(ours(words, is_split_into_words=True, padding=True)) == \
        dict(ref(words, is_split_into_words=True, padding=True))


@pytest.mark.parametrize("padding_side", ["left", "right", None])
@pytest.mark.parametrize("kwargs", [
    {"padding": True}, {"padding": "longest"}, {"padding": "max_length", "max_length": 40},
    {"truncation": True, "max_length": 5}, {"max_length": 4}, {"padding": True, "truncation": True, "max_length": 6},
    {"padding": True, "pad_to_multiple_of": 8}, {"truncation": "only_first", "max_length": 7},
])
def test_batches_match(pair, padding_side, kwargs):
    ours, ref = pair
    assert dict(ours(STRINGS, padding_side=padding_side, **kwargs)) == \
        dict(ref(STRINGS, padding_side=padding_side, **kwargs))


def test_truncation_side_matches(pair):
    ours, ref = pair
    ours.truncation_side = ref.truncation_side = "left"
    try:
        assert dict(ours(STRINGS, truncation=True, max_length=5)) == dict(ref(STRINGS, truncation=True, max_length=5))
    finally:
        ours.truncation_side = ref.truncation_side = "right"


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_tensors_match(pair, return_tensors):
    ours, ref = pair
    got = ours(STRINGS[:4], padding=True, return_tensors=return_tensors)
    expected = ref(STRINGS[:4], padding=True, return_tensors=return_tensors)
    assert list(got) == list(expected)
    for key in expected:
        assert type(got[key]) is type(expected[key]) and got[key].dtype == expected[key].dtype
        assert np.array_equal(np.asarray(got[key]), np.asarray(expected[key]))
    single = ours("one text", return_tensors=return_tensors)["input_ids"]
    assert tuple(single.shape) == tuple(ref("one text", return_tensors=return_tensors)["input_ids"].shape)


def test_extra_outputs_match(pair):
    ours, ref = pair
    kwargs = dict(return_token_type_ids=True, return_special_tokens_mask=True, return_offsets_mapping=True,
                  return_length=True, return_attention_mask=True)
    assert dict(ours(STRINGS[:5], **kwargs)) == {k: [list(map(tuple, r)) if k == "offset_mapping" else r
                                                    for r in v] for k, v in ref(STRINGS[:5], **kwargs).items()}
    assert "attention_mask" not in ours("x", return_attention_mask=False)


@pytest.mark.parametrize("skip_special_tokens", [False, True])
@pytest.mark.parametrize("clean_up", [None, True, False])
def test_decoding_matches(pair, skip_special_tokens, clean_up):
    ours, ref = pair
    batch = ref(STRINGS, padding=True)["input_ids"]
    kwargs = dict(skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=clean_up)
    for ids in batch:
        assert ours.decode(ids, **kwargs) == ref.decode(ids, **kwargs)
    assert ours.batch_decode(batch, **kwargs) == ref.batch_decode(batch, **kwargs)
    assert ours.decode(torch.tensor(batch), **kwargs) == ref.decode(torch.tensor(batch), **kwargs)
    assert ours.decode(np.array(batch[0]), **kwargs) == ref.decode(np.array(batch[0]), **kwargs)
    assert ours.decode(batch[0][3], **kwargs) == ref.decode(batch[0][3], **kwargs)


def test_batch_decode_of_an_empty_batch_and_of_one_sequence(pair):
    ours, ref = pair
    assert ours.batch_decode([]) == ours.batch_decode(torch.zeros(0, 3, dtype=torch.long)) == []
    assert ref.batch_decode([]) == EMPTY_BATCH_DECODE  # [] from transformers 5.24 ([""] before)
    ids = ref("a cat")["input_ids"]
    with pytest.warns(FutureWarning, match="use `decode`"):
        assert ours.batch_decode(ids) == [ref.decode(ids)]


def test_decode_keeps_the_two_spaces_around_image_tokens(pair):
    ours, _ = pair
    ids = ours("USER: <image>\nWhat is shown in this image? ASSISTANT:")["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == "USER: \nWhat is shown in this image? ASSISTANT:"
    assert ours.decode(ids) == "<s> USER: <image>\nWhat is shown in this image? ASSISTANT:"


def test_token_id_conversions_match(pair):
    ours, ref = pair
    tokens = ["<s>", "▁Hello", "<image>", "not-a-token", "<0x0A>"]
    assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("<image>") == 32000
    ids = [1, 22557, 32000, 0, 13, 32001]
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == \
        ref.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(13) == ref.convert_ids_to_tokens(13)
    pieces = ["▁Hello", "▁world"]
    assert ours.convert_tokens_to_string(pieces) == ref.convert_tokens_to_string(pieces) == "Hello world"


def test_errors(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="padding must be"):
        ours("x", padding="shortest")
    with pytest.raises(ValueError, match="truncation must be"):
        ours("x", truncation="yes")
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        ours(["x", "y z"], padding=True, padding_side="middle")
    with pytest.raises(ValueError, match="padding_side must be"):
        ours.padding_side = "top"
    with pytest.raises(TypeError, match="unexpected tokenizer arguments \\['pading'\\]"):
        ours("x", pading=True)
    with pytest.raises(ValueError, match="string or a list of strings"):
        ours([1, 2, 3])
    with pytest.raises(ValueError, match="text has 2 entries but text_pair has 1"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="negative token ids \\[-100\\]"):
        ours.decode([1, -100])
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        ours("x", max_length=0)


# ---- tokenizers built or changed inside the tests ------------------------------------------------
@pytest.fixture()
def ours_and_ref(tokenizer_dir):
    transformers.logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(tokenizer_dir), transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def test_padding_without_pad_token(ours_and_ref):
    ours, _ = ours_and_ref
    ours.pad_token = None
    assert ours.pad_token_id is None
    with pytest.raises(ValueError, match="no pad token"):
        ours(["a", "b c"], padding=True)
    ours.pad_token = ours.eos_token
    assert ours(["a", "b c"], padding=True)["input_ids"][0][0] == ours.eos_token_id
    ours.pad_token_id = 32001
    assert ours.pad_token == "<pad>"


def test_add_tokens_matches(ours_and_ref):
    ours, ref = ours_and_ref
    assert ours.add_tokens(["<video>", "newword"]) == ref.add_tokens(["<video>", "newword"]) == 2
    assert ours.add_special_tokens({"sep_token": "<sep>", "extra_special_tokens": ["<x1>", "<x2>"]}) == \
        ref.add_special_tokens({"sep_token": "<sep>", "extra_special_tokens": ["<x1>", "<x2>"]})
    assert ours.add_tokens("<image>", special_tokens=True) == ref.add_tokens("<image>", special_tokens=True) == 0
    assert len(ours) == len(ref) == 32007 and ours.get_vocab() == ref.get_vocab()
    assert ours.all_special_tokens == ref.all_special_tokens and ours.sep_token_id == ref.sep_token_id
    text = "a<video>b newword<sep> <x1>"
    assert dict(ours(text)) == dict(ref(text))
    ids = ref(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    with pytest.raises(ValueError, match="not a special token name"):
        ours.add_special_tokens({"image_tok": "<i>"})


@pytest.mark.parametrize("kwargs", [{"add_bos_token": False}, {"add_eos_token": True},
                                    {"add_bos_token": False, "add_eos_token": True}])
def test_bos_eos_overrides_match(tokenizer_dir, kwargs):
    ours = AutoTokenizer.from_pretrained(tokenizer_dir, **kwargs)
    ref = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, **kwargs)
    for text in ("Hello there", "", "x<image>"):
        assert ours(text)["input_ids"] == ref(text)["input_ids"]
        assert dict(ours(text, "pair")) == dict(ref(text, "pair"))
    # as in transformers 5, passing either flag rebuilds the template from both (a missing one counts as False)
    assert ours.add_bos_token == kwargs.get("add_bos_token", False)
    assert ours.add_eos_token == kwargs.get("add_eos_token", False)


def test_config_add_bos_token_is_ignored_with_tokenizer_json(tokenizer_dir, tmp_path):
    # transformers 5 drops add_bos_token / add_eos_token from tokenizer_config.json when tokenizer.json exists
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert ours("hi")["input_ids"] == ref("hi")["input_ids"] == [1, 12014]


def _legacy_copy(tokenizer_dir, folder, *, legacy, llava_config):
    """The tokenizer rewritten the old way (normalizer Prepend + Replace, no pre-tokenizer), like early llama repos."""
    shutil.copytree(tokenizer_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    data["pre_tokenizer"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if llava_config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    return folder


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("llava_config", [False, True])
def test_old_style_llama_tokenizer_json(tokenizer_dir, tmp_path, legacy, llava_config):
    # LlamaTokenizer rebuilds its pre-tokenizer from `legacy`; with a llava config.json transformers 5 uses
    # tokenizer.json as is. The two give different ids after an added token.
    folder = _legacy_copy(tokenizer_dir, tmp_path / "old", legacy=legacy, llava_config=llava_config)
    ours, ref = AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert type(ours) is (PreTrainedTokenizerFast if llava_config else LlamaTokenizerFast)
    text = "USER: <image>\nWhat is  shown?<s>x"
    ids = ref(text)["input_ids"]
    assert ours(text)["input_ids"] == ids
    assert (ids[6] == 28705) == (legacy or llava_config)  # "▁" after <image> only when prepending "always"
    assert ours.decode(ids) == ref.decode(ids)


def test_save_and_reload(pair, tmp_path):
    ours, ref = pair
    ours.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in STRINGS:
        assert again(text)["input_ids"] == theirs(text)["input_ids"] == ref(text)["input_ids"]
    assert again.padding_side == theirs.padding_side == ours.padding_side
    assert again.all_special_tokens == ours.all_special_tokens and again.chat_template == ours.chat_template
    assert (tmp_path / "chat_template.jinja").exists() == (ours.chat_template is not None)


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        AutoTokenizer.from_pretrained(tmp_path)


# ---- chat templates ----------------------------------------------------------------------------
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red stop sign."}]},
    {"role": "user", "content": [{"type": "text", "text": "Why is it red?"}]},
]


def test_tokenizer_chat_template_matches(tiny_llava_dir):
    ours = AutoTokenizer.from_pretrained(tiny_llava_dir)
    ref = transformers.AutoTokenizer.from_pretrained(tiny_llava_dir)
    assert ours.chat_template == ref.chat_template == LLAVA_15_TEMPLATE  # read from chat_template.jinja
    for kwargs in ({"add_generation_prompt": True}, {}, {"continue_final_message": True}):
        conversation = CONVERSATION[:2] if kwargs.get("continue_final_message") else CONVERSATION
        assert ours.apply_chat_template(conversation, tokenize=False, **kwargs) == \
            ref.apply_chat_template(conversation, tokenize=False, **kwargs)
        assert dict(ours.apply_chat_template(conversation, **kwargs)) == dict(ref.apply_chat_template(conversation,
                                                                                                      **kwargs))
        assert ours.apply_chat_template(conversation, return_dict=False, **kwargs) == \
            ref.apply_chat_template(conversation, return_dict=False, **kwargs)
    batch = [CONVERSATION, CONVERSATION[:1]]
    got = ours.apply_chat_template(batch, padding=True, return_tensors="pt")
    expected = ref.apply_chat_template(batch, padding=True, return_tensors="pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_tokenizer_assistant_masks_match(tokenizer_dir):
    from llavakit.processing.templates import LLAVA

    ours = AutoTokenizer.from_pretrained(tokenizer_dir)
    ref = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    kwargs = dict(chat_template=LLAVA, return_assistant_tokens_mask=True, padding=True)
    got = ours.apply_chat_template([CONVERSATION, CONVERSATION[:2]], **kwargs)
    expected = ref.apply_chat_template([CONVERSATION, CONVERSATION[:2]], **kwargs)
    assert got["assistant_masks"] == expected["assistant_masks"] and sum(got["assistant_masks"][0]) > 0
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template(CONVERSATION)
    assert ours.apply_chat_template(CONVERSATION, chat_template="llava", tokenize=False).startswith("USER: <image>\n")
