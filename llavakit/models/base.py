"""PreTrainedModel: the nn.Module base that gives every model `from_pretrained` / `save_pretrained`.

The model classes themselves stay pure (config in, tensors out); reading and writing files lives in
llavakit.loading, which these methods call.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import nn

from llavakit.config.base import PretrainedConfig


class PreTrainedModel(nn.Module):
    """Base class. Subclasses set `config_class` and build their modules from `config` in __init__."""

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    # Checkpoint tensors this class does not use and may skip when loading (regexes on checkpoint keys).
    _keys_to_ignore_on_load: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config

    # ---- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load config and safetensors weights from a folder or Hub repo id (see llavakit.loading.load)."""
        from llavakit.loading.load import load_pretrained

        if args:
            raise TypeError("from_pretrained takes the path or repo id as its only positional argument")
        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json, generation_config.json and safetensors in the Hub's key layout."""
        from llavakit.loading.save import save_pretrained

        save_pretrained(self, save_directory, **kwargs)

    # ---- conveniences transformers users rely on ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute decoder-layer activations in backward (less memory, ~30% more compute) while training."""
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    def get_input_embeddings(self) -> nn.Embedding:
        raise NotImplementedError

    def get_output_embeddings(self) -> nn.Linear | None:
        return None

    def tie_weights(self) -> None:
        """Share the input embedding with the output head when the config asks for it."""
        output = self.get_output_embeddings()
        if output is not None and _ties_embeddings(self.config):
            output.weight = self.get_input_embeddings().weight


def _ties_embeddings(config: PretrainedConfig) -> bool:
    text_config = getattr(config, "text_config", config)
    return bool(getattr(config, "tie_word_embeddings", False) or getattr(text_config, "tie_word_embeddings", False))
