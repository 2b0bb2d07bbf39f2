"""LlavaProcessor against transformers' on both checkpoint layouts: calls, chat templates, errors, save/load."""

import base64
import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from llavakit import LlavaProcessor
from llavakit.processing.templates import LLAVA
from tests.assets import IMAGE_TOKENS, LLAVA_15_TEMPLATE
from tests.reference import hf_processor


@pytest.fixture(scope="module", params=["tiny_llava_dir", "tiny_llava_hub_dir"])
def pair(request):
    """(llavakit, transformers) processors loaded from the same folder."""
    transformers.logging.set_verbosity_error()
    folder = request.getfixturevalue(request.param)
    return LlavaProcessor.from_pretrained(folder), hf_processor(folder)


@pytest.fixture(scope="module")
def images(photos):
    return {name: PIL.Image.open(path) for name, path in photos.items()}


def assert_same(got, expected):
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == got[key].dtype and torch.equal(value, got[key]), key
        elif isinstance(value, np.ndarray):
            assert value.dtype == got[key].dtype and np.array_equal(value, got[key]), key
        elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            assert all(np.array_equal(a, b) for a, b in zip(value, got[key])) and len(value) == len(got[key]), key
        else:
            assert value == got[key], key


def test_settings_match(pair):
    ours, ref = pair
    assert (ours.patch_size, ours.vision_feature_select_strategy, ours.num_additional_image_tokens) == (7, "default", 1)
    assert ours.image_token == ref.image_token == "<image>" and ours.image_token_id == ref.image_token_id == 32000
    assert ours.model_input_names == ref.model_input_names == ["pixel_values", "input_ids", "attention_mask"]
    assert ours.chat_template == ref.chat_template == LLAVA_15_TEMPLATE
    assert ours.tokenizer.padding_side == ref.tokenizer.padding_side
    assert ours.num_image_tokens(28, 28) == IMAGE_TOKENS == 16
    assert ours.num_image_tokens(336, 350) == 48 * 50  # patch 7; +1 CLS -1 "default"


def test_single_prompt_matches(pair, images):
    ours, ref = pair
    prompt = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    for return_tensors in (None, "pt", "np"):
        got = ours(images=images["astronaut"], text=prompt, return_tensors=return_tensors)
        assert_same(got, ref(images=images["astronaut"], text=prompt, return_tensors=return_tensors))
    ids = ours(images=images["astronaut"], text=prompt)["input_ids"][0]
    assert ids[:5] == [1, 2223, 725, 28747, 28705] and ids.count(32000) == IMAGE_TOKENS


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_multi_image_batch_matches(pair, images, padding_side):
    ours, ref = pair
    kwargs = dict(
        images=[[images["astronaut"], images["camera"]], [images["horse"]], [images["rocket"]]],
        text=["USER: <image>\n<image>\nCompare them. ASSISTANT:", "<image> Describe.", "A longer prompt: <image>?"],
        padding=True, return_tensors="pt", padding_side=padding_side,
    )
    got, expected = ours(**kwargs), ref(**kwargs)
    assert_same(got, expected)
    assert got["pixel_values"].shape == (4, 3, 28, 28)
    assert (got["input_ids"] == 32000).sum(1).tolist() == [2 * IMAGE_TOKENS, IMAGE_TOKENS, IMAGE_TOKENS]
    pad_column = 0 if padding_side == "left" else -1
    assert got["attention_mask"][:, pad_column].tolist().count(0) == 2


