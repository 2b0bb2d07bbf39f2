"""`--tensor-parallel-size N` (and `llavakit train --nproc-per-node N`) for the CLI: re-run the same command under
torchrun with N processes.

Every rank runs the same command on the same inputs (same greedy or seeded computation); only rank 0
prints or serves. Inside torchrun (WORLD_SIZE set) nothing is re-launched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import torch


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def check_size(tensor_parallel_size: int) -> None:
    """A clear error for sizes no machine here can run."""
    if tensor_parallel_size < 1:
        raise ValueError(f"--tensor-parallel-size must be at least 1, got {tensor_parallel_size}")
    if torch.cuda.is_available() and tensor_parallel_size > torch.cuda.device_count():
        raise ValueError(f"--tensor-parallel-size {tensor_parallel_size} needs that many GPUs, but "
                         f"{torch.cuda.device_count()} are visible")
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) != tensor_parallel_size:
        raise ValueError(f"--tensor-parallel-size {tensor_parallel_size} but torchrun started "
                         f"{os.environ['WORLD_SIZE']} processes; make them equal")


def start_ranks(argv: list[str], tensor_parallel_size: int, device: str | None) -> int | None:
    """The CLI's --tensor-parallel-size: validate it, then re-run the command under torchrun and return its exit
    code; inside torchrun, return None (this process is one rank and goes on)."""
    check_size(tensor_parallel_size)
    if device is not None:
        raise ValueError("--device and --tensor-parallel-size exclude each other: each rank uses its own GPU "
                         "(cuda:LOCAL_RANK), or the CPU without CUDA")
    return None if under_torchrun() else relaunch(argv, tensor_parallel_size)


def relaunch(argv: list[str], nproc: int) -> int:
    """Run `llavakit <argv>` under torchrun with `nproc` processes on this machine; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "llavakit.cli.main", *argv]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    child = subprocess.Popen(command, env=env)
    forward = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate()) if forward else None
    try:  # torchrun passes SIGTERM / Ctrl-C on to the ranks
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        return child.wait()
    finally:
        if forward:
            signal.signal(signal.SIGTERM, previous)


def shared_seed(seed: int | None) -> int:
    """The seed every rank uses: the given one, or rank 0's random pick (ranks must sample alike)."""
    import torch.distributed as dist

    from llavakit.distributed.setup import broadcast_object

    if seed is not None or not dist.is_initialized():
        return seed if seed is not None else int(torch.seed() % 2**63)
    return broadcast_object(int(torch.seed() % 2**63) if dist.get_rank() == 0 else None)


def check_ranks_agree(tokens: torch.Tensor) -> None:
    """Raise if the ranks generated different tokens (they would have mixed unrelated partial sums)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tokens.tolist())
    if any(g != gathered[0] for g in gathered):
        raise RuntimeError("tensor-parallel ranks generated different tokens; every rank must get the same inputs "
                           "and the same sampling seed")
