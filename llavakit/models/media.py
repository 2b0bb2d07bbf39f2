"""What the video-capable families (OneVision, NeXT-Video) share: their outputs, vision features read before the
projector, and one forward that writes image and video features over their placeholder tokens and runs the
decoder. Each family supplies `_media_features`; the decoder is LLaVA's `language_model`.
"""

from __future__ import annotations

import warnings

import torch

from llavakit.models.cache import DynamicCache
from llavakit.models.llava import SELECT_STRATEGIES
from llavakit.models.llama import check_token_ids
from llavakit.models.outputs import (BaseModelOutputWithPooling, LlavaCausalLMOutputWithPast,
                                    LlavaModelOutputWithPast, model_output)

VIDEO_HIDDEN_STATES_MESSAGE = ("`video_hidden_states` is deprecated: transformers gives it another meaning (all "
                               "hidden states per layer) from v5.30. Use `out.video_outputs.pooler_output` for the "
                               "projected features (num_videos, tokens_per_video, H).")


def _deprecated_video_hidden_states(self) -> torch.Tensor | None:
    """transformers 5.24-5.29: `video_outputs.pooler_output` under its old name, with a FutureWarning."""
    warnings.warn(VIDEO_HIDDEN_STATES_MESSAGE, FutureWarning, stacklevel=2)
    return None if self.video_outputs is None else self.video_outputs.pooler_output


@model_output
class VideoLlavaModelOutputWithPast(LlavaModelOutputWithPast):
    """`image_outputs.pooler_output`: each image's packed features (tokens_i, Ht); `video_outputs.pooler_output`:
    the projected features of each video, (num_videos, tokens_per_video, Ht)."""

    video_hidden_states = property(_deprecated_video_hidden_states)


@model_output
class VideoLlavaCausalLMOutputWithPast(LlavaCausalLMOutputWithPast):
    """`image_outputs.pooler_output`: each image's packed features (tokens_i, Ht); `video_outputs.pooler_output`:
    the projected features of each video, (num_videos, tokens_per_video, Ht)."""

    video_hidden_states = property(_deprecated_video_hidden_states)


def select_vision_features(model, pixel_values: torch.Tensor, vision_feature_layer: int | list[int] | None,
                           vision_feature_select_strategy: str | None, output_hidden_states: bool | None = None,
                           output_attentions: bool | None = None,
                           ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
    """The tower's chosen hidden state(s) of (N, 3, S, S) frames before the projector, (N, P, Hv * n_layers), and
    the tower's output. A list of layers is concatenated on the feature dim; "default" drops the CLS token."""
    config = model.config
    layer = config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}, got {strategy!r}")
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    out = model.vision_tower.encode_layers(pixel_values, layers, output_hidden_states, output_attentions)
    states = [out.hidden_states[i] for i in layers]  # each (N, 1 + P or P, Hv)
    if strategy == "default":
        states = [s[:, 1:] for s in states]  # drop CLS
    return (states[0] if len(states) == 1 else torch.cat(states, dim=-1)), out  # (N, P, Hv * len(layers))


def check_videos(pixel_values_videos: torch.Tensor) -> tuple[int, int]:
    """(num_videos, frames) of a (num_videos, frames, 3, S, S) batch, or a ValueError naming the shape."""
    if not isinstance(pixel_values_videos, torch.Tensor) or pixel_values_videos.ndim != 5:
        shape = tuple(pixel_values_videos.shape) if isinstance(pixel_values_videos, torch.Tensor) else \
            type(pixel_values_videos).__name__
        raise ValueError(f"pixel_values_videos must be (num_videos, frames, 3, H, W), got {shape}")
    if pixel_values_videos.shape[1] == 0:
        raise ValueError(f"pixel_values_videos has videos of 0 frames (shape {tuple(pixel_values_videos.shape)}); "
                         f"each video needs at least one frame")
    return pixel_values_videos.shape[0], pixel_values_videos.shape[1]


class _VideoLlavaMixin:
    """The forward of a LLaVA model that also reads videos; placed before the LLaVA classes in the MRO."""

    model_output_class: type[VideoLlavaModelOutputWithPast] = VideoLlavaModelOutputWithPast
    causal_output_class: type[VideoLlavaCausalLMOutputWithPast] = VideoLlavaCausalLMOutputWithPast

    def _placeholders(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor,
                      token_id: int) -> torch.Tensor:
        """(B, T) mask of the `token_id` positions, found in the ids or by matching that token's embedding."""
        if input_ids is not None:
            return input_ids == token_id
        token_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))  # (Ht,)
        return (inputs_embeds == token_embedding).all(-1)

    def _merge_media(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                     images: torch.Tensor | None, videos: torch.Tensor | None,
                     n_images: int, n_videos: int) -> torch.Tensor:
        """Embed the tokens, then write `images` (N_img_tokens, Ht) and `videos` (N_vid_tokens, Ht) over the
        `<image>` / `<video>` positions in (batch, seq) order, after checking the counts match."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        embed = self.get_input_embeddings()
        if inputs_embeds is None:
            inputs_embeds = embed(check_token_ids(input_ids, embed.num_embeddings))  # (B, T, Ht)
        config = self.config
        media = [("image", "images", config.image_token_index, images, n_images),
                 ("video", "videos", config.video_token_index, videos, n_videos)]
        masks = [self._placeholders(input_ids, inputs_embeds, token) if features is not None else None
                 for _, _, token, features, _ in media]
        for (kind, plural, token, features, count), mask in zip(media, masks):
            if features is None:
                continue
            n_tokens = int(mask.sum())
            if n_tokens != features.shape[0]:
                raise ValueError(
                    f"{kind.capitalize()} features and {kind} tokens do not match: tokens: {n_tokens}, features: "
                    f"{features.shape[0]}. The {count} {plural} need {features.shape[0]} <{kind}> tokens (id "
                    f"{token}) in the text: check that the number of <{kind}> placeholders equals the number of "
                    f"{plural}, that the processor expanded them with this model's settings, and that truncation "
                    f"did not cut any.")
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(mask[..., None].to(inputs_embeds.device), features)
        return inputs_embeds

    def _forward_media(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                       image_outputs: BaseModelOutputWithPooling | None,
                       video_outputs: BaseModelOutputWithPooling | None, cache: DynamicCache | None,
                       return_dict: bool | None, **decoder_kwargs,
                       ) -> VideoLlavaModelOutputWithPast | VideoLlavaCausalLMOutputWithPast | tuple:
        """Merge the per-image packed features and the (num_videos, tokens, Ht) video features, run the decoder
        (with the LM head and loss when the model has one) and build the output."""
        images = image_outputs.pooler_output if image_outputs is not None else None
        videos = video_outputs.pooler_output if video_outputs is not None else None
        image_features = torch.cat(list(images)) if images else None  # (total_image_tokens, Ht)
        video_features = videos.flatten(0, 1) if videos is not None else None  # (total_video_tokens, Ht)
        embeds = self._merge_media(input_ids, inputs_embeds, image_features, video_features,
                                   len(images or ()), 0 if videos is None else videos.shape[0])
        out = self.language_model(inputs_embeds=embeds, cache=cache, **decoder_kwargs)
        shared = dict(cache=out.cache, hidden_states=out.hidden_states, attentions=out.attentions,
                      image_outputs=image_outputs, video_outputs=video_outputs)
        if hasattr(out, "logits"):
            result = self.causal_output_class(loss=out.loss, logits=out.logits, **shared)
        else:
            result = self.model_output_class(last_hidden_state=out.last_hidden_state, **shared)
        return result if return_dict is not False else result.to_tuple()
