"""The README's code runs: its Python fine-tuning example, on the tiny checkpoint and a two-record dataset."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from llavakit import LlavaForConditionalGeneration

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    matches = [block for block in blocks if containing in block]
    assert len(matches) == 1, f"expected one README python block with {containing!r}, found {len(matches)}"
    return matches[0]


def test_fine_tuning_example_trains_and_saves(tiny_llava_dir, photos, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photos["coffee"], images / "coffee.png")
    records = [{"id": str(i), "image": "coffee.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"Coffee number {i}."}]}
        for i in range(2)]
    (tmp_path / "train.json").write_text(json.dumps(records))
    code = python_block("loop.TrainingArguments").replace('"llava-hf/llava-1.5-7b-hf"', repr(str(tiny_llava_dir)))
    code = code.replace("max_steps=100", "max_steps=2, disable_progress=True")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    trained = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out")
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert not torch.equal(trained.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)
    assert torch.equal(trained.vision_tower.vision_model.embeddings.patch_embedding.weight,
                       base.vision_tower.vision_model.embeddings.patch_embedding.weight)
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_visual_prompts_example_draws_on_a_copy(photos):
    from PIL import Image

    image = Image.open(photos["astronaut"]).convert("RGB")
    scope = {"image": image}
    exec(compile(python_block("visual_prompts.rectangle"), "README.md", "exec"), scope)
    marked = scope["marked"]
    assert marked.size == image.size and marked is not image
    assert marked.getpixel((40, 150)) == (255, 0, 0)  # on the rectangle's left edge
    assert image.getpixel((40, 150)) != (255, 0, 0)  # the input is untouched
    assert "red rectangle" in scope["question"][0]["content"][1]["text"]


def test_video_example_decodes_and_samples(onevision_processor_dir, h264_clip, monkeypatch):
    """The README's video example on the tiny OneVision processor (28-px frames) and a 25-frame H.264 clip."""
    code = python_block('"type": "video"').replace('"llava-hf/llava-onevision-qwen2-0.5b-ov-hf"',
                                                   repr(str(onevision_processor_dir)))
    monkeypatch.chdir(h264_clip.parent)
    namespace: dict = {}
    exec(compile(code.replace('"clip.mp4"', repr(h264_clip.name)).replace("print(", "shape = ("), "README.md",
                 "exec"), namespace)
    assert tuple(namespace["shape"]) == (1, 8, 3, 28, 28)
    assert (namespace["inputs"]["input_ids"] == 32002).sum() == 8 * 4 + 1  # 4x4 patches pooled 2x2, + a newline
