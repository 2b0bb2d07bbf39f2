"""LLaVA: CLIP vision tower -> 2-layer projector -> Llama/Mistral decoder, with image features written
into the text embeddings at the `<image>` token positions.

Attribute names give the Hub's tensor layout: `vision_tower.vision_model.*`, `multi_modal_projector.*`,
`language_model.model.*` and `language_model.lm_head.weight`.
"""

from __future__ import annotations

import torch
from torch import nn

from llavakit.config.llama import MistralConfig
from llavakit.config.llava import LlavaConfig
from llavakit.config.qwen2 import Qwen2Config
from llavakit.config.siglip import SiglipVisionConfig
from llavakit.generation.utils import GenerationMixin
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.models.base import PreTrainedModel
from llavakit.models.cache import DynamicCache
from llavakit.models.clip import CLIPVisionModel
from llavakit.models.layers import activation, init_weights
from llavakit.models.llama import (LlamaForCausalLM, LlamaModel, MistralForCausalLM, MistralModel,
                                   check_token_ids)
from llavakit.models.outputs import BaseModelOutputWithPooling, LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast
from llavakit.models.qwen2 import Qwen2ForCausalLM, Qwen2Model
from llavakit.models.siglip import SiglipVisionModel

SELECT_STRATEGIES = ("default", "full")
VIDEO_FAMILIES = "LLaVA-OneVision (LlavaOnevisionForConditionalGeneration) and LLaVA-NeXT-Video " \
                 "(LlavaNextVideoForConditionalGeneration)"


def reject_videos(model: nn.Module, pixel_values_videos: torch.Tensor | None) -> None:
    """Raise a ValueError when a video reaches a family that has no video path (instead of a TypeError)."""
    if pixel_values_videos is not None:
        raise ValueError(f"{type(model).__name__} ({model.config.model_type}) does not take videos "
                         f"(got pixel_values_videos); only {VIDEO_FAMILIES} do. Give frames as images instead, "
                         f"or use a video model")


