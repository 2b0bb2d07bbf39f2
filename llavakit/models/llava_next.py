"""LLaVA-NeXT (v1.6): LLaVA whose images arrive as a base view plus a grid of crops ("anyres").

Every crop of every image goes through the vision tower and projector in one call. Then, per image, the
grid's features are laid back out as one feature map, the letterbox padding is cut off, a learned
`image_newline` vector ends each row, and the result follows the base view's features. The merge at the
`<image>` positions, the decoder and generate are LLaVA's. Tensor names are LLaVA's plus `image_newline`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from llavakit.anyres import as_size, get_anyres_image_grid_shape, image_size_to_num_patches, unpadded_size
from llavakit.config.llava_next import LlavaNextConfig
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.models.cache import DynamicCache
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel, reject_videos
from llavakit.models.layers import normal_
from llavakit.models.outputs import BaseModelOutputWithPooling, LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast


def unpad_image(features: torch.Tensor, original_size: tuple[int, int] | torch.Tensor) -> torch.Tensor:
    """Cut the letterbox padding off a (C, H, W) feature map of an image of `original_size` (height, width)."""
    cur_h, cur_w = features.shape[1:]
    new_h, new_w = unpadded_size(original_size, (cur_h, cur_w))
    top, left = (cur_h - new_h) // 2, (cur_w - new_w) // 2
    return features[:, top:top + new_h, left:left + new_w]  # (C, new_h, new_w)


def shrink_grid(features: torch.Tensor, max_features: int) -> torch.Tensor:
    """Bilinearly shrink a (C, H, W) feature map whose H * W is over 1.21 x `max_features` to about that many."""
    height, width = features.shape[1:]
    ratio = math.sqrt(height * width / max_features)
    if ratio <= 1.1:
        return features
    size = [int(height // ratio), int(width // ratio)]
    return nn.functional.interpolate(features[None], size, mode="bilinear")[0]  # (C, h', w')


class _PackedImages(NamedTuple):
    """All images' packed features, handed to LLaVA's forward in place of pixel_values: its merge passes them
    to `_features_for_merge` untouched, so NeXT reuses the merge without LLaVA knowing about image_sizes."""

    features: torch.Tensor  # (total_image_tokens, Ht)
    outputs: BaseModelOutputWithPooling  # the vision tower's output over all crops; pooler_output per image


class _LlavaNextImageMixin:
    """NeXT's image features, placed before the LLaVA classes in the MRO; the merge is LLaVA's."""

    config: LlavaNextConfig
    image_newline: nn.Parameter

    def _add_image_newline(self) -> None:
        hidden = self.config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))  # (Ht,)

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | list,
                           vision_feature_layer: int | list[int] | None = None,
                           vision_feature_select_strategy: str | None = None, output_hidden_states: bool | None = None,
                           output_attentions: bool | None = None,
                           return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output over all crops, with `pooler_output` = the packed features of each image,
        a list of (tokens_i, H_text), tokens_i depending on its size.

        pixel_values: (num_images, max_crops, 3, S, S) as the processor pads them (padding crops are
        skipped), or the real crops already concatenated, (total_crops, 3, S, S). image_sizes: (num_images, 2)
        original (height, width) of each image, which fixes its crop count and grid.
        """
        sizes = self._image_sizes(pixel_values, image_sizes)
        crop = self.config.vision_config.image_size
        counts = [image_size_to_num_patches(size, self.config.image_grid_pinpoints, crop) for size in sizes]
        pixel_values = self._select_crops(pixel_values, sizes, counts)  # (sum(counts), 3, S, S)
        out = self._image_outputs(pixel_values, vision_feature_layer, vision_feature_select_strategy,
                                  output_hidden_states, output_attentions)
        features = out.pooler_output  # (sum(counts), P, Ht)
        out.pooler_output = [self._pack(f, size) for f, size in zip(features.split(counts), sizes)]
        return out if return_dict is not False else out.to_tuple()

    def _select_crops(self, pixel_values: torch.Tensor, sizes: list[tuple], counts: list[int]) -> torch.Tensor:
        """The `counts[i]` real crops of each image, concatenated: (sum(counts), 3, S, S)."""
        if pixel_values.ndim == 5:
            if max(counts) > pixel_values.shape[1]:
                raise ValueError(
                    f"image_sizes {sizes} need {counts} crops per image with image_grid_pinpoints "
                    f"{self.config.image_grid_pinpoints}, but pixel_values has only {pixel_values.shape[1]} per "
                    f"image: the processor and the model must use the same image_grid_pinpoints")
            pixel_values = torch.cat([p[:n] for p, n in zip(pixel_values, counts)])  # (sum(counts), 3, S, S)
        elif pixel_values.shape[0] != sum(counts):
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} crops, but image_sizes {sizes} need "
                             f"{counts} = {sum(counts)} with image_grid_pinpoints {self.config.image_grid_pinpoints}")
        return pixel_values

    def _image_sizes(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | list | None) -> list[tuple]:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim not in (4, 5):
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"pixel_values must be (num_images, crops, 3, H, W) or (total_crops, 3, H, W), "
                             f"got {shape}")
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (num_images, 2) with pixel_values: pass the "
                             "processor's output as it is, e.g. model(**inputs)")
        sizes = [as_size(s, "each image_sizes entry") for s in image_sizes]
        if pixel_values.ndim == 5 and len(sizes) != pixel_values.shape[0]:
            raise ValueError(f"pixel_values holds {pixel_values.shape[0]} images but image_sizes gives "
                             f"{len(sizes)} sizes")
        return sizes

    def _pack(self, features: torch.Tensor, image_size: tuple[int, int], max_tiles: int | None = None) -> torch.Tensor:
        """One image's (crops, P, Ht) features -> (base tokens + rows * (cols + 1), Ht), newline after each row.

        With `max_tiles` (OneVision's anyres_max_N), an unpadded grid holding more than about N crops' worth of
        features is first shrunk (bilinear, aspect kept) to N crops' worth.
        """
        newline = self.image_newline.to(features.device, features.dtype)  # (Ht,)
        if features.shape[0] == 1:
            return torch.cat([features[0], newline[None]])  # (P + 1, Ht)
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        rows, cols = get_anyres_image_grid_shape(image_size, self.config.image_grid_pinpoints,
                                                 self.config.vision_config.image_size)
        n_crops, n_tokens, hidden = features.shape[0] - 1, features.shape[1], features.shape[2]
        if n_tokens != side * side:
            raise ValueError(f"each crop gives {n_tokens} features, which do not form the {side}x{side} patch grid "
                             f"LLaVA-NeXT unpads (vision_feature_select_strategy='full' keeps the CLS token; use "
                             f"'default')")
        if n_crops != rows * cols:
            raise ValueError(f"image {image_size} has {n_crops} grid crops but its {rows}x{cols} grid needs "
                             f"{rows * cols}: each image_grid_pinpoints entry must be a multiple of the vision "
                             f"tower's image_size {self.config.vision_config.image_size}")
        grid = features[1:].view(rows, cols, side, side, hidden)  # (rows, cols, side, side, Ht)
        grid = grid.permute(4, 0, 2, 1, 3).reshape(hidden, rows * side, cols * side)  # (Ht, rows*side, cols*side)
        grid = unpad_image(grid, image_size)  # (Ht, h, w)
        if max_tiles is not None:
            grid = shrink_grid(grid, max_tiles * side * side)  # (Ht, h', w')
        grid = torch.cat([grid, newline[:, None, None].expand(hidden, grid.shape[1], 1)], dim=-1)  # (Ht, h, w + 1)
        return torch.cat([features[0], grid.flatten(1).t()])  # (P + h * (w + 1), Ht)

    def _features_for_merge(self, pixel_values: _PackedImages, vision_feature_layer: int | list[int] | None,
                            vision_feature_select_strategy: str | None, output_hidden_states: bool | None,
                            output_attentions: bool | None) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        # (1, total_image_tokens, Ht): computed (and checked) in `_pack_inputs`
        return pixel_values.features[None], pixel_values.outputs

    def _pack_inputs(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                     pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | list | None,
                     vision_feature_layer: int | list[int] | None,
                     vision_feature_select_strategy: str | None, output_hidden_states: bool | None,
                     output_attentions: bool | None) -> _PackedImages | None:
        """All images' packed features, checked against the number of `<image>` tokens, or None without images."""
        if pixel_values is None or (input_ids is None) == (inputs_embeds is None):
            return None  # (LLaVA's merge reports a missing or doubled text input)
        if isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] == 0:
            return None  # an empty image batch, as transformers allows
        outputs = self.get_image_features(pixel_values, image_sizes, vision_feature_layer,
                                          vision_feature_select_strategy, output_hidden_states, output_attentions)
        per_image = outputs.pooler_output
        lengths = [f.shape[0] for f in per_image]
        image_token = self.config.image_token_index
        if input_ids is not None:
            n_tokens = int((input_ids == image_token).sum())
        else:
            token_embedding = self.get_input_embeddings()(torch.tensor(image_token, device=inputs_embeds.device))
            n_tokens = int((inputs_embeds == token_embedding).all(-1).sum())
        if n_tokens != sum(lengths):
            raise ValueError(
                f"Image features and image tokens do not match: tokens: {n_tokens}, features: {sum(lengths)}. "
                f"The {len(lengths)} image(s) give {lengths} features (the count depends on each image's size), so "
                f"the text needs that many <image> tokens (id {image_token}): check that the number of <image> "
                f"placeholders equals the number of images, that the processor expanded them with the model's "
                f"image_grid_pinpoints {self.config.image_grid_pinpoints}, and that truncation did not cut any.")
        return _PackedImages(torch.cat(per_image), outputs)


