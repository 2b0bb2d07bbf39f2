"""LLaVA-OneVision: SigLIP tower -> projector -> Qwen2 decoder, reading single images, several images per prompt
and videos.

- One image in a prompt: LLaVA-NeXT's anyres packing (base view, then the unpadded grid with a newline per row),
  except that a grid holding more than N crops' worth of features ("anyres_max_N") is shrunk bilinearly first.
- Several images in one prompt (`batch_num_images` > 1): each image is its base view plus one newline.
- A video: every frame's patch grid is projected and shrunk 2x (bilinear, ceil), the frames are laid end to
  end, and one newline closes the video.

Tensor names are LLaVA-NeXT's (`image_newline`, `multi_modal_projector.*`, `vision_tower.vision_model.*`,
`language_model.*`); OneVision has no vision resampler.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llavakit.anyres import image_size_to_num_patches
from llavakit.config.llava_onevision import LlavaOnevisionConfig, max_tiles
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.models.cache import DynamicCache
from llavakit.models.llava_next import LlavaNextForConditionalGeneration, LlavaNextModel
from llavakit.models.media import (VideoLlavaCausalLMOutputWithPast, VideoLlavaModelOutputWithPast,
                                   _VideoLlavaMixin, check_videos)
from llavakit.models.outputs import BaseModelOutputWithPooling, model_output


def pool_frames(features: torch.Tensor, side: int) -> torch.Tensor:
    """(frames, side * side, Ht) projected frame features -> (frames, ceil(side/2)^2, Ht), bilinear 2x shrink."""
    frames, _, hidden = features.shape
    grid = features.view(frames, side, side, hidden).permute(0, 3, 1, 2)  # (F, Ht, side, side)
    half = [math.ceil(side / 2), math.ceil(side / 2)]
    grid = nn.functional.interpolate(grid, size=half, mode="bilinear")  # (F, Ht, side/2, side/2)
    return grid.permute(0, 2, 3, 1).reshape(frames, -1, hidden)  # (F, ceil(side/2)^2, Ht)


class _LlavaOnevisionMixin(_VideoLlavaMixin):
    """OneVision's image and video features; the packing itself is LLaVA-NeXT's."""

    config: LlavaOnevisionConfig

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | list,
                           vision_feature_layer: int | list[int] | None = None,
                           vision_feature_select_strategy: str | None = None, vision_aspect_ratio: str | None = None,
                           batch_num_images: torch.Tensor | list[int] | None = None,
                           output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                           return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output over the used crops, `pooler_output` = each image's packed features, a list
        of (tokens_i, Ht).

        pixel_values: (num_images, max_crops, 3, S, S) as the processor pads them, or the used crops concatenated.
        image_sizes: (num_images, 2) original (height, width). batch_num_images: images per prompt; an image
        sharing its prompt with others is read from its base view alone (its first crop).
        """
        sizes = self._image_sizes(pixel_values, image_sizes)
        tiled = self._tiled(batch_num_images, len(sizes))
        crop = self.config.vision_config.image_size
        counts = [image_size_to_num_patches(size, self.config.image_grid_pinpoints, crop) if use_grid else 1
                  for size, use_grid in zip(sizes, tiled)]
        limit = max_tiles(vision_aspect_ratio or self.config.vision_aspect_ratio)
        pixel_values = self._select_crops(pixel_values, sizes, counts)  # (sum(counts), 3, S, S)
        out = self._image_outputs(pixel_values, vision_feature_layer, vision_feature_select_strategy,
                                  output_hidden_states, output_attentions)
        features = out.pooler_output  # (sum(counts), P, Ht)
        out.pooler_output = [self._pack(f, size, limit) for f, size in zip(features.split(counts), sizes)]
        return out if return_dict is not False else out.to_tuple()

    @staticmethod
    def _tiled(batch_num_images: torch.Tensor | list[int] | None, n_images: int) -> list[bool]:
        """Per image: whether it is read as a crop grid (alone in its prompt) or from its base view only."""
        if batch_num_images is None:
            return [True] * n_images
        per_prompt = [int(n) for n in (batch_num_images.tolist() if hasattr(batch_num_images, "tolist")
                                       else batch_num_images)]
        if any(n < 0 for n in per_prompt) or sum(per_prompt) != n_images:
            raise ValueError(f"batch_num_images {per_prompt} must count the {n_images} images per prompt "
                             f"(non-negative, summing to {n_images})")
        return [n == 1 for n in per_prompt for _ in range(n)]

    def get_video_features(self, pixel_values_videos: torch.Tensor,
                           vision_feature_layer: int | list[int] | None = None,
                           vision_feature_select_strategy: str | None = None,
                           output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                           return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output over all frames, `pooler_output` = (num_videos, frames * ceil(side/2)^2 + 1, Ht):
        each frame's features pooled 2x, one newline per video. All frames of all videos go through the tower in
        one call.
        """
        n_videos, frames = check_videos(pixel_values_videos)
        out = self._image_outputs(pixel_values_videos.flatten(0, 1), vision_feature_layer,
                                  vision_feature_select_strategy, output_hidden_states, output_attentions)
        features = out.pooler_output  # (V*F, P, Ht)
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        if features.shape[1] != side * side:
            raise ValueError(f"each frame gives {features.shape[1]} features, which do not form the {side}x{side} "
                             f"patch grid OneVision pools (a CLIP tower with 'full' keeps the CLS token)")
        pooled = pool_frames(features, side).reshape(n_videos, -1, features.shape[-1])  # (V, F * p, Ht)
        newline = self.image_newline.to(pooled.device, pooled.dtype).expand(n_videos, 1, -1)  # (V, 1, Ht)
        out.pooler_output = torch.cat([pooled, newline], dim=1)  # (V, F * p + 1, Ht)
        return out if return_dict is not False else out.to_tuple()

    def _media_features(self, input_ids, inputs_embeds, pixel_values, image_sizes, pixel_values_videos,
                        vision_feature_layer, vision_feature_select_strategy, vision_aspect_ratio,
                        batch_num_images, output_hidden_states, output_attentions,
                        ) -> tuple[BaseModelOutputWithPooling | None, BaseModelOutputWithPooling | None]:
        """(image_outputs, video_outputs) of one forward, each None without that medium."""
        images = videos = None
        if pixel_values is not None and not (isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0):
            images = self.get_image_features(pixel_values, image_sizes, vision_feature_layer,
                                             vision_feature_select_strategy, vision_aspect_ratio, batch_num_images,
                                             output_hidden_states, output_attentions)
        if pixel_values_videos is not None and not (isinstance(pixel_values_videos, torch.Tensor)
                                                    and pixel_values_videos.shape[0] == 0):  # an empty video batch
            videos = self.get_video_features(pixel_values_videos, vision_feature_layer,
                                             vision_feature_select_strategy, output_hidden_states, output_attentions)
        return images, videos


@model_output
class LlavaOnevisionModelOutputWithPast(VideoLlavaModelOutputWithPast):
    """LlavaOnevisionModel's output: decoder states, cache, `image_outputs` and `video_outputs`."""


@model_output
class LlavaOnevisionCausalLMOutputWithPast(VideoLlavaCausalLMOutputWithPast):
    """LlavaOnevisionForConditionalGeneration's output: loss, logits, cache, `image_outputs`, `video_outputs`."""


class LlavaOnevisionModel(_LlavaOnevisionMixin, LlavaNextModel):
    """LLaVA-OneVision without the LM head: returns the decoder's last hidden state."""

    config_class = LlavaOnevisionConfig
    model_output_class = LlavaOnevisionModelOutputWithPast
    causal_output_class = LlavaOnevisionCausalLMOutputWithPast

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
                image_sizes_videos: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: DynamicCache | None = None,
                inputs_embeds: torch.Tensor | None = None, vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, vision_aspect_ratio: str | None = None,
                batch_num_images: torch.Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                ) -> LlavaOnevisionModelOutputWithPast | tuple:
        """Merge image and video features into the embeddings and run the decoder. `image_sizes_videos` and
        `cache_position` are accepted for compatibility and ignored, as in transformers."""
        images, videos = self._media_features(input_ids, inputs_embeds, pixel_values, image_sizes,
                                              pixel_values_videos, vision_feature_layer,
                                              vision_feature_select_strategy, vision_aspect_ratio, batch_num_images,
                                              output_hidden_states, output_attentions)
        return self._forward_media(input_ids, inputs_embeds, images, videos, cache, return_dict,
                                   attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                                   output_attentions=output_attentions, output_hidden_states=output_hidden_states)


