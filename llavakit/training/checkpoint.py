"""Resumable training checkpoints through torch.distributed.checkpoint (DCP), for one process or many.

A checkpoint folder `checkpoint-N/` holds the trainable parameters and the optimizer state as DCP shards (each
rank writes its own part; a run with another number of ranks re-shards them on load) plus `trainer_state.pt`
(step, scheduler, RNG) that rank 0 writes last, by an atomic rename. A folder without that file is an
interrupted save and is never resumed from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from llavakit.distributed.setup import is_distributed, rank

STATE_FILE = "trainer_state.pt"
SHARDS = "shards"  # DCP's files: one .distcp per writing rank plus .metadata
_TRAINABLE = StateDictOptions(ignore_frozen_params=True)
_LOAD_TRAINABLE = StateDictOptions(ignore_frozen_params=True, strict=False)  # frozen weights come from the model


def _barrier() -> None:
    if is_distributed():
        dist.barrier()


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Every rank calls this: DCP writes the shards, then rank 0 marks the checkpoint complete."""
    folder = Path(folder)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_TRAINABLE)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder / SHARDS,
             no_dist=not dist.is_initialized())
    _barrier()  # every shard is on disk before the checkpoint counts as complete
    if rank() == 0:
        partial = folder / (STATE_FILE + ".partial")
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, partial)
        os.replace(partial, folder / STATE_FILE)
    _barrier()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder in `output_dir` (one with its trainer_state.pt), or None."""
    found = sorted(Path(output_dir).glob("checkpoint-*/" + STATE_FILE), key=lambda p: int(p.parent.name.split("-")[1]))
    return found[-1].parent if found else None


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LambdaLR) -> int:
    """Restore a checkpoint written with any number of ranks into this run's (wrapped) model; returns its step."""
    folder = Path(folder)
    if not (folder / STATE_FILE).exists():
        raise ValueError(f"{folder} is not a complete checkpoint (no {STATE_FILE}); its save was interrupted")
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_TRAINABLE)
    saved = dcp.FileSystemReader(folder / SHARDS).read_metadata().state_dict_metadata
    missing = [key for key in model_state if f"model.{key}" not in saved]
    if missing:
        raise ValueError(f"checkpoint {folder} does not match this model: {len(missing)} trainable parameters are "
                         f"missing (first: {missing[0]}); resume with the same stage and options")
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder / SHARDS, no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_LOAD_TRAINABLE)
    trainer = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["rng"])
    return int(trainer["step"])


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Every rank calls this. An FSDP-sharded model's whole state dict, gathered on rank 0's CPU (other ranks get
    an empty dict); None for an unsharded model, whose own state_dict() is already whole."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
