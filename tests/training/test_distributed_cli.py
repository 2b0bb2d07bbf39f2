"""`llavakit train` on several processes: --nproc-per-node (torchrun) with FSDP writes one Hub-layout model that
llavakit and transformers load; --ray on a local Ray instance with 2 CPU workers writes a peft adapter; the
distributed flags' errors are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from llavakit import LlavaForConditionalGeneration
from llavakit.cli.main import main
from llavakit.training.ray_train import strip_ray_flags


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("dist-cli-data")
    shutil.copy(photos["coffee"], folder / "coffee.png")
    records = [{"id": str(i), "image": "coffee.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"Coffee {i}."}]}
        for i in range(6)] + [{"id": "t", "conversations": [{"from": "human", "value": "Hi"},
                                                            {"from": "gpt", "value": "Hello."}]}]
    (folder / "data.json").write_text(json.dumps(records))
    return folder


def _command(model, dataset, out, *extra):
    return ["train", "--model", str(model), "--data", str(dataset / "data.json"), "--image-folder", str(dataset),
            "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2", "--logging-steps", "1", *extra]


@pytest.mark.slow
def test_fsdp_under_torchrun_writes_one_loadable_model(tiny_llava_dir, dataset, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "fsdp"
    command = [sys.executable, "-m", "llavakit", *_command(
        tiny_llava_dir, dataset, out, "--nproc-per-node", "2", "--fsdp", "--stage", "full", "--bf16",
        "--gradient-checkpointing", "--group-by-modality-length", "--grad-accum", "2", "--quiet")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[llavakit train] saved to") == 1  # rank 0 alone writes and prints
    assert "2 processes, FSDP" in done.stdout
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    trained = LlavaForConditionalGeneration.from_pretrained(out)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    vision = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"  # --stage full: the sharded tower trains
    for name in (vision, "language_model.model.layers.0.mlp.up_proj.weight", "multi_modal_projector.linear_1.weight"):
        assert not torch.equal(trained.state_dict()[name], base.state_dict()[name]), name
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(out)
    torch.testing.assert_close(reference.lm_head.weight, trained.language_model.lm_head.weight)


@pytest.mark.slow
def test_lora_on_ray_train_writes_an_adapter(tiny_llava_dir, dataset, tmp_path):
    pytest.importorskip("ray.train")
    pytest.importorskip("peft")
    import ray

    out = tmp_path / "ray-lora"
    try:
        code = main(_command(tiny_llava_dir, dataset, out, "--stage", "lora", "--lora-r", "4", "--lora-alpha", "8",
                             "--ray", "local", "--num-workers", "2", "--quiet"))
    finally:
        ray.shutdown()
    assert code == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_llava_dir)
    from llavakit.training.lora import load_adapter

    adapted = load_adapter(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir), out)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA's B starts at zero: it trained
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # written by rank 0 only


def test_ray_flags_are_removed_for_the_workers():
    assert strip_ray_flags(["train", "--ray", "--num-workers", "2", "--fsdp"]) == ["train", "--fsdp"]
    assert strip_ray_flags(["train", "--ray", "auto", "--num-workers=4", "--gpus-per-worker", "1", "--quiet"]) \
        == ["train", "--quiet"]
    assert strip_ray_flags(["train", "--ray=ray://head:10001", "--bf16"]) == ["train", "--bf16"]


def test_distributed_errors_are_one_line(tiny_llava_dir, dataset, tmp_path, capsys):
    assert main(_command(tiny_llava_dir, dataset, tmp_path, "--stage", "qlora", "--fsdp")) == 2
    assert "--fsdp cannot shard QLoRA" in capsys.readouterr().err
    assert main(_command(tiny_llava_dir, dataset, tmp_path, "--ray", "local", "--nproc-per-node", "2")) == 2
    assert "--ray and --nproc-per-node exclude each other" in capsys.readouterr().err
    assert main(_command(tiny_llava_dir, dataset, tmp_path, "--nproc-per-node", "0")) == 2
    assert "--nproc-per-node must be at least 1" in capsys.readouterr().err
