"""VipLlavaConfig: LLaVA with a multi-layer CLIP feature stack and a LayerNorm'd projector (model_type "vipllava")."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llavakit.config.base import PretrainedConfig, check_choice
from llavakit.config.llama import LlamaConfig
from llavakit.config.llava import TEXT_CONFIGS, VISION_CONFIGS, default_vision_config, resolve_sub_config

PROJECTOR_ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "relu", "silu", "quick_gelu")
# Other spellings of a field -> the field: transformers 5 names the layer list `vision_feature_layer`.
_ALIASES = {"vision_feature_layer": "vision_feature_layers", "image_token_id": "image_token_index"}


def _as_layer_list(value: Any) -> Any:
    """An int or tuple of layers as a list (one int: the same features, CLS dropped, nothing to concat)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(init=False)
class VipLlavaConfig(PretrainedConfig):
    """ViP-LLaVA: CLIP hidden states of several layers (CLS dropped), concatenated, then
    LayerNorm -> linear -> act -> linear into a Llama/Mistral decoder.

    `vision_feature_layers` is always kept as a list; `vision_feature_layer` (the transformers 5 name) and
    `image_token_id` are accepted as aliases in kwargs, config.json and attribute access.
    """

    model_type: ClassVar[str] = "vipllava"

    vision_config: Any = None
    text_config: Any = None
    image_token_index: int = 32000
    projector_hidden_act: str = "gelu"
    projector_layernorm_eps: float = 1e-5
    vision_feature_layers: list[int] = dataclasses.field(default_factory=lambda: [-2, -5, -8, -11, 6])
    image_seq_length: int = 576
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        self.vision_config = resolve_sub_config(self.vision_config, VISION_CONFIGS, "clip_vision_model",
                                                default_vision_config(), "vision_config")
        self.text_config = resolve_sub_config(self.text_config, TEXT_CONFIGS, "llama", LlamaConfig(),
                                              "text_config")
        self.vision_feature_layers = self.vision_feature_layers  # normalised to a list by __setattr__
        super().__post_init__()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "VipLlavaConfig":
        # Rename each source on its own, so an override under either name beats the file's value.
        return super().from_dict(cls._rename_legacy_keys(dict(config_dict)),
                                 **cls._rename_legacy_keys(dict(overrides)))

    @classmethod
    def _rename_legacy_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        for alias, name in _ALIASES.items():
            if alias in data:
                value = data.pop(alias)
                if name in data and data[name] != value:
                    raise ValueError(f"{alias}={value!r} and {name}={data[name]!r} are two names for the same "
                                     f"setting with different values; give only one")
                data[name] = value
        return data

    def validate(self) -> None:
        check_choice("projector_hidden_act", self.projector_hidden_act, PROJECTOR_ACTIVATIONS)
        if not isinstance(self.projector_layernorm_eps, (int, float)) or self.projector_layernorm_eps <= 0:
            raise ValueError(f"projector_layernorm_eps must be a positive number, got {self.projector_layernorm_eps!r}")
        layers = self.vision_feature_layers
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"vision_feature_layers must be a non-empty list of ints, got {layers!r}")
        n_states = self.vision_config.num_hidden_layers + 1
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ValueError(f"vision_feature_layers entries must be ints, got {layer!r} in {layers}")
            if not -n_states <= layer < n_states:
                raise ValueError(
                    f"vision_feature_layers entry {layer!r} is out of range for a vision tower with "
                    f"{self.vision_config.num_hidden_layers} layers (valid: {-n_states}..{n_states - 1})"
                )

    def __setattr__(self, name: str, value: Any) -> None:
        name = _ALIASES.get(name, name)
        if name == "vision_feature_layers":
            value = _as_layer_list(value)
        super().__setattr__(name, value)

    @property
    def vision_feature_layer(self) -> list[int]:
        """The transformers 5 name of `vision_feature_layers`."""
        return self.vision_feature_layers

    @property
    def image_token_id(self) -> int:
        return self.image_token_index
