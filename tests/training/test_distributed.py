"""Data-parallel training on 2 CPU ranks over gloo: DDP and FSDP2 follow one process's loss curve and reach its
weights on the same global batch; a sharded checkpoint resumes on another number of ranks; a rank killed
mid-run leaves the last complete checkpoint loadable. The ranks run once per module (one spawn per scenario)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from llavakit import AutoProcessor, LlavaForConditionalGeneration
from llavakit.training import freeze
from llavakit.training.checkpoint import STATE_FILE, latest_checkpoint
from llavakit.training.data import Collator, SupervisedDataset
from llavakit.training.loop import TrainingArguments, train
from tests.http import free_port

WORLD = 2
PER_RANK = 2  # per-device batch; one process uses PER_RANK * WORLD for the same global batch
# 4 optimizer steps of 2 micro-batches; modality grouping on, so image-only and text-only global batches alternate
ARGS = dict(max_steps=4, gradient_accumulation_steps=2, learning_rate=1e-3, warmup_ratio=0.25, seed=3,
            group_by_modality_length=True, disable_progress=True, logging_steps=1)


def _records() -> list[dict]:
    images = [{"id": str(i), "image": "cat.png", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": "Answer " + "word " * i}]}
        for i in range(7)]
    texts = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "Hi " * (i + 1)},
                                               {"from": "gpt", "value": "Hello there " * (i + 1)}]} for i in range(5)]
    return images + texts  # 12 samples: the last global batch of each modality is short, so one rank idles


def _data(model_dir: Path, image_dir: Path) -> tuple[SupervisedDataset, Collator]:
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = SupervisedDataset(_records(), processor, image_folder=str(image_dir))
    return dataset, Collator(processor.tokenizer.pad_token_id)


def _model(model_dir: Path) -> LlavaForConditionalGeneration:
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    freeze.apply_stage(model, "stage2")
    return model


class _DieAfter(torch.utils.data.Dataset):
    """Rank 1's dataset in the crash run: the process exits once the checkpoint `marker` is complete."""

    def __init__(self, dataset: SupervisedDataset, marker: Path) -> None:
        self.dataset, self.marker = dataset, marker

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if self.marker.exists():
            os._exit(3)  # a hard kill: no cleanup, the other rank is left waiting in a collective
        return self.dataset[index]

    def modality_lengths(self) -> list[int]:
        return self.dataset.modality_lengths()


