"""How many tokens of KV cache the server may hold, from the memory free on the model's device."""

from __future__ import annotations

from typing import Any

import torch


def kv_bytes_per_token(model: Any) -> int:
    """Keys + values of every decoder layer for one token."""
    text = getattr(model.config, "text_config", model.config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def free_memory_bytes(device: torch.device) -> int:
    """Free accelerator memory, or MemAvailable from /proc/meminfo on CPU (8 GiB if unreadable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024 ** 3


def kv_budget_tokens(model: Any, fraction: float = 0.5) -> int:
    """Tokens of KV cache that fit in `fraction` of the free memory (at least one)."""
    return max(int(free_memory_bytes(model.device) * fraction) // kv_bytes_per_token(model), 1)
