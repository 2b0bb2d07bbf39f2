"""The fixed-shape decode step: one new token per row over a StaticCache, compiled on CUDA.

Every tensor the step touches keeps its shape and address from one token to the next: the token and position
inputs (B, 1), the write index (1,), the (B, max_cache_len) mask of filled slots and the cache buffers. So the
step compiles once per (batch size, cache length) and, on CUDA, replays as a CUDA graph
(`torch.compile(mode="reduce-overhead", fullgraph=True)`): no per-layer kernel launches from Python.
The prefill stays eager (its length varies from call to call and it is compute-bound anyway).
"""

from __future__ import annotations

import torch
from torch import nn

from llavakit.models.cache import StaticCache

CACHE_BUCKET = 256  # compiled cache lengths are rounded up to a multiple of this, so any length reuses a graph


def bucketed(length: int, bucket: int = CACHE_BUCKET) -> int:
    """`length` rounded up to a multiple of `bucket`."""
    return -(-length // bucket) * bucket


def language_model(model: nn.Module) -> nn.Module | None:
    """The causal LM (decoder + lm_head) inside `model` whose decoder the step can drive, or None."""
    lm = getattr(model, "language_model", model)
    decoder = getattr(lm, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if getattr(lm, "lm_head", None) is None or decoder is None or not all(hasattr(decoder, n) for n in needed):
        return None
    rope = getattr(decoder.config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "dynamic":
        return None  # its frequencies depend on the length: not a fixed-shape computation
    return lm


class DecodeStep:
    """Runs decode steps of `lm` (a Llama/Mistral/Qwen2 causal LM) with fixed shapes, optionally compiled.

    `start` takes the prefilled cache and the prompt's padding mask; each `__call__` feeds one token per
    row and returns the next-token logits (B, V). The graph inputs are persistent buffers that the calls
    update in place.
    """

    def __init__(self, lm: nn.Module, compile: bool, backend: str = "inductor") -> None:
        self.lm = lm
        self.decoder = lm.model
        self.compiled = compile
        self._step = self._forward
        if compile:
            cuda = next(lm.parameters()).device.type == "cuda"
            mode = "reduce-overhead" if cuda and backend == "inductor" else None  # CUDA graphs on CUDA
            self._step = torch.compile(self._forward, backend=backend, mode=mode, fullgraph=True, dynamic=False)
        self._marked: set[int] = set()

    def start(self, cache: StaticCache, padding: torch.Tensor | None, batch_size: int) -> None:
        """Set up the step inputs after a prefill that filled `cache` (padding: the (B, T) 0/1 prompt mask)."""
        device = cache.keys[0].device
        L, filled = cache.max_cache_len, cache.get_seq_length()
        self.cache = cache
        self.filled = torch.zeros((batch_size, L), dtype=torch.bool, device=device)  # (B, L) slots to attend to
        if padding is None:
            self.filled[:, :filled] = True
        else:
            self.filled[:, :filled] = padding[:, -filled:].to(device=device, dtype=torch.bool)
        self.tokens = torch.zeros((batch_size, 1), dtype=torch.long, device=device)  # (B, 1)
        self.positions = torch.zeros((batch_size, 1), dtype=torch.long, device=device)  # (B, 1)
        self.index = torch.full((1,), filled, dtype=torch.long, device=device)  # (1,) cache slot being written
        if self.compiled:
            for buffer in cache.keys + cache.values:
                if id(buffer) not in self._marked:  # fixed addresses let CUDA graphs read them in place
                    torch._dynamo.mark_static_address(buffer)
                    self._marked.add(id(buffer))

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed tokens (B,) at positions (B,); return the logits (B, V) and advance the cache by one."""
        cache = self.cache
        if cache.get_seq_length() >= cache.max_cache_len:
            raise ValueError(f"the StaticCache is full ({cache.max_cache_len} positions)")
        self.tokens.copy_(tokens[:, None])
        self.positions.copy_(positions[:, None])
        self.filled.index_fill_(1, self.index, True)
        cache.position = self.index
        try:
            logits = self._step(self.tokens, self.positions, self.index, self.filled, cache)
        finally:
            cache.position = None
        cache.advance(1)
        self.index += 1
        return logits.clone() if self.compiled else logits  # CUDA graph outputs are overwritten by the next replay

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, index: torch.Tensor, filled: torch.Tensor,
                 cache: StaticCache) -> torch.Tensor:
        decoder = self.decoder
        x = decoder.embed_tokens(tokens)  # (B, 1, H)
        cos_sin = decoder.rotary_emb(x, positions)
        mask = self._mask(filled, index)
        for layer in decoder.layers:
            x, _ = layer(x, cos_sin, mask, cache, False)
        x = decoder.norm(x)
        return self.lm.lm_head(x)[:, -1]  # (B, V)

    def _mask(self, filled: torch.Tensor, index: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """(B, 1, 1, L) bool: filled slots, within the sliding window if the config has one (dict per layer
        type when only some layers slide, as in Qwen2)."""
        full = filled[:, None, None, :]  # (B, 1, 1, L)
        window = getattr(self.decoder.config, "sliding_window", None)
        if window is None:
            return full
        slots = torch.arange(filled.shape[1], device=filled.device)  # (L,)
        windowed = full & (slots > index - window)  # (B, 1, 1, L)
        if hasattr(self.decoder.layers[0], "layer_type"):
            return {"full_attention": full, "sliding_attention": windowed}
        return windowed
