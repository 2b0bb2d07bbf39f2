"""`llavakit chat`: history, /image, /reset and streamed answers, driven through io streams and a subprocess."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from llavakit import AutoModelForImageTextToText, AutoProcessor
from llavakit.cli.chat import ChatSession, chat_loop
from llavakit.processing.image import load_image


@pytest.fixture(scope="module")
def session_parts(tiny_llava_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).eval(), AutoProcessor.from_pretrained(
        tiny_llava_dir)


def _greedy(model, processor, messages, images):
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=images or None, text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_image_history_and_reset(session_parts, photos):
    model, processor = session_parts
    session = ChatSession(model, processor, {"max_new_tokens": 6, "do_sample": False})
    out = io.StringIO()
    stdin = io.StringIO(f"/image {photos['chelsea']}\nWhat is it?\nAnd now?\n/reset\nHi\n/bogus\n")
    answers = []
    real_ask = session.ask
    session.ask = lambda text, stream: answers.append(real_ask(text, stream)) or answers[-1]
    chat_loop(session, stdin, out)

    cat = load_image(str(photos["chelsea"]))
    first = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    second = first + [{"role": "assistant", "content": [{"type": "text", "text": answers[0]}]},
                      {"role": "user", "content": [{"type": "text", "text": "And now?"}]}]
    with torch.no_grad():
        assert answers[0] == _greedy(model, processor, first, [cat])
        assert answers[1] == _greedy(model, processor, second, [cat])  # history and its image kept
        assert answers[2] == _greedy(model, processor, [{"role": "user", "content": [
            {"type": "text", "text": "Hi"}]}], [])  # after /reset
    text = out.getvalue()
    assert "(image added" in text and "(conversation cleared)" in text and "unknown command /bogus" in text
    assert all(answer in text for answer in answers if answer)  # streamed to the terminal


def test_missing_image_is_reported_not_fatal(session_parts):
    model, processor = session_parts
    session = ChatSession(model, processor, {"max_new_tokens": 2, "do_sample": False})
    out = io.StringIO()
    chat_loop(session, io.StringIO("/image /no/such/file.png\n/quit\n"), out)
    assert "error:" in out.getvalue() and session.pending == []


def test_cli_subprocess_pipes_lines(tiny_llava_dir, photos):
    result = subprocess.run([sys.executable, "-m", "llavakit", "chat", str(tiny_llava_dir), "--image",
                             str(photos["coffee"]), "--max-new-tokens", "3"], input="Hello\n", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("you> ") == 2 and "assistant> " in result.stdout
