"""LLaVA-NeXT-Video: LLaVA-NeXT (CLIP tower, Llama / Mistral / Yi decoder, anyres images) that also reads videos.

Every frame of every video goes through the vision tower in one call; each frame's patch grid is pooled by the
`vision_resampler` (average, max, or a learned strided conv, before the projector), projected, and the frames are
laid end to end over the video's `<video>` tokens. Images are packed exactly as in LLaVA-NeXT. Tensor names are
LLaVA-NeXT's plus `vision_resampler.pool.*` (only the conv pooler has weights).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llavakit.config.llava_next_video import LlavaNextVideoConfig
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.models.cache import DynamicCache
from llavakit.models.llava_next import LlavaNextForConditionalGeneration, LlavaNextModel
from llavakit.models.media import (VideoLlavaCausalLMOutputWithPast, VideoLlavaModelOutputWithPast,
                                   _VideoLlavaMixin, check_videos, select_vision_features)
from llavakit.models.outputs import BaseModelOutputWithPooling, model_output


class LlavaNextVideoPooler(nn.Module):
    """(frames, side * side, C) patch features -> (frames, (side / stride)^2, C), pooled on the 2-D grid."""

    def __init__(self, config: LlavaNextVideoConfig) -> None:
        super().__init__()
        stride, channels = config.spatial_pool_stride, config.vision_config.hidden_size
        if config.spatial_pool_mode == "average":
            self.pool = nn.AvgPool2d(kernel_size=stride, stride=stride)
        elif config.spatial_pool_mode == "max":
            self.pool = nn.MaxPool2d(kernel_size=stride, stride=stride)
        else:  # "conv" (the config validates the mode)
            out_channels = getattr(config, "spatial_pool_out_channels", channels)
            self.pool = nn.Conv2d(channels, out_channels, kernel_size=stride, stride=stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        frames, n_patches, channels = features.shape
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise ValueError(f"each frame gives {n_patches} features, which do not form a square patch grid "
                             f"(vision_feature_select_strategy='full' keeps the CLS token; videos need 'default')")
        grid = features.view(frames, side, side, channels).permute(0, 3, 1, 2)  # (F, C, side, side)
        return self.pool(grid).flatten(2).transpose(1, 2)  # (F, pooled, C')


class _LlavaNextVideoMixin(_VideoLlavaMixin):
    """NeXT-Video's video features; images are LLaVA-NeXT's."""

    config: LlavaNextVideoConfig
    vision_resampler: LlavaNextVideoPooler

    def get_video_features(self, pixel_values_videos: torch.Tensor,
                           vision_feature_layer: int | list[int] | None = None,
                           vision_feature_select_strategy: str | None = None,
                           output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                           return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output over all frames (one call), `pooler_output` = (num_videos, frames * pooled,
        Ht): each frame's tower features pooled, then projected."""
        n_videos, frames = check_videos(pixel_values_videos)
        states, out = select_vision_features(self, pixel_values_videos.flatten(0, 1), vision_feature_layer,
                                             vision_feature_select_strategy, output_hidden_states,
                                             output_attentions)  # (V*F, P, Hv * n_layers)
        expected = self.multi_modal_projector.linear_1.in_features
        if states.shape[-1] != expected:
            raise ValueError(f"vision_feature_layer {vision_feature_layer!r} gives {states.shape[-1]} features per "
                             f"patch, but the projector takes {expected} (config.vision_feature_layer="
                             f"{self.config.vision_feature_layer})")
        pooled = self.vision_resampler(states)  # (V*F, pooled, Hv * n_layers)
        projected = self.multi_modal_projector(pooled)  # (V*F, pooled, Ht)
        out.pooler_output = projected.reshape(n_videos, frames * projected.shape[1], -1)  # (V, F * pooled, Ht)
        return out if return_dict is not False else out.to_tuple()

    def _media_features(self, input_ids, inputs_embeds, pixel_values, image_sizes, pixel_values_videos,
                        vision_feature_layer, vision_feature_select_strategy, output_hidden_states,
                        output_attentions,
                        ) -> tuple[BaseModelOutputWithPooling | None, BaseModelOutputWithPooling | None]:
        """(image_outputs, video_outputs) of one forward, each None without that medium."""
        images = videos = None
        if pixel_values is not None and not (isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0):
            images = self.get_image_features(pixel_values, image_sizes, vision_feature_layer,
                                             vision_feature_select_strategy, output_hidden_states, output_attentions)
        if pixel_values_videos is not None and not (isinstance(pixel_values_videos, torch.Tensor)
                                                    and pixel_values_videos.shape[0] == 0):  # an empty video batch
            videos = self.get_video_features(pixel_values_videos, vision_feature_layer,
                                             vision_feature_select_strategy, output_hidden_states, output_attentions)
        return images, videos


