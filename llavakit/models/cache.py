"""The KV caches that carry keys and values between forward calls (prefill, then one token at a time).

`cache` in and out of every decoder forward is a cache with transformers' interface:
`cache.update(k, v, layer_idx)` appends and returns the keys/values the layer attends to. DynamicCache grows
by concatenation; StaticCache writes into buffers allocated once (what generate uses, and what a compiled
or CUDA-graph decode step needs: fixed shapes and addresses).
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

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (a negative count, as transformers 5.24+ takes it)."""
        n = _tokens_to_remove(tokens_to_remove)
        if n:
            self.key_cache = [k[..., :max(k.shape[-2] - n, 0), :] for k in self.key_cache]
            self.value_cache = [v[..., :max(v.shape[-2] - n, 0), :] for v in self.value_cache]

    def reset(self) -> None:
        """Forget every position."""
        self.key_cache, self.value_cache = [], []

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


class StaticCache:
    """Keys and values per layer in buffers allocated once, each (B, n_kv_heads, max_cache_len, head_dim).

    A layer's buffers are allocated at its first update, with the shape, dtype and device of its keys (so
    layers on different devices, sharded heads or quantized projections need no configuration).
    Eager use (`position` None): `update` copies the new keys in after the layer's filled length and returns
    views of the filled part, so attention sees exactly what a DynamicCache would, without a copy per step.
    Fixed-shape use (a compiled decode step): `position` is a (T_new,) long tensor of cache indices; `update`
    writes there with index_copy_ and returns the whole buffers; the caller masks the unwritten slots and
    calls `advance` outside the compiled code.
    """

    def __init__(self, max_cache_len: int) -> None:
        if max_cache_len < 1:
            raise ValueError(f"max_cache_len must be >= 1, got {max_cache_len}")
        self.max_cache_len = max_cache_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # filled positions per layer
        self.position: torch.Tensor | None = None  # (T_new,) write indices in fixed-shape mode

    @property
    def key_cache(self) -> list[torch.Tensor]:
        """Each layer's filled keys (B, KV, T_filled, D), views of the buffers (DynamicCache's attribute)."""
        return [k[:, :, :n] for k, n in zip(self.keys, self.lengths)]

    @property
    def value_cache(self) -> list[torch.Tensor]:
        return [v[:, :, :n] for v, n in zip(self.values, self.lengths)]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, KV, T_new, D) keys/values for a layer; return what the layer attends to."""
        if layer_idx == len(self.keys):
            B, KV, _, D = key.shape
            self.keys.append(key.new_zeros((B, KV, self.max_cache_len, D)))
            self.values.append(value.new_zeros((B, value.shape[1], self.max_cache_len, value.shape[3])))
            self.lengths.append(0)
        elif layer_idx > len(self.keys):
            raise IndexError(f"cache has {len(self.keys)} layers filled; cannot update layer {layer_idx}")
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        if self.position is not None:  # fixed shapes: write at tensor indices, attend over the whole buffer
            k_buf.index_copy_(2, self.position, key)
            v_buf.index_copy_(2, self.position, value)
            return k_buf, v_buf
        start = self.lengths[layer_idx]
        end = start + key.shape[2]
        if end > self.max_cache_len:
            raise ValueError(f"StaticCache holds {self.max_cache_len} positions; cannot store {key.shape[2]} more "
                             f"after {start}: allocate it with a larger max_cache_len")
        if key.shape[0] != k_buf.shape[0]:
            raise ValueError(f"StaticCache holds batch size {k_buf.shape[0]}, got keys for {key.shape[0]} rows")
        k_buf.narrow(2, start, key.shape[2]).copy_(key)  # narrow: a view, cheaper to build than a slice
        v_buf.narrow(2, start, key.shape[2]).copy_(value)
        self.lengths[layer_idx] = end
        return k_buf.narrow(2, 0, end), v_buf.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        """Count n more filled positions in every layer (after fixed-shape updates)."""
        self.lengths = [length + n for length in self.lengths]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of filled positions (0 before prefill)."""
        return self.lengths[layer_idx] if layer_idx < len(self.lengths) else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (e.g. to drop finished sequences); the buffers shrink to the selected rows."""
        self.keys = [k.index_select(0, beam_idx.to(k.device)) for k in self.keys]
        self.values = [v.index_select(0, beam_idx.to(v.device)) for v in self.values]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (a negative count, as transformers 5.24+ takes it);
        their slots are overwritten later."""
        n = _tokens_to_remove(tokens_to_remove)
        self.lengths = [max(length - n, 0) for length in self.lengths]

    def reset(self) -> None:
        """Forget every position; the buffers stay allocated (and at the same addresses, for CUDA graphs)."""
        self.lengths = [0] * len(self.lengths)

    def load(self, cache: "DynamicCache | StaticCache") -> "StaticCache":
        """Copy another cache's filled keys/values into this (empty) one's first positions; returns self."""
        if self.get_seq_length():
            raise ValueError("StaticCache.load needs an empty cache")
        for i, (k, v) in enumerate(zip(cache.key_cache, cache.value_cache)):
            self.update(k, v, i)
        return self

    def __len__(self) -> int:
        return len(self.keys)

    def to_legacy_cache(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return tuple(zip(self.key_cache, self.value_cache))

    def to_dynamic(self) -> DynamicCache:
        """A DynamicCache holding copies of the filled part (the buffers' unused slots are not kept alive)."""
        cache = DynamicCache()
        cache.key_cache = [k.clone() for k in self.key_cache]
        cache.value_cache = [v.clone() for v in self.value_cache]
        return cache


def _tokens_to_remove(tokens_to_remove: int) -> int:
    """How many positions `crop(tokens_to_remove)` drops. transformers 5.24 made the argument a negative count
    (`crop(-2)` drops 2, `crop(0)` nothing); the old absolute length (a positive value) is an error there too."""
    if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int):
        raise TypeError(f"crop takes an int, got {type(tokens_to_remove).__name__}")
    if tokens_to_remove > 0:
        raise ValueError(f"crop({tokens_to_remove}): pass a negative number of positions to remove from the end "
                         f"(e.g. crop(-{tokens_to_remove})), as transformers 5.24+ does; to keep the first n "
                         f"positions use crop(n - cache.get_seq_length())")
    return -tokens_to_remove
