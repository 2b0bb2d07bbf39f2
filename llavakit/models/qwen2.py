"""Qwen2 decoder (Qwen1.5 / Qwen2): the Llama block with q/k/v biases and per-layer sliding windows.

The language model of LLaVA-Interleave. Everything but the differences below is llama.py's code.
"""

from __future__ import annotations

import torch

from llavakit.config.qwen2 import Qwen2Config
from llavakit.models.cache import DynamicCache
from llavakit.models.layers import causal_mask
from llavakit.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen2Attention(LlamaAttention):
    """Llama attention with biases on q/k/v and none on o_proj, whatever the config says."""

    qkv_bias = True
    o_bias = False


class Qwen2DecoderLayer(LlamaDecoderLayer):
    """A Llama block that picks its mask by its layer type ("full_attention" or "sliding_attention")."""

    attention_class = Qwen2Attention

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.layer_type = config.layer_types[layer_idx]

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | dict[str, torch.Tensor | None] | None, cache: DynamicCache | None,
                eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(mask, dict):
            mask = mask[self.layer_type]
        return super().forward(x, cos_sin, mask, cache, eager)


class Qwen2Model(LlamaModel):
    """The decoder without its head. With `use_sliding_window`, layers >= max_window_layers see only the
    last `sliding_window` keys; the others attend to everything."""

    config_class = Qwen2Config
    decoder_layer_class = Qwen2DecoderLayer

    def _mask(self, attention_mask: torch.Tensor | None, B: int, T: int, past_len: int, embeds: torch.Tensor,
              eager: bool, segments: torch.Tensor | None) -> torch.Tensor | dict[str, torch.Tensor | None] | None:
        """One mask per layer type: the windowed one (from the config) and, if needed, a plain causal one."""
        windowed = super()._mask(attention_mask, B, T, past_len, embeds, eager, segments)  # validates the mask
        if self.config.sliding_window is None or (attention_mask is not None and attention_mask.ndim == 4):
            return windowed
        full = causal_mask(attention_mask, batch_size=B, q_len=T, past_len=past_len, dtype=embeds.dtype,
                           device=embeds.device, eager=eager, sliding_window=None, segments=segments)
        return {"full_attention": full, "sliding_attention": windowed}


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2Model plus the LM head (tied to the embeddings when tie_word_embeddings, as Qwen1.5-0.5B does)."""

    config_class = Qwen2Config
    base_model_class = Qwen2Model