def test_flat_image_list_and_kwargs_pass_through(pair, images):
    ours, ref = pair
    kwargs = dict(images=[images["chelsea"], images["coffee"]], text=["<image> a", "<image> b c d"],
                  padding="max_length", max_length=40, truncation=True, return_tensors="np",
                  do_center_crop=False, size={"height": 21, "width": 35}, add_special_tokens=False)
    got = ours(**kwargs)
    assert_same(got, ref(**kwargs))
    assert got["pixel_values"].shape == (2, 3, 21, 35)
    assert (got["input_ids"][0] == 32000).sum() == (21 // 7) * (35 // 7) + 1 - 1


def test_text_only_and_images_only_match(pair, images):
    ours, ref = pair
    assert_same(ours(text="hello there", return_tensors="pt"), ref(text="hello there", return_tensors="pt"))
    assert_same(ours(text=["a", "b c"], padding=True), ref(text=["a", "b c"], padding=True))
    # images without text: only pixel_values, as transformers returns
    assert_same(ours(images=images["rocket"], return_tensors="pt"), ref(images=images["rocket"], return_tensors="pt"))


def test_decoding_matches(pair):
    ours, ref = pair
    ids = ours(text=["USER: <image>", "hi"], images=[np.zeros((9, 9, 3), np.uint8)], padding=True)["input_ids"]
    for kwargs in ({}, {"skip_special_tokens": True}):
        assert ours.decode(ids[0], **kwargs) == ref.decode(ids[0], **kwargs)
        assert ours.batch_decode(ids, **kwargs) == ref.batch_decode(ids, **kwargs)
    tensor = torch.tensor(ids)
    assert ours.post_process_image_text_to_text(tensor) == ref.post_process_image_text_to_text(tensor)
    assert ours.post_process_image_text_to_text(tensor[1]) == ref.post_process_image_text_to_text(tensor[1])


# ---- errors ------------------------------------------------------------------------------------
def test_count_mismatch_errors(pair, images):
    ours, _ = pair
    with pytest.raises(ValueError, match="Found total 0 <image> tokens and 1 images"):
        ours(images=images["camera"], text="no placeholder here")
    with pytest.raises(ValueError, match="Found total 3 <image> tokens and 2 images"):
        ours(images=[images["camera"], images["coffee"]], text=["<image><image>", "<image>"])
    with pytest.raises(ValueError, match="Found 1 <image> tokens in the text but no images were passed"):
        ours(text="USER: <image>")
    with pytest.raises(ValueError, match="needs text, images, or both"):
        ours()
    with pytest.raises(ValueError, match="`text` must be a string or a list of strings"):
        ours(text=[["nested"]])


def test_truncation_that_cuts_image_tokens(pair, images):
    ours, ref = pair
    with pytest.raises(ValueError, match=r"max_length=10 is too small.*ids=\[5\] and text=\[16\]"):
        ours(images=images["camera"], text="USER: <image> x", truncation=True, max_length=10)
    with pytest.raises(ValueError, match=r"ids=\[5\] and text=\[16\]"):
        ref(images=images["camera"], text="USER: <image> x", truncation=True, max_length=10)
    fits = ours(images=images["camera"], text="USER: <image> x", truncation=True, max_length=30)
    assert fits["input_ids"][0].count(32000) == 16


def test_argument_errors(pair, images):
    ours, _ = pair
    with pytest.raises(TypeError, match="unexpected LlavaProcessor arguments \\['paddding'\\]"):
        ours(text="x", paddding=True)
    with pytest.raises(ValueError, match="patch_size is not set"):
        LlavaProcessor(ours.image_processor, ours.tokenizer).num_image_tokens(28, 28)
    with pytest.raises(ValueError, match="'<img>' is not in the tokenizer's vocabulary"):
        LlavaProcessor(ours.image_processor, ours.tokenizer, patch_size=7, image_token="<img>")
    with pytest.raises(ValueError, match="needs both"):
        LlavaProcessor(None, ours.tokenizer)
    with pytest.raises(ValueError, match="'default' or 'full', got 'cls'"):
        LlavaProcessor(ours.image_processor, ours.tokenizer, vision_feature_select_strategy="cls")
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        LlavaProcessor(ours.image_processor, ours.tokenizer, patch_size=0)
    with pytest.raises(TypeError):
        LlavaProcessor(ours.image_processor, ours.tokenizer, patchsize=14)


def test_hand_built_processor_without_extra_token_gives_15(pair):
    ours, _ = pair
    built = LlavaProcessor(ours.image_processor, ours.tokenizer, patch_size=7, vision_feature_select_strategy="default")
    assert built.num_image_tokens(28, 28) == 15  # the documented pitfall: num_additional_image_tokens defaults to 0
    full = LlavaProcessor(ours.image_processor, ours.tokenizer, patch_size=7, vision_feature_select_strategy="full")
    assert full.num_image_tokens(28, 28) == 16


# ---- chat templates ----------------------------------------------------------------------------
def _conversation(photos):
    return [
        {"role": "user", "content": [{"type": "image", "path": str(photos["astronaut"])},
                                     {"type": "text", "text": "What is shown in this image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red stop sign."}]},
        {"role": "user", "content": [{"type": "text", "text": "Why is it red?"},
                                     {"type": "image", "url": str(photos["chelsea"])}]},
    ]


@pytest.mark.parametrize("kwargs", [{"add_generation_prompt": True}, {}, {"continue_final_message": True}])
def test_chat_template_matches(pair, photos, kwargs):
    ours, ref = pair
    conversation = _conversation(photos)
    if kwargs.get("continue_final_message"):
        conversation = conversation[:2]
    text = ours.apply_chat_template(conversation, **kwargs)
    assert text == ref.apply_chat_template(conversation, **kwargs)
    assert ours.apply_chat_template(conversation, tokenize=True, **kwargs) == \
        ref.apply_chat_template(conversation, tokenize=True, **kwargs)
    assert_same(ours.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt", **kwargs),
                ref.apply_chat_template(conversation, tokenize=True, return_dict=True, return_tensors="pt", **kwargs))
    if kwargs.get("continue_final_message"):
        assert text == "USER: <image>\nWhat is shown in this image? ASSISTANT: A red stop sign."


def test_batched_chat_with_padding_matches(pair, photos, images):
    ours, ref = pair
    second = [{"role": "user", "content": [{"type": "image", "image": images["coffee"]},
                                           {"type": "text", "text": "Describe."}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True,
                  padding_side="left")
    got = ours.apply_chat_template([_conversation(photos), second], **kwargs)
    assert_same(got, ref.apply_chat_template([_conversation(photos), second], **kwargs))
    assert got["pixel_values"].shape == (3, 3, 28, 28) and got["attention_mask"][1, 0] == 0


def test_assistant_masks_match(pair, photos):
    ours, ref = pair
    kwargs = dict(chat_template=LLAVA, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                  padding=True)
    conversations = [_conversation(photos), _conversation(photos)[:2]]
    got = ours.apply_chat_template(conversations, **kwargs)
    assert_same(got, ref.apply_chat_template(conversations, **kwargs))
    masked = [i for i, m in zip(got["input_ids"][1], got["assistant_masks"][1]) if m]
    assert ours.decode(masked) == "A red stop sign. "  # the turn separator is inside the generation block


def test_images_from_data_urls_and_openai_blocks(pair, photos):
    ours, ref = pair
    data = base64.b64encode(photos["coffee"].read_bytes()).decode()
    conversation = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "image", "base64": data}, {"type": "text", "text": "Same?"}]}]
    got = ours.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                   return_tensors="np")
    assert got["pixel_values"].shape == (2, 3, 28, 28) and np.array_equal(got["pixel_values"][0],
                                                                          got["pixel_values"][1])
    expected = ours(images=PIL.Image.open(photos["coffee"]), text="x <image>", return_tensors="np")["pixel_values"]
    assert np.array_equal(got["pixel_values"][:1], expected)