class LlavaMultiModalProjector(nn.Module):
    """linear_2(act(linear_1(x))): vision features (B, N, Hv * n_layers) -> text embeddings (B, N, Ht)."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        n_layers = len(config.vision_feature_layers)
        vision_hidden, text_hidden = config.vision_config.hidden_size, config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(vision_hidden * n_layers, text_hidden, bias=bias)
        self.act = activation(config.projector_hidden_act)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class _LlavaImageMixin:
    """Image features and their merge into the text embeddings, shared by LlavaModel and the generation class."""

    config: LlavaConfig
    vision_tower: CLIPVisionModel
    multi_modal_projector: LlavaMultiModalProjector

    def get_image_features(self, pixel_values: torch.Tensor, vision_feature_layer: int | list[int] | None = None,
                           vision_feature_select_strategy: str | None = None, output_hidden_states: bool | None = None,
                           output_attentions: bool | None = None,
                           return_dict: bool | None = None) -> BaseModelOutputWithPooling | tuple:
        """The vision tower's output for a (num_images, 3, S, S) batch, with `pooler_output` = the projected
        features, a list of (tokens_per_image, H_text) per image (as transformers 5 returns them).

        Uses the vision tower's hidden_states[layer] ("default" drops the CLS token); a list of layers
        is concatenated on the feature dim in list order. Defaults come from the config. `hidden_states`
        holds the selected layers only (None elsewhere) unless output_hidden_states=True.
        """
        out = self._image_outputs(pixel_values, vision_feature_layer, vision_feature_select_strategy,
                                  output_hidden_states, output_attentions)
        out.pooler_output = list(out.pooler_output)  # (N, P, Ht) -> N x (P, Ht)
        return out if return_dict is not False else out.to_tuple()

    def _image_outputs(self, pixel_values: torch.Tensor, vision_feature_layer: int | list[int] | None,
                       vision_feature_select_strategy: str | None, output_hidden_states: bool | None = None,
                       output_attentions: bool | None = None) -> BaseModelOutputWithPooling:
        """The vision tower's output with `pooler_output` = the projected features (N, P, Ht) as one tensor."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if strategy not in SELECT_STRATEGIES:
            raise ValueError(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}, got {strategy!r}")
        layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        expected = self.multi_modal_projector.linear_1.in_features // self.config.vision_config.hidden_size
        if len(layers) != expected:
            raise ValueError(f"vision_feature_layer {layer!r} selects {len(layers)} layer(s), but the projector was "
                             f"built for {expected} (config.vision_feature_layer="
                             f"{self.config.vision_feature_layer})")
        out = self.vision_tower.encode_layers(pixel_values, layers, output_hidden_states, output_attentions)
        states = [out.hidden_states[i] for i in layers]  # each (N, 1 + P, Hv)
        if strategy == "default":
            states = [s[:, 1:] for s in states]  # drop CLS
        # one layer: no cat, so the projector sees the same (strided) tensor as in transformers (bit-equal in bf16)
        features = states[0] if len(states) == 1 else torch.cat(states, dim=-1)  # (N, P, Hv * len(layers))
        out.pooler_output = self.multi_modal_projector(features)  # (N, P, Ht)
        return out

    def _features_for_merge(self, pixel_values: torch.Tensor, vision_feature_layer: int | list[int] | None,
                            vision_feature_select_strategy: str | None, output_hidden_states: bool | None,
                            output_attentions: bool | None) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """The features `_merge_image_features` writes in, (N, P, Ht), and the `image_outputs` to return;
        variants with other feature options override this."""
        out = self._image_outputs(pixel_values, vision_feature_layer, vision_feature_select_strategy,
                                  output_hidden_states, output_attentions)
        features = out.pooler_output
        out.pooler_output = list(features)  # one (P, Ht) per image, as transformers gives them
        return features, out

    def _merge_image_features(self, input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None,
                              inputs_embeds: torch.Tensor | None, vision_feature_layer: int | list[int] | None,
                              vision_feature_select_strategy: str | None, output_hidden_states: bool | None = None,
                              output_attentions: bool | None = None,
                              ) -> tuple[torch.Tensor, BaseModelOutputWithPooling | None]:
        """Embed the tokens and write image features over the `<image>` positions, in (batch, seq) order.

        Returns the embeddings (B, T, Ht) and the vision tower's output (`image_outputs`), or None without images.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        embed = self.get_input_embeddings()
        if inputs_embeds is None:
            inputs_embeds = embed(check_token_ids(input_ids, embed.num_embeddings))  # (B, T, Ht)
        if pixel_values is None:
            return inputs_embeds, None

        image_token = self.config.image_token_index
        features, image_outputs = self._features_for_merge(pixel_values, vision_feature_layer,
                                                           vision_feature_select_strategy, output_hidden_states,
                                                           output_attentions)
        n_images, per_image = features.shape[:2]
        features = features.reshape(-1, features.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
        if input_ids is not None:
            is_image = input_ids == image_token  # (B, T)
        else:
            token_embedding = embed(torch.tensor(image_token, device=inputs_embeds.device))  # (Ht,)
            is_image = (inputs_embeds == token_embedding).all(-1)  # (B, T)
        n_tokens = int(is_image.sum())
        if n_tokens != features.shape[0]:
            raise ValueError(
                f"Image features and image tokens do not match: tokens: {n_tokens}, features: {features.shape[0]}. "
                f"The {n_images} image(s) give {per_image} features each, so the text needs {per_image} "
                f"<image> tokens (id {image_token}) per image: check that the number of <image> placeholders "
                f"equals the number of images, that the processor expanded them, and that truncation did not "
                f"cut any."
            )
        merged = inputs_embeds.masked_scatter(is_image[..., None].to(inputs_embeds.device), features)
        return merged, image_outputs


def _vision_class(config: LlavaConfig) -> type[CLIPVisionModel] | type[SiglipVisionModel]:
    return SiglipVisionModel if isinstance(config.vision_config, SiglipVisionConfig) else CLIPVisionModel


def _text_classes(config: LlavaConfig) -> tuple[type[LlamaModel], type[LlamaForCausalLM]]:
    if isinstance(config.text_config, Qwen2Config):
        return Qwen2Model, Qwen2ForCausalLM
    if isinstance(config.text_config, MistralConfig):
        return MistralModel, MistralForCausalLM
    return LlamaModel, LlamaForCausalLM


def _share_attn_implementation(config: LlavaConfig) -> None:
    """from_pretrained sets `_attn_implementation` on the top config; the towers read their own configs."""
    name = getattr(config, "_attn_implementation", None)
    if name is not None:
        config.vision_config._attn_implementation = name
        config.text_config._attn_implementation = name


class LlavaModel(_LlavaImageMixin, PreTrainedModel):
    """LLaVA without the LM head: returns the decoder's last hidden state."""

    config_class = LlavaConfig
    projector_class: type[nn.Module] = LlavaMultiModalProjector

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__(config)
        _share_attn_implementation(config)
        self.vision_tower = _vision_class(config)(config.vision_config)
        self.multi_modal_projector = self.projector_class(config)
        self.language_model = _text_classes(config)[0](config.text_config)
        init_weights(self, config.text_config.initializer_range, skip=(PreTrainedModel,))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, *,
                pixel_values_videos: torch.Tensor | None = None) -> LlavaModelOutputWithPast | tuple:
        """Merge image features into the embeddings and run the decoder. `cache_position` and
        `image_sizes` are accepted for compatibility and ignored; a video is a ValueError."""
        reject_videos(self, pixel_values_videos)
        embeds, image_outputs = self._merge_image_features(input_ids, pixel_values, inputs_embeds,
                                                            vision_feature_layer, vision_feature_select_strategy,
                                                            output_hidden_states, output_attentions)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=cache, use_cache=use_cache,
                                  output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        result = LlavaModelOutputWithPast(last_hidden_state=out.last_hidden_state,
                                          cache=out.cache, hidden_states=out.hidden_states,
                                          attentions=out.attentions, image_outputs=image_outputs)
        return result if return_dict is not False else result.to_tuple()


