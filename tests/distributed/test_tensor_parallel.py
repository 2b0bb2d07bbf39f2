"""Tensor parallelism on CPU: 2 gloo processes load each tiny checkpoint with tp_plan="auto"; their logits and
greedy tokens must equal one process's. The ranks run once per session (one spawn for every checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from llavakit import AutoModelForImageTextToText, AutoProcessor
from tests.http import free_port
from tests.models.test_interleave import build_interleave

WORLD = 2
PROMPTS = ["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nDescribe the photo in one sentence. ASSISTANT:"]


def _rank_main(rank: int, port: int, jobs: dict[str, Path], out_dir: Path) -> None:
    """One rank: load each checkpoint sharded, run the saved inputs, rank 0 writes logits and tokens."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from llavakit import AutoModelForImageTextToText as Auto
    from llavakit.distributed import shard_model
    from llavakit.models.llama import LlamaForCausalLM
    from llavakit.config import LlamaConfig

    results = {}
    for name, folder in jobs.items():
        model = Auto.from_pretrained(folder, tp_plan="auto")
        inputs = torch.load(out_dir / f"{name}-inputs.pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        attn = model.language_model.model.layers[0].self_attn
        vision_attn = model.vision_tower.vision_model.encoder.layers[0].self_attn
        results[name] = {"logits": logits, "tokens": tokens, "tp_size": model.tp_size,
                         "shapes": (attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0],
                                    attn.o_proj.weight.shape[1], vision_attn.num_heads)}
    # a decoder with one key/value head cannot be split over two ranks: a clear error, nothing changed
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=1)
    try:
        shard_model(LlamaForCausalLM(config))
        results["error"] = None
    except ValueError as err:
        results["error"] = str(err)
    # the CLI's helpers: one sampling seed for all ranks, and a loud error when ranks' tokens differ
    from llavakit.distributed.launch import check_ranks_agree, shared_seed

    seeds = [None] * WORLD
    dist.all_gather_object(seeds, shared_seed(None))
    results["seeds"] = seeds
    check_ranks_agree(torch.tensor([1, 2, 3]))
    try:
        check_ranks_agree(torch.tensor([1, 2, rank]))
        results["disagreement"] = None
    except RuntimeError as err:
        results["disagreement"] = str(err)
    if rank == 0:
        torch.save(results, out_dir / "results.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoints(tiny_llava_dir, tiny_llava_next_dir, tmp_path_factory, tokenizer_dir):
    return {"llava": tiny_llava_dir, "llava_next": tiny_llava_next_dir,
            "interleave": build_interleave(tmp_path_factory.mktemp("tp-interleave"), tokenizer_dir)}


@pytest.fixture(scope="module")
def sharded_results(checkpoints, photos, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tp")
    images = [Image.open(photos["chelsea"]), Image.open(photos["rocket"])]
    for name, folder in checkpoints.items():
        processor = AutoProcessor.from_pretrained(folder)
        inputs = processor(images=images, text=PROMPTS, padding=True, padding_side="left", return_tensors="pt")
        torch.save(dict(inputs), out_dir / f"{name}-inputs.pt")
    mp.spawn(_rank_main, args=(free_port(), checkpoints, out_dir), nprocs=WORLD, join=True)
    return torch.load(out_dir / "results.pt"), out_dir


@pytest.mark.parametrize("name", ["llava", "llava_next", "interleave"])
def test_two_ranks_match_one_process(name, checkpoints, sharded_results):
    results, out_dir = sharded_results
    inputs = torch.load(out_dir / f"{name}-inputs.pt")
    model = AutoModelForImageTextToText.from_pretrained(checkpoints[name])
    with torch.no_grad():
        expected = model(**inputs).logits
    got = results[name]
    assert got["tp_size"] == WORLD
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=0)
    assert torch.equal(got["tokens"], model.generate(**inputs, max_new_tokens=8, do_sample=False))
    attn = model.language_model.model.layers[0].self_attn
    vision_heads = model.config.vision_config.num_attention_heads
    assert got["shapes"] == (attn.q_proj.out_features // WORLD, attn.k_proj.out_features // WORLD,
                             attn.o_proj.in_features // WORLD, vision_heads // WORLD)


def test_indivisible_heads_are_refused(sharded_results):
    results, _ = sharded_results
    assert results["error"] is not None and "1 key/value heads, not divisible by 2" in results["error"]


def test_ranks_share_one_seed_and_disagreement_is_caught(sharded_results):
    results, _ = sharded_results
    assert len(set(results["seeds"])) == 1
    assert "ranks generated different tokens" in results["disagreement"]


def test_tp_options_are_checked(tiny_llava_dir):
    with pytest.raises(ValueError, match="tp_plan='colwise' is not supported"):
        AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, tp_plan="colwise")
    with pytest.raises(ValueError, match="cannot be combined"):
        AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, tp_plan="auto", device_map="cpu")
    if "WORLD_SIZE" not in os.environ:
        with pytest.raises(ValueError, match="tp_size=2 but this job has 1 process"):
            AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, tp_size=2)
