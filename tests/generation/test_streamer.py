"""Streamers release the same text pieces as transformers' streamers for the same ids."""

import queue
import threading

import pytest
import torch
import transformers
from transformers.generation import streamers as tstreamers

from llavakit.generation.streamer import TextIteratorStreamer, TextStreamer
from tests.reference import comparable_stream

PROMPT = "USER: Describe the image. ASSISTANT:"
ANSWERS = [
    " A cat sits on a rug.\nIt looks at the camera, calm and curious.</s>",
    " 東京の猫です。 Café crème 😀 ok\n\nbye",
    " Here:\ndef f():\n    return 1\n  # done",  # indented lines: the leading spaces must survive
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
    assert comparable_stream(ours) == comparable_stream(theirs)
    assert len([p for p in ours if p]) > 3  # really streamed in several pieces
    decode_kwargs = {k: v for k, v in kwargs.items() if k != "skip_prompt"}
    streamed_ids = new_ids if kwargs.get("skip_prompt") else prompt_ids + new_ids
    assert "".join(ours) == tokenizer.decode(streamed_ids, **decode_kwargs)


def test_words_are_released_as_soon_as_they_are_letters(tokenizer):
    """5.24+ chunking: a word leaves with its own token, symbols wait for the next space."""
    new_ids = tokenizer(" A cat sits (on a rug)", add_special_tokens=False)["input_ids"]
    ours = pieces(TextIteratorStreamer, tokenizer, [1], new_ids, skip_prompt=True)
    assert ours[:3] == ["A", " cat", " sits"]
    assert "".join(ours) == tokenizer.decode(new_ids)
    assert all(not piece.endswith("(") for piece in ours)  # "(" waited for what follows


def test_indented_lines_keep_their_leading_spaces(tokenizer):
    new_ids = tokenizer(" def f():\n    return 1\n\n  x = 2", add_special_tokens=False)["input_ids"]
    ours = pieces(TextIteratorStreamer, tokenizer, [1], new_ids, skip_prompt=True)
    assert "".join(ours) == tokenizer.decode(new_ids)
    assert "    return 1" in "".join(ours) and "\n  x = 2" in "".join(ours)


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
