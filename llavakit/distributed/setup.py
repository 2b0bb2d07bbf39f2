"""Process-group setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> torch.device:
    """Join the process group torchrun describes (once) and return this rank's device.

    nccl when CUDA is available, else gloo; each rank uses cuda:LOCAL_RANK. Outside torchrun
    (no WORLD_SIZE in the environment) it does nothing and returns the default device.
    """
    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        return torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} are visible; "
                             f"use at most that many processes per node")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), **kwargs)
    return device


def broadcast_object(obj: object, src: int = 0, group: dist.ProcessGroup | None = None) -> object:
    """Rank `src`'s `obj` on every rank of `group` (a picklable object; the others pass anything, e.g. None)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def is_distributed() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