@model_output
class LlavaNextVideoModelOutputWithPast(VideoLlavaModelOutputWithPast):
    """LlavaNextVideoModel's output: decoder states, cache, `image_outputs` and `video_outputs`."""


@model_output
class LlavaNextVideoCausalLMOutputWithPast(VideoLlavaCausalLMOutputWithPast):
    """LlavaNextVideoForConditionalGeneration's output: loss, logits, cache, `image_outputs`, `video_outputs`."""


class LlavaNextVideoModel(_LlavaNextVideoMixin, LlavaNextModel):
    """LLaVA-NeXT-Video without the LM head: returns the decoder's last hidden state."""

    config_class = LlavaNextVideoConfig
    model_output_class = LlavaNextVideoModelOutputWithPast
    causal_output_class = LlavaNextVideoCausalLMOutputWithPast

    def __init__(self, config: LlavaNextVideoConfig) -> None:
        super().__init__(config)
        self.vision_resampler = LlavaNextVideoPooler(config)

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_values_videos: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                ) -> LlavaNextVideoModelOutputWithPast | tuple:
        """Merge image and video features into the embeddings and run the decoder."""
        images, videos = self._media_features(input_ids, inputs_embeds, pixel_values, image_sizes,
                                              pixel_values_videos, vision_feature_layer,
                                              vision_feature_select_strategy, output_hidden_states,
                                              output_attentions)
        return self._forward_media(input_ids, inputs_embeds, images, videos, cache, return_dict,
                                   attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                                   output_attentions=output_attentions, output_hidden_states=output_hidden_states)


class LlavaNextVideoForConditionalGeneration(_LlavaNextVideoMixin, LlavaNextForConditionalGeneration):
    """LLaVA-NeXT-Video with the LM head: `model(**processor(videos=..., text=...))` gives next-token logits."""

    config_class = LlavaNextVideoConfig
    model_output_class = LlavaNextVideoModelOutputWithPast
    causal_output_class = LlavaNextVideoCausalLMOutputWithPast

    def __init__(self, config: LlavaNextVideoConfig) -> None:
        super().__init__(config)
        self.vision_resampler = LlavaNextVideoPooler(config)

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_values_videos: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, num_logits_to_keep: int | None = None,
                cache_position: torch.Tensor | None = None, num_items_in_batch: int | torch.Tensor | None = None,
                ) -> LlavaNextVideoCausalLMOutputWithPast | tuple:
        """Logits for the kept positions and the LM loss when `labels` are given (mask `<image>`, `<video>` and
        pad positions with -100 yourself). `image_outputs.pooler_output` holds each image's packed features
        (tokens_i, Ht), `video_outputs.pooler_output` each video's features (num_videos, tokens, Ht)."""
        images, videos = self._media_features(input_ids, inputs_embeds, pixel_values, image_sizes,
                                              pixel_values_videos, vision_feature_layer,
                                              vision_feature_select_strategy, output_hidden_states,
                                              output_attentions)
        return self._forward_media(input_ids, inputs_embeds, images, videos, cache, return_dict,
                                   attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                                   use_cache=use_cache, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, logits_to_keep=logits_to_keep,
                                   num_logits_to_keep=num_logits_to_keep, num_items_in_batch=num_items_in_batch)
