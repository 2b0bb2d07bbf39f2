"""save_pretrained: write config.json, generation_config.json and safetensors in the Hub's key layout."""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from llavakit.loading import keymaps


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000000 -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", size, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read size {size!r}: use e.g. '5GB', '500MB' or a number of bytes")
    number, unit = float(match.group(1)), match.group(2).upper()
    base = 1024 if "I" in unit else 1000
    return int(number * base ** {"K": 1, "M": 2, "G": 3}[unit[0]])


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *, max_shard_size: int | str = "5GB",
                    safe_serialization: bool = True, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the model so that llavakit and transformers (any version) both load it."""
    from safetensors.torch import save_file

    if not safe_serialization:
        raise ValueError("llavakit writes safetensors only (safe_serialization=True)")
    if getattr(model, "is_quantized", False):
        raise ValueError("saving a quantized model is not supported: save the full-precision checkpoint and pass "
                         "quantization_config to from_pretrained (quantizing at load takes seconds)")
    os.makedirs(save_directory, exist_ok=True)
    model.config.save_pretrained(save_directory)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(save_directory)

    rules = keymaps.save_rules(type(model).__name__)
    state = state_dict if state_dict is not None else model.state_dict()
    skip = set()
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        # A tied head shares the embedding's storage; transformers writes only the embedding.
        skip = {k for k in state if k.endswith("lm_head.weight")}
    tensors = {keymaps.rename(k, rules): v.detach().contiguous().cpu() for k, v in state.items() if k not in skip}

    shards = _split(tensors, parse_size(max_shard_size))
    for old in os.listdir(save_directory):  # stale shards from an earlier save would confuse loaders
        if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", old):
            os.remove(os.path.join(save_directory, old))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(save_directory, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(save_directory, name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(save_directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def _split(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy sharding in key order; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    return shards
