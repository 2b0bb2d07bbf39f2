"""Training data: LLaVA / messages records -> ids + labels masked to assistant turns; loss parity with transformers."""

from __future__ import annotations

import random
import shutil

import pytest
import torch

from llavakit import AutoProcessor, LlavaForConditionalGeneration
from llavakit.processing.templates import TEMPLATES
from llavakit.training.data import (IGNORE_INDEX, Collator, SupervisedDataset, encode_sample, epoch_batches,
                                    llava_to_messages, to_messages)


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(photos["chelsea"], folder / "cat.png")
    shutil.copy(photos["coffee"], folder / "coffee.png")
    return folder


RECORD = {"id": "s1", "image": "cat.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat animal is this?"},
    {"from": "gpt", "value": "A cat lying down."},
    {"from": "human", "value": "What colour is it?"},
    {"from": "gpt", "value": "Brown and grey."}]}
TEXT_RECORD = {"id": "t1", "conversations": [{"from": "human", "value": "Say hello."},
                                             {"from": "gpt", "value": "Hello there."}]}


def _encode(processor, record, folder, template=None, max_length=None):
    messages, images = to_messages(record, folder)
    return encode_sample(processor, messages, images, template=template or processor.chat_template,
                         max_length=max_length)


def test_labels_are_exactly_the_assistant_turns(processor, image_folder):
    sample = _encode(processor, RECORD, image_folder)
    ids, labels = sample["input_ids"], sample["labels"]
    learned = labels[labels != IGNORE_INDEX]
    assert processor.decode(learned).split() == "A cat lying down. Brown and grey.".split()
    is_image = ids == processor.image_token_id
    assert int(is_image.sum()) == 16 and (labels[is_image] == IGNORE_INDEX).all()
    assert labels[0] == IGNORE_INDEX  # BOS
    assert sample["pixel_values"].shape == (1, 3, 28, 28)
    # the prompt parts are masked: nothing of the questions is learned
    assert "animal" not in processor.decode(learned) and "colour" not in processor.decode(learned)


def test_text_only_and_messages_format(processor, image_folder):
    text = _encode(processor, TEXT_RECORD, image_folder)
    assert "pixel_values" not in text
    assert processor.decode(text["labels"][text["labels"] != IGNORE_INDEX]).strip() == "Hello there."
    messages_record = {"id": "m1", "messages": [
        {"role": "user", "content": [{"type": "image", "path": "cat.png"},
                                     {"type": "text", "text": "What animal is this?"}]},
        {"role": "assistant", "content": "A cat lying down."},
        {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Brown and grey."}]}]}
    a, b = _encode(processor, RECORD, image_folder), _encode(processor, messages_record, image_folder)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_generation_blocks_and_per_turn_rendering_agree(processor, image_folder):
    # the fixture's template has no {% generation %}; llavakit's built-in "llava" template has
    per_turn = _encode(processor, RECORD, image_folder)
    tagged = _encode(processor, RECORD, image_folder, template=TEMPLATES["llava"])
    assert torch.equal(per_turn["input_ids"], tagged["input_ids"])
    assert torch.equal(per_turn["labels"], tagged["labels"])


def test_truncation_never_cuts_images_or_leaves_nothing(processor, image_folder):
    full = _encode(processor, RECORD, image_folder)
    n = len(full["input_ids"])
    cut = _encode(processor, RECORD, image_folder, max_length=n - 3)
    assert torch.equal(cut["labels"], full["labels"][:n - 3])
    with pytest.raises(ValueError, match="cut image tokens"):
        _encode(processor, RECORD, image_folder, max_length=10)
    with pytest.raises(ValueError, match="no assistant token"):
        _encode(processor, RECORD, image_folder, max_length=24)
    dataset = SupervisedDataset([RECORD, TEXT_RECORD], processor, image_folder=str(image_folder), max_length=10)
    assert dataset[0] is None and "cut image tokens" in dataset.skipped[0]


def test_bad_records_are_named():
    with pytest.raises(ValueError, match="sample x: 2 <image> placeholder"):
        llava_to_messages({"id": "x", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image><image>hi"}, {"from": "gpt", "value": "yo"}]})
    with pytest.raises(ValueError, match="unknown speaker"):
        llava_to_messages({"id": "y", "conversations": [{"from": "bot", "value": "x"}]})
    # an image with no placeholder goes to the first human turn, as in LLaVA
    messages, images = llava_to_messages({"image": "a.png", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "/data")
    assert messages[0]["content"][0] == {"type": "image"} and images == ["/data/a.png"]


def test_loss_equals_transformers(processor, image_folder, tiny_llava_dir):
    import transformers

    record2 = {"id": "s2", "image": "coffee.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A cup of coffee on a plate."}]}
    dataset = SupervisedDataset([RECORD, TEXT_RECORD, record2], processor, image_folder=str(image_folder))
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1], dataset[2]])
    assert batch["pixel_values"].shape[0] == 2 and (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    loss = ours(**batch).loss
    expected = theirs(**batch).loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert ours.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_llava_next_batch_loss_equals_transformers(tiny_llava_next_dir, image_folder):
    """NeXT fine-tuning: crops padded to the batch's largest count, image_sizes passed, same loss as transformers."""
    import transformers
    from PIL import Image

    from llavakit import LlavaNextForConditionalGeneration

    Image.new("RGB", (60, 20), (200, 30, 30)).save(image_folder / "wide.png")  # fewer crops than a square photo
    processor = AutoProcessor.from_pretrained(tiny_llava_next_dir)
    wide = {"id": "w", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
    dataset = SupervisedDataset([RECORD, wide, TEXT_RECORD], processor, image_folder=str(image_folder))
    samples = [dataset[0], dataset[1], dataset[2]]
    crops = [s["pixel_values"].shape[1] for s in samples[:2]]
    assert crops[0] != crops[1]
    batch = Collator(processor.tokenizer.pad_token_id)(samples)
    assert batch["pixel_values"].shape[:2] == (2, max(crops))
    assert batch["image_sizes"].tolist() == [[300, 451], [20, 60]]
    ours = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir)
    theirs = transformers.LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir)
    loss = ours(**batch).loss
    torch.testing.assert_close(loss, theirs(**batch).loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert ours.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_modality_grouped_batches_are_single_modality():
    lengths = [5, -3, 7, -2, 9, 4, -8, 1, 3, -1]
    batches = epoch_batches(len(lengths), 3, seed=0, epoch=0, lengths=lengths)
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        assert len({lengths[i] > 0 for i in b}) == 1
    assert batches == epoch_batches(len(lengths), 3, seed=0, epoch=0, lengths=lengths)
    assert batches != epoch_batches(len(lengths), 3, seed=0, epoch=1, lengths=lengths)
    plain = epoch_batches(10, 4, seed=1, epoch=0)
    assert [len(b) for b in plain] == [4, 4, 2] and sorted(sum(plain, [])) == list(range(10))
    random.seed(0)
