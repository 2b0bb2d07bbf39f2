"""Llama and Mistral decoders: the language model of LLaVA checkpoints (same code; Mistral adds a sliding window).

Module names equal the checkpoint's tensor names (`model.layers.0.self_attn.q_proj.weight`, ...).
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from llavakit.config.llama import LlamaConfig, MistralConfig
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.generation.utils import GenerationMixin
from llavakit.models.base import PreTrainedModel
from llavakit.models.cache import DynamicCache
from llavakit.models.layers import (RMSNorm, activation, attention, attn_implementation, causal_lm_loss, causal_mask,
                                    init_weights, keep_positions, packed_segments)
from llavakit.models.outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from llavakit.models.rope import RotaryEmbedding, apply_rotary


class LlamaAttention(nn.Module):
    """Causal self-attention with RoPE and grouped KV heads; appends its keys/values to the cache."""

    # Projection biases; None follows config.attention_bias (Qwen2 fixes q/k/v to True and o_proj to False).
    qkv_bias: bool | None = None
    o_bias: bool | None = None

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
        bias = config.attention_bias if self.qkv_bias is None else self.qkv_bias
        o_bias = config.attention_bias if self.o_bias is None else self.o_bias
        self.q_proj = nn.Linear(config.hidden_size, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: DynamicCache | None, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        q, k = apply_rotary(q, k, *cos_sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, KV, past + T, D)
        dropout = self.config.attention_dropout if self.training else 0.0
        flash = getattr(self.config, "_attn_implementation", None) == "flash_attention_2"
        out, probs = attention(q, k, v, mask, scale=self.scaling, eager=eager, is_causal=T > 1, dropout=dropout,
                               flash=flash)
        return self.o_proj(out.reshape(B, T, -1)), probs  # (B, T, C)


class LlamaMLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    attention_class: type[LlamaAttention] = LlamaAttention

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: DynamicCache | None, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, probs = self.self_attn(self.input_layernorm(x), cos_sin, mask, cache, eager)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, probs


class LlamaModel(PreTrainedModel):
    """The decoder without its head: embed_tokens -> layers -> norm."""

    config_class = LlamaConfig
    decoder_layer_class: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        pad = config.pad_token_id
        pad = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.layers = nn.ModuleList(self.decoder_layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False  # set by PreTrainedModel.gradient_checkpointing_enable()
        init_weights(self, config.initializer_range)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: DynamicCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                ) -> BaseModelOutputWithPast | tuple:
        """Run the decoder on ids or embeddings; `cache_position` is accepted and ignored (transformers 4)."""
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(check_token_ids(input_ids, config.vocab_size))
        if inputs_embeds.ndim != 3:
            raise ValueError(f"inputs_embeds must be (batch, seq_len, hidden), got shape {tuple(inputs_embeds.shape)}")
        B, T, _ = inputs_embeds.shape
        use_cache = config.use_cache if use_cache is None else use_cache
        if isinstance(cache, (tuple, list)):
            cache = DynamicCache.from_legacy_cache(cache)
        if use_cache and cache is None:
            cache = DynamicCache()
        past_len = cache.get_seq_length() if cache is not None else 0
        _check_context(config, past_len, T)

        segments = None
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=inputs_embeds.device)[None]  # (1, T)
        else:
            position_ids = position_ids.to(inputs_embeds.device)
            position_ids = position_ids[None] if position_ids.ndim == 1 else position_ids
            if position_ids.shape[-1] != T:
                raise ValueError(f"position_ids cover {position_ids.shape[-1]} positions but the input has {T}")
            if attention_mask is None and cache is None:
                segments = packed_segments(position_ids.expand(B, T))

        eager = attn_implementation(config) == "eager" or bool(output_attentions)
        mask = self._mask(attention_mask, B, T, past_len, inputs_embeds, eager, segments)
        cos_sin = self.rotary_emb(inputs_embeds, position_ids)

        all_hidden, all_attn = [], []
        x = inputs_embeds
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(x)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # recompute this layer's activations in backward instead of storing them; no KV cache
                # (the recompute would append to it twice), as in transformers
                x, probs = torch.utils.checkpoint.checkpoint(layer, x, cos_sin, mask, None, eager,
                                                             use_reentrant=False)
            else:
                x, probs = layer(x, cos_sin, mask, cache, eager)
            if output_attentions:
                all_attn.append(probs)
        x = self.norm(x)
        if output_hidden_states:
            all_hidden.append(x)

        out = BaseModelOutputWithPast(
            last_hidden_state=x, cache=cache,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )
        return out if return_dict is not False else out.to_tuple()

    def _mask(self, attention_mask: torch.Tensor | None, B: int, T: int, past_len: int,
              embeds: torch.Tensor, eager: bool, segments: torch.Tensor | None) -> torch.Tensor | None:
        """Validate the user's mask and turn it into the 4-D mask the attention layers take."""
        if attention_mask is not None and attention_mask.ndim == 4:
            return attention_mask.to(embeds.device)  # already prepared: used as-is
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past_len + T):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but must be (batch, cached + new tokens) "
                f"= ({B}, {past_len} + {T}); it is the 2-D 0/1 padding mask over the whole sequence so far"
            )
        return causal_mask(attention_mask, batch_size=B, q_len=T, past_len=past_len, dtype=embeds.dtype,
                           device=embeds.device, eager=eager, sliding_window=self.config.sliding_window,
                           segments=segments)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
    if input_ids.is_floating_point():
        raise TypeError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if input_ids.numel():
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token id {high if high >= vocab_size else low} is outside the vocabulary "
                             f"(size {vocab_size})")
    return input_ids


def _check_context(config: LlamaConfig, past_len: int, new_len: int) -> None:
    """RoPE models degrade silently past their trained length; say so instead (dynamic RoPE is made for it)."""
    limit = config.max_position_embeddings
    if past_len + new_len > limit and config.rope_parameters.get("rope_type") != "dynamic":
        raise ValueError(
            f"prompt of {past_len + new_len} tokens ({past_len} cached + {new_len} new) exceeds the model's "
            f"context of {limit} tokens (max_position_embeddings)"
        )


class LlamaForCausalLM(PreTrainedModel, GenerationMixin):
    """LlamaModel plus the LM head (`lm_head`, tied to `embed_tokens` when tie_word_embeddings)."""

    config_class = LlamaConfig
    base_model_class = LlamaModel

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self, config.initializer_range, skip=(PreTrainedModel,))
        self.tie_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: DynamicCache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, num_logits_to_keep: int | None = None,
                cache_position: torch.Tensor | None = None,
                num_items_in_batch: int | torch.Tensor | None = None) -> CausalLMOutputWithPast | tuple:
        """Logits for the kept positions (`logits_to_keep`), and the shifted LM loss when `labels` are given."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        if num_logits_to_keep is not None:  # the name before transformers 4.50
            logits_to_keep = num_logits_to_keep
        logits = self.lm_head(keep_positions(out.last_hidden_state, logits_to_keep))  # (B, T_kept, V)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache,
                                        hidden_states=out.hidden_states, attentions=out.attentions)
        return result if return_dict is not False else result.to_tuple()


class MistralModel(LlamaModel):
    """Mistral: the Llama decoder with a sliding attention window (config.sliding_window, None = off)."""

    config_class = MistralConfig


class MistralForCausalLM(LlamaForCausalLM):
    config_class = MistralConfig
    base_model_class = MistralModel
