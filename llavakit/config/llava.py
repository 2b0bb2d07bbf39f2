"""LlavaConfig: a vision config, a text config, and how the two are joined (model_type "llava")."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llavakit.config.base import PretrainedConfig, check_choice
from llavakit.config.clip import CLIPVisionConfig
from llavakit.config.llama import LlamaConfig, MistralConfig
from llavakit.config.qwen2 import Qwen2Config
from llavakit.config.siglip import SiglipVisionConfig

VISION_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "clip_vision_model": CLIPVisionConfig,
    "clip": CLIPVisionConfig,
    "siglip_vision_model": SiglipVisionConfig,
    "siglip": SiglipVisionConfig,
}
TEXT_CONFIGS: dict[str, type[PretrainedConfig]] = {"llama": LlamaConfig, "mistral": MistralConfig,
                                                   "qwen2": Qwen2Config}


def resolve_sub_config(value: Any, table: dict[str, type[PretrainedConfig]], fallback: str,
                       when_none: PretrainedConfig, role: str) -> PretrainedConfig:
    """A sub-config given as a dict is built by the class its `model_type` names, with that class's defaults."""
    if value is None:
        return when_none
    if isinstance(value, PretrainedConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{role} must be a dict or a config object, got {type(value).__name__}")
    model_type = value.get("model_type", fallback)
    if model_type not in table:
        raise ValueError(
            f"unsupported {role} model_type {model_type!r}; llavakit supports {sorted(table)}"
        )
    return table[model_type].from_dict(value)


def default_vision_config() -> CLIPVisionConfig:
    """CLIP ViT-L/14 at 336 px: what LLaVA uses when a config gives no vision_config at all."""
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, projection_dim=768, image_size=336,
                            patch_size=14, num_hidden_layers=24, num_attention_heads=16)


@dataclasses.dataclass(init=False)
class LlavaConfig(PretrainedConfig):
    """LLaVA-1.5: CLIP tower -> 2-layer GELU projector -> Llama/Mistral decoder."""

    model_type: ClassVar[str] = "llava"

    vision_config: Any = None
    text_config: Any = None
    image_token_index: int = 32000
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: str = "default"
    vision_feature_layer: int | list[int] = -2
    image_seq_length: int = 576
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        self.vision_config = resolve_sub_config(self.vision_config, VISION_CONFIGS, "clip_vision_model",
                                                default_vision_config(), "vision_config")
        self.text_config = resolve_sub_config(self.text_config, TEXT_CONFIGS, "llama", LlamaConfig(),
                                              "text_config")
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        super().__post_init__()

    @classmethod
    def _rename_legacy_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "image_token_id" in data:
            data.setdefault("image_token_index", data.pop("image_token_id"))
        return data

    def validate(self) -> None:
        check_choice("vision_feature_select_strategy", self.vision_feature_select_strategy, ("default", "full"))
        check_choice("projector_hidden_act", self.projector_hidden_act, ("gelu", "gelu_pytorch_tanh", "relu",
                                                                         "silu", "quick_gelu"))
        layers = self.vision_feature_layers
        n_states = self.vision_config.num_hidden_layers + 1
        for layer in layers:
            if not isinstance(layer, int) or not -n_states <= layer < n_states:
                raise ValueError(
                    f"vision_feature_layer {layer!r} is out of range for a vision tower with "
                    f"{self.vision_config.num_hidden_layers} layers (valid: {-n_states}..{n_states - 1})"
                )

    @property
    def image_token_id(self) -> int:
        return self.image_token_index

    @property
    def vision_feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list, whether it was given as an int or a list."""
        layer = self.vision_feature_layer
        return list(layer) if isinstance(layer, (list, tuple)) else [layer]