def test_template_that_writes_bos_skips_special_tokens(pair, photos):
    ours, ref = pair
    template = "{{ bos_token }}" + LLAVA_15_TEMPLATE
    kwargs = dict(chat_template=template, add_generation_prompt=True, tokenize=True)
    ids = ours.apply_chat_template(_conversation(photos), **kwargs)
    assert ids == ref.apply_chat_template(_conversation(photos), **kwargs)
    assert ids[0][:2] != [1, 1] and ids[0][0] == 1


def test_template_kwargs_and_processor_kwargs_are_split(pair, photos):
    ours, ref = pair
    template = "{{ greeting }} " + LLAVA_15_TEMPLATE
    kwargs = dict(chat_template=template, greeting="Hi!", tokenize=True, return_dict=True, max_length=200,
                  padding="max_length")
    got = ours.apply_chat_template(_conversation(photos), **kwargs)
    assert_same(got, ref.apply_chat_template(_conversation(photos), **kwargs))
    assert len(got["input_ids"][0]) == 200


def test_chat_template_by_name_and_errors(pair, photos):
    ours, _ = pair
    assert ours.apply_chat_template(_conversation(photos), chat_template="llava", add_generation_prompt=True) == \
        ours.apply_chat_template(_conversation(photos), add_generation_prompt=True)
    with pytest.raises(ValueError, match="cannot both be set"):
        ours.apply_chat_template(_conversation(photos), add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ValueError, match="needs tokenize=True and return_dict=True"):
        ours.apply_chat_template(_conversation(photos), return_assistant_tokens_mask=True)
    with pytest.raises(ValueError, match="not an existing file"):
        ours.apply_chat_template([{"role": "user", "content": [{"type": "image", "path": "/no/such.png"}]}],
                                 tokenize=True)


