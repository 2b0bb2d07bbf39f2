"""SiglipVisionConfig: the SigLIP ViT vision tower (model_type "siglip_vision_model"), used by LLaVA-Interleave."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llavakit.config.base import PretrainedConfig, check_positive
from llavakit.config.clip import ACTIVATIONS


@dataclasses.dataclass(init=False)
class SiglipVisionConfig(PretrainedConfig):
    """Defaults are siglip-base-patch16-224's, as in transformers; interleave uses so400m-patch14-384, no head."""

    model_type: ClassVar[str] = "siglip_vision_model"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    vision_use_head: bool = True  # the attention-pooling head; LLaVA towers are saved without it

    def validate(self) -> None:
        check_positive(self, "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_channels", "image_size", "patch_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"SiglipVisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"SiglipVisionConfig.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "SiglipVisionConfig":
        # A full SigLIP config ("siglip") nests the vision part; take that part, as transformers does.
        if config_dict.get("model_type") == "siglip" and "vision_config" in config_dict:
            config_dict = config_dict["vision_config"]
        return super().from_dict(config_dict, **overrides)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2
