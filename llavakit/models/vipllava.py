"""ViP-LLaVA: LLaVA whose image features are several CLIP layers (CLS dropped) concatenated, then a
LayerNorm'd 2-layer projector. Everything else (merge at `<image>` positions, decoder, generate) is LLaVA's.

Tensor names are the Hub's: `multi_modal_projector.projector_layernorm.*`, `multi_modal_projector.linear_{1,2}.*`,
`vision_tower.vision_model.*`, `language_model.model.*`, `language_model.lm_head.weight`.
"""

from __future__ import annotations

import torch
from torch import nn

from llavakit.config.vipllava import VipLlavaConfig
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.models.cache import DynamicCache
from llavakit.models.layers import activation
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel, reject_videos
from llavakit.models.outputs import BaseModelOutputWithPooling, LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast


class VipLlavaMultiModalProjector(nn.Module):
    """linear_2(act(linear_1(LayerNorm(x)))): (B, N, Hv * n_layers) -> (B, N, Ht), always with biases."""

    def __init__(self, config: VipLlavaConfig) -> None:
        super().__init__()
        in_features = config.vision_config.hidden_size * len(config.vision_feature_layers)
        text_hidden = config.text_config.hidden_size
        self.projector_layernorm = nn.LayerNorm(in_features, eps=config.projector_layernorm_eps)
        self.linear_1 = nn.Linear(in_features, text_hidden)
        self.act = activation(config.projector_hidden_act)
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.projector_layernorm(image_features))))


def _one_layer_list(vision_feature_layers: int | list[int] | None,
                    vision_feature_layer: int | list[int] | None) -> list[int] | None:
    """The layer list given under either name (v4 `vision_feature_layers`, v5 `vision_feature_layer`), or None."""
    old, new = (None if x is None else [x] if isinstance(x, int) else list(x)
                for x in (vision_feature_layers, vision_feature_layer))
    if old is not None and new is not None and old != new:
        raise ValueError(f"vision_feature_layers={old} and vision_feature_layer={new} are two names for the same "
                         f"argument; give only one")
    layers = old if old is not None else new
    if layers is not None and (not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise ValueError(f"vision_feature_layers must be a non-empty list of ints, got {layers}")
    return layers


class _VipLlavaImageMixin:
    """ViP's feature selection, placed before the LLaVA classes in the MRO; the merge is LLaVA's."""

    config: VipLlavaConfig

    def get_image_features(self, pixel_values: torch.Tensor, vision_feature_layers: int | list[int] | None = None,
                           *, vision_feature_layer: int | list[int] | None = None,
                           output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                           return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output for a (num_images, 3, S, S) batch, with `pooler_output` = the projected
        features (num_images, tokens_per_image, H_text) as one tensor (ViP's layout in transformers).

        The vision tower's hidden_states[i] for each listed layer, CLS always dropped, concatenated on the
        feature dim in list order. Default: config.vision_feature_layers.
        """
        out = self._image_outputs(pixel_values, _one_layer_list(vision_feature_layers, vision_feature_layer), None,
                                  output_hidden_states, output_attentions)
        return out if return_dict is not False else out.to_tuple()

    def _image_outputs(self, pixel_values: torch.Tensor, vision_feature_layer: list[int] | None,
                       vision_feature_select_strategy: str | None, output_hidden_states: bool | None = None,
                       output_attentions: bool | None = None) -> BaseModelOutputWithPooling:
        """The vision tower's output with `pooler_output` = the projected features (N, P, Ht); no select strategy."""
        layers = self.config.vision_feature_layers if vision_feature_layer is None else vision_feature_layer
        expected = self.multi_modal_projector.linear_1.in_features // self.config.vision_config.hidden_size
        if len(layers) != expected:
            raise ValueError(f"vision_feature_layers {layers} selects {len(layers)} layer(s), but the projector was "
                             f"built for {expected} (config.vision_feature_layers={self.config.vision_feature_layers})")
        out = self.vision_tower.encode_layers(pixel_values, layers, output_hidden_states, output_attentions)
        features = torch.cat([out.hidden_states[i][:, 1:] for i in layers], dim=-1)  # (N, P, Hv * len(layers))
        out.pooler_output = self.multi_modal_projector(features)  # (N, P, Ht)
        return out

    def _features_for_merge(self, pixel_values: torch.Tensor, vision_feature_layer: list[int] | None,
                            vision_feature_select_strategy: str | None, output_hidden_states: bool | None,
                            output_attentions: bool | None) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        # transformers' ViP forward does not pass output_hidden_states / output_attentions to the vision tower:
        # its image_outputs hold the selected layers only, whatever the decoder was asked for
        out = self._image_outputs(pixel_values, vision_feature_layer, None)
        return out.pooler_output, out  # ViP keeps the (N, P, Ht) tensor in image_outputs


class VipLlavaModel(_VipLlavaImageMixin, LlavaModel):
    """ViP-LLaVA without the LM head: returns the decoder's last hidden state."""

    config_class = VipLlavaConfig
    projector_class = VipLlavaMultiModalProjector

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                vision_feature_layers: int | list[int] | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, *, vision_feature_layer: int | list[int] | None = None,
                pixel_values_videos: torch.Tensor | None = None) -> LlavaModelOutputWithPast | tuple:
        """As LlavaModel.forward; the layer list may be given as `vision_feature_layers` or `vision_feature_layer`."""
        reject_videos(self, pixel_values_videos)
        return super().forward(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
            vision_feature_layer=_one_layer_list(vision_feature_layers, vision_feature_layer), use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            cache_position=cache_position, image_sizes=image_sizes)


class VipLlavaForConditionalGeneration(_VipLlavaImageMixin, LlavaForConditionalGeneration):
    """ViP-LLaVA with the LM head: `model(**processor(images=..., text=...))` gives next-token logits."""

    config_class = VipLlavaConfig
    projector_class = VipLlavaMultiModalProjector

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                vision_feature_layers: int | list[int] | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, num_logits_to_keep: int | None = None,
                cache_position: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None,
                num_items_in_batch: int | torch.Tensor | None = None, *,
                vision_feature_layer: int | list[int] | None = None,
                pixel_values_videos: torch.Tensor | None = None) -> LlavaCausalLMOutputWithPast | tuple:
        """As LlavaForConditionalGeneration.forward; the layer list may be given as `vision_feature_layers`
        or `vision_feature_layer`."""
        reject_videos(self, pixel_values_videos)
        return super().forward(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
            vision_feature_layer=_one_layer_list(vision_feature_layers, vision_feature_layer), labels=labels,
            use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict, logits_to_keep=logits_to_keep, num_logits_to_keep=num_logits_to_keep,
            cache_position=cache_position, image_sizes=image_sizes, num_items_in_batch=num_items_in_batch)
