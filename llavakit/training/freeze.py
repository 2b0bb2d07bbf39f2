"""Which parameters train in each stage: stage 1 (projector), stage 2 (projector + LM), lora/qlora (adapters + projector).

The vision tower stays frozen in every preset, as in LLaVA-1.5.
"""

from __future__ import annotations

from torch import nn

STAGES = ("stage1", "stage2", "lora", "qlora", "full")


def apply_stage(model: nn.Module, stage: str) -> None:
    """Set requires_grad for `stage`. For lora/qlora this freezes all but the projector (adapters come later)."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}: choose one of {', '.join(STAGES)}")
    trainable = {"stage1": ("multi_modal_projector",),
                 "stage2": ("multi_modal_projector", "language_model"),
                 "lora": ("multi_modal_projector",), "qlora": ("multi_modal_projector",),
                 "full": ("",)}[stage]
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for prefix in trainable))


def trainable_summary(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trained:,} of {total:,} parameters train ({100 * trained / max(total, 1):.2f}%)"