def _rank_main(rank: int, port: int, model_dir: Path, image_dir: Path, out_dir: Path, scenario: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from llavakit.distributed.setup import init_distributed
    from llavakit.training.checkpoint import full_model_state

    init_distributed()
    dataset, collate = _data(model_dir, image_dir)
    if scenario == "crash":
        marker = out_dir / "crash" / "checkpoint-2" / STATE_FILE
        data = _DieAfter(dataset, marker) if rank == 1 else dataset
        train(_model(model_dir), TrainingArguments(str(out_dir / "crash"), per_device_train_batch_size=PER_RANK,
                                                   save_steps=1, **ARGS), data, collate)
        return
    results = {}
    for strategy in ("ddp", "fsdp"):
        model = _model(model_dir)
        args = TrainingArguments(str(out_dir / strategy), per_device_train_batch_size=PER_RANK,
                                 fsdp=strategy == "fsdp", save_steps=2, **ARGS)
        results[strategy] = train(model, args, dataset, collate)
        state = full_model_state(model)  # FSDP: gathered on rank 0; DDP: None (the model is whole)
        if rank == 0:
            model.save_pretrained(out_dir / strategy / "final", state_dict=state)
        dist.barrier()
    if rank == 0:
        torch.save(results, out_dir / "results.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def setup(tiny_llava_dir, photos, tmp_path_factory):
    image_dir = tmp_path_factory.mktemp("dist-images")
    shutil.copy(photos["chelsea"], image_dir / "cat.png")
    return tiny_llava_dir, image_dir


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """One process on the same global batch: (history, final state dict)."""
    model_dir, image_dir = setup
    model = _model(model_dir)
    history = train(model, TrainingArguments(str(tmp_path_factory.mktemp("single")),
                                             per_device_train_batch_size=PER_RANK * WORLD, **ARGS),
                    *_data(model_dir, image_dir))
    return history, model.state_dict()


@pytest.fixture(scope="module")
def two_ranks(setup, tmp_path_factory):
    model_dir, image_dir = setup
    out_dir = tmp_path_factory.mktemp("dist")
    mp.spawn(_rank_main, args=(free_port(), model_dir, image_dir, out_dir, "train"), nprocs=WORLD, join=True)
    return torch.load(out_dir / "results.pt"), out_dir


def _assert_same_weights(state: dict, expected: dict) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_follow_one_process(strategy, setup, reference, two_ranks):
    history, expected = reference
    results, out_dir = two_ranks
    got = results[strategy]
    assert [r["step"] for r in got] == [r["step"] for r in history] == [1, 2, 3, 4]
    for mine, theirs in zip(got, history):
        assert abs(mine["loss"] - theirs["loss"]) < 1e-4 * max(1.0, theirs["loss"]), (mine, theirs)
        assert mine["lr"] == pytest.approx(theirs["lr"])
    assert history[0]["loss"] != history[-1]["loss"]  # it trained
    # the final model is written once, in the Hub layout, and reads back like any checkpoint
    final = LlavaForConditionalGeneration.from_pretrained(out_dir / strategy / "final")
    _assert_same_weights(final.state_dict(), expected)
    original = _model(setup[0]).state_dict()
    assert not torch.equal(expected["multi_modal_projector.linear_1.weight"],
                           original["multi_modal_projector.linear_1.weight"])


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_process(setup, reference, two_ranks, tmp_path):
    """FSDP's 2-rank checkpoint at step 2, resumed by one process with the same global batch, ends where the
    uninterrupted run ends."""
    model_dir, image_dir = setup
    _, out_dir = two_ranks
    checkpoint = out_dir / "fsdp" / "checkpoint-2"
    assert (checkpoint / STATE_FILE).exists() and len(list((checkpoint / "shards").glob("*.distcp"))) == WORLD
    model = _model(model_dir)
    train(model, TrainingArguments(str(tmp_path), per_device_train_batch_size=PER_RANK * WORLD,
                                   resume_from_checkpoint=str(checkpoint), **ARGS), *_data(model_dir, image_dir))
    _assert_same_weights(model.state_dict(), reference[1])


@pytest.mark.slow
def test_killed_rank_leaves_the_last_complete_checkpoint(setup, reference, tmp_path):
    model_dir, image_dir = setup
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_rank_main, args=(free_port(), model_dir, image_dir, tmp_path, "crash"), nprocs=WORLD, join=True)
    (tmp_path / "crash" / "checkpoint-3").mkdir(exist_ok=True)  # as a save cut short leaves it: no trainer state
    assert latest_checkpoint(tmp_path / "crash").name == "checkpoint-2"
    model = _model(model_dir)
    train(model, TrainingArguments(str(tmp_path / "crash"), per_device_train_batch_size=PER_RANK * WORLD,
                                   resume_from_checkpoint=True, **ARGS), *_data(model_dir, image_dir))
    _assert_same_weights(model.state_dict(), reference[1])


def test_rank_shares_split_each_global_batch():
    from llavakit.training.distributed import rank_share

    assert [rank_share([5, 1, 4, 2], r, WORLD) for r in range(WORLD)] == [[5, 1], [4, 2]]
    assert [rank_share([5, 1, 4], r, WORLD) for r in range(WORLD)] == [[5, 1], [4]]
    assert [rank_share([7], r, WORLD) for r in range(WORLD)] == [[7], []]  # rank 1 computes a stand-in, weight 0


def test_fsdp_on_mixed_modalities_asks_for_grouping(setup):
    from llavakit.training.loop import _check_fsdp_modalities

    dataset, _ = _data(*setup)
    with pytest.raises(ValueError, match="needs --group-by-modality-length"):
        _check_fsdp_modalities(dataset, TrainingArguments("unused", fsdp=True))
    _check_fsdp_modalities(dataset, TrainingArguments("unused", fsdp=True, group_by_modality_length=True))
    _check_fsdp_modalities(dataset, TrainingArguments("unused"))  # DDP finds the unused projector itself
