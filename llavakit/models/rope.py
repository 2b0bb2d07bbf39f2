"""Rotary position embeddings (RoPE): inverse frequencies for each rope_type, cos/sin tables, rotation.

Frequencies are computed at forward time and cached in a plain attribute per device, never in a
registered buffer: models are built on the meta device and only parameters come from checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llavakit.config.llama import LlamaConfig


def rope_inv_freq(config: LlamaConfig, seq_len: int | None = None,
                  device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) in float32 for `config.rope_parameters`.

    `seq_len` only matters for "dynamic" (NTK) scaling, which raises the base past max_position_embeddings.
    """
    rope = config.rope_parameters
    rope_type = rope.get("rope_type", "default")
    base = float(rope["rope_theta"])
    dim = int(config.head_dim * rope.get("partial_rotary_factor", 1.0))
    if rope_type == "dynamic" and seq_len is not None and seq_len > config.max_position_embeddings:
        # NTK: grow the base with the length; float32 tensor math, as transformers does it
        factor = rope["factor"]
        length = torch.tensor(seq_len, device=device)
        base = base * ((factor * length / config.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))

    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    inv_freq = 1.0 / (base ** exponents)  # (D/2,)

    if rope_type == "linear":
        inv_freq = inv_freq / rope["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_scaling(inv_freq, rope)
    elif rope_type not in ("default", "dynamic"):
        raise ValueError(f"rope_type {rope_type!r} is not supported; use default, linear, dynamic or llama3")
    return inv_freq


def _llama3_scaling(inv_freq: torch.Tensor, rope: dict) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend smoothly in between."""
    factor = rope["factor"]
    low_freq_factor = rope["low_freq_factor"]
    high_freq_factor = rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Turns position ids into the (cos, sin) tables every attention layer rotates q and k with.

    Holds no parameters or buffers; the inverse frequencies are cached per device in a dict.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device, position_ids: torch.Tensor) -> torch.Tensor:
        if self.config.rope_parameters.get("rope_type") == "dynamic" and position_ids.numel():
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.config.max_position_embeddings:
                return rope_inv_freq(self.config, seq_len, device)  # depends on the length: not cached
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.config, None, device)
        return self._inv_freq[device]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, head_dim) in x's dtype."""
        inv_freq = self.inv_freq(x.device, position_ids)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim (the non-interleaved RoPE layout of HF checkpoints)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, H, T, D) and k (B, KV, T, D) by the (B, T, D) tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
