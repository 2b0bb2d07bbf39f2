"""Data-parallel training over the ranks torchrun (or Ray Train) started: DDP, or FSDP2 for models too big for one
device.

DDP keeps a whole model on every rank and averages gradients. FSDP2 (`fully_shard`) shards every transformer
block of the vision tower and the language model, and the remaining weights at the root, so each rank holds
1/N of the parameters, gradients and optimizer state (DeepSpeed ZeRO-3's layout), gathering one block at a
time for compute.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llavakit.distributed.setup import is_distributed


def is_quantized(model: nn.Module) -> bool:
    """True when bitsandbytes 4-bit weights are inside (QLoRA's base model)."""
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def check_strategy(fsdp: bool, stage: str) -> None:
    """Refuse the combinations the libraries cannot run, before anything loads."""
    if fsdp and stage == "qlora":
        raise ValueError("--fsdp cannot shard QLoRA's bitsandbytes 4-bit weights (FSDP2 shards plain tensors only); "
                         "train qlora with DDP (drop --fsdp), or use --stage lora with --fsdp")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP shards one by one: every entry of a ModuleList named `layers` (the vision encoder's and
    the language model's)."""
    return [block for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" for block in module]


def wrap(model: nn.Module, fsdp: bool, bf16: bool, device: torch.device) -> nn.Module:
    """`model` for data-parallel training on this process group: DDP, or FSDP2 in place when `fsdp`.

    One process (no group, or a group of one) gets the model back unchanged. With FSDP and `bf16`, blocks
    compute in bfloat16 and gradients are reduced in float32 (the master weights stay float32).
    """
    if not is_distributed():
        return model
    if not fsdp:
        # text-only batches leave the projector (and any head) without gradients: let DDP find those
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_quantized(model):
        check_strategy(True, "qlora")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (FSDP2 shards the model in place, so it is its own inner model)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def accumulating(model: nn.Module, last: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an optimizer step.

    FSDP reduce-scatters every micro-batch instead: its gradients stay sharded, which is the point of FSDP.
    """
    if isinstance(model, DistributedDataParallel) and not last:
        with model.no_sync():
            yield
    else:
        yield


def rank_share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous slice of one global batch (ranks past its end get an empty share)."""
    per_rank = -(-len(batch) // world_size)
    return batch[rank * per_rank:(rank + 1) * per_rank]
