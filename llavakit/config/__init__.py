"""Configs: plain dataclasses that read and write config.json like transformers."""

from llavakit.config.auto import AutoConfig
from llavakit.config.base import PretrainedConfig
from llavakit.config.clip import CLIPVisionConfig
from llavakit.config.llama import LlamaConfig, MistralConfig
from llavakit.config.llava import LlavaConfig
from llavakit.config.qwen2 import Qwen2Config
from llavakit.config.siglip import SiglipVisionConfig
from llavakit.config.llava_next import LlavaNextConfig
from llavakit.config.llava_next_video import LlavaNextVideoConfig
from llavakit.config.llava_onevision import LlavaOnevisionConfig
from llavakit.config.vipllava import VipLlavaConfig

__all__ = ["AutoConfig", "PretrainedConfig", "CLIPVisionConfig", "LlamaConfig", "MistralConfig", "LlavaConfig",
           "LlavaNextConfig", "LlavaOnevisionConfig", "LlavaNextVideoConfig", "VipLlavaConfig", "Qwen2Config",
           "SiglipVisionConfig"]
