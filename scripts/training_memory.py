"""Per-GPU memory of the model state that `llavakit train` keeps, for LLaVA-1.5 7B and 13B, per stage, on one GPU
and on 8 GPUs with DDP or FSDP: computed from the real module shapes (models built on the meta device).

Counted: weights in float32 (the CLI loads float32 and trains with bf16 autocast / FSDP bf16 compute), float32
gradients and AdamW's two float32 moments for the trainable weights, and DDP's gradient buckets (one more float32
copy of the trainable gradients). QLoRA's decoder linears take 4-bit nf4 with double quantization (~0.52 byte a
weight). Not counted: activations (they grow with batch x sequence; --gradient-checkpointing keeps one block's),
the CUDA context (~0.5-1 GiB) and FSDP's one or two gathered blocks in flight. Prints the README table.
"""

from __future__ import annotations

import argparse
import re

import torch
from torch import nn

from llavakit import LlavaForConditionalGeneration
from llavakit.config import LlavaConfig
from llavakit.training.lora import TARGET_MODULES

VISION = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)  # CLIP ViT-L/14-336
TEXT = {"7B": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32064),  # Vicuna-7B
        "13B": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                    num_attention_heads=40, num_key_value_heads=40, vocab_size=32064)}  # Vicuna-13B
GIB = 1024 ** 3
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit absmax per 64 weights, a float32 per 256 absmax


def counts(model: nn.Module, lora_r: int) -> dict[str, int]:
    """Parameter counts by part, and the LoRA adapters' size at rank `lora_r` on the decoder linears."""
    params = {name: p.numel() for name, p in model.named_parameters()}
    lora_targets = [m for name, m in model.named_modules()
                    if isinstance(m, nn.Linear) and re.fullmatch(TARGET_MODULES, name)]
    return {"all": sum(params.values()),
            "vision": sum(n for k, n in params.items() if k.startswith("vision_tower.")),
            "projector": sum(n for k, n in params.items() if k.startswith("multi_modal_projector.")),
            "language": sum(n for k, n in params.items() if k.startswith("language_model.")),
            "lora_linears": sum(m.weight.numel() for m in lora_targets),
            "lora": sum(lora_r * (m.in_features + m.out_features) for m in lora_targets)}


def state_bytes(c: dict[str, int], stage: str) -> tuple[float, float]:
    """(bytes of weights, trainable parameter count) for one whole copy of the model state."""
    trainable = {"stage1": c["projector"], "stage2": c["projector"] + c["language"], "full": c["all"],
                 "lora": c["projector"] + c["lora"], "qlora": c["projector"] + c["lora"]}[stage]
    weights = 4 * c["all"]
    if stage in ("lora", "qlora"):
        weights += 4 * c["lora"]
    if stage == "qlora":
        weights -= (4 - NF4_BYTES) * c["lora_linears"]
    return weights, trainable


def per_gpu(c: dict[str, int], stage: str, gpus: int, fsdp: bool) -> float:
    weights, trainable = state_bytes(c, stage)
    if fsdp:
        return (weights + 12 * trainable) / gpus / GIB  # weights, grads, two Adam moments: all sharded
    return (weights + (16 if gpus > 1 else 12) * trainable) / GIB  # DDP: plus its gradient buckets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=128)
    args = parser.parse_args()
    print(f"| model | stage | trainable | 1 GPU | {args.gpus} GPUs, DDP | {args.gpus} GPUs, FSDP |")
    print("|---|---|---|---|---|---|")
    for size, text in TEXT.items():
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(LlavaConfig(vision_config=dict(VISION), text_config=dict(text)))
        c = counts(model, args.lora_r)
        for stage in ("stage1", "stage2", "full", "lora", "qlora"):
            trainable = state_bytes(c, stage)[1]
            fsdp = "n/a (use DDP)" if stage == "qlora" else f"{per_gpu(c, stage, args.gpus, True):.1f} GiB"
            print(f"| {size} ({c['all'] / 1e9:.2f} B) | {stage} | {trainable / 1e6:,.0f} M | "
                  f"{per_gpu(c, stage, 1, False):.1f} GiB | {per_gpu(c, stage, args.gpus, False):.1f} GiB | {fsdp} |")


if __name__ == "__main__":
    main()
