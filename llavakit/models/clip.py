"""CLIP ViT vision tower: image -> patch tokens (+ CLS) -> pre-LN transformer encoder.

Module names equal the checkpoint's (`vision_model.embeddings.patch_embedding.weight`, `vision_model.pre_layrnorm`...).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.config.clip import CLIPVisionConfig
from llavakit.models.base import PreTrainedModel
from llavakit.models.layers import activation, attention, attn_implementation, init_weights
from llavakit.models.outputs import BaseModelOutputWithPooling


class CLIPVisionEmbeddings(nn.Module):
    """Conv patchify (no bias), prepend the learned CLS vector, add learned position embeddings."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        B, _, H, W = pixel_values.shape
        if not interpolate_pos_encoding and (H != self.image_size or W != self.image_size):
            raise ValueError(f"Input image size ({H}*{W}) doesn't match model ({self.image_size}*{self.image_size}); "
                             f"resize the image with the model's image processor")
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype))  # (B, C, H/p, W/p)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embedding.expand(B, 1, -1)  # (B, 1, C)
        x = torch.cat([cls, patches], dim=1)  # (B, N + 1, C)
        if interpolate_pos_encoding:
            return x + self._interpolated_positions(H, W)
        return x + self.position_embedding.weight[None]  # positions 0..N

    def _interpolated_positions(self, H: int, W: int) -> torch.Tensor:
        """Bicubic-resize the square grid of position embeddings to (H/p, W/p); CLS keeps its own."""
        table = self.position_embedding.weight  # (N + 1, C)
        side = int((self.num_positions - 1) ** 0.5)
        h, w = H // self.patch_size, W // self.patch_size
        if (h, w) == (side, side):
            return table[None]
        grid = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, side, side)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)  # (1, h*w, C)
        return torch.cat([table[None, :1], grid], dim=1)


class CLIPAttention(nn.Module):
    """Bidirectional multi-head self-attention (no mask); all projections have biases."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        C = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = C // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(C, C)
        self.k_proj = nn.Linear(C, C)
        self.v_proj = nn.Linear(C, C)
        self.out_proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        dropout = self.config.attention_dropout if self.training else 0.0
        out, probs = attention(q, k, v, None, scale=self.scale, eager=eager, dropout=dropout)  # (B, T, h, d)
        return self.out_proj(out.reshape(B, T, -1)), probs


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.activation_fn = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, eager: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, probs = self.self_attn(self.layer_norm1(x), eager)
        x = x + attn_out
        x = x + self.mlp(self.layer_norm2(x))
        return x, probs


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))


class CLIPVisionTransformer(nn.Module):
    """embeddings -> pre_layrnorm (sic, the checkpoint's spelling) -> encoder; post_layernorm pools CLS."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPVisionModel(PreTrainedModel):
    """The CLIP vision tower as LLaVA uses it (no projection head)."""

    config_class = CLIPVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionTransformer(config)
        init_weights(self, config.initializer_range * config.initializer_factor)
        with torch.no_grad():
            self.vision_model.embeddings.class_embedding.normal_(0.0, config.hidden_size ** -0.5)

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.vision_model.embeddings.patch_embedding

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None,
                interpolate_pos_encoding: bool = False) -> BaseModelOutputWithPooling | tuple:
        """Encode (B, 3, S, S) images. hidden_states[0] is the pre-LN'd embeddings, [k] layer k's output."""
        keep = range(self.config.num_hidden_layers + 1) if output_hidden_states else ()
        out = self._encode(pixel_values, keep, output_attentions, interpolate_pos_encoding)
        if not output_hidden_states:
            out.hidden_states = None
        return out if return_dict is not False else out.to_tuple()

    def encode_layers(self, pixel_values: torch.Tensor, layers: list[int], output_hidden_states: bool | None = None,
                      output_attentions: bool | None = None) -> BaseModelOutputWithPooling:
        """The tower's output for LLaVA's feature selection: hidden_states keeps only `layers` (None elsewhere,
        as transformers' selective capture does) unless output_hidden_states asks for all of them."""
        n_states = self.config.num_hidden_layers + 1
        keep = range(n_states) if output_hidden_states else layer_indices(layers, n_states)
        return self._encode(pixel_values, keep, output_attentions)

    def _encode(self, pixel_values: torch.Tensor, keep: Collection[int], output_attentions: bool | None,
                interpolate_pos_encoding: bool = False) -> BaseModelOutputWithPooling:
        """Run every layer, holding on to hidden state i only for i in `keep`."""
        vm = self.vision_model
        eager = attn_implementation(self.config) == "eager" or bool(output_attentions)
        x = vm.pre_layrnorm(vm.embeddings(_check_pixels(pixel_values, self.config),
                                          interpolate_pos_encoding))  # (B, N + 1, C)
        hidden, attentions = [x if 0 in keep else None], []
        for k, layer in enumerate(vm.encoder.layers, start=1):
            x, probs = layer(x, eager)
            hidden.append(x if k in keep else None)
            attentions.append(probs)
        return BaseModelOutputWithPooling(
            last_hidden_state=x,
            pooler_output=vm.post_layernorm(x[:, 0, :]),  # (B, C)
            hidden_states=tuple(hidden),
            attentions=tuple(attentions) if output_attentions else None,
        )


def layer_indices(layers: list[int], n_states: int) -> set[int]:
    """Hidden-state indices of `layers` (negative ones count from the end of n_states), checked."""
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not -n_states <= i < n_states]
    if bad:
        raise ValueError(f"vision feature layer {bad[0]!r} is out of range for a tower with {n_states - 1} layers "
                         f"(valid: {-n_states}..{n_states - 1})")
    return {i % n_states for i in layers}


def _check_pixels(pixel_values: torch.Tensor, config: CLIPVisionConfig) -> torch.Tensor:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
        raise ValueError(f"pixel_values must be (num_images, {config.num_channels}, height, width), "
                         f"got shape {tuple(pixel_values.shape)}")
    return pixel_values
