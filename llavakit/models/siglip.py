"""SigLIP ViT vision tower: image -> patch tokens (no CLS) -> pre-LN encoder -> post_layernorm (-> pooling head).

The tower of LLaVA-Interleave. The encoder blocks are CLIP's (same layout and tensor names); module names
equal the checkpoint's (`vision_model.embeddings.patch_embedding.weight`, `vision_model.post_layernorm`...).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.config.siglip import SiglipVisionConfig
from llavakit.models.base import PreTrainedModel
from llavakit.models.clip import CLIPEncoder, CLIPMLP, _check_pixels, layer_indices
from llavakit.models.layers import attn_implementation, init_weights
from llavakit.models.outputs import BaseModelOutputWithPooling


class SiglipVisionEmbeddings(nn.Module):
    """Conv patchify (with bias) plus learned position embeddings; no class token."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.num_positions = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        _, _, H, W = pixel_values.shape
        if not interpolate_pos_encoding and (H != self.image_size or W != self.image_size):
            raise ValueError(f"Input image size ({H}*{W}) doesn't match model ({self.image_size}*{self.image_size}); "
                             f"resize the image with the model's image processor")
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, C)
        if interpolate_pos_encoding and (patches.shape[1] != self.num_positions or H != W):
            return patches + self._interpolated_positions(H, W)
        return patches + self.position_embedding.weight[None]  # (B, N, C)

    def _interpolated_positions(self, H: int, W: int) -> torch.Tensor:
        """Bicubic-resize the square grid of position embeddings to (H/p, W/p)."""
        table = self.position_embedding.weight  # (N, C)
        side = int(self.num_positions ** 0.5)
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, side, side)
        grid = F.interpolate(grid, size=(H // self.patch_size, W // self.patch_size), mode="bicubic",
                             align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])  # (1, h*w, C)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """Pool the tokens into one vector: a learned probe attends over them, then x + mlp(layernorm(x))."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)  # (B, 1, C)
        pooled = self.attention(probe, x, x, need_weights=False)[0]  # (B, 1, C)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]  # (B, C)


class SiglipVisionTransformer(nn.Module):
    """embeddings -> encoder -> post_layernorm; `head` (attention pooling) only when vision_use_head."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.vision_use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(config)


class SiglipVisionModel(PreTrainedModel):
    """The SigLIP vision tower. LLaVA-Interleave reads hidden_states[-1]: the last layer, before post_layernorm."""

    config_class = SiglipVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = SiglipVisionTransformer(config)
        init_weights(self, 0.02)
        with torch.no_grad():
            self.vision_model.embeddings.position_embedding.weight.normal_(0.0, config.hidden_size ** -0.5)

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.vision_model.embeddings.patch_embedding

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None,
                interpolate_pos_encoding: bool = False) -> BaseModelOutputWithPooling | tuple:
        """Encode (B, 3, S, S) images. last_hidden_state is post-LN'd; hidden_states[-1] is not.
        pooler_output is the head's pooled vector (None without a head)."""
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
        x = vm.embeddings(_check_pixels(pixel_values, self.config), interpolate_pos_encoding)  # (B, N, C)
        hidden, attentions = [x if 0 in keep else None], []
        for k, layer in enumerate(vm.encoder.layers, start=1):
            x, probs = layer(x, eager)
            hidden.append(x if k in keep else None)
            attentions.append(probs)
        last = vm.post_layernorm(x)  # (B, N, C)
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=vm.head(last) if self.config.vision_use_head else None,  # (B, C)
            hidden_states=tuple(hidden),
            attentions=tuple(attentions) if output_attentions else None,
        )