class LlavaNextModel(_LlavaNextImageMixin, LlavaModel):
    """LLaVA-NeXT without the LM head: returns the decoder's last hidden state."""

    config_class = LlavaNextConfig

    def __init__(self, config: LlavaNextConfig) -> None:
        super().__init__(config)
        self._add_image_newline()

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: DynamicCache | None = None,
                inputs_embeds: torch.Tensor | None = None, vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None, *,
                pixel_values_videos: torch.Tensor | None = None) -> LlavaModelOutputWithPast | tuple:
        """As LlavaModel.forward, with each image's (height, width) in `image_sizes` (num_images, 2)."""
        reject_videos(self, pixel_values_videos)
        packed = self._pack_inputs(input_ids, inputs_embeds, pixel_values, image_sizes, vision_feature_layer,
                                   vision_feature_select_strategy, output_hidden_states, output_attentions)
        return super().forward(
            input_ids=input_ids, pixel_values=packed, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            cache_position=cache_position)


class LlavaNextForConditionalGeneration(_LlavaNextImageMixin, LlavaForConditionalGeneration):
    """LLaVA-NeXT with the LM head: `model(**processor(images=..., text=...))` gives next-token logits."""

    config_class = LlavaNextConfig

    def __init__(self, config: LlavaNextConfig) -> None:
        super().__init__(config)
        self._add_image_newline()
        head = self.get_output_embeddings()
        if not config.tie_word_embeddings and head.weight is self.get_input_embeddings().weight:
            # the text model tied itself (its own config says so); transformers 5 ties NeXT only on the top flag
            head.weight = nn.Parameter(normal_(torch.empty_like(head.weight), config.text_config.initializer_range))

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.get_output_embeddings().weight = self.get_input_embeddings().weight

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: DynamicCache | None = None,
                inputs_embeds: torch.Tensor | None = None, vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, num_logits_to_keep: int | None = None,
                cache_position: torch.Tensor | None = None, num_items_in_batch: int | torch.Tensor | None = None,
                *, pixel_values_videos: torch.Tensor | None = None) -> LlavaCausalLMOutputWithPast | tuple:
        """As LlavaForConditionalGeneration.forward, with each image's (height, width) in `image_sizes`
        (num_images, 2). `image_outputs.pooler_output` holds each image's packed features, (tokens_i, Ht)."""
        reject_videos(self, pixel_values_videos)
        packed = self._pack_inputs(input_ids, inputs_embeds, pixel_values, image_sizes, vision_feature_layer,
                                   vision_feature_select_strategy, output_hidden_states, output_attentions)
        return super().forward(
            input_ids=input_ids, pixel_values=packed, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            logits_to_keep=logits_to_keep, num_logits_to_keep=num_logits_to_keep, cache_position=cache_position,
            num_items_in_batch=num_items_in_batch)
