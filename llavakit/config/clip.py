"""CLIPVisionConfig: the CLIP ViT vision tower (model_type "clip_vision_model")."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llavakit.config.base import PretrainedConfig, check_positive

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu", "silu")


@dataclasses.dataclass(init=False)
class CLIPVisionConfig(PretrainedConfig):
    """Defaults are CLIP ViT-B/32's, as in transformers; LLaVA checkpoints override them."""

    model_type: ClassVar[str] = "clip_vision_model"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def validate(self) -> None:
        check_positive(self, "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_channels", "image_size", "patch_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPVisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIPVisionConfig.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "CLIPVisionConfig":
        # A full CLIP config ("clip") nests the vision part; take that part, as transformers does.
        if config_dict.get("model_type") == "clip" and "vision_config" in config_dict:
            config_dict = config_dict["vision_config"]
        return super().from_dict(config_dict, **overrides)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2
