"""`llavakit train --ray ADDRESS --num-workers N`: the same training command on Ray Train's TorchTrainer.

Ray starts N workers, joins them into one torch process group (gloo on CPU, nccl with GPUs) and sets RANK,
WORLD_SIZE and LOCAL_RANK as torchrun would; each worker then runs the ordinary `llavakit train` command, so
DDP/FSDP, checkpoints and the final save behave exactly as under torchrun. The output folder (and the model
and data paths) must be on storage that every node reads and writes. Ray is imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: run the training command in this process (already one rank of the group)."""
    from llavakit.cli.main import main

    code = main(config["argv"])
    if code:
        raise RuntimeError(f"llavakit train exited with status {code} on rank {os.environ.get('RANK', '?')}")


def train_on_ray(argv: list[str], address: str | None, num_workers: int, gpus_per_worker: float,
                 output_dir: str) -> None:
    """Run `llavakit <argv>` (a train command without the Ray flags) on `num_workers` Ray Train workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from llavakit.batch.ray_runner import connect

    if num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {num_workers}")
    connect(address)
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": 1, "GPU": gpus_per_worker} if use_gpu else {"CPU": 1}
    storage = Path(output_dir).resolve() / "ray"  # Ray Train's own run records; llavakit writes the rest
    trainer = TorchTrainer(
        _worker, train_loop_config={"argv": argv},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(storage), name="llavakit-train"))
    trainer.fit()


def strip_ray_flags(argv: list[str]) -> list[str]:
    """The command line each worker runs: the driver's, without --ray/--num-workers/--gpus-per-worker."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--num-workers", "--gpus-per-worker"):
            skip = "=" not in arg
            continue
        if name == "--ray":
            # --ray takes an optional address: the next word is it unless it is another option
            skip = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-")
            continue
        out.append(arg)
    return out
