"""`llavakit train --task sequence-classification` end to end: named labels, a saved head that reloads, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llavakit import AutoProcessor, LlavaForSequenceClassification
from llavakit.cli.main import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("labelled-data")
    rows = []
    for name, label in [("chelsea", "cat"), ("coffee", "cup"), ("astronaut", "person"), ("rocket", "cup")]:
        shutil.copy(photos[name], folder / f"{name}.png")
        rows.append({"id": name, "image": f"{name}.png", "text": "What is this?", "label": label})
    (folder / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return folder


def test_sequence_classification_saves_a_head(tiny_llava_dir, dataset, tmp_path, capsys):
    out = tmp_path / "head"
    assert main(["train", "--model", str(tiny_llava_dir), "--data", str(dataset / "data.jsonl"), "--image-folder",
                 str(dataset), "--output-dir", str(out), "--task", "sequence-classification", "--labels",
                 "cat,cup,person", "--stage", "stage1", "--max-steps", "2", "--batch-size", "2", "--lr", "1e-2",
                 "--quiet"]) == 0
    assert "stage1:" in capsys.readouterr().out
    head = LlavaForSequenceClassification.from_pretrained(out)
    assert head.config.id2label == {0: "cat", 1: "cup", 2: "person"}
    assert head.config.problem_type == "single_label_classification"
    processor = AutoProcessor.from_pretrained(out)
    ids = processor.tokenizer("USER: hi ASSISTANT:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert head(input_ids=ids).logits.shape == (1, 3)

    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x", "text": "hi", "label": "dog"}))
    assert main(["train", "--model", str(tiny_llava_dir), "--data", str(tmp_path / "bad.jsonl"), "--output-dir",
                 str(tmp_path / "bad"), "--task", "sequence-classification", "--labels", "cat,cup", "--quiet"]) == 2
    assert "sample x: label 'dog' is not one of the label names ['cat', 'cup']" in capsys.readouterr().err


def test_lora_saves_a_merged_head(tiny_llava_dir, dataset, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora-head"
    assert main(["train", "--model", str(tiny_llava_dir), "--data", str(dataset / "data.jsonl"), "--image-folder",
                 str(dataset), "--output-dir", str(out), "--task", "sequence-classification", "--labels",
                 "cat,cup,person", "--stage", "lora", "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "2",
                 "--batch-size", "2", "--lr", "1e-2", "--seed", "1", "--quiet"]) == 0
    assert not (out / "adapter_config.json").exists()
    trained = LlavaForSequenceClassification.from_pretrained(out)
    assert trained.config.id2label == {0: "cat", 1: "cup", 2: "person"} and trained.score.weight.shape == (3, 64)
    fresh = LlavaForSequenceClassification.from_pretrained(tiny_llava_dir, num_labels=3)
    layer = lambda m: m.model.language_model.layers[0].self_attn.q_proj.weight  # noqa: E731
    assert not torch.equal(layer(trained), layer(fresh))  # the adapters were merged in
