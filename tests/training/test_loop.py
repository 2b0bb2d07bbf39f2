"""The training loop: schedule, accumulation, gradient checkpointing, eval loss, and exact resume."""

from __future__ import annotations

import shutil

import pytest
import torch

from llavakit import AutoProcessor, LlavaForConditionalGeneration
from llavakit.training import freeze
from llavakit.training.data import Collator, SupervisedDataset
from llavakit.training.loop import TrainingArguments, cosine_with_warmup, latest_checkpoint, train


@pytest.fixture(scope="module")
def data(tiny_llava_dir, photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    shutil.copy(photos["chelsea"], folder / "cat.png")
    records = [{"id": str(i), "image": "cat.png", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer number {i}."}]}
        for i in range(6)] + [{"id": "t", "conversations": [{"from": "human", "value": "Hi"},
                                                            {"from": "gpt", "value": "Hello."}]}]
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    return SupervisedDataset(records, processor, image_folder=str(folder)), Collator(processor.tokenizer.pad_token_id)


def _model(tiny_llava_dir, stage="stage2"):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    freeze.apply_stage(model, stage)
    return model


def test_cosine_with_warmup():
    assert cosine_with_warmup(0, 100, 10) == 0.0
    assert cosine_with_warmup(5, 100, 10) == 0.5
    assert cosine_with_warmup(10, 100, 10) == 1.0
    assert abs(cosine_with_warmup(55, 100, 10) - 0.5) < 1e-9
    assert cosine_with_warmup(100, 100, 10) == 0.0


def test_stage1_trains_only_the_projector(tiny_llava_dir, data, tmp_path):
    model = _model(tiny_llava_dir, "stage1")
    before = {n: p.clone() for n, p in model.named_parameters()}
    history = train(model, TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                                             learning_rate=1e-2, disable_progress=True, logging_steps=1), *data,
                    eval_dataset=data[0])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("multi_modal_projector") for n in changed)
    assert history[-1]["eval_loss"] > 0 and "tokens_per_s" in history[-1] and "lr" in history[0]
    with pytest.raises(ValueError, match="unknown training stage"):
        freeze.apply_stage(model, "stage3")


def test_resume_matches_an_uninterrupted_run(tiny_llava_dir, data, tmp_path):
    args = dict(max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
                warmup_ratio=0.25, disable_progress=True, group_by_modality_length=True, seed=3)
    straight = _model(tiny_llava_dir)
    train(straight, TrainingArguments(str(tmp_path / "a"), **args), *data)
    # interrupted: stop after step 2 (keeping its checkpoint), then resume in a fresh process-like setting
    first = _model(tiny_llava_dir)
    train(first, TrainingArguments(str(tmp_path / "b"), **{**args, "max_steps": 4}, save_steps=2), *data)
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    resumed = _model(tiny_llava_dir)
    train(resumed, TrainingArguments(str(tmp_path / "b"), **args, resume_from_checkpoint=True), *data)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llava_dir, data):
    dataset, collate = data
    batch = collate([dataset[0], dataset[6]])
    grads = []
    for checkpointing in (False, True):
        model = _model(tiny_llava_dir)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(**batch).loss.backward()
        grads.append(model.language_model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert model.language_model.model.gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_runs(tiny_llava_dir, data, tmp_path):
    model = _model(tiny_llava_dir, "stage1")
    history = train(model, TrainingArguments(str(tmp_path), max_steps=1, bf16=True, disable_progress=True,
                                             per_device_train_batch_size=2), *data)
    assert history and history[-1]["loss"] > 0