class LlavaForConditionalGeneration(_LlavaImageMixin, PreTrainedModel, GenerationMixin):
    """LLaVA with the LM head: `model(**processor(images=..., text=...))` gives next-token logits."""

    config_class = LlavaConfig
    projector_class: type[nn.Module] = LlavaMultiModalProjector
    main_input_name = "input_ids"

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__(config)
        _share_attn_implementation(config)
        self.vision_tower = _vision_class(config)(config.vision_config)
        self.multi_modal_projector = self.projector_class(config)
        self.language_model = _text_classes(config)[1](config.text_config)
        init_weights(self, config.text_config.initializer_range, skip=(PreTrainedModel,))
        self.tie_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.language_model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.language_model.lm_head = value

    def get_decoder(self) -> LlamaModel:
        return self.language_model.model

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                vision_feature_layer: int | list[int] | None = None,
                vision_feature_select_strategy: str | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, num_logits_to_keep: int | None = None,
                cache_position: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None,
                num_items_in_batch: int | torch.Tensor | None = None, *,
                pixel_values_videos: torch.Tensor | None = None) -> LlavaCausalLMOutputWithPast | tuple:
        """Logits for the kept positions, the LM loss when `labels` are given (mask `<image>` and pad
        positions in the labels with -100 yourself, as in transformers). `cache_position` and
        `image_sizes` are accepted for compatibility and ignored; a video is a ValueError."""
        reject_videos(self, pixel_values_videos)
        embeds, image_outputs = self._merge_image_features(input_ids, pixel_values, inputs_embeds,
                                                            vision_feature_layer, vision_feature_select_strategy,
                                                            output_hidden_states, output_attentions)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=cache, labels=labels, use_cache=use_cache,
                                  output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                  logits_to_keep=logits_to_keep, num_logits_to_keep=num_logits_to_keep,
                                  num_items_in_batch=num_items_in_batch)
        result = LlavaCausalLMOutputWithPast(loss=out.loss, logits=out.logits, cache=out.cache,
                                             hidden_states=out.hidden_states, attentions=out.attentions,
                                             image_outputs=image_outputs)
        return result if return_dict is not False else result.to_tuple()
