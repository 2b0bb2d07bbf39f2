"""Streamers release the same text pieces as transformers' streamers for the same ids."""

import queue
import threading

import pytest
import torch
import transformers
from transformers.generation import streamers as tstreamers

from llavakit.generation.streamer import TextIteratorStreamer, TextStreamer

PROMPT = "USER: Describe the image. ASSISTANT:"
ANSWERS = [
    " A cat sits on a rug.\nIt looks at the camera, calm and curious.</s>",
    " 東京の猫です。 Café crème 😀 ok\n\nbye",
]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def feed(streamer, prompt_ids, new_ids):
    """Drive a streamer the way generate does: the prompt (1, T), then one (1,) token per step, then end."""
    streamer.put(torch.tensor([prompt_ids]))
    for token in new_ids:
        streamer.put(torch.tensor([token]))
    streamer.end()


def pieces(streamer_cls, tokenizer, prompt_ids, new_ids, **kwargs):
    streamer = streamer_cls(tokenizer, **kwargs)
    feed(streamer, prompt_ids, new_ids)
    return list(streamer)


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("kwargs", [{}, {"skip_prompt": True}, {"skip_prompt": True, "skip_special_tokens": True}])
def test_iterator_pieces_equal_transformers(tokenizer, answer, kwargs):
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    new_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ours = pieces(TextIteratorStreamer, tokenizer, prompt_ids, new_ids, **kwargs)
    theirs = pieces(tstreamers.TextIteratorStreamer, tokenizer, prompt_ids, new_ids, **kwargs)
    assert ours == theirs
    assert len([p for p in ours if p]) > 3  # really streamed in several pieces
    if kwargs.get("skip_prompt"):
        decode_kwargs = {k: v for k, v in kwargs.items() if k != "skip_prompt"}
        assert "".join(ours) == tokenizer.decode(new_ids, **decode_kwargs)


def test_text_streamer_prints_like_transformers(tokenizer, capsys):
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    new_ids = tokenizer(ANSWERS[0], add_special_tokens=False)["input_ids"]
    feed(TextStreamer(tokenizer, skip_prompt=True), prompt_ids, new_ids)
    ours = capsys.readouterr().out
    feed(tstreamers.TextStreamer(tokenizer, skip_prompt=True), prompt_ids, new_ids)
    assert ours == capsys.readouterr().out
    assert ours.endswith("</s>\n") and ours.startswith("A cat sits")


def test_iterator_works_across_threads_and_times_out(tokenizer):
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=5)
    new_ids = tokenizer(ANSWERS[0], add_special_tokens=False)["input_ids"]
    thread = threading.Thread(target=feed, args=(streamer, [1], new_ids))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tokenizer.decode(new_ids)
    idle = TextIteratorStreamer(tokenizer, timeout=0.05)
    with pytest.raises(queue.Empty):
        next(idle)


def test_batch_of_two_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="batch size 1 only, got 2 rows"):
        TextStreamer(tokenizer).put(torch.ones(2, 3, dtype=torch.long))
