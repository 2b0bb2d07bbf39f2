"""`llavakit train` end to end on the tiny checkpoint: stage 1 and LoRA outputs, eval split, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llavakit import LlavaForConditionalGeneration
from llavakit.cli.main import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("train-data")
    shutil.copy(photos["coffee"], folder / "coffee.png")
    records = [{"id": str(i), "image": "coffee.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"Coffee {i}."}]}
        for i in range(5)]
    (folder / "data.json").write_text(json.dumps(records))
    return folder


def test_stage1_saves_a_loadable_checkpoint(tiny_llava_dir, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--model", str(tiny_llava_dir), "--data", str(dataset / "data.json"), "--image-folder",
                 str(dataset), "--eval-split", "0.2", "--output-dir", str(out), "--stage", "stage1",
                 "--max-steps", "2", "--batch-size", "2", "--logging-steps", "1"])
    assert code == 0
    assert "stage1:" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and "eval_loss" in log[-1]
    trained = LlavaForConditionalGeneration.from_pretrained(out)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert not torch.equal(trained.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)
    assert torch.equal(trained.language_model.lm_head.weight, base.language_model.lm_head.weight)
    assert (out / "tokenizer.json").exists()


def test_lora_writes_an_adapter(tiny_llava_dir, dataset, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert main(["train", "--model", str(tiny_llava_dir), "--data", str(dataset / "data.json"), "--image-folder",
                 str(dataset), "--output-dir", str(out), "--stage", "lora", "--lora-r", "4", "--lora-alpha", "8",
                 "--max-steps", "1", "--batch-size", "2", "--quiet"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_llava_dir)
    assert (out / "adapter_model.safetensors").exists()


def test_errors_are_one_line(tiny_llava_dir, dataset, tmp_path, capsys):
    assert main(["train", "--model", str(tiny_llava_dir), "--data", str(dataset / "data.json"), "--output-dir",
                 str(tmp_path), "--stage", "qlora", "--task", "sequence-classification", "--num-labels", "2"]) == 2
    assert "--stage qlora supports --task generation only" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a list"}))
    assert main(["train", "--model", str(tiny_llava_dir), "--data", str(tmp_path / "bad.json"),
                 "--output-dir", str(tmp_path)]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
