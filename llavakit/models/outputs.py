"""Model outputs: dataclasses that behave like transformers' ModelOutput (attribute, key and index access)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch

from llavakit.models.cache import DynamicCache


@dataclasses.dataclass
class ModelOutput:
    """Base of every output. Like transformers, it acts as an ordered dict of its non-None fields.

    `out.logits`, `out["logits"]`, `out[0]` (the first non-None field), `out.keys()`, `out.to_tuple()`.
    Iterating yields the keys, as iterating a transformers ModelOutput (an OrderedDict) does.
    """

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields in declaration order: what `return_dict=False` returns."""
        return tuple(self.values())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


Tensors = tuple[torch.Tensor, ...]


@dataclasses.dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """CLIPVisionModel: `pooler_output` is post_layernorm applied to the CLS token of the last layer."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class BaseModelOutputWithPast(ModelOutput):
    """A decoder without its head: final-norm hidden states plus the KV cache."""

    last_hidden_state: torch.Tensor | None = None
    past_key_values: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class LlavaModelOutputWithPast(BaseModelOutputWithPast):
    """`image_hidden_states`: the projected image features of all images, (total_image_tokens, H_text)."""

    image_hidden_states: torch.Tensor | None = None


@dataclasses.dataclass
class LlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`image_hidden_states`: the projected image features of all images, (total_image_tokens, H_text)."""

    image_hidden_states: torch.Tensor | None = None
