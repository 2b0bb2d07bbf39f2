"""Model outputs: dataclasses that behave like transformers' ModelOutput (attribute, key and index access).

Field names follow the newest transformers (5.24+: `cache`, not `past_key_values`); the old names listed in
llavakit.deprecation still read, write and construct, with a FutureWarning.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import torch

from llavakit.deprecation import RENAMED, rename_kwargs, warn_renamed
from llavakit.models.cache import DynamicCache


def model_output(cls: type) -> type:
    """`@dataclass` for outputs, whose constructor also takes the deprecated field names (e.g. past_key_values=)."""
    cls = dataclasses.dataclass(cls)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if any(old in kwargs for old in RENAMED):
            rename_kwargs(kwargs, type(self).__name__)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@model_output
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
        key = self._new_name(key)
        return getattr(self, key) if key in self.keys() else default

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            key = self._new_name(key)
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        key = self._new_name(key)
        if key not in self._field_names():
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return self._new_name(key) in self.keys() if isinstance(key, str) else False

    def __getattr__(self, name: str) -> Any:
        """Only reached for missing attributes: a deprecated name reads its new field, with a warning."""
        if name in RENAMED and RENAMED[name][0] in self._field_names():
            warn_renamed(name, type(self).__name__)
            return getattr(self, RENAMED[name][0])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(self._new_name(name), value)

    @classmethod
    def _field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def _new_name(self, key: str) -> str:
        """The field a deprecated name stands for (warning), unless this class still declares the old name."""
        if key in RENAMED and key not in self._field_names():
            new = RENAMED[key][0]
            if new in self._field_names():
                warn_renamed(key, type(self).__name__, stacklevel=4)
                return new
        return key

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


Tensors = tuple[torch.Tensor, ...]


@model_output
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@model_output
class BaseModelOutputWithPooling(ModelOutput):
    """CLIPVisionModel: `pooler_output` is post_layernorm applied to the CLS token of the last layer."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@model_output
class BaseModelOutputWithPast(ModelOutput):
    """A decoder without its head: final-norm hidden states plus the KV cache."""

    last_hidden_state: torch.Tensor | None = None
    cache: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@model_output
class CausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@model_output
class LlavaModelOutputWithPast(BaseModelOutputWithPast):
    """`image_hidden_states`: the projected image features of all images, (total_image_tokens, H_text)."""

    image_hidden_states: torch.Tensor | None = None


@model_output
class LlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`image_hidden_states`: the projected image features of all images, (total_image_tokens, H_text)."""

    image_hidden_states: torch.Tensor | None = None
