"""Tensor parallelism by weight slicing: every rank keeps a slice of each attention and MLP block.

Megatron's split: q/k/v and gate/up (CLIP: fc1) keep a slice of their output features (whole heads);
o_proj and down_proj (CLIP: out_proj, fc2) keep the matching slice of their input features and sum the
ranks' partial outputs with one all_reduce. Each block costs two all_reduces. Embeddings, norms, the
projector, SigLIP's pooling attention and the LM head stay replicated, so every rank ends each block with
the same full hidden states and computes the same logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llavakit.models.clip import CLIPAttention, CLIPMLP
from llavakit.models.llama import LlamaAttention, LlamaMLP


class RowParallelLinear(nn.Module):
    """A Linear holding a slice of the input features: y = all_reduce(x_r @ W_r^T) + b over the group."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (out, in / world)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # (out,), added once
        self.group = group
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)  # (..., out): this rank's partial sum
        if torch.is_grad_enabled() and y.requires_grad:
            from torch.distributed.nn.functional import all_reduce  # differentiable variant

            y = all_reduce(y, group=self.group)
        else:
            dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features} (this rank), out_features={self.out_features}"


def shard_model(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Slice `model`'s decoder and vision-tower blocks in place for this rank of `group`; returns the model.

    Call after the full model is loaded on every rank (the same weights everywhere). Raises ValueError,
    before changing anything, when a head count or MLP width does not divide by the world size.
    """
    if not dist.is_initialized():
        raise ValueError("shard_model needs torch.distributed: run under torchrun (llavakit.distributed."
                         "init_distributed() joins the group)")
    if getattr(model, "tp_size", 1) > 1:
        raise ValueError("this model is already sharded for tensor parallelism")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if world == 1:
        return model
    modules = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (LlamaAttention, LlamaMLP, CLIPAttention, CLIPMLP))]
    problems = [p for name, m in modules for p in _divisibility_problems(name, m, world)]
    if problems:
        raise ValueError(f"cannot split this model over {world} processes: " + "; ".join(problems[:4])
                         + ". Choose a tensor parallel size that divides them")
    for _, module in modules:
        if isinstance(module, LlamaAttention):
            module.q_proj = _column(module.q_proj, rank, world)
            module.k_proj = _column(module.k_proj, rank, world)
            module.v_proj = _column(module.v_proj, rank, world)
            module.o_proj = _row(module.o_proj, rank, world, group)
        elif isinstance(module, CLIPAttention):
            module.q_proj = _column(module.q_proj, rank, world)
            module.k_proj = _column(module.k_proj, rank, world)
            module.v_proj = _column(module.v_proj, rank, world)
            module.out_proj = _row(module.out_proj, rank, world, group)
            module.num_heads //= world  # its forward views (B, T, num_heads, head_dim)
        elif isinstance(module, LlamaMLP):
            module.gate_proj = _column(module.gate_proj, rank, world)
            module.up_proj = _column(module.up_proj, rank, world)
            module.down_proj = _row(module.down_proj, rank, world, group)
        else:
            module.fc1 = _column(module.fc1, rank, world)
            module.fc2 = _row(module.fc2, rank, world, group)
    model.tp_size = world
    return model


def _divisibility_problems(name: str, module: nn.Module, world: int) -> list[str]:
    """What in this block does not split evenly over `world` ranks (whole heads, equal MLP slices)."""
    if isinstance(module, LlamaAttention):
        counts = {"attention heads": module.q_proj.out_features // module.head_dim,
                  "key/value heads": module.k_proj.out_features // module.head_dim}
    elif isinstance(module, CLIPAttention):
        counts = {"attention heads": module.num_heads}
    elif isinstance(module, LlamaMLP):
        counts = {"MLP intermediate size": module.gate_proj.out_features}
    else:
        counts = {"MLP intermediate size": module.fc1.out_features}
    return [f"{name} has {n} {what}, not divisible by {world}" for what, n in counts.items() if n % world]


def _column(linear: nn.Linear, rank: int, world: int) -> nn.Linear:
    """Keep this rank's slice of the output features (rows of the weight, and of the bias)."""
    size = linear.out_features // world
    rows = slice(rank * size, (rank + 1) * size)
    shard = nn.Linear(linear.in_features, size, bias=linear.bias is not None, device="meta")
    shard.weight = nn.Parameter(linear.weight[rows].clone(), requires_grad=False)  # (out / world, in)
    if linear.bias is not None:
        shard.bias = nn.Parameter(linear.bias[rows].clone(), requires_grad=False)
    return shard


def _row(linear: nn.Linear, rank: int, world: int, group: dist.ProcessGroup | None) -> RowParallelLinear:
    """Keep this rank's slice of the input features (columns of the weight); the bias stays whole."""
    size = linear.in_features // world
    columns = linear.weight[:, rank * size:(rank + 1) * size].clone()  # (out, in / world)
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return RowParallelLinear(columns, bias, group)


def tensor_parallel_device(tp_plan: str | None, tp_size: int | None, device_map: object) -> torch.device:
    """Validate from_pretrained's `tp_plan` / `tp_size`, join torchrun's group, return this rank's device."""
    from llavakit.distributed.setup import init_distributed

    if tp_plan not in (None, "auto"):
        raise ValueError(f"tp_plan={tp_plan!r} is not supported: llavakit has one plan, tp_plan='auto' (attention "
                         f"and MLP blocks of the decoder and vision tower split by heads / features)")
    if device_map is not None:
        raise ValueError("tp_plan and device_map cannot be combined: tensor parallelism places each rank on "
                         "cuda:LOCAL_RANK (or the CPU) itself")
    device = init_distributed()
    world = dist.get_world_size() if dist.is_initialized() else 1
    if tp_size is not None and tp_size != world:
        raise ValueError(f"tp_size={tp_size} but this job has {world} process(es); start it with "
                         f"torchrun --nproc-per-node {tp_size}")
    return device
