"""Model outputs: dataclasses that behave like transformers' ModelOutput (attribute, key and index access).

Field names follow the newest transformers (5.24+: `cache`, not `past_key_values`); the old names listed in
llavakit.deprecation still read, write and construct, with a FutureWarning.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Iterator

import torch

from llavakit.deprecation import IMAGE_HIDDEN_STATES_MESSAGE, RENAMED, rename_kwargs, warn_renamed
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
    """A vision tower's output. CLIPVisionModel: `pooler_output` is post_layernorm of the last layer's CLS token.

    As `image_outputs` of a LLaVA model (and from `get_image_features`), `pooler_output` holds the projected
    features instead: a list of (tokens_i, H_text), one per image (a (num_images, P, H_text) tensor for ViP).
    """

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


class MultimodalModelOutput(ModelOutput):
    """Base of outputs that carry encoder outputs (`image_outputs`, `video_outputs`, `audio_outputs`).

    Each encoder output is a BaseModelOutputWithPooling whose `pooler_output` holds the projected features
    the decoder received; in `to_tuple()` (and `return_dict=False`) it appears as its own tuple.
    """

    ENCODER_FIELDS = ("image_outputs", "video_outputs", "audio_outputs")

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(value.to_tuple() if key in self.ENCODER_FIELDS else value for key, value in self.items())


@model_output
class MultimodalBaseModelOutputWithPast(MultimodalModelOutput):
    """A multimodal model without its head: the decoder's output plus what each encoder produced."""

    last_hidden_state: torch.Tensor | None = None
    cache: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    video_outputs: BaseModelOutputWithPooling | None = None
    audio_outputs: BaseModelOutputWithPooling | None = None


@model_output
class MultimodalCausalLMOutputWithPast(MultimodalModelOutput):
    """A multimodal causal LM: loss, logits, cache and decoder states, plus what each encoder produced."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    video_outputs: BaseModelOutputWithPooling | None = None
    audio_outputs: BaseModelOutputWithPooling | None = None


def _deprecated_image_hidden_states(self: MultimodalModelOutput) -> torch.Tensor | list[torch.Tensor] | None:
    """transformers 5.24-5.29: `image_outputs.pooler_output` under its old name, with a FutureWarning."""
    warnings.warn(IMAGE_HIDDEN_STATES_MESSAGE, FutureWarning, stacklevel=2)
    return None if self.image_outputs is None else self.image_outputs.pooler_output


@model_output
class LlavaModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """`image_outputs`: the vision tower's output with `pooler_output` = the projected features per image."""

    image_hidden_states = property(_deprecated_image_hidden_states)


@model_output
class LlavaCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """`image_outputs`: the vision tower's output with `pooler_output` = the projected features per image."""

    image_hidden_states = property(_deprecated_image_hidden_states)


def merged_features(encoder_outputs: BaseModelOutputWithPooling | None) -> torch.Tensor | None:
    """An encoder's projected features as the decoder received them, (total_tokens, H), or None."""
    if encoder_outputs is None or encoder_outputs.pooler_output is None:
        return None
    features = encoder_outputs.pooler_output
    if isinstance(features, (list, tuple)):
        return torch.cat(list(features))  # one (tokens_i, H) per image
    return features.reshape(-1, features.shape[-1])  # (N, P, H) -> (N * P, H)