# ---- loading and saving ------------------------------------------------------------------------
def test_from_pretrained_takes_components_and_image_options_like_transformers(tiny_llava_dir, images):
    kwargs = dict(size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42}, do_normalize=False)
    ours = LlavaProcessor.from_pretrained(tiny_llava_dir, patch_size=7, **kwargs)
    ref = hf_processor(tiny_llava_dir, patch_size=7, **kwargs)
    assert ours.patch_size == 7 and ours.image_processor.size == {"shortest_edge": 42}
    assert ours.image_processor.do_normalize is False
    text = "USER: <image>\nWhat is this? ASSISTANT:"
    got, expected = (p(images=images["chelsea"], text=text, return_tensors="pt") for p in (ours, ref))
    assert got["pixel_values"].shape == (1, 3, 42, 42) and torch.equal(got["pixel_values"], expected["pixel_values"])
    assert torch.equal(got["input_ids"], expected["input_ids"])  # (42 / 7)^2 = 36 image tokens
    assert int((got["input_ids"] == ours.image_token_id).sum()) == 36

    image_processor, tokenizer = ours.image_processor, ours.tokenizer
    given = LlavaProcessor.from_pretrained(tiny_llava_dir, image_processor=image_processor, tokenizer=tokenizer,
                                           backend="pil")
    assert given.image_processor is image_processor and given.tokenizer is tokenizer
    with pytest.raises(TypeError, match="image processor options \\['size'\\] together with an image_processor"):
        LlavaProcessor.from_pretrained(tiny_llava_dir, image_processor=image_processor, size={"shortest_edge": 28})


def test_save_and_reload(pair, images, tmp_path):
    ours, _ = pair
    ours.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= names
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "LlavaProcessor"
    kwargs = dict(images=[images["rocket"], images["horse"]], text=["<image> one", "two <image>"], padding=True,
                  return_tensors="pt")
    again = LlavaProcessor.from_pretrained(tmp_path)
    theirs = hf_processor(tmp_path)
    assert_same(again(**kwargs), theirs(**kwargs))
    assert_same(again(**kwargs), ours(**kwargs))
    assert again.chat_template == theirs.chat_template == ours.chat_template


def test_from_pretrained_overrides(tiny_llava_dir):
    processor = LlavaProcessor.from_pretrained(tiny_llava_dir, patch_size=14, num_additional_image_tokens=0)
    assert processor.num_image_tokens(28, 28) == 3


def _copy_without_templates(src, dst):
    shutil.copytree(src, dst)
    for name in ("chat_template.jinja", "chat_template.json"):
        (dst / name).unlink(missing_ok=True)
    return dst


def test_chat_template_precedence(tiny_llava_hub_dir, tmp_path):
    # transformers 5: the legacy chat_template.json wins over chat_template.jinja
    folder = _copy_without_templates(tiny_llava_hub_dir, tmp_path / "both")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "JSON {{ messages | length }}"}))
    (folder / "chat_template.jinja").write_text("JINJA {{ messages | length }}")
    ours, ref = LlavaProcessor.from_pretrained(folder), hf_processor(folder)
    assert ours.chat_template == ref.chat_template == "JSON {{ messages | length }}"
    (folder / "chat_template.json").unlink()
    assert LlavaProcessor.from_pretrained(folder).chat_template == "JINJA {{ messages | length }}"


def test_template_only_in_tokenizer_config_or_none(tiny_llava_hub_dir, tmp_path, photos):
    folder = _copy_without_templates(tiny_llava_hub_dir, tmp_path / "tok_only")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "TOKENIZER {{ messages | length }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert LlavaProcessor.from_pretrained(folder).chat_template == "TOKENIZER {{ messages | length }}"
    config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    processor = LlavaProcessor.from_pretrained(folder)
    assert processor.chat_template is None  # nothing shipped: apply_chat_template falls back to the built-in one
    assert processor.apply_chat_template(_conversation(photos), add_generation_prompt=True) == (
        "USER: <image>\nWhat is shown in this image? ASSISTANT: A red stop sign. USER: <image>\nWhy is it red? "
        "ASSISTANT:")


def test_fallback_template_follows_the_checkpoint_name(tiny_llava_hub_dir, tmp_path, photos):
    """A 34B (Yi) or Mistral checkpoint that ships no template gets its family's built-in one."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    expected = {
        "llava-v1.6-34b-hf": "<|im_start|>user\n<image>\nHi?<|im_end|>\n<|im_start|>assistant\n",
        "llava-v1.6-mistral-7b-hf": "[INST] <image>\nHi? [/INST]",
        "llava-1.5-7b-hf": "USER: <image>\nHi? ASSISTANT:",
    }
    for name, rendered in expected.items():
        folder = _copy_without_templates(tiny_llava_hub_dir, tmp_path / name)
        processor = LlavaProcessor.from_pretrained(folder)
        assert processor.apply_chat_template(conversation, add_generation_prompt=True) == rendered, name