class LlavaOnevisionForConditionalGeneration(_LlavaOnevisionMixin, LlavaNextForConditionalGeneration):
    """LLaVA-OneVision with the LM head: `model(**processor(images=..., videos=..., text=...))` gives logits."""

    config_class = LlavaOnevisionConfig
    model_output_class = LlavaOnevisionModelOutputWithPast
    causal_output_class = LlavaOnevisionCausalLMOutputWithPast

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
                image_sizes_videos: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: DynamicCache | None = None,
                inputs_embeds: torch.Tensor | None = None, vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, vision_aspect_ratio: str | None = None,
                batch_num_images: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, num_logits_to_keep: int | None = None,
                cache_position: torch.Tensor | None = None, num_items_in_batch: int | torch.Tensor | None = None,
                ) -> LlavaOnevisionCausalLMOutputWithPast | tuple:
        """Logits for the kept positions and the LM loss when `labels` are given (mask `<image>`, `<video>` and
        pad positions with -100 yourself). `image_outputs.pooler_output` holds each image's packed features
        (tokens_i, Ht), `video_outputs.pooler_output` each video's features (num_videos, tokens, Ht)."""
        images, videos = self._media_features(input_ids, inputs_embeds, pixel_values, image_sizes,
                                              pixel_values_videos, vision_feature_layer,
                                              vision_feature_select_strategy, vision_aspect_ratio, batch_num_images,
                                              output_hidden_states, output_attentions)
        return self._forward_media(input_ids, inputs_embeds, images, videos, cache, return_dict,
                                   attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                                   use_cache=use_cache, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, logits_to_keep=logits_to_keep,
                                   num_logits_to_keep=num_logits_to_keep, num_items_in_batch=num_items_in_batch)
