"""Auto classes: pick the model class from the config's `model_type`, as transformers' Auto* do."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from llavakit.config import AutoConfig
from llavakit.config.base import PretrainedConfig
from llavakit.models.base import PreTrainedModel
from llavakit.models.clip import CLIPVisionModel
from llavakit.models.llama import LlamaForCausalLM, LlamaModel, MistralForCausalLM, MistralModel
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel
from llavakit.models.llava_next import LlavaNextForConditionalGeneration, LlavaNextModel
from llavakit.models.llava_next_video import LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel
from llavakit.models.llava_onevision import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from llavakit.models.qwen2 import Qwen2ForCausalLM, Qwen2Model
from llavakit.models.siglip import SiglipVisionModel
from llavakit.models.vipllava import VipLlavaForConditionalGeneration, VipLlavaModel

# Only the hub/config-reading keyword arguments go to AutoConfig; the rest go to the model's from_pretrained.
_CONFIG_KWARGS = ("revision", "local_files_only", "cache_dir", "token", "force_download", "subfolder")


class _AutoModel:
    """Base: `_classes` maps model_type -> model class."""

    _classes: dict[str, type[PreTrainedModel]] = {}

    @classmethod
    def class_for(cls, config: PretrainedConfig) -> type[PreTrainedModel]:
        model_type = config.model_type
        if model_type not in cls._classes:
            raise ValueError(f"{cls.__name__} does not support model_type {model_type!r}; "
                             f"supported: {sorted(cls._classes)}")
        return cls._classes[model_type]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any,
                        **kwargs: Any) -> nn.Module:
        """Read config.json, choose the class by model_type, and load it with its from_pretrained."""
        if args:
            raise TypeError("from_pretrained takes the path or repo id as its only positional argument")
        config = kwargs.pop("config", None)
        if config is None:
            from llavakit.loading import original
            from llavakit.loading.hub import read_json, resolve_file

            hub = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
            data = read_json(resolve_file(pretrained_model_name_or_path, "config.json", **hub))
            if original.is_original_config(data):  # liuhaotian / mucai layout: the family picks the class
                family = original.family(data)
                if family not in cls._classes:
                    raise ValueError(f"{cls.__name__} cannot load an original {family!r} checkpoint")
                return cls._classes[family].from_pretrained(pretrained_model_name_or_path, **kwargs)
            config = AutoConfig.from_dict(data)
        model_class = cls.class_for(config)
        return model_class.from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)

    @classmethod
    def from_config(cls, config: PretrainedConfig, attn_implementation: str | None = None,
                    **kwargs: Any) -> nn.Module:
        """A randomly initialised model for `config` (no weights are read)."""
        if kwargs:
            raise TypeError(f"from_config got unexpected arguments {sorted(kwargs)}")
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        return cls.class_for(config)(config)


class AutoModelForImageTextToText(_AutoModel):
    _classes = {"llava": LlavaForConditionalGeneration, "vipllava": VipLlavaForConditionalGeneration,
                "llava_next": LlavaNextForConditionalGeneration,
                "llava_onevision": LlavaOnevisionForConditionalGeneration,
                "llava_next_video": LlavaNextVideoForConditionalGeneration}


class AutoModelForVision2Seq(AutoModelForImageTextToText):
    """The older name of AutoModelForImageTextToText."""


class AutoModelForCausalLM(_AutoModel):
    _classes = {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM}


class AutoModel(_AutoModel):
    """Models without a head."""

    _classes = {"llava": LlavaModel, "vipllava": VipLlavaModel, "llava_next": LlavaNextModel,
                "llava_onevision": LlavaOnevisionModel, "llava_next_video": LlavaNextVideoModel, "llama": LlamaModel,
                "mistral": MistralModel, "clip_vision_model": CLIPVisionModel, "qwen2": Qwen2Model,
                "siglip_vision_model": SiglipVisionModel}
