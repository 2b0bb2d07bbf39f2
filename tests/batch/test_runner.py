"""The batch engine: batched greedy answers equal one-at-a-time answers and transformers' answers,
bad rows carry their error, and token counts stop at EOS."""

from __future__ import annotations

import pytest
import torch

from llavakit.batch.runner import BatchEngine
from tests.reference import hf_processor

PROMPTS = ["What is this?", "Describe the cat in detail, please.", None, "hi"]


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return BatchEngine(str(tiny_llava_dir), max_new_tokens=8)


@pytest.fixture()
def rows(photos):
    names = ["astronaut", "chelsea", "coffee", "horse"]
    return [{"id": f"r{i}", "images": [str(photos[n])], "prompt": p} for i, (n, p) in enumerate(zip(names, PROMPTS))]


def test_batched_equals_one_at_a_time(engine, rows):
    batched = engine.run(rows)
    assert [r["id"] for r in batched] == ["r0", "r1", "r2", "r3"]
    assert batched == [engine.run([row])[0] for row in rows]
    assert len({r["prompt_tokens"] for r in batched}) > 1  # prompts of different lengths: padding was exercised
    assert all(r["error"] is None and r["completion_tokens"] == 8 and r["answer"] for r in batched)
    assert batched[2]["prompt"] == "What is in the image?"  # the default prompt


def test_bad_rows_are_recorded_and_the_batch_goes_on(engine, rows, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    bad = [{"id": "missing", "images": [str(tmp_path / "gone.png")], "prompt": "x"},
           {"id": "corrupt", "images": [str(tmp_path / "corrupt.png")], "prompt": "x"}]
    results = engine.run([rows[0], bad[0], rows[1], bad[1]])
    good = engine.run([rows[0], rows[1]])
    assert [r["id"] for r in results] == ["r0", "missing", "r1", "corrupt"]
    assert results[0] == good[0] and results[2] == good[1]
    assert "does not exist" in results[1]["error"] and results[1]["answer"] is None
    assert "cannot decode" in results[3]["error"] and results[3]["completion_tokens"] == 0


def test_completion_tokens_stop_at_eos(engine, rows):
    from llavakit.batch.images import load_image

    inputs = engine.processor(images=[load_image(rows[0]["images"][0])], text=engine._render(rows[0]["prompt"], 1),
                              return_tensors="pt")
    first = int(engine.model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1])
    config = engine.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = first  # row 0 now ends after its first token; row 1 runs on (padded after row 0 ends)
    try:
        results = engine.run(rows[:2])
    finally:
        config.eos_token_id = saved
    assert results[0]["completion_tokens"] == 1
    assert results[0]["answer"] == engine.processor.decode([first], skip_special_tokens=True).strip()
    assert results[1]["completion_tokens"] > 1


def test_answers_match_transformers_greedy(engine, rows, tiny_llava_dir):
    import PIL.Image
    import transformers

    processor = hf_processor(tiny_llava_dir)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    ours = engine.run(rows)
    for row, result in zip(rows, ours):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": result["prompt"]}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=[PIL.Image.open(row["images"][0]).convert("RGB")], text=text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        assert result["prompt_tokens"] == inputs["input_ids"].shape[1]
        assert result["answer"] == processor.decode(new, skip_special_tokens=True).strip()
