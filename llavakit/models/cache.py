"""The KV cache that carries keys and values between forward calls (prefill, then one token at a time).

`past_key_values` in and out of every decoder forward is a DynamicCache, as in transformers:
`cache.update(k, v, layer_idx)` appends and returns the full keys/values of that layer.
"""

from __future__ import annotations

import torch


class DynamicCache:
    """Keys and values per layer, each (B, n_kv_heads, T_cached, head_dim), grown along T."""

    def __init__(self) -> None:
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's (B, KV, T_new, D) keys/values for a layer; return the layer's full cache."""
        if layer_idx == len(self.key_cache):
            self.key_cache.append(key)
            self.value_cache.append(value)
        elif layer_idx < len(self.key_cache):
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value], dim=-2)
        else:
            raise IndexError(f"cache has {len(self.key_cache)} layers filled; cannot update layer {layer_idx}")
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of cached positions (0 before prefill)."""
        return self.key_cache[layer_idx].shape[-2] if layer_idx < len(self.key_cache) else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (e.g. to drop finished sequences)."""
        self.key_cache = [k.index_select(0, beam_idx) for k in self.key_cache]
        self.value_cache = [v.index_select(0, beam_idx) for v in self.value_cache]

    def crop(self, max_length: int) -> None:
        """Forget everything after the first `max_length` positions."""
        self.key_cache = [k[..., :max_length, :] for k in self.key_cache]
        self.value_cache = [v[..., :max_length, :] for v in self.value_cache]

    def __len__(self) -> int:
        return len(self.key_cache)

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return tuple(zip(self.key_cache, self.value_cache))

    @classmethod
    def from_legacy_cache(cls, past: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None) -> "DynamicCache":
        cache = cls()
        for k, v in past or ():
            cache.key_cache.append(k)
            cache.value_cache.append(v)
        return cache
