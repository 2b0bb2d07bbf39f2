"""AutoConfig: pick the config class from config.json's `model_type`."""

from __future__ import annotations

import json
import os
from typing import Any

from llavakit.config.base import CONFIG_NAME, PretrainedConfig, _HUB_KWARGS
from llavakit.config.clip import CLIPVisionConfig
from llavakit.config.llama import LlamaConfig, MistralConfig
from llavakit.config.llava import LlavaConfig
from llavakit.config.qwen2 import Qwen2Config
from llavakit.config.siglip import SiglipVisionConfig
from llavakit.config.llava_next import LlavaNextConfig
from llavakit.config.llava_next_video import LlavaNextVideoConfig
from llavakit.config.llava_onevision import LlavaOnevisionConfig
from llavakit.config.vipllava import VipLlavaConfig

CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "llava": LlavaConfig,
    "llava_next": LlavaNextConfig,
    "llava_onevision": LlavaOnevisionConfig,
    "llava_next_video": LlavaNextVideoConfig,
    "vipllava": VipLlavaConfig,
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "clip_vision_model": CLIPVisionConfig,
    "qwen2": Qwen2Config,
    "siglip_vision_model": SiglipVisionConfig,
}


def config_class_for(model_type: str | None) -> type[PretrainedConfig]:
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; llavakit supports {sorted(CONFIG_CLASSES)}"
        )
    return CONFIG_CLASSES[model_type]


class AutoConfig:
    """`AutoConfig.from_pretrained(path_or_repo_id)` returns the config class its model_type names."""

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PretrainedConfig:
        return config_class_for(model_type)(**kwargs)

    @staticmethod
    def from_dict(config_dict: dict[str, Any], **overrides: Any) -> PretrainedConfig:
        return config_class_for(config_dict.get("model_type")).from_dict(config_dict, **overrides)

    @staticmethod
    def from_pretrained(path_or_repo_id: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
        from llavakit.loading.hub import resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _HUB_KWARGS}
        path = resolve_file(path_or_repo_id, CONFIG_NAME, **hub_kwargs)
        with open(path, encoding="utf-8") as f:
            return AutoConfig.from_dict(json.load(f), **kwargs)
